// Browser client for the voice SFU's WebSocket room protocol (docs/PROTOCOL.md).
// Dependency-free ES module: `import { VoiceClient } from "/sfu-client.js"`.
//
//   const voice = new VoiceClient();
//   voice.addEventListener("members", (e) => render(e.detail));
//   await voice.join({ channel: "lobby", identity: "alice" });
//
// Events (CustomEvent, payload in `detail`):
//   grants   {can_publish, can_subscribe, can_moderate}  what the token allows
//                                              (from `authorized`, before the offer)
//   state    "connecting" | "connected" | "disconnected" | "failed" | "closed"
//                                              the media connection's state
//   joined   {peer, source, slots, members}   the join succeeded
//   members  [member, ...]                     the member list changed (large
//                                              channels list speakers only)
//   member_count  n                            members in the channel, listed or not
//   speakers [peer, ...]                       active speakers, loudest first
//   dominant peer | null                       the dominant speaker changed
//   slot     {slot, mid, peer, source}         whose voice plays in a slot
//   connected                                   media (ICE + DTLS) is up
//   levels   [{peer, source, level}, ...]       voices heard in the last second
//                                              and their audio level (0..1, from
//                                              the receivers' contributing sources;
//                                              peer null for other nodes' voices)
//   hand     {raised}                           our own hand went up or down
//   hands    [{peer, identity}, ...]            raised hands, oldest first
//                                              (moderators only)
//   error    {code, message, request}          a refusal from the server
//   shutdown {reason, deadline_ms}             the server drains; we leave
//   left     {reason, message}                 no longer in the channel: "left"
//            (leave()), "shutdown", "expired" (the token expired),
//            "disconnected" (socket lost), or the server's member_left
//            reason ("timeout", "failed", "kicked" with the moderator's
//            words in `message`, ...)

/** Receive slots offered: the server's default `slots`. It may grant fewer. */
const DEFAULT_SLOTS = 3;

/** How often the voices' levels are read from the receivers (ms). */
const LEVEL_INTERVAL_MS = 150;

export class VoiceClient extends EventTarget {
  /**
   * @param {{url?: string, slots?: number}} [opts] `url` defaults to /ws on
   *   the page's own host (wss on https pages).
   */
  constructor({ url, slots = DEFAULT_SLOTS } = {}) {
    super();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = url ?? `${proto}//${location.host}/ws`;
    this.slotCount = slots;
    this.ws = null;
    /** @type {RTCPeerConnection|null} exposed for diagnostics and tests */
    this.pc = null;
    this.mic = null; // MediaStream from getUserMedia
    this.peer = null; // our peer id once joined
    this.members = new Map(); // peer id -> member object
    this.speakers = [];
    this.dominant = null;
    this.micMuted = false;
    this.audio = []; // <audio> elements we created
    this.joining = false;
    this.grants = null; // from `authorized`
    this.handRaised = false;
    this.hands = []; // raised hands, when we moderate
    this.levelTimer = null;
  }

  /** Whether we offered a microphone line (and so may be promoted). */
  get hasMic() {
    return this.mic !== null;
  }

  get joined() {
    return this.peer !== null;
  }

