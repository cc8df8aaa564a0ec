// What the browser tests share: the Chromium flags, the refusal to run where
// packets could leave loopback, polling with a deadline, the WebRTC state of
// a page's client, and a run of checks over pages of one or more browsers
// (Chromium through Playwright; Firefox through firefox.mjs, whose pages
// answer the same calls).
import { networkInterfaces } from "node:os";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const DEADLINE_MS = Number(process.env.DEADLINE_MS ?? 30000);

// Flags from the project's build notes: headless, no GPU/QUIC/background traffic, a
// fake microphone (a periodic beep) with the permission prompt auto-accepted,
// and loopback candidates allowed (the namespace has nothing else).
// Playwright's launch() gives the browser a fresh temporary user-data-dir.
export const ARGS = [
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

/** Exits unless every network address is a loopback one (127.0.0.0/8). */
export function refuseForeignInterfaces(script) {
  // Browsers gather ICE candidates on every interface they can see; test
  // packets must stay on loopback. Interfaces other than `lo` may exist when
  // they carry 127.0.0.0/8 addresses only (the veth pair that gives Firefox
  // a default route inside the test's namespace).
  const foreign = Object.entries(networkInterfaces()).flatMap(([name, addrs]) =>
    addrs
      .filter((a) => !a.internal && !(a.family === "IPv4" && a.address.startsWith("127.")))
      .map((a) => `${name} ${a.address}`),
  );
  if (foreign.length > 0) {
    console.error(`browser: refusing to run with non-loopback addresses (${foreign.join(", ")});`);
    console.error(`browser: use ${script}, which runs this in a namespace with loopback addresses only`);
    process.exit(2);
  }
}

/** Polls `probe` until it returns a truthy value or the deadline passes. */
export async function until(what, probe, { deadline = DEADLINE_MS, every = 100 } = {}) {
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

/**
 * In-page: the client's peer connection state, the candidate pair ICE
 * selected (addresses and candidate types), and its inbound audio.
 */
export async function mediaState(page) {
  return page.evaluate(async () => {
    const pc = window.voice?.pc;
    if (!pc) return { pc: false };
    const inbound = [];
    const stats = await pc.getStats();
    let pair = null;
    for (const s of stats.values()) {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const cp = stats.get(s.selectedCandidatePairId);
        const cand = (id) => stats.get(id) ?? {};
        if (cp) {
          const [l, r] = [cand(cp.localCandidateId), cand(cp.remoteCandidateId)];
          pair = {
            local: l.address ?? l.ip,
            remote: r.address ?? r.ip,
            localPort: l.port,
            remotePort: r.port,
            localType: l.candidateType,
            remoteType: r.candidateType,
            relayProtocol: l.relayProtocol,
            state: cp.state,
            nominated: cp.nominated,
          };
        }
      }
    }
    for (const s of stats.values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        inbound.push({
          mid: s.mid,
          timestamp: s.timestamp,
          packetsReceived: s.packetsReceived ?? 0,
          totalAudioEnergy: s.totalAudioEnergy ?? 0,
          audioLevel: s.audioLevel ?? 0,
          totalSamplesReceived: s.totalSamplesReceived ?? 0,
          concealedSamples: s.concealedSamples ?? 0,
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

/**
 * One test run: its browsers (the first is Chromium), their pages, named
 * checks with their results, a diagnosis of every page when a check fails,
 * and a clean stop on SIGINT/SIGTERM (Playwright's own handlers would close
 * the browser but leave this process running into failing checks).
 */
export class BrowserRun {
  constructor({ verbose = process.env.VERBOSE === "1" } = {}) {
    this.t0 = Date.now();
    this.verbose = verbose;
    this.results = [];
    this.pages = []; // {page, name, browser, logs, errors, peer}
    this.browser = null;
    this.browsers = [];
    this.interrupted = false;
    for (const sig of ["SIGINT", "SIGTERM"]) {
      process.on(sig, async () => {
        this.interrupted = true;
        console.log(`browser: interrupted (${sig})`);
        await this.closeBrowsers();
        process.exit(130);
      });
    }
  }

  async closeBrowsers() {
    await Promise.all(this.browsers.map((b) => b.close().catch(() => {})));
  }

  log(...a) {
    console.log(`[${((Date.now() - this.t0) / 1000).toFixed(1)}s]`, ...a);
  }

  /** Starts Chromium with the common flags and `extra`. */
  async launch(chromium, extra = []) {
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [...ARGS, ...extra],
      handleSIGINT: false,
      handleSIGTERM: false,
    });
    this.browsers.push(this.browser);
    return this.browser;
  }

  /** Adds a browser started elsewhere (firefox.mjs); closed with the run. */
  adopt(browser) {
    this.browsers.push(browser);
    return browser;
  }

  /**
   * A page in a context of its own (separate storage, like separate people),
   * in `browser` (default: the Chromium of `launch`).
   */
  async openPage(name, contextOptions = {}, browser = this.browser) {
    const context = await browser.newContext(contextOptions);
    const page = await context.newPage();
    const p = { page, name, browser: browser.kind ?? "chromium", logs: [], errors: [], peer: null };
    page.on("console", (m) => {
      const line = `${p.name} console.${m.type()}: ${m.text()}`;
      p.logs.push(line);
      if (this.verbose) this.log(line);
    });
    page.on("pageerror", (e) => {
      p.logs.push(`${p.name} pageerror: ${e.message}`);
      p.errors.push(e.message);
    });
    this.pages.push(p);
    return p;
  }

  /** Runs one named check; a failure is recorded and every page diagnosed. */
  async check(name, fn) {
    const start = Date.now();
    try {
      await fn();
      this.results.push({ name, ok: true });
      this.log(`PASS ${name} (${Date.now() - start} ms)`);
    } catch (e) {
      if (this.interrupted) return;
      this.results.push({ name, ok: false, why: e.message });
      this.log(`FAIL ${name}: ${e.message}`);
      await this.diagnose();
    }
  }

  async diagnose() {
    for (const p of this.pages) {
      try {
        const st = await mediaState(p.page);
        const sdp = await p.page.evaluate(() => ({
          local: window.voice?.pc?.localDescription?.sdp,
          remote: window.voice?.pc?.remoteDescription?.sdp,
        }));
        const status = await p.page.textContent("#status").catch(() => null);
        console.log(`--- ${p.name}: status ${JSON.stringify(status)}; media ${JSON.stringify(st)}`);
        console.log(`--- ${p.name}: local SDP\n${sdp.local ?? "(none)"}`);
        console.log(`--- ${p.name}: remote SDP\n${sdp.remote ?? "(none)"}`);
      } catch (e) {
        console.log(`--- ${p.name}: cannot inspect: ${e.message}`);
      }
      console.log(`--- ${p.name}: console\n${p.logs.slice(-40).join("\n")}`);
    }
  }

  /** Records an error outside the checks (the harness itself failed). */
  harnessFailed(e) {
    this.results.push({ name: "harness", ok: false, why: String(e?.message ?? e) });
    this.log(`FAIL harness: ${e.stack ?? e}`);
  }

  /** Closes the browser, prints the tally and exits (0: all passed). */
  async finish() {
    await this.closeBrowsers();
    const passed = this.results.filter((r) => r.ok).length;
    const failed = this.results.length - passed;
    // Again after the pages' diagnoses, so that the end of a long log says
    // which checks failed and why.
    for (const r of this.results.filter((r) => !r.ok)) console.log(`browser: FAILED ${r.name}: ${r.why}`);
    console.log(`browser: ${passed} passed, ${failed} failed`);
    process.exit(this.interrupted ? 130 : failed === 0 && passed > 0 ? 0 : 1);
  }
}

/** Joins `channel` through the demo page at `base`; resolves with the peer id. */
export async function joinDemoPage(p, { base, channel, identity, role = "speaker" }) {
  await p.page.goto(base + "/");
  await p.page.fill("#channel", channel);
  await p.page.fill("#identity", identity);
  await p.page.selectOption("#role", role);
  await p.page.click("#join");
  p.peer = await until(`${p.name} joined`, async () => {
    const status = await p.page.textContent("#status");
    if (/fail|error/i.test(status)) throw new Error(`status: ${status}`);
    return p.page.evaluate(
      () => window.voice.peer ?? { notYet: true, status: document.getElementById("status").textContent },
    );
  });
  return p.peer;
}

/** Waits until the page's ICE and DTLS are connected with a selected pair. */
export function mediaConnected(p) {
  return until(`${p.name} ICE connected`, async () => {
    const st = await mediaState(p.page);
    return ["connected", "completed"].includes(st.ice) && st.conn === "connected" && st.pair
      ? st
      : { notYet: true, ...st };
  });
}

/** Waits until one of the page's slots received audio with energy in it. */
export function audioArrives(p) {
  return until(`${p.name} inbound audio`, async () => {
    const st = await mediaState(p.page);
    const good = st.inbound?.find((s) => s.packetsReceived > 50 && s.totalAudioEnergy > 0);
    return good ?? { notYet: true, ...st };
  });
}
