// Hybrid channels in Chromium (docs/HYBRID.md): against a server with
// `--hybrid --p2p-max 2` (scripts/browser-test.sh starts it), two demo pages
// talk peer-to-peer (the selected candidate pair of each page's link is the
// other page's address), a third page joins and all three move onto the SFU,
// the third leaves and the two return to P2P after the hysteresis. Each page
// plays a continuous tone as its microphone and samples every 10 ms whether
// the path it plays delivers the other page's voice; the longest gap across
// each switch must stay under 150 ms, and the page must have shown
// "Upgrading connection…". Then a Chromium and a Firefox page do the same
// across the two WebRTC stacks (timed at the Chromium page: Firefox updates
// its sources' timestamps too seldom for a 10 ms sampler).
import { joinDemoPage, until } from "./chromium.mjs";

/** Longest gap allowed at a page across a switch (ms). */
const MAX_GAP_MS = 150;

/** In-page, before the page loads: the microphone is a continuous tone of `freq` Hz. */
function toneMicrophone(freq) {
  navigator.mediaDevices.getUserMedia = async () => {
    const ctx = new AudioContext();
    const osc = ctx.createOscillator();
    osc.frequency.value = freq;
    const gain = ctx.createGain();
    gain.gain.value = 0.3;
    const dst = ctx.createMediaStreamDestination();
    osc.connect(gain).connect(dst);
    osc.start();
    await ctx.resume().catch(() => {});
    return dst.stream;
  };
}

/**
 * In-page, from now on: every 10 ms, for each other member, whether the path
 * the client plays delivered its voice in the last 60 ms (the receivers'
 * synchronization or contributing sources, with a level above silence);
 * and every text the mode line showed.
 */
function startSampler(page) {
  return page.evaluate(() => {
    const v = window.voice;
    window.hybridSamples = { heard: {}, modes: new Set(), swaps: [], mesh: {}, sfu: {} };
    const s = window.hybridSamples;
    v.addEventListener("switched", (e) => s.swaps.push([Date.now(), e.detail.mode, e.detail.complete]));
    clearInterval(window.hybridTimer);
    window.hybridTimer = setInterval(() => {
      const now = performance.timeOrigin + performance.now();
      const fresh = (c) => now - c.timestamp < 60 && (c.audioLevel ?? 1) > 0.001;
      s.modes.add(document.getElementById("mode").textContent);
      for (const m of v.members.values()) {
        if (m.peer === v.peer) continue;
        const link = v.mesh.get(m.peer);
        const onMesh = !!link?.pc?.getReceivers().some((rx) => rx.getSynchronizationSources().some(fresh));
        const onSfu = !!v.pc?.getReceivers().some((rx) => (rx.getContributingSources?.() ?? []).some((c) => c.source === m.source && fresh(c)));
        if (onMesh) (s.mesh[m.peer] ??= []).push(Date.now());
        if (onSfu) (s.sfu[m.peer] ??= []).push(Date.now());
        if (v.playing === "p2p" ? onMesh : onSfu) (s.heard[m.peer] ??= []).push(Date.now());
      }
    }, 10);
  });
}

/** In-page: the longest gap between two samples that heard `peer`, over [from, to] (ms since the epoch). */
function longestGap(page, peer, from, to, series = "heard") {
  return page.evaluate(
    ([peer, from, to, series]) => {
      const times = [from, ...(window.hybridSamples[series][peer] ?? []).filter((t) => t >= from && t <= to), to];
      let gap = 0;
      for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i] - times[i - 1]);
      return gap;
    },
    [peer, from, to, series],
  );
}

/** Where the longest gap of `peer` at `page` lies, for a failure's message. */
function gapReport(page, peer, from, to) {
  return page.evaluate(
    ([peer, from, to]) => {
      const s = window.hybridSamples;
      const times = [from, ...(s.heard[peer] ?? []).filter((t) => t >= from && t <= to), to];
      let at = 0;
      let gap = 0;
      for (let i = 1; i < times.length; i++) {
        if (times[i] - times[i - 1] > gap) [gap, at] = [times[i] - times[i - 1], times[i - 1]];
      }
      const near = (xs) => (xs ?? []).filter((t) => t >= at - 300 && t <= at + gap + 300).map((t) => t - at);
      return { gap, swaps: s.swaps.map(([t, m, c]) => [t - at, m, c]), mesh: near(s.mesh[peer]), sfu: near(s.sfu[peer]) };
    },
    [peer, from, to],
  );
}

function shownModes(page) {
  return page.evaluate(() => [...window.hybridSamples.modes]);
}

/** In-page: the mode the client plays, whether the switch is over, and its links. */
function modeOf(p) {
  return p.page.evaluate(() => ({
    playing: window.voice.playing,
    mode: window.voice.mode,
    switching: window.voice.switching !== null,
    links: window.voice.mesh.size,
    sfu: window.voice.pc !== null,
  }));
}

