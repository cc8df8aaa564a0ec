// Real-browser test of the demo page (sfu-server/web/index.html), the
// client module (sfu-client.js) and WHIP/WHEP against a running sfu-server,
// in two independent WebRTC stacks: Chromium and Firefox pages join the same
// channel and hear each other, then a page of each publishes over WHIP and
// a page of each listens over WHEP; a page whose WebSocket is cut (it goes
// through a TCP proxy here) reconnects and resumes, unseen by the others,
// and a page restarts ICE, its audio going on both ways; and the lecture
// hall: a listener raises its hand, a moderator promotes it, the others hear
// it, demoted they do not.
//
// Run by scripts/browser-test.sh, which starts the server and this test in a
// network namespace with loopback addresses only (test packets stay on
// 127.0.0.0/8). Environment:
//   SFU_URL        the server's HTTP base (default http://127.0.0.1:18080)
//   CHROMIUM       the Chromium binary (default /usr/bin/chromium; never downloaded)
//   FIREFOX        the Firefox binary (default /usr/bin/firefox-esr; never downloaded)
//   SCREENSHOT     where to save a screenshot (default <repo>/target/browser-test.png)
//   PAGES          how many Chromium pages join the demo page (default 3)
//   FIREFOX_PAGES  how many Firefox pages join it (default 2; 0: Chromium only)
//   DEADLINE_MS    per-check deadline (default 30000)
//   VERBOSE=1      echo the pages' console as it happens
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { createServer, connect } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { audioArrives, BrowserRun, joinDemoPage, mediaConnected, mediaState, refuseForeignInterfaces, until } from "./chromium.mjs";
import { launchFirefox } from "./firefox.mjs";
import { checkHybrid } from "./hybrid.mjs";
import { answerCodecs, heardSources, payloadSizes, whepListen, whipPublish } from "./whip-whep.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.SFU_URL ?? "http://127.0.0.1:18080";
const SCREENSHOT = process.env.SCREENSHOT ?? resolve(here, "../../../target/browser-test.png");
const CHROMIUM_PAGES = Number(process.env.PAGES ?? 3);
const FIREFOX_PAGES = Number(process.env.FIREFOX_PAGES ?? 2);
const PAGES = CHROMIUM_PAGES + FIREFOX_PAGES;
const CHANNEL = `browser-test-${process.pid}`;
const WHIP_CHANNEL = `whip-test-${process.pid}`;
const HALL_CHANNEL = `hall-test-${process.pid}`;
const WHEP_SLOTS = 3;

refuseForeignInterfaces("scripts/browser-test.sh");

const run = new BrowserRun();
const log = run.log.bind(run);
const check = run.check.bind(run);
// The pages on the demo page (run.pages also has the WHIP/WHEP ones).
const pages = [];

/** In-page: the member list as rendered (peer ids from data-peer). */
function renderedPeers(page) {
  return page.$$eval("#members li[data-peer]", (lis) => lis.map((li) => Number(li.dataset.peer)));
}

/**
 * A TCP proxy on 127.0.0.1 to the server at `base`: a page that loads the
 * demo page through it (`proxy.base`) has its WebSocket through it too.
 * `cut()` destroys every connection through it, both sides, as a network
 * does (no WebSocket close frame); it goes on listening.
 */
async function tcpProxy(base) {
  const { hostname, port } = new URL(base);
  const pairs = new Set();
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    const pair = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of pair) s.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  server.unref();
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    cut() {
      const n = pairs.size;
      for (const [a, b] of [...pairs]) {
        a.destroy();
        b.destroy();
      }
      return n;
    },
  };
}

/** In-page: the client's own voice (its CSRC at the others). */
function sourceOf(p) {
  return p.page.evaluate(() => window.voice.members.get(window.voice.peer).source);
}

/**
 * In-page, from now on: per voice (CSRC), how many times a new packet of it
 * was seen in the slots (sampled every 50 ms, by the receivers' contributing
 * sources' timestamps, so no clock is compared across pages).
 */
