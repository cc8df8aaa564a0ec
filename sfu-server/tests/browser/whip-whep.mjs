// WHIP and WHEP from a browser page, as a standard client would do them: one
// offer POSTed as application/sdp, the answer applied, no trickle. The peer
// connection is left at window.voice.pc, where the shared helpers
// (chromium.mjs: mediaState, mediaConnected, audioArrives, diagnose) look.

/** Publishes the page's (fake) microphone to `url` (…/whip/{channel}). */
export function whipPublish(p, url) {
  return p.page.evaluate(async (url) => {
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    const pc = new RTCPeerConnection();
    pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendonly", streams: [mic] });
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
    const body = await r.text();
    if (r.status !== 201) throw new Error(`POST ${url}: ${r.status} ${body}`);
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    window.voice = { pc, mic, resource: r.headers.get("Location") };
    return window.voice.resource;
  }, url);
}

/**
 * Listens at `url` (…/whep/{channel}) with `slots` recvonly audio m-lines,
 * and from then on records every contributing source (CSRC: the server's
 * id of the voice in a slot) the page's receivers report, in
 * window.heardSources.
 */
export function whepListen(p, url, slots) {
  return p.page.evaluate(
    async ({ url, slots }) => {
      const pc = new RTCPeerConnection();
      for (let i = 0; i < slots; i++) pc.addTransceiver("audio", { direction: "recvonly" });
      // Played as a page would (autoplay is allowed in the test browsers).
      pc.ontrack = (e) => {
        const a = new Audio();
        a.srcObject = new MediaStream([e.track]);
        a.play().catch(() => {});
      };
      await pc.setLocalDescription(await pc.createOffer());
      const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
      const body = await r.text();
      if (r.status !== 201) throw new Error(`POST ${url}: ${r.status} ${body}`);
      await pc.setRemoteDescription({ type: "answer", sdp: body });
      window.voice = { pc, resource: r.headers.get("Location") };
      window.heardSources = [];
      // getContributingSources() remembers the last 10 s; polling often
      // enough keeps every voice a slot carried.
      setInterval(() => {
        for (const rx of pc.getReceivers()) {
          for (const c of rx.getContributingSources()) {
            if (!window.heardSources.includes(c.source)) window.heardSources.push(c.source);
          }
        }
      }, 200);
      return window.voice.resource;
    },
    { url, slots },
  );
}

/** The voices (CSRCs) a WHEP page has received so far. */
export function heardSources(p) {
  return p.page.evaluate(() => window.heardSources ?? []);
}

/** The audio codecs the server's answer gave the page (e.g. ["opus", "red"]). */
export function answerCodecs(p) {
  return p.page.evaluate(() => {
    const sdp = window.voice?.pc?.remoteDescription?.sdp ?? "";
    return [...new Set([...sdp.matchAll(/^a=rtpmap:\d+ ([\w-]+)\/48000/gm)].map((m) => m[1].toLowerCase()))].sort();
  });
}

/** Payload bytes per packet of each inbound audio stream that received any. */
export function payloadSizes(p) {
  return p.page.evaluate(async () => {
    const out = [];
    for (const s of (await window.voice.pc.getStats()).values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio" && s.packetsReceived > 0) {
        out.push(Math.round(s.bytesReceived / s.packetsReceived));
      }
    }
    return out.sort((a, b) => a - b);
  });
}
