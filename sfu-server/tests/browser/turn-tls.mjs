// TURN and TLS with a real browser: two pages join over HTTPS and WSS at a
// name that is not localhost (so only TLS makes them a secure context and
// gives them the microphone), with iceTransportPolicy "relay", so that their
// media can only flow through the TURN server, using the credentials the
// server handed them. Then: credentials past their expiry are refused by the
// TURN server.
//
// Run by scripts/ops-test.sh in a network namespace that has only `lo`,
// with coturn (use-auth-secret) and two sfu-servers in it.
// Environment:
//   SFU_URL        the HTTPS server (https://sfu.test:18443; the browser maps
//                  sfu.test to 127.0.0.1)
//   SPKI           base64 SHA-256 of the test certificate's public key: the
//                  one certificate Chromium accepts without a CA
//   SHORT_TTL_URL  a server whose TURN credentials live 3 s
//   DEADLINE_MS    per-check deadline (default 30000); VERBOSE=1
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { audioArrives, BrowserRun, joinDemoPage, mediaConnected, refuseForeignInterfaces, until } from "./chromium.mjs";

const SFU = process.env.SFU_URL;
const SPKI = process.env.SPKI;
const SHORT_TTL_URL = process.env.SHORT_TTL_URL;
if (!SFU || !SPKI || !SHORT_TTL_URL) {
  console.error("turn-tls: set SFU_URL, SPKI and SHORT_TTL_URL (scripts/ops-test.sh does)");
  process.exit(2);
}
const HOST = new URL(SFU).hostname;
const CHANNEL = `turn-tls-${process.pid}`;

refuseForeignInterfaces("scripts/ops-test.sh");

const run = new BrowserRun();
const log = run.log.bind(run);
const check = run.check.bind(run);

// Every RTCPeerConnection the pages make is relay-only; the configuration
// the page asked for (the ICE servers from the server's `authorized`) is kept for
// the checks. The client code itself is untouched.
function relayOnly() {
  const Native = window.RTCPeerConnection;
  window.iceConfigs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(config = {}) {
      window.iceConfigs.push(JSON.parse(JSON.stringify(config)));
      super({ ...config, iceTransportPolicy: "relay" });
    }
  };
}

// In-page: gathers candidates with one TURN server, relay only; returns the
// relay candidates and the candidate errors (STUN error codes).
async function gatherRelay(server) {
  const pc = new RTCPeerConnection({ iceServers: [server] });
  const relays = [];
  const errors = [];
  pc.onicecandidate = (e) => e.candidate?.type === "relay" && relays.push(`${e.candidate.address}:${e.candidate.port}`);
  pc.onicecandidateerror = (e) => errors.push({ code: e.errorCode, text: e.errorText, url: e.url });
  pc.createDataChannel("probe");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    const check = () => pc.iceGatheringState === "complete" && done();
    pc.onicegatheringstatechange = check;
    check();
    setTimeout(done, 15000);
  });
  pc.close();
  return { relays, errors };
}