function countVoices(p) {
  return p.page.evaluate(() => {
    if (window.voiceTicks) return;
    window.voiceTicks = {};
    const last = {};
    setInterval(() => {
      for (const rx of window.voice.pc?.getReceivers() ?? []) {
        for (const c of rx.getContributingSources()) {
          if (last[c.source] === c.timestamp) continue;
          last[c.source] = c.timestamp;
          window.voiceTicks[c.source] = (window.voiceTicks[c.source] ?? 0) + 1;
        }
      }
    }, 50);
  });
}

function voiceTicks(p) {
  return p.page.evaluate(() => ({ ...window.voiceTicks }));
}

/** Waits until `p` has seen at least `more` new packets of each voice in `sources` since `before`. */
function hearsAgain(p, sources, before, more = 10) {
  return until(`${p.name} hears voices ${sources.join(", ")}`, async () => {
    const now = await voiceTicks(p);
    const missing = sources.filter((s) => (now[s] ?? 0) < (before[s] ?? 0) + more);
    return missing.length === 0 ? now : { notYet: true, missing };
  });
}

try {
  const browser = await run.launch(chromium);
  const firefox = FIREFOX_PAGES > 0 ? run.adopt(await launchFirefox()) : null;
  log(`chromium ${browser.version()}${firefox ? `, ${firefox.version()}` : ""}`);
  log(`${CHROMIUM_PAGES} Chromium and ${FIREFOX_PAGES} Firefox pages join channel ${CHANNEL} at ${BASE}`);

  // First, while the machine is quiet: the hybrid checks time what the
  // pages hear every 10 ms (their pages close after them).
  if (process.env.SFU_HYBRID) await checkHybrid(run, process.env.SFU_HYBRID, firefox);

  // The first page's HTTP and WebSocket go through a proxy that the resume
  // check cuts.
  const proxy = await tcpProxy(BASE);

  await check(`join: ${PAGES} pages (${CHROMIUM_PAGES} Chromium, ${FIREFOX_PAGES} Firefox) join ${CHANNEL}`, async () => {
    for (let i = 0; i < PAGES; i++) {
      const p = i < CHROMIUM_PAGES ? await run.openPage(`page${i}`) : await run.openPage(`firefox${i - CHROMIUM_PAGES}`, {}, firefox);
      // Record whether the page ever shows someone speaking: the fake beep is
      // short, so a poll could fall between two beeps.
      await p.page.addInitScript(() => {
        window.sawSpeaking = [];
        new MutationObserver(() => {
          for (const li of document.querySelectorAll("#members li.speaking")) {
            const peer = Number(li.dataset.peer);
            if (!window.sawSpeaking.includes(peer)) window.sawSpeaking.push(peer);
          }
        }).observe(document, { subtree: true, attributes: true, attributeFilter: ["class"], childList: true });
        // Every member_left the page receives (the resume check wants none
        // for the member that resumed).
        window.leftPeers = [];
        window.WebSocket = class extends window.WebSocket {
          constructor(...args) {
            super(...args);
            this.addEventListener("message", (e) => {
              try {
                const m = JSON.parse(e.data);
                if (m.type === "member_left") window.leftPeers.push(m.peer);
              } catch {
                // not JSON: the client complains itself
              }
            });
          }
        };
      });
      const base = i === 0 && CHROMIUM_PAGES > 0 ? proxy.base : BASE;
      await joinDemoPage(p, { base, channel: CHANNEL, identity: `user-${i}` });
      pages.push(p);
      log(`${p.name} joined as peer ${p.peer}${base === BASE ? "" : ` through the proxy at ${base}`}`);
    }
    await Promise.all(
      pages.map((p) =>
        mediaConnected(p).then((st) => {
          if (!/^127\./.test(st.pair.local) || !/^127\./.test(st.pair.remote)) {
            throw new Error(`${p.name}: ICE pair ${st.pair.local} -> ${st.pair.remote} is not loopback`);
          }
          log(`${p.name} ICE connected ${st.pair.local} -> ${st.pair.remote}`);
        }),
      ),
    );
  });

  const all = () => pages.map((p) => p.peer).sort((a, b) => a - b);

  await check("members: every page lists every member", async () => {
    await Promise.all(
      pages.map((p) =>
        until(`${p.name} member list`, async () => {
          const shown = (await renderedPeers(p.page)).sort((a, b) => a - b);
          return JSON.stringify(shown) === JSON.stringify(all()) ? shown : { notYet: true, shown };
        }),
      ),
    );
  });

  await check("media: every page receives audio (packetsReceived > 50, totalAudioEnergy > 0)", async () => {
    await Promise.all(
      pages.map((p) =>
        audioArrives(p).then((s) =>
          log(`${p.name} inbound mid ${s.mid}: ${s.packetsReceived} packets, energy ${s.totalAudioEnergy.toFixed(4)}`),
        ),
      ),
    );
  });

  if (firefox) {
    const publishers = [];
    const listeners = [];
    await check(
      `WHIP/WHEP: a Chromium and a Firefox page publish to ${WHIP_CHANNEL}; a page of each listens with ${WHEP_SLOTS} slots`,
      async () => {
        for (const [name, b] of [["whip-chromium", browser], ["whip-firefox", firefox]]) {
          const p = await run.openPage(name, {}, b);
          await p.page.goto(BASE + "/");
          log(`${name} published: ${await whipPublish(p, `${BASE}/whip/${WHIP_CHANNEL}`)}`);
          publishers.push(p);
        }
        for (const [name, b] of [["whep-chromium", browser], ["whep-firefox", firefox]]) {
          const p = await run.openPage(name, {}, b);
          await p.page.goto(BASE + "/");
          log(`${name} listens: ${await whepListen(p, `${BASE}/whep/${WHIP_CHANNEL}`, WHEP_SLOTS)}`);
          listeners.push(p);
        }
        await Promise.all([...publishers, ...listeners].map((p) => mediaConnected(p)));
      },
    );

    await check("WHIP/WHEP: each WHEP page receives audio from both publishers (two voices, energy > 0)", async () => {
      if (listeners.length !== 2) throw new Error("the WHEP pages did not connect");
      await Promise.all(
        listeners.map(async (p) => {
          const s = await audioArrives(p);
          const voices = await until(`${p.name} hears both publishers`, async () => {
            const heard = await heardSources(p);
            return heard.length >= 2 ? heard : { notYet: true, heard };
          });
          log(`${p.name}: ${s.packetsReceived} packets on mid ${s.mid}, voices ${voices.join(", ")}`);
          if (voices.length !== 2) throw new Error(`${p.name} heard ${voices.length} voices, only 2 publish`);
        }),
      );
    });

    await check("RED: Chromium's pages negotiated RED, Firefox's plain Opus, and heard each other above", async () => {
      // Chromium offers RED and the server takes it: the Chromium publisher
      // sends RED, which reaches whep-chromium whole and whep-firefox as
      // plain Opus (both heard both voices in the check before).
      const want = { "whip-chromium": "opus,red", "whep-chromium": "opus,red", "whip-firefox": "opus", "whep-firefox": "opus" };
      for (const p of [...publishers, ...listeners]) {
        const codecs = (await answerCodecs(p)).filter((c) => c !== "telephone-event").join(",");
        if (codecs !== want[p.name]) throw new Error(`${p.name}: the answer has ${codecs}, want ${want[p.name]}`);
      }
      for (const p of listeners) log(`${p.name}: payload bytes per packet of its streams: ${(await payloadSizes(p)).join(", ")}`);
    });
  }

  await check("send path: the server sealed every page's audio itself (direct SRTP, no str0m fallback)", async () => {
    const text = await (await fetch(BASE + "/metrics")).text();
    const value = (path) => {
      const m = text.match(new RegExp(`^sfu_peers_send_path_total\\{path="${path}"\\} (\\d+)$`, "m"));
      if (!m) throw new Error(`no sfu_peers_send_path_total{path="${path}"} in /metrics`);
      return Number(m[1]);
    };
    const [direct, str0m] = [value("direct"), value("str0m")];
    log(`send path: direct ${direct}, str0m ${str0m}`);
    // The hybrid pages were on a server of their own.
    const want = run.pages.filter((p) => !p.name.startsWith("p2p-")).length;
    if (direct < want || str0m !== 0) throw new Error(`direct ${direct}, str0m ${str0m}; want ${want} and 0`);
  });

  await check("speakers: the fake mics' beeps highlight speaking members", async () => {
    await Promise.all(
      pages.map((p) =>
        until(`${p.name} shows a speaking member`, async () => {
          const saw = await p.page.evaluate(() => window.sawSpeaking);
          return saw.length > 0 ? saw : { notYet: true, saw };
        }).then((saw) => log(`${p.name} saw speaking: ${saw.join(", ")}`)),
      ),
    );
    // A picture for a human, taken while someone is highlighted if possible.
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await pages[0].page.waitForSelector("#members li.speaking", { timeout: 5000 }).catch(() => {});
    await pages[0].page.screenshot({ path: SCREENSHOT, fullPage: true });
    log(`screenshot: ${SCREENSHOT}`);
  });

  await check("leave: the others' member lists drop the member who left", async () => {
    const gone = pages.at(-1);
    await gone.page.click("#leave");
    gone.left = true;
    await until(`${gone.name} shows it left`, async () => {
      const st = await gone.page.textContent("#status");
      return /^Left/.test(st) ? st : { notYet: true, st };
    });
    const rest = pages.slice(0, -1);
    const expect = rest.map((p) => p.peer).sort((a, b) => a - b);
    await Promise.all(
      rest.map((p) =>
        until(`${p.name} drops peer ${gone.peer}`, async () => {
          const shown = (await renderedPeers(p.page)).sort((a, b) => a - b);
          return JSON.stringify(shown) === JSON.stringify(expect) ? shown : { notYet: true, shown };
        }),
      ),
    );
  });

  // The demo pages still in the channel; the first one's socket goes
  // through the proxy.
  const present = () => pages.filter((p) => !p.left);
  const cutPage = pages[0];

  await check("resume: a page whose WebSocket is cut resumes as the same peer, unseen by the others; audio flows both ways", async () => {
    if (!cutPage || cutPage.browser !== "chromium") throw new Error("no Chromium page goes through the proxy");
    const others = present().filter((p) => p !== cutPage);
    const sources = new Map(await Promise.all(present().map(async (p) => [p, await sourceOf(p)])));
    await Promise.all(present().map((p) => countVoices(p)));
    // What the cut page shows, and whether the others' lists ever lose it.
    await cutPage.page.evaluate(() => {
      const conn = document.getElementById("conn");
      window.connSeen = [conn.textContent];
      new MutationObserver(() => window.connSeen.push(conn.textContent)).observe(conn, {
        childList: true,
        characterData: true,
        subtree: true,
      });
      window.events = { resumed: 0, joined: 0, left: 0 };
      for (const type of Object.keys(window.events)) window.voice.addEventListener(type, () => window.events[type]++);
    });
    for (const p of others) {
      await p.page.evaluate((peer) => {
        window.lostPeer = false;
        const list = document.getElementById("members");
        new MutationObserver(() => {
          if (!list.querySelector(`li[data-peer="${peer}"]`)) window.lostPeer = true;
        }).observe(list, { childList: true });
      }, cutPage.peer);
    }

    const n = proxy.cut();
    log(`cut ${n} proxied connections of ${cutPage.name} (peer ${cutPage.peer})`);
    const st = await until(`${cutPage.name} shows Reconnecting…, then connected again`, async () => {
      const st = await cutPage.page.evaluate(() => ({
        seen: window.connSeen,
        conn: document.getElementById("conn").textContent,
        status: document.getElementById("status").textContent,
        events: window.events,
        peer: window.voice.peer,
      }));
      const back = st.seen.lastIndexOf("Media: connected") > st.seen.indexOf("Reconnecting…");
      return st.seen.includes("Reconnecting…") && back && st.conn === "Media: connected" && st.events.resumed > 0
        ? st
        : { notYet: true, ...st };
    });
    if (st.peer !== cutPage.peer || st.events.joined > 0 || st.events.left > 0) {
      throw new Error(`${cutPage.name} did not resume as peer ${cutPage.peer}: ${JSON.stringify(st)}`);
    }
    const shown = st.seen.map((t) => JSON.stringify(t)).join(" → ");
    log(`${cutPage.name} showed ${shown}; status ${JSON.stringify(st.status)}`);

    // Audio both ways after the resume: the cut page hears every other
    // page's voice, and every other page hears the cut page's.
    const since = new Map(await Promise.all(present().map(async (p) => [p, await voiceTicks(p)])));
    await Promise.all([
      hearsAgain(cutPage, others.map((p) => sources.get(p)), since.get(cutPage)),
      ...others.map((p) => hearsAgain(p, [sources.get(cutPage)], since.get(p))),
    ]);
    const heard = others.map((p) => sources.get(p)).join(", ");
    log(`after the resume ${cutPage.name} hears voices ${heard}, and they hear its ${sources.get(cutPage)}`);

    for (const p of others) {
      const seen = await p.page.evaluate(() => ({ left: window.leftPeers, lost: window.lostPeer }));
      if (seen.left.includes(cutPage.peer) || seen.lost) {
        const left = JSON.stringify(seen.left);
        throw new Error(`${p.name} saw peer ${cutPage.peer} leave: member_left ${left}, dropped from the list: ${seen.lost}`);
      }
      const shown = await renderedPeers(p.page);
      if (!shown.includes(cutPage.peer)) throw new Error(`${p.name} no longer lists peer ${cutPage.peer}: ${shown}`);
    }
  });

  await check("ICE restart: restartIce() on a Chromium page is answered; audio flows both ways on the new ICE session", async () => {
    const p = present().find((q) => q.browser === "chromium" && q !== cutPage) ?? cutPage;
    const others = present().filter((q) => q !== p);
    const sources = new Map(await Promise.all(present().map(async (q) => [q, await sourceOf(q)])));
    await Promise.all(present().map((q) => countVoices(q)));
    const ufrag = (sdp) => sdp?.match(/^a=ice-ufrag:(\S+)/m)?.[1];
    const sdps = () =>
      p.page.evaluate(() => ({
        local: window.voice.pc.localDescription.sdp,
        remote: window.voice.pc.remoteDescription.sdp,
      }));
    const before = await sdps();
    const reply = await p.page.evaluate(() =>
      window.voice.restartIce().then((m) => ({ type: m.type, answer: m.answer })),
    );
    const after = await sdps();
    if (reply.type !== "restarted") throw new Error(`${p.name}: restartIce() gave ${JSON.stringify(reply)}`);
    const [oldLocal, newLocal] = [ufrag(before.local), ufrag(after.local)];
    const [oldRemote, newRemote] = [ufrag(before.remote), ufrag(reply.answer)];
    if (ufrag(after.remote) !== newRemote) throw new Error(`${p.name}: the restarted answer was not applied`);
    if (!newLocal || newLocal === oldLocal) throw new Error(`${p.name}: the restart offer kept ice-ufrag ${oldLocal}`);
    if (!newRemote || newRemote === oldRemote) throw new Error(`the restarted answer kept the ice-ufrag ${oldRemote}`);
    log(`${p.name} restarted ICE: ufrag ${oldLocal} → ${newLocal}, the server's ${oldRemote} → ${newRemote}`);

    // The selected pair is of the new ICE session (our new ufrag) and
    // carries media: inbound packets grow, and voices go both ways.
    const pairState = () =>
      p.page.evaluate(async () => {
        const stats = await window.voice.pc.getStats();
        let pair = null;
        let packets = 0;
        for (const s of stats.values()) {
          if (s.type === "transport" && s.selectedCandidatePairId) {
            const cp = stats.get(s.selectedCandidatePairId);
            const local = stats.get(cp?.localCandidateId);
            pair = {
              ufrag: local?.usernameFragment ?? s.iceLocalUsernameFragment,
              state: cp?.state,
              bytesReceived: cp?.bytesReceived ?? 0,
            };
          }
          if (s.type === "inbound-rtp" && s.kind === "audio") packets += s.packetsReceived ?? 0;
        }
        return { pair, packets, ice: window.voice.pc.iceConnectionState };
      });
    const start = await pairState();
    const since = new Map(await Promise.all(present().map(async (q) => [q, await voiceTicks(q)])));
    const st = await until(`${p.name} receives on the new ICE session`, async () => {
      const st = await pairState();
      const fresh = st.pair?.ufrag === newLocal && st.pair.state === "succeeded" && st.pair.bytesReceived > 0;
      return fresh && st.packets > start.packets + 50 ? st : { notYet: true, ...st };
    });
    await Promise.all([
      hearsAgain(p, others.map((q) => sources.get(q)), since.get(p)),
      ...others.map((q) => hearsAgain(q, [sources.get(p)], since.get(q))),
    ]);
    const packets = st.packets - start.packets;
    log(`${p.name}: selected pair of ufrag ${st.pair.ufrag}, ${packets} packets since the restart; voices both ways`);
  });

  await check("hall: a listener raises its hand, the moderator promotes it, others hear it; demoted, they do not", async () => {
    // The server runs with dev_moderation (scripts/browser-test.sh): every
    // page may moderate. The asker is a listener who offered its microphone.
    // SFU_SPREAD is an idle server of two workers spreading a channel from
    // its second member: joining one after the other, the moderator lands
    // on worker 0, the asker on worker 1, the hearer on worker 0.
    const hallBase = process.env.SFU_SPREAD ?? BASE;
    const hall = {};
    for (const [name, role] of [["hall-moderator", "speaker"], ["hall-asker", "listener"], ["hall-hearer", "listener"]]) {
      const p = await run.openPage(name);
      await joinDemoPage(p, { base: hallBase, channel: HALL_CHANNEL, identity: name, role });
      hall[name] = p;
    }
    const { "hall-moderator": mod, "hall-asker": asker, "hall-hearer": hearer } = hall;
    await Promise.all(Object.values(hall).map((p) => mediaConnected(p)));
    // A peer id's engine number (bit 40 up) says which worker holds it:
    // the hall is one room all the same.
    const workerOf = (p) => Math.floor(p.peer / 2 ** 40);
    if (process.env.SFU_SPREAD && workerOf(mod) === workerOf(asker)) {
      throw new Error(`the moderator and the asker share worker ${workerOf(mod)}: the check would not cross workers`);
    }
    const source = await asker.page.evaluate(() => window.voice.members.get(window.voice.peer).source);
    // In-page: when each voice (CSRC) last arrived, polled often.
    for (const p of [mod, hearer]) {
      await p.page.evaluate(() => {
        window.lastHeard = {};
        setInterval(() => {
          for (const rx of window.voice.pc?.getReceivers() ?? []) {
            for (const c of rx.getContributingSources()) window.lastHeard[c.source] = c.timestamp;
          }
        }, 50);
      });
    }
    const heardSince = (p, since) => p.page.evaluate(({ source, since }) => (window.lastHeard[source] ?? 0) > since, { source, since });
    const pageNow = (p) => p.page.evaluate(() => performance.timeOrigin + performance.now());

    await asker.page.click("#hand");
    await until("the asker's button says its hand is up", async () => (await asker.page.textContent("#hand")) === "Lower hand");
    const row = `#hands li[data-peer="${asker.peer}"]`;
    await until("the moderator sees the raised hand", () => mod.page.$(row));
    const promotedAt = { mod: await pageNow(mod), hearer: await pageNow(hearer) };
    await mod.page.click(`${row} button.promote`);
    await until("the hand goes down and the queue empties", async () => {
      const [button, hands] = [await asker.page.isHidden("#hand"), await mod.page.$$("#hands li")];
      return button && hands.length === 0 ? true : { notYet: true, button, hands: hands.length };
    });
    for (const [p, since] of [[mod, promotedAt.mod], [hearer, promotedAt.hearer]]) {
      await until(`${p.name} receives the promoted voice ${source}`, () => heardSince(p, since));
    }
    log(`hall: peer ${asker.peer} (worker ${workerOf(asker)}) raised its hand, was promoted by peer ${mod.peer} (worker ${workerOf(mod)}), and its voice ${source} reached the moderator and the hearer (worker ${workerOf(hearer)})`);

    await mod.page.click(`#members li[data-peer="${asker.peer}"] button.demote`);
    await until("the moderator's list shows the asker listening", async () => {
      const tags = await mod.page.textContent(`#members li[data-peer="${asker.peer}"] .tags`);
      return /^listener/.test(tags) ? tags : { notYet: true, tags };
    });
    // Packets on their way when the demotion applied may still land (and
    // reach the page's receivers late on a loaded machine: 300 ms failed
    // once at a load average of 20); after that nothing of the voice may
    // arrive for a second and a half.
    const settled = (await pageNow(hearer)) + 1000;
    await until("a quiet 1.5 s", async () => ((await pageNow(hearer)) > settled + 1500 ? true : { notYet: true }));
    if (await heardSince(hearer, settled)) throw new Error(`the hearer still receives voice ${source} after the demotion`);
    log(`hall: demoted, voice ${source} stopped reaching the hearer`);
  });

  if (process.env.SFU_FLEET) {
    const [nodeA, nodeB] = process.env.SFU_FLEET.split(" ");
    await check("fleet: a page joining through the node that does not serve the channel follows the redirect; the two pages hear each other", async () => {
      const channel = `fleet-test-${process.pid}`;
      const first = await run.openPage("fleet-a");
      await joinDemoPage(first, { base: nodeA, channel, identity: "fleet-a" });
      const second = await run.openPage("fleet-b");
      await joinDemoPage(second, { base: nodeB, channel, identity: "fleet-b" });
      const url = await second.page.evaluate(() => window.voice.url);
      const wanted = nodeA.replace(/^http/, "ws") + "/ws";
      if (url !== wanted) throw new Error(`the second page's socket is at ${url}, not ${wanted}`);
      await Promise.all([first, second].map(audioArrives));
      log(`fleet-b joined through ${nodeB} and was sent to ${url}`);
    });
  }

  if (process.env.SFU_HALL) {
    await check("hall mode: a listener page plays the speaker from 40 ms packets (25–36 a second, over 1,440 samples each: mostly two frames), hardly concealed", async () => {
      const channel = `hall-mode-${process.pid}`;
      const speaker = await run.openPage("hall-mode-speaker");
      await joinDemoPage(speaker, { base: process.env.SFU_HALL, channel, identity: "hm-speaker" });
      const listener = await run.openPage("hall-mode-listener");
      await joinDemoPage(listener, { base: process.env.SFU_HALL, channel, identity: "hm-listener", role: "listener" });
      await audioArrives(listener);
      // The busiest inbound stream, over about 4 s. The window is timed by
      // the stats' own timestamps: on a loaded machine the page's timers and
      // getStats() run late, and a timer's 4 s can be 6 s of packets.
      const busiest = async () => {
        const st = await mediaState(listener.page);
        return st.inbound.reduce((a, b) => (b.packetsReceived > (a?.packetsReceived ?? -1) ? b : a), null);
      };
      const before = await busiest();
      await new Promise((r) => setTimeout(r, 4000));
      const after = await busiest();
      const seconds = (after.timestamp - before.timestamp) / 1000;
      const packets = after.packetsReceived - before.packetsReceived;
      const samples = after.totalSamplesReceived - before.totalSamplesReceived;
      const concealed = after.concealedSamples - before.concealedSamples;
      const perSecond = packets / seconds;
      const perPacket = samples / packets;
      log(
        `hall mode: ${packets} packets in ${seconds.toFixed(2)} s (${perSecond.toFixed(1)} a second), ` +
          `${perPacket.toFixed(0)} samples a packet, ${((100 * concealed) / samples).toFixed(1)} % concealed`,
      );
      if (!(seconds > 2)) throw new Error(`the stats cover ${seconds} s`);
      // 20 ms packets come 50 a second with 960 samples each, 40 ms packets
      // 25 with 1,920. The fake microphone beeps and Opus goes quiet (DTX)
      // between beeps, so a talk spurt's odd last frame, the quiet's
      // comfort noise and frames across a change of Opus mode go alone
      // (seen: 25–28 a second, 1,690–1,920 samples): most packets must
      // carry two frames.
      if (!(perSecond >= 20 && perSecond <= 36)) throw new Error(`${perSecond.toFixed(1)} packets a second: not mostly 40 ms packets`);
      if (!(perPacket > 1440 && perPacket < 2150)) throw new Error(`${perPacket.toFixed(0)} samples per packet: not mostly 40 ms packets`);
      // A page that decoded one frame of each pair would conceal half; a
      // starved machine conceals some whatever the packets (8 % seen with
      // both cores busy).
      if (concealed > 0.15 * samples) throw new Error(`${concealed} of ${samples} samples concealed`);
      if (!(after.totalAudioEnergy > before.totalAudioEnergy)) throw new Error("no audio energy");
    });
  }

  await check("client: no uncaught errors in the pages", async () => {
    const errors = run.pages.flatMap((p) => p.errors.map((e) => `${p.name}: ${e}`));
    if (errors.length) throw new Error(errors.join("; "));
  });
} catch (e) {
  run.harnessFailed(e);
}
await run.finish();
