// Real-browser test of the demo page (sfu-server/web/index.html) and the
// client module (sfu-client.js) against a running sfu-server.
//
// Run by scripts/browser-test.sh, which starts the server and this test in a
// network namespace that has only `lo` (test packets stay on loopback).
// Environment:
//   SFU_URL      the server's HTTP base (default http://127.0.0.1:18080)
//   CHROMIUM     the browser binary (default /usr/bin/chromium; never downloaded)
//   SCREENSHOT   where to save a screenshot (default <repo>/target/browser-test.png)
//   PAGES        how many browser pages join (default 3)
//   DEADLINE_MS  per-check deadline (default 30000)
//   VERBOSE=1    echo the pages' console as it happens
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.SFU_URL ?? "http://127.0.0.1:18080";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOT = process.env.SCREENSHOT ?? resolve(here, "../../../target/browser-test.png");
const PAGES = Number(process.env.PAGES ?? 3);
const DEADLINE_MS = Number(process.env.DEADLINE_MS ?? 30000);
const VERBOSE = process.env.VERBOSE === "1";
const CHANNEL = `browser-test-${process.pid}`;

// Flags from the project's build notes: headless, no GPU/QUIC/background traffic, a
// fake microphone (a periodic beep) with the permission prompt auto-accepted,
// and loopback candidates allowed (the namespace has nothing else).
// Playwright's launch() gives the browser a fresh temporary user-data-dir.
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection",
];

// Chromium gathers ICE candidates on every interface it can see; test
// packets must stay on loopback, so refuse to run where there is any other.
const foreign = Object.entries(networkInterfaces())
  .flatMap(([name, addrs]) => addrs.filter((a) => !a.internal).map((a) => `${name} ${a.address}`));
if (foreign.length > 0) {
  console.error(`browser: refusing to run with non-loopback interfaces (${foreign.join(", ")});`);
  console.error("browser: use scripts/browser-test.sh, which runs this in a namespace with only lo");
  process.exit(2);
}

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

/** Polls `probe` until it returns a truthy value or the deadline passes. */
async function until(what, probe, { deadline = DEADLINE_MS, every = 100 } = {}) {
  const end = Date.now() + deadline;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last && !last.notYet) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      const why = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`${what}: not within ${deadline} ms (last: ${why})`);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

/** In-page: the client's peer connection state and its inbound audio. */
async function mediaState(page) {
  return page.evaluate(async () => {
    const pc = window.voice?.pc;
    if (!pc) return { pc: false };
    const inbound = [];
    const stats = await pc.getStats();
    // The addresses ICE settled on (both must be loopback).
    let pair = null;
    for (const s of stats.values()) {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const cp = stats.get(s.selectedCandidatePairId);
        const addr = (id) => stats.get(id)?.address ?? stats.get(id)?.ip;
        if (cp) pair = { local: addr(cp.localCandidateId), remote: addr(cp.remoteCandidateId) };
      }
    }
    for (const s of stats.values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        inbound.push({
          mid: s.mid,
          packetsReceived: s.packetsReceived ?? 0,
          totalAudioEnergy: s.totalAudioEnergy ?? 0,
          audioLevel: s.audioLevel ?? 0,
        });
      }
    }
    return {
      pc: true,
      ice: pc.iceConnectionState,
      conn: pc.connectionState,
      pair,
      inbound,
    };
  });
}

/** In-page: the member list as rendered (peer ids from data-peer). */
function renderedPeers(page) {
  return page.$$eval("#members li[data-peer]", (lis) => lis.map((li) => Number(li.dataset.peer)));
}

const results = [];
async function check(name, fn) {
  const start = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    log(`PASS ${name} (${Date.now() - start} ms)`);
  } catch (e) {
    if (interrupted) return;
    results.push({ name, ok: false });
    log(`FAIL ${name}: ${e.message}`);
    await diagnose();
  }
}

const pages = []; // {page, name, logs, peer}

async function diagnose() {
  for (const p of pages) {
    try {
      const st = await mediaState(p.page);
      const sdp = await p.page.evaluate(() => ({
        local: window.voice?.pc?.localDescription?.sdp,
        remote: window.voice?.pc?.remoteDescription?.sdp,
      }));
      const status = await p.page.textContent("#status");
      console.log(`--- ${p.name}: status ${JSON.stringify(status)}; media ${JSON.stringify(st)}`);
      console.log(`--- ${p.name}: local SDP\n${sdp.local ?? "(none)"}`);
      console.log(`--- ${p.name}: remote SDP\n${sdp.remote ?? "(none)"}`);
    } catch (e) {
      console.log(`--- ${p.name}: cannot inspect: ${e.message}`);
    }
    console.log(`--- ${p.name}: console\n${p.logs.slice(-40).join("\n")}`);
  }
}