/** Waits until every page plays `mode` with the switch over and the old path released. */
function settledIn(pages, mode) {
  return Promise.all(
    pages.map((p) =>
      until(`${p.name} plays ${mode}`, async () => {
        const m = await modeOf(p);
        const released = mode === "sfu" ? m.links === 0 && m.sfu : !m.sfu;
        return m.playing === mode && !m.switching && released ? m : { notYet: true, ...m };
      }),
    ),
  );
}

/** In-page: the selected candidate pair of the link with `peer` (local and remote address:port). */
function linkPair(p, peer) {
  return p.page.evaluate(async (peer) => {
    const pc = window.voice.mesh.get(peer)?.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    const byId = new Map([...stats.values()].map((s) => [s.id, s]));
    const locals = [...stats.values()].filter((s) => s.type === "local-candidate").map((c) => `${c.address}:${c.port}`);
    // The selected pair: the transport's (Chromium), or the one marked
    // selected and nominated (Firefox).
    const transport = [...stats.values()].find((s) => s.type === "transport" && s.selectedCandidatePairId);
    const pair =
      byId.get(transport?.selectedCandidatePairId) ??
      [...stats.values()].find((s) => s.type === "candidate-pair" && s.selected && s.nominated);
    if (!pair) return null;
    const l = byId.get(pair.localCandidateId);
    const r = byId.get(pair.remoteCandidateId);
    return { local: `${l.address}:${l.port}`, remote: `${r.address}:${r.port}`, locals };
  }, peer);
}

/**
 * Whether two pages' links join them: each side's selected remote candidate
 * is one of the other page's own local candidates (not the server's, not
 * a relay). Two ICE stacks may report different pairs of the same link
 * (one page gathers on 127.0.0.1 and 127.0.0.2), so each side is checked
 * against the other's candidates, not against its selected one.
 */
function joinsPages(a, b) {
  // A peer-reflexive remote candidate's address is hidden in Chromium's
  // stats (":port"): its port must then be one of the other page's.
  const among = (remote, locals) =>
    locals.includes(remote) || (remote.startsWith(":") && locals.some((l) => l.endsWith(remote)));
  return !!a && !!b && among(a.remote, b.locals) && among(b.remote, a.locals);
}

/**
 * Every page of `pages` hears every other of `voices` on the path it plays
 * (samples in the last 300 ms).
 */
function allHear(pages, voices = pages) {
  return until("every page hears the others", async () => {
    const now = Date.now();
    for (const p of pages) {
      for (const o of voices) {
        if (o === p) continue;
        const gap = await longestGap(p.page, o.peer, now - 300, now);
        if (gap > 100) return { notYet: true, page: p.name, other: o.name, gap };
      }
    }
    return true;
  });
}

/**
 * The checks; `base` is the hybrid server's HTTP base. Returns the measured
 * gaps for the log.
 */
export async function checkHybrid(run, base, firefox = null) {
  const { check, log } = { check: run.check.bind(run), log: run.log.bind(run) };
  const channel = `hybrid-${process.pid}`;
  const pages = [];
  const open = async (name, freq) => {
    const p = await run.openPage(name);
    await p.page.addInitScript(toneMicrophone, freq);
    await joinDemoPage(p, { base, channel, identity: name });
    await startSampler(p.page);
    pages.push(p);
    return p;
  };

  await check("hybrid: two pages talk peer-to-peer (each link's remote candidate is the other page)", async () => {
    const [a, b] = [await open("p2p-a", 440), await open("p2p-b", 660)];
    await settledIn([a, b], "p2p");
    await allHear([a, b]);
    const [pa, pb] = await Promise.all([linkPair(a, b.peer), linkPair(b, a.peer)]);
    if (!joinsPages(pa, pb)) throw new Error(`the links do not join the pages: ${JSON.stringify({ pa, pb })}`);
    log(`hybrid: p2p-a ${pa.local} <-> p2p-b ${pb.local}`);
  });

  await check(`hybrid: a third page moves all three onto the SFU, the two hearing each other throughout (gap < ${MAX_GAP_MS} ms), "Upgrading connection…" shown`, async () => {
    const [a, b] = pages;
    const from = Date.now();
    await open("p2p-c", 880);
    await settledIn(pages, "sfu");
    await allHear(pages);
    await new Promise((r) => setTimeout(r, 500));
    const to = Date.now();
    const gaps = [await longestGap(a.page, b.peer, from, to), await longestGap(b.page, a.peer, from, to)];
    log(`hybrid: up, longest gaps ${gaps.join(", ")} ms`);
    if (Math.max(...gaps) >= MAX_GAP_MS) {
      const why = [await gapReport(a.page, b.peer, from, to), await gapReport(b.page, a.peer, from, to)];
      throw new Error(`gaps ${gaps} ms: ${JSON.stringify(why)}`);
    }
    for (const p of [a, b]) {
      const shown = await shownModes(p.page);
      if (!shown.includes("Upgrading connection…")) throw new Error(`${p.name} showed ${JSON.stringify(shown)}`);
      const status = await p.page.textContent("#status");
      if (/error/i.test(status)) throw new Error(`${p.name} shows ${status}`);
    }
  });

  await check(`hybrid: the third leaves; after the delay the two are peer-to-peer again (gap < ${MAX_GAP_MS} ms)`, async () => {
    const [a, b, c] = pages;
    const from = Date.now();
    await c.page.click("#leave");
    await settledIn([a, b], "p2p");
    await allHear([a, b]);
    await new Promise((r) => setTimeout(r, 500));
    const to = Date.now();
    const gaps = [await longestGap(a.page, b.peer, from, to), await longestGap(b.page, a.peer, from, to)];
    log(`hybrid: down, longest gaps ${gaps.join(", ")} ms`);
    if (Math.max(...gaps) >= MAX_GAP_MS) {
      const why = [await gapReport(a.page, b.peer, from, to), await gapReport(b.page, a.peer, from, to)];
      throw new Error(`gaps ${gaps} ms: ${JSON.stringify(why)}`);
    }
  });
  // Their tones would load the checks that follow.
  for (const p of pages) await p.page.close();
  if (firefox) await checkAcrossBrowsers(run, base, firefox);
}