  /**
   * Joins a channel. Resolves with the `joined` message; rejects on refusal.
   *
   * Three steps on one socket: `authorize` with the token (the server
   * answers with the ICE servers, TURN credentials included, for token
   * holders only), the offer made with those servers, then `join`.
   */
  async join({ channel, token, identity, role = "speaker", mic = role !== "listener" }) {
    if (this.ws || this.joining) throw new Error("already joined or joining: leave first");
    this.joining = true;
    try {
      // The microphone before the socket: a permission prompt may take a
      // while, and the server closes sessions that do not join in time.
      // A listener who may want the stage (raise a hand, be promoted)
      // offers it too (`mic: true`): the server routes nothing from it
      // until a moderator promotes it.
      if (mic) {
        this.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      }
      const ws = (this.ws = new WebSocket(this.url));
      // The server's first message, `hello`, says the socket is ready.
      await new Promise((resolve, reject) => {
        ws.onmessage = (ev) => {
          try {
            if (JSON.parse(ev.data).type === "hello") resolve();
          } catch {
            reject(new Error("the server sent something that is not JSON"));
          }
        };
        ws.onerror = () => reject(new Error(`cannot connect to ${this.url}`));
        ws.onclose = () => reject(new Error(`${this.url} closed before its hello`));
      });
      // From here on socket problems surface as a `left` event.
      ws.onerror = null;
      ws.onclose = () => this.#teardown("disconnected");

      const ask = { type: "authorize", channel };
      if (token) ask.token = token;
      if (role) ask.role = role;
      if (identity) ask.identity = identity;
      const authorized = await this.#request(ask, "authorized", "authorize");
      this.grants = {
        can_publish: authorized.can_publish,
        can_subscribe: authorized.can_subscribe,
        can_moderate: authorized.can_moderate,
      };
      this.#emit("grants", this.grants);

      const pc = (this.pc = new RTCPeerConnection({ iceServers: authorized.ice_servers ?? [] }));
      this.#emit("state", "connecting");
      pc.onconnectionstatechange = () => {
        if (pc.connectionState !== "new") this.#emit("state", pc.connectionState);
      };
      if (this.mic) {
        const track = this.mic.getAudioTracks()[0];
        track.enabled = !this.micMuted;
        // First m-line: our voice. The server takes the first m-line it can
        // receive on as the microphone, so it must come before the slots.
        pc.addTransceiver(track, { direction: "sendonly", streams: [this.mic] });
      }
      // A listener without `mic` offers no mic m-line at all (and is never
      // asked for the microphone): a moderator's promotion is then refused
      // (`cannot_speak`) and it must join again with one.
      // One recvonly m-line per slot: the server rewrites whichever voices it
      // selects into these fixed streams, so no renegotiation ever happens.
      for (let i = 0; i < this.slotCount; i++) {
        pc.addTransceiver("audio", { direction: "recvonly" });
      }
      pc.ontrack = (e) => this.#play(e.track);

      // No need to wait for ICE gathering: the server is ICE-lite and learns
      // our address from our connectivity checks, so the offer may carry no
      // candidates at all (and trickled ones are simply not sent).
      await pc.setLocalDescription(await pc.createOffer());
      // The token was shown with `authorize`; the join refers to it.
      const msg = { type: "join", channel, offer: pc.localDescription.sdp };
      if (role) msg.role = role;

      const reply = await this.#request(msg, "joined", "join");
      await pc.setRemoteDescription({ type: "answer", sdp: reply.answer });
      this.levelTimer = setInterval(() => this.#readLevels(), LEVEL_INTERVAL_MS);
      return reply;
    } catch (err) {
      this.#teardown(null);
      throw err;
    } finally {
      this.joining = false;
    }
  }

  /** Leaves the channel and releases the microphone. */
  leave() {
    this.#leave("left");
  }

  #leave(reason) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      // Closing the socket alone would also make the server remove us; the
      // explicit `leave` says it was on purpose and arrives first.
      this.ws.send(JSON.stringify({ type: "leave" }));
    }
    this.#teardown(reason);
  }

  /** Local mute: the mic track is disabled (the browser then sends silence). */
  setMicMuted(muted) {
    this.micMuted = !!muted;
    for (const t of this.mic?.getAudioTracks() ?? []) t.enabled = !this.micMuted;
  }

  /**
   * Server-side moderation (needs the `can_moderate` grant): `action` is
   * "mute", "unmute", "set_role" (with `role`), "promote", "demote" or
   * "kick" (with an optional `reason`).
   */
  moderate(action, peer, { role, reason } = {}) {
    const msg = { type: "moderate", action, peer };
    if (role) msg.role = role;
    if (reason) msg.reason = reason;
    this.#send(msg);
  }

  /** Asks to speak (listeners); the `hand` event confirms it. */
  raiseHand() {
    this.#send({ type: "raise_hand" });
  }

  /** Withdraws the request to speak. */
  lowerHand() {
    this.#send({ type: "lower_hand" });
  }

  /** Moderators: let `peer` speak (its hand goes down). */
  promote(peer) {
    this.moderate("promote", peer);
  }

  /** Moderators: make `peer` a listener again. */
  demote(peer) {
    this.moderate("demote", peer);
  }

  /** Moderators: remove `peer` from the channel, telling it `reason`. */
  kick(peer, reason) {
    this.moderate("kick", peer, { reason });
  }

  /**
   * Reads the level of every voice the slots carried in the last second:
   * the server names each voice by its CSRC (a member's `source`).
   */
  #readLevels() {
    if (!this.pc) return;
    const bySource = new Map([...this.members.values()].map((m) => [m.source, m.peer]));
    const now = performance.timeOrigin + performance.now();
    const levels = [];
    for (const rx of this.pc.getReceivers()) {
      for (const c of rx.getContributingSources?.() ?? []) {
        if (now - c.timestamp > 1000) continue;
        levels.push({ peer: bySource.get(c.source) ?? null, source: c.source, level: c.audioLevel ?? 0 });
      }
    }
    this.#emit("levels", levels);
  }

  #send(msg) {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new Error("not connected");
    this.ws.send(JSON.stringify(msg));
  }

  /** Sends `msg` and waits for the reply of type `ok` or an error for `request`. */
  #request(msg, ok, request) {
    return new Promise((resolve, reject) => {
      this.ws.onmessage = (ev) => {
        let m;
        try {
          m = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (m.type === ok) {
          this.ws.onmessage = (e) => this.#onMessage(e);
          this.#onMessage(ev);
          resolve(m);
        } else if (m.type === "error" && m.request === request) {
          reject(Object.assign(new Error(m.message), { code: m.code }));
        } else {
          this.#onMessage(ev);
        }
      };
      this.ws.onclose = () => reject(new Error("the server closed the connection"));
      this.#send(msg);
    }).finally(() => {
      if (this.ws) this.ws.onclose = () => this.#teardown("disconnected");
    });
  }

  #onMessage(ev) {
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      return;
    }
    switch (m.type) {
      case "joined":
        this.peer = m.peer;
        this.members = new Map(m.members.map((x) => [x.peer, x]));
        this.memberCount = m.member_count ?? m.members.length;
        this.#emit("joined", { peer: m.peer, source: m.source, slots: m.slots, members: m.members });
        this.#emit("member_count", this.memberCount);
        this.#emitMembers();
        break;
      case "member_count":
        // Large channels list speakers only; this is everyone.
        this.memberCount = m.count;
        this.#emit("member_count", m.count);
        break;
      case "member_joined":
      case "member_updated":
        this.members.set(m.member.peer, m.member);
        this.#emitMembers();
        break;
      case "member_left":
        // Our own departure (ICE lost, timeout, kicked) ends the membership too.
        if (m.peer === this.peer) return this.#teardown(m.reason, m.message);
        this.members.delete(m.peer);
        this.speakers = this.speakers.filter((p) => p !== m.peer);
        this.#emitMembers();
        break;
      case "active_speakers":
        this.speakers = m.speakers;
        this.#emit("speakers", m.speakers);
        break;
      case "dominant_speaker":
        this.dominant = m.peer;
        this.#emit("dominant", m.peer);
        break;
      case "slot":
        this.#emit("slot", { slot: m.slot, mid: m.mid, peer: m.peer, source: m.source });
        break;
      case "connected":
        this.#emit("connected", null);
        break;
      case "hand":
        this.handRaised = m.raised;
        this.#emit("hand", { raised: m.raised });
        break;
      case "hands":
        this.hands = m.queue;
        this.#emit("hands", m.queue);
        break;
      case "error":
        this.#emit("error", { code: m.code, message: m.message, request: m.request });
        // The server ends the session after these (and closes the socket).
        if (m.code === "session_expired") this.#teardown("expired");
        break;
      case "shutdown":
        this.#emit("shutdown", { reason: m.reason, deadline_ms: m.deadline_ms });
        // An app may rejoin elsewhere from its `shutdown` handler; either way
        // this membership ends now rather than at the deadline.
        this.#leave("shutdown");
        break;
    }
  }

  #play(track) {
    const el = document.createElement("audio");
    el.autoplay = true;
    el.srcObject = new MediaStream([track]);
    // Chrome only pulls (and measures) remote audio that is rendered, so the
    // element must exist even if the page shows nothing for it.
    el.hidden = true;
    document.body.append(el);
    el.play().catch(() => {}); // autoplay may need a gesture; Join was one
    this.audio.push(el);
  }

  /** Releases everything; emits `left` when we were in a channel (reason set). */
  #teardown(reason, message) {
    clearInterval(this.levelTimer);
    this.levelTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onclose = ws.onmessage = ws.onerror = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
    }
    this.pc?.close();
    this.pc = null;
    for (const t of this.mic?.getTracks() ?? []) t.stop();
    this.mic = null;
    for (const el of this.audio) el.remove();
    this.audio = [];
    const wasJoined = this.peer !== null;
    this.peer = null;
    this.members.clear();
    this.speakers = [];
    this.dominant = null;
    this.handRaised = false;
    this.hands = [];
    if (wasJoined) this.#emitMembers();
    if (wasJoined && reason) this.#emit("left", { reason, message });
  }

  #emitMembers() {
    this.#emit("members", [...this.members.values()]);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