try {
  const browser = await run.launch(chromium, [
    `--host-resolver-rules=MAP ${HOST} 127.0.0.1`,
    `--ignore-certificate-errors-spki-list=${SPKI}`,
  ]);
  log(`chromium ${browser.version()}; ${SFU}, channel ${CHANNEL}`);

  await check("control: a plain-HTTP page at the same name gets no microphone", async () => {
    const plain = createServer((_, res) => res.end("<!doctype html><title>plain</title>"));
    await new Promise((r) => plain.listen(0, "127.0.0.1", r));
    const p = await run.openPage("plain");
    await p.page.goto(`http://${HOST}:${plain.address().port}/`);
    const seen = await p.page.evaluate(() => ({ secure: isSecureContext, mic: !!navigator.mediaDevices?.getUserMedia }));
    plain.close();
    await p.page.close();
    run.pages.splice(run.pages.indexOf(p), 1);
    if (seen.secure || seen.mic) throw new Error(`http://${HOST} was a secure context: ${JSON.stringify(seen)}`);
  });

  const talkers = [];
  await check("TLS: two pages join over HTTPS and WSS; the microphone works", async () => {
    for (const name of ["alice", "bob"]) {
      const p = await run.openPage(name);
      await p.page.addInitScript(relayOnly);
      await joinDemoPage(p, { base: SFU, channel: CHANNEL, identity: name });
      const page = await p.page.evaluate(() => ({
        secure: isSecureContext,
        ws: window.voice.url,
        mic: window.voice.mic?.getAudioTracks()[0]?.readyState,
      }));
      if (!page.secure || !page.ws.startsWith(`wss://${HOST}`) || page.mic !== "live") {
        throw new Error(`${name}: ${JSON.stringify(page)}`);
      }
      log(`${name} joined as peer ${p.peer} over ${page.ws}, microphone ${page.mic}`);
      talkers.push(p);
    }
  });

  await check("TURN: the pages use the server's credentials and connect through a relay candidate", async () => {
    if (talkers.length !== 2) throw new Error("the pages did not join");
    for (const p of talkers) {
      const [config] = await p.page.evaluate(() => window.iceConfigs);
      const turn = config.iceServers.find((s) => s.urls.some((u) => u.startsWith("turn:")));
      // coturn REST username: "<expiry unix seconds>:<identity>", handed
      // out with `authorized`, after the server checked who asks.
      const [expiry, who] = (turn?.username ?? "").split(":");
      if (!turn || !(Number(expiry) > Date.now() / 1000) || !turn.credential || who !== p.name) {
        throw new Error(`${p.name}: no TURN credentials for ${p.name} from the server: ${JSON.stringify(config)}`);
      }
      await mediaConnected(p);
      // The selected pair is a nominated UDP relay one. Its state reads
      // "in-progress" for a moment while a consent check is out (seen
      // once, with a pair that had carried audio), so it is polled.
      const pair = await until(`${p.name}: the selected pair is a nominated, succeeded UDP relay one`, async () => {
        const { pair } = await mediaConnected(p);
        const ok = pair?.localType === "relay" && pair.relayProtocol === "udp" && pair.state === "succeeded" && pair.nominated;
        return ok ? pair : { notYet: true, ...pair };
      }, { deadline: 5000 });
      // coturn allocates relay ports 49160-49200 (ops-test.sh); the server's
      // own candidate is its host address.
      if (pair.localPort < 49160 || pair.localPort > 49200 || pair.remoteType !== "host") {
        throw new Error(`${p.name}: unexpected pair ${JSON.stringify(pair)}`);
      }
      log(`${p.name}: ${pair.localType} ${pair.local}:${pair.localPort} -> ${pair.remoteType} ${pair.remote}:${pair.remotePort}`);
    }
  });

  await check("audio: each page hears the other through coturn", async () => {
    await Promise.all(
      talkers.map((p) =>
        audioArrives(p).then((s) =>
          log(`${p.name} hears mid ${s.mid}: ${s.packetsReceived} packets, energy ${s.totalAudioEnergy.toFixed(4)}`),
        ),
      ),
    );
  });

  await check("expiry: coturn relays with fresh credentials and refuses them once expired", async () => {
    const p = await run.openPage("expiry");
    await p.page.goto(`${SHORT_TTL_URL}/`);
    // The first message (hello) carries no TURN credentials; an
    // `authorize` (development mode: no token needed) gets them.
    const [hello, authorized] = await p.page.evaluate(
      ([url, channel]) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url.replace(/^http/, "ws") + "/ws");
          const seen = [];
          ws.onmessage = (e) => {
            const m = JSON.parse(e.data);
            seen.push(m);
            if (m.type === "hello") ws.send(JSON.stringify({ type: "authorize", channel, identity: "expiry" }));
            else {
              resolve(seen);
              ws.close();
            }
          };
          ws.onerror = () => reject(new Error("no WebSocket"));
        }),
      [SHORT_TTL_URL, CHANNEL],
    );
    if (JSON.stringify(hello).includes("credential")) throw new Error(`hello carries credentials: ${JSON.stringify(hello)}`);
    const turn = authorized.ice_servers?.find((s) => s.urls.some((u) => u.startsWith("turn:")));
    if (!turn) throw new Error(`no TURN server in ${JSON.stringify(authorized)}`);
    const expiry = Number(turn.username.split(":")[0]);
    const fresh = await p.page.evaluate(gatherRelay, turn);
    if (Date.now() / 1000 >= expiry) throw new Error("the fresh gathering outlived the 3 s credentials; inconclusive");
    if (fresh.relays.length === 0) throw new Error(`fresh credentials got no relay: ${JSON.stringify(fresh)}`);
    log(`fresh credentials (${turn.username}): relay ${fresh.relays[0]}`);
    // coturn compares the username's expiry with its clock in whole seconds.
    await until("the credentials expired", () => Date.now() / 1000 > expiry + 1, { every: 200, deadline: 10000 });
    const stale = await p.page.evaluate(gatherRelay, turn);
    log(`expired credentials: ${stale.relays.length} relays, errors ${JSON.stringify(stale.errors)}`);
    if (stale.relays.length > 0) throw new Error(`coturn relayed with expired credentials: ${stale.relays}`);
    if (!stale.errors.some((e) => e.code === 401)) throw new Error(`no 401 from coturn: ${JSON.stringify(stale.errors)}`);
  });
} catch (e) {
  run.harnessFailed(e);
}
await run.finish();