let browser;
let interrupted = false;
// Stop at once when the script is interrupted or times out: close the browser
// and exit (Playwright's own handlers would close the browser but leave this
// process running into failing checks).
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    interrupted = true;
    console.log(`browser: interrupted (${sig})`);
    await browser?.close().catch(() => {});
    process.exit(130);
  });
}
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    handleSIGINT: false,
    handleSIGTERM: false,
  });
  log(`chromium ${browser.version()}; ${PAGES} pages join channel ${CHANNEL} at ${BASE}`);

  await check(`join: ${PAGES} pages join ${CHANNEL}`, async () => {
    for (let i = 0; i < PAGES; i++) {
      // One context per page: separate storage, like separate people.
      const context = await browser.newContext();
      const page = await context.newPage();
      const p = { page, name: `page${i}`, logs: [], errors: [], peer: null };
      page.on("console", (m) => {
        const line = `${p.name} console.${m.type()}: ${m.text()}`;
        p.logs.push(line);
        if (VERBOSE) log(line);
      });
      page.on("pageerror", (e) => {
        p.logs.push(`${p.name} pageerror: ${e.message}`);
        p.errors.push(e.message);
      });
      pages.push(p);
      // Record whether the page ever shows someone speaking: the fake beep is
      // short, so a poll could fall between two beeps.
      await page.addInitScript(() => {
        window.sawSpeaking = [];
        new MutationObserver(() => {
          for (const li of document.querySelectorAll("#members li.speaking")) {
            const peer = Number(li.dataset.peer);
            if (!window.sawSpeaking.includes(peer)) window.sawSpeaking.push(peer);
          }
        }).observe(document, { subtree: true, attributes: true, attributeFilter: ["class"], childList: true });
      });
      await page.goto(BASE + "/");
      await page.fill("#channel", CHANNEL);
      await page.fill("#identity", `user-${i}`);
      await page.selectOption("#role", "speaker");
      await page.click("#join");
      p.peer = await until(`${p.name} joined`, async () => {
        const status = await page.textContent("#status");
        if (/fail|error/i.test(status)) throw new Error(`status: ${status}`);
        return page.evaluate(() => window.voice.peer ?? { notYet: true, status: document.getElementById("status").textContent });
      });
      log(`${p.name} joined as peer ${p.peer}`);
    }
    await Promise.all(
      pages.map((p) =>
        until(`${p.name} ICE connected`, async () => {
          const st = await mediaState(p.page);
          return ["connected", "completed"].includes(st.ice) && st.conn === "connected" && st.pair
            ? st
            : { notYet: true, ...st };
        }).then((st) => {
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
        until(`${p.name} inbound audio`, async () => {
          const st = await mediaState(p.page);
          const good = st.inbound?.find((s) => s.packetsReceived > 50 && s.totalAudioEnergy > 0);
          return good ?? { notYet: true, ...st };
        }).then((s) => log(`${p.name} inbound mid ${s.mid}: ${s.packetsReceived} packets, energy ${s.totalAudioEnergy.toFixed(4)}`)),
      ),
    );
  });

  await check("send path: the server sealed every page's audio itself (direct SRTP, no str0m fallback)", async () => {
    const text = await (await fetch(BASE + "/metrics")).text();
    const value = (path) => {
      const m = text.match(new RegExp(`^sfu_peers_send_path_total\\{path="${path}"\\} (\\d+)$`, "m"));
      if (!m) throw new Error(`no sfu_peers_send_path_total{path="${path}"} in /metrics`);
      return Number(m[1]);
    };
    const [direct, str0m] = [value("direct"), value("str0m")];
    log(`send path: direct ${direct}, str0m ${str0m}`);
    if (direct < PAGES || str0m !== 0) throw new Error(`direct ${direct}, str0m ${str0m}; want ${PAGES} and 0`);
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

  await check("client: no uncaught errors in the pages", async () => {
    const errors = pages.flatMap((p) => p.errors.map((e) => `${p.name}: ${e}`));
    if (errors.length) throw new Error(errors.join("; "));
  });
} catch (e) {
  results.push({ name: "harness", ok: false });
  log(`FAIL harness: ${e.stack ?? e}`);
} finally {
  await browser?.close().catch(() => {});
}

const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(interrupted ? 130 : failed === 0 && passed > 0 ? 0 : 1);