/**
 * A Chromium page and a Firefox page (its fake microphone is a tone) talk
 * peer-to-peer, then a third page moves both onto the SFU: two WebRTC
 * stacks in one mesh and through one switch.
 */
async function checkAcrossBrowsers(run, base, firefox) {
  const channel = `hybrid-ff-${process.pid}`;
  await run.check(`hybrid: a Chromium and a Firefox page talk peer-to-peer, then move onto the SFU together (the Firefox voice at the Chromium page: gap < ${MAX_GAP_MS} ms)`, async () => {
    const open = async (name, browser, freq) => {
      const p = await run.openPage(name, {}, browser);
      if (freq) await p.page.addInitScript(toneMicrophone, freq);
      await joinDemoPage(p, { base, channel, identity: name });
      await startSampler(p.page);
      return p;
    };
    const chromiumPage = await open("p2p-chromium", run.browser, 440);
    const firefoxPage = await open("p2p-firefox", firefox);
    const pair = [chromiumPage, firefoxPage];
    await settledIn(pair, "p2p");
    // The Chromium page hears the Firefox voice over their link; then both
    // ends' stats name the link's selected pair (Firefox's a little later
    // than its audio, at times).
    await allHear([chromiumPage], pair);
    const { pc, pf } = await until("both pages' links have a selected pair", async () => {
      const [pc, pf] = await Promise.all([linkPair(chromiumPage, firefoxPage.peer), linkPair(firefoxPage, chromiumPage.peer)]);
      return pc && pf ? { pc, pf } : { notYet: true, pc, pf };
    });
    if (!joinsPages(pc, pf)) throw new Error(`the link does not join the pages: ${JSON.stringify({ pc, pf })}`);
    const from = Date.now();
    const third = await open("p2p-third", run.browser, 880);
    await settledIn([...pair, third], "sfu");
    // Firefox updates a contributing source's timestamp too seldom for a
    // 10 ms sampler: the Chromium pages time the switch (the Firefox
    // voice through it); the Firefox page must hear both others again.
    await allHear([chromiumPage, third]);
    await until("p2p-firefox hears both others on the SFU", async () => {
      const heard = await firefoxPage.page.evaluate(() => {
        const now = performance.timeOrigin + performance.now();
        const sources = new Set();
        for (const rx of window.voice.pc?.getReceivers() ?? []) {
          for (const c of rx.getContributingSources()) if (now - c.timestamp < 1000) sources.add(c.source);
        }
        return [...window.voice.members.values()].filter((m) => m.peer !== window.voice.peer && sources.has(m.source)).length;
      });
      return heard === 2 ? true : { notYet: true, heard };
    });
    await new Promise((r) => setTimeout(r, 500));
    const to = Date.now();
    const gap = await longestGap(chromiumPage.page, firefoxPage.peer, from, to);
    run.log(`hybrid: Chromium ${pc.local} <-> Firefox ${pf.local}; up, the Firefox voice at the Chromium page: longest gap ${gap} ms`);
    if (gap >= MAX_GAP_MS) {
      throw new Error(`gap ${gap} ms: ${JSON.stringify(await gapReport(chromiumPage.page, firefoxPage.peer, from, to))}`);
    }
    for (const p of [...pair, third]) await p.page.close();
  });
}
