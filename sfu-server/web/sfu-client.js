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
//            | "reconnecting"                  the connection's state: the media
//                                              connection's, except "reconnecting"
//                                              while the socket is re-established
//                                              (resume) or ICE restarts after the
//                                              media path broke, and "disconnected"
//                                              also when the socket is lost for good
//   joined   {peer, source, slots, members}   the join succeeded (again with a new
//                                              peer id when a resume was refused
//                                              and the client joined afresh)
//   resumed  {peer, source, channel}           a new socket took the member over
//                                              after the old one dropped
//   restarted null                             an ICE restart was answered and applied
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
//   mode     {mode, reason, epoch}             (hybrid) the channel moves to "p2p"
//                                              (a mesh between the members) or
//                                              "sfu"; the demo page shows
//                                              "Upgrading connection…" towards the SFU
//   switched {mode, epoch, complete}           (hybrid) this member plays `mode`
//                                              now; complete: the server says every
//                                              member did, the old path is released
//   left     {reason, message}                 no longer in the channel: "left"
//            (leave()), "shutdown", "expired" (the token expired),
//            "disconnected" (socket lost and not resumed within the grace
//            period, or the fresh join after a refused resume failed), or
//            the server's member_left
//            reason ("timeout", "failed", "kicked" with the moderator's
//            words in `message`, ...)
//
// Hybrid channels (docs/PROTOCOL.md, "Hybrid channels"): with `p2p: true`
// in join(), a small channel's members talk peer-to-peer, one
// RTCPeerConnection per other member (the lower peer id offers, the server
// relays the signaling); when the server says `mode`, the client builds the
// other path while the current one plays, swaps playback in one step when
// the new path delivers (muting one set of <audio> elements and unmuting
// the other), reports `switched`, and releases the old path at the
// server's `switched`.
//
// Surviving the network (docs/PROTOCOL.md, "Surviving the network"): when
// the socket drops while in a channel, the client reconnects with backoff
// and sends `resume` with the member's token (same peer id; the others see
// nothing), or joins afresh when the server no longer keeps the member.
// When ICE fails (or stays disconnected), it restarts ICE (`restart`), at
// once or right after the resume; `restartIce()` does it on demand.

/** Receive slots offered: the server's default `slots`. It may grant fewer. */
const DEFAULT_SLOTS = 3;

/** How often the voices' levels are read from the receivers (ms). */
const LEVEL_INTERVAL_MS = 150;

/** How long ICE may stay `disconnected` before we restart it (ms). */
const ICE_DISCONNECTED_MS = 2000;

/** After a restart, how long ICE may stay broken before the next one (ms). */
const ICE_RECHECK_MS = 5000;

/** ICE states that call for a restart. */
const ICE_BROKEN = ["failed", "disconnected"];

/**
 * Waits between attempts to reconnect a dropped socket: the first, doubled
 * each time up to the last, each plus up to a fifth of itself (jitter, so
 * that clients cut off together do not come back together).
 */
const RECONNECT_FIRST_MS = 250;
const RECONNECT_MAX_MS = 5000;
const RECONNECT_JITTER = 0.2;

/** Errors after which the server ends the session: nothing to resume. */
const SESSION_ENDING = new Set(["session_expired", "too_slow", "too_large", "join_timeout", "resumed_elsewhere"]);

/** Redirects (fleet: the channel's core is another node) one join follows at most. */
const MAX_REDIRECTS = 3;

/** The WebSocket URL of a node whose signaling URL is `base` (http[s]://host). */
function wsUrlOf(base) {
  return `${base.replace(/^http/, "ws").replace(/\/+$/, "")}/ws`;
}

/** How often a switch looks whether the new path delivers (ms). */
const SWAP_CHECK_MS = 20;

/** A voice played out in this long counts as audible (ms). */
const FLOWING_MS = 500;

/** A voice played out in this long is flowing now (three 20 ms frames, ms). */
const FRESH_MS = 60;

/** The new path must have played every voice without a break this long before the swap (ms). */
const STEADY_MS = 200;

/**
 * At most this long after the new path connected a member swaps anyway: the
 * SFU forwards the loudest voices only, and a voice it does not select never
 * shows there (ms).
 */
const SWITCH_WAIT_MS = 3000;

/** Refusals of hybrid messages that crossed a mode change on the way (request:code). */
const HYBRID_RACES = new Set([
  "signal:wrong_mode",
  "signal:stale",
  "signal:not_found",
  "switched:ignored",
  "p2p_failed:ignored",
]);

/** Close codes of a server that ended the session (policy, too large). */
const CLOSE_ENDING = new Set([1008, 1009]);

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
    this.waiters = []; // requests waiting for their answer: {ok, request, resolve, reject}
    this.joinArgs = null; // what join() was given, for a fresh join after a refused resume
    this.resumeToken = null; // from `joined`/`resumed`: takes the member over on a new socket
    this.resumeGraceSecs = 0; // how long the server keeps the member after a drop
    this.reconnecting = null; // {deadline, attempt, timer, ws} while the socket comes back
    this.restarting = null; // the ICE restart in flight (a promise)
    this.iceTimer = null; // the next automatic ICE restart
    this.ending = false; // the server said it ends the session: no resume
    // Hybrid channels.
    this.iceServers = []; // from `authorized`: for the mesh links too
    this.mode = "sfu"; // the mode the channel is in or switching to
    this.playing = "sfu"; // the path this member plays
    this.epoch = 0; // the channel's count of mode changes
    this.meshTimeoutMs = 5000; // a mesh link connects within this or is reported
    this.mesh = new Map(); // peer id -> {pc, audio, candidates, timer, connected}
    this.switching = null; // {to, since, connectedAt, timer} while a switch runs
  }

  /** Whether we offered a microphone line (and so may be promoted). */
  get hasMic() {
    return this.mic !== null;
  }

  get joined() {
    return this.peer !== null;
  }

  /**
   * Joins a channel. Resolves with the `joined` message; rejects on refusal
   * (the error's `code` is the server's).
   */
  async join({ channel, token, identity, role = "speaker", mic = role !== "listener", p2p = false }) {
    if (this.ws || this.joining || this.reconnecting) throw new Error("already joined or joining: leave first");
    this.joining = true;
    this.ending = false;
    try {
      // The microphone before the socket: a permission prompt may take a
      // while, and the server closes sessions that do not join in time.
      // A listener who may want the stage (raise a hand, be promoted)
      // offers it too (`mic: true`): the server routes nothing from it
      // until a moderator promotes it.
      if (mic) {
        this.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      }
      this.joinArgs = { channel, token, identity, role, p2p };
      // In a fleet a node may send the join to the channel's node
      // (`redirect`): the same join there, with the same token.
      for (let hop = 0; ; hop++) {
        const { ws, ready } = this.#connect();
        this.ws = ws;
        await ready;
        try {
          return await this.#enter(this.joinArgs);
        } catch (err) {
          if (err.code !== "redirect" || hop >= MAX_REDIRECTS) throw err;
          this.#dropSocket();
          this.url = wsUrlOf(err.url);
          this.#emit("redirected", { url: err.url });
        }
      }
    } catch (err) {
      this.#teardown(null);
      throw err;
    } finally {
      this.joining = false;
    }
  }

  /**
   * Opens a socket: `ws` at once, `ready` resolves at the server's first
   * message, `hello`, which says the socket is ready. From then on socket
   * problems go to #onClose.
   */
  #connect() {
    const ws = new WebSocket(this.url);
    const ready = new Promise((resolve, reject) => {
      ws.onmessage = (ev) => {
        try {
          if (JSON.parse(ev.data).type === "hello") resolve();
        } catch {
          reject(new Error("the server sent something that is not JSON"));
        }
      };
      ws.onerror = () => reject(new Error(`cannot connect to ${this.url}`));
      ws.onclose = () => reject(new Error(`${this.url} closed before its hello`));
    }).then(() => {
      ws.onerror = null;
      ws.onmessage = (ev) => this.#onMessage(ev);
      ws.onclose = (ev) => this.#onClose(ws, ev);
      return ws;
    });
    return { ws, ready };
  }

  /**
   * Enters a channel on the open socket. Three steps: `authorize` with the
   * token (the server answers with the ICE servers, TURN credentials
   * included, for token holders only), the offer made with those servers,
   * then `join`. Resolves with the `joined` message.
   */
  async #enter({ channel, token, identity, role, p2p }) {
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
    this.iceServers = authorized.ice_servers ?? [];

    const pc = await this.#sfuSession();
    // The token was shown with `authorize`; the join refers to it.
    const msg = { type: "join", channel, offer: pc.localDescription.sdp };
    if (role) msg.role = role;
    if (p2p) msg.p2p = true;

    const reply = await this.#request(msg, "joined", "join");
    clearInterval(this.levelTimer);
    this.levelTimer = setInterval(() => this.#readLevels(), LEVEL_INTERVAL_MS);
    if (reply.mode === "p2p") {
      // A peer-to-peer channel: no SFU session; a link to every member.
      this.#closeMedia();
      this.#emit("state", "connected");
      for (const m of reply.members) this.#meshConnect(m.peer);
      return reply;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: reply.answer });
    return reply;
  }

  /**
   * A new SFU session (`this.pc`): our microphone on the first m-line, one
   * receive m-line per slot, the local offer set. The caller sends it
   * (`join`, or `sfu_join` during a switch) and applies the answer.
   */
  async #sfuSession() {
    const pc = (this.pc = new RTCPeerConnection({ iceServers: this.iceServers }));
    this.#emit("state", "connecting");
    pc.onconnectionstatechange = () => {
      // While the socket comes back the page shows that instead; the
      // media's state follows the resume.
      if (pc.connectionState !== "new" && !this.reconnecting) this.#emit("state", pc.connectionState);
    };
    pc.oniceconnectionstatechange = () => this.#iceChanged(pc);
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
    return pc;
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
   * Restarts ICE (after the network changed): a new offer with new ICE
   * credentials, `restart`, and the `restarted` answer applied; the member
   * keeps its peer id, voice and slots. Resolves with the `restarted`
   * message; rejects on refusal (`code`: "not_joined", "invalid_offer",
   * "rate_limited" with `retryAfterSecs`), the session then going on as it
   * was. One at a time: a call while one is under way gets that one.
   * The client calls it itself when ICE fails or stays disconnected.
   */
  restartIce() {
    const pc = this.pc;
    if (!pc || !this.joined || this.joining) return Promise.reject(new Error("not in a channel"));
    if (this.restarting) return this.restarting;
    const restarting = this.#restart(pc).finally(() => {
      if (this.restarting === restarting) this.restarting = null;
      // Still broken (the new checks fail too, or the answer was lost with
      // the socket): again a little later, unless something else will.
      if (pc === this.pc && ICE_BROKEN.includes(pc.iceConnectionState)) this.#restartIn(ICE_RECHECK_MS);
    });
    this.restarting = restarting;
    return restarting;
  }

  async #restart(pc) {
    // No need to wait for ICE gathering, as for the join: the server
    // learns our new address from our checks with the new credentials.
    await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
    let reply;
    try {
      reply = await this.#request({ type: "restart", offer: pc.localDescription.sdp }, "restarted", "restart");
    } catch (err) {
      // Refused or unanswered: back to the session as it was.
      if (pc.signalingState === "have-local-offer") {
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      }
      throw err;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: reply.answer });
    this.#emit("restarted", null);
    return reply;
  }

  /** ICE changed: restart it when it failed or stays disconnected. */
  #iceChanged(pc) {
    if (pc !== this.pc) return;
    const state = pc.iceConnectionState;
    if (state === "failed") this.#restartIn(0);
    else if (state === "disconnected") this.#restartIn(ICE_DISCONNECTED_MS);
    else {
      clearTimeout(this.iceTimer);
      this.iceTimer = null;
    }
  }

  #restartIn(ms) {
    clearTimeout(this.iceTimer);
    this.iceTimer = setTimeout(() => this.#autoRestart(), ms);
  }

  /**
   * The automatic ICE restart, when ICE is still broken; not while one is
   * under way (its end looks again), nor while the socket is down (the
   * resume looks again).
   */
  #autoRestart() {
    clearTimeout(this.iceTimer);
    this.iceTimer = null;
    const pc = this.pc;
    if (!pc || !this.joined || this.joining || this.reconnecting || this.restarting) return;
    if (!ICE_BROKEN.includes(pc.iceConnectionState)) return;
    this.#emit("state", "reconnecting");
    this.restartIce().then(
      () => {
        // Usually the media's state moves on by itself (checking, then
        // connected); ICE that recovered meanwhile does not move.
        if (pc !== this.pc || this.reconnecting) return;
        if (pc.connectionState === "connected") this.#emit("state", "connected");
      },
      (err) => {
        if (pc !== this.pc) return;
        if (!this.reconnecting) this.#emit("state", pc.connectionState);
        if (err.code === "rate_limited") this.#restartIn((err.retryAfterSecs ?? 10) * 1000);
        else if (err.code) this.#emit("error", { code: err.code, message: err.message, request: "restart" });
        // Without a code the socket dropped: the resume looks again.
      },
    );
  }

  /**
   * The socket closed without our asking. In a channel with a resume token,
   * and unless the server ended the session, the client reconnects.
   */
  #onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    ws.onclose = ws.onmessage = ws.onerror = null;
    this.#failWaiters(new Error("the server closed the connection"));
    // A join or a resume under way sees its request fail and decides.
    if (this.joining || this.reconnecting) return;
    if (this.joined && this.resumeToken && this.resumeGraceSecs > 0 && !this.ending && !CLOSE_ENDING.has(ev.code)) {
      this.reconnecting = {
        deadline: Date.now() + this.resumeGraceSecs * 1000,
        attempt: 0,
        timer: null,
        ws: null,
      };
      this.#emit("state", "reconnecting");
      this.#reconnectLater();
    } else {
      if (this.joined) this.#emit("state", "disconnected");
      this.#teardown("disconnected");
    }
  }

  /** Schedules the next attempt to reconnect, or gives up past the grace period. */
  #reconnectLater() {
    const r = this.reconnecting;
    const left = r.deadline - Date.now();
    if (left <= 0) {
      this.#emit("state", "disconnected");
      this.#teardown("disconnected", `not reconnected within ${this.resumeGraceSecs} s`);
      return;
    }
    const backoff = Math.min(RECONNECT_FIRST_MS * 2 ** r.attempt, RECONNECT_MAX_MS);
    r.attempt++;
    r.timer = setTimeout(() => this.#reconnect(r), Math.min(backoff * (1 + Math.random() * RECONNECT_JITTER), left));
  }

  /** One attempt: a new socket, `resume` after its `hello`. */
  async #reconnect(r) {
    r.timer = null;
    const { ws, ready } = this.#connect();
    r.ws = ws;
    try {
      await ready;
    } catch {
      ws.onclose = ws.onmessage = ws.onerror = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
      if (this.reconnecting === r) this.#reconnectLater();
      return;
    }
    if (this.reconnecting !== r) return; // left meanwhile (the socket is closed)
    r.ws = null;
    this.ws = ws;
    try {
      await this.#request({ type: "resume", token: this.resumeToken }, "resumed", "resume");
    } catch (err) {
      if (this.reconnecting !== r) return;
      // The server no longer keeps the member: a new one.
      // (`bad_request`: a token the server cannot read; the same for us.)
      if (err.code === "resume_failed" || err.code === "bad_request") return this.#rejoin();
      if (err.code) {
        this.#emit("state", "disconnected");
        return this.#teardown("disconnected", err.message);
      }
      return this.#reconnectLater(); // this socket dropped too
    }
    if (this.reconnecting !== r) return;
    this.reconnecting = null;
    if (this.pc && this.pc.connectionState !== "new") this.#emit("state", this.pc.connectionState);
    // The media path may have broken as well while the socket was down.
    if (ICE_BROKEN.includes(this.pc?.iceConnectionState)) this.#autoRestart();
  }

  /**
   * The resume was refused (the member is gone): a fresh join on the new
   * socket, with a new offer, as join() was asked. The microphone stays.
   */
  async #rejoin() {
    this.reconnecting = null;
    this.joining = true;
    this.#closeMedia();
    this.resumeToken = null;
    this.speakers = [];
    this.dominant = null;
    this.handRaised = false;
    this.hands = [];
    try {
      await this.#enter(this.joinArgs);
    } catch (err) {
      this.#emit("state", "disconnected");
      this.#teardown("disconnected", err.message);
    } finally {
      this.joining = false;
    }
  }

  /**
   * Reads the level of every voice the slots carried in the last second:
   * the server names each voice by its CSRC (a member's `source`).
   */
  #readLevels() {
    const bySource = new Map([...this.members.values()].map((m) => [m.source, m.peer]));
    const now = performance.timeOrigin + performance.now();
    const levels = [];
    for (const rx of this.playing === "sfu" ? (this.pc?.getReceivers() ?? []) : []) {
      for (const c of rx.getContributingSources?.() ?? []) {
        if (now - c.timestamp > 1000) continue;
        levels.push({ peer: bySource.get(c.source) ?? null, source: c.source, level: c.audioLevel ?? 0 });
      }
    }
    // (hybrid) A mesh link carries one member's voice.
    for (const [peer, link] of this.playing === "p2p" ? this.mesh : []) {
      for (const rx of link.pc?.getReceivers() ?? []) {
        for (const c of rx.getSynchronizationSources()) {
          if (now - c.timestamp > 1000) continue;
          levels.push({ peer, source: this.members.get(peer)?.source ?? 0, level: c.audioLevel ?? 0 });
        }
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
      const waiter = { ok, request, resolve, reject };
      this.waiters.push(waiter);
      try {
        this.#send(msg);
      } catch (err) {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(err);
      }
    });
  }

  /** Rejects every request still waiting (the socket is gone). */
  #failWaiters(err) {
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  #onMessage(ev) {
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      return;
    }
    // The answer to a request: a refusal goes to the requester only.
    const i = this.waiters.findIndex((w) => m.type === w.ok || (m.type === "error" && m.request === w.request));
    const j = i >= 0 ? i : this.waiters.findIndex((w) => m.type === "redirect" && m.request === w.request);
    const waiter = j < 0 ? null : this.waiters.splice(j, 1)[0];
    if (waiter && m.type === "error") {
      waiter.reject(Object.assign(new Error(m.message), { code: m.code, retryAfterSecs: m.retry_after_secs }));
      return;
    }
    if (waiter && m.type === "redirect") {
      waiter.reject(Object.assign(new Error(`the channel is served at ${m.url}`), { code: "redirect", url: m.url }));
      return;
    }
    this.#handle(m);
    waiter?.resolve(m);
  }

  #handle(m) {
    switch (m.type) {
      case "redirect":
        // The channel moved to another node of the fleet: join it there.
        if (!m.request && this.joinArgs) this.#moveTo(m.url);
        break;
      case "joined":
        this.peer = m.peer;
        this.resumeToken = m.resume_token ?? null;
        this.resumeGraceSecs = m.resume_grace_secs ?? 0;
        this.members = new Map(m.members.map((x) => [x.peer, x]));
        this.memberCount = m.member_count ?? m.members.length;
        this.mode = this.playing = m.mode ?? "sfu";
        this.epoch = m.epoch ?? 0;
        this.meshTimeoutMs = m.mesh_connect_timeout_ms ?? this.meshTimeoutMs;
        this.#emit("mode", { mode: this.mode, reason: null, epoch: this.epoch });
        this.#emit("joined", { peer: m.peer, source: m.source, slots: m.slots, members: m.members });
        this.#emit("member_count", this.memberCount);
        this.#emitMembers();
        break;
      case "resumed":
        // The token works once: the next drop needs this one.
        this.resumeToken = m.resume_token || null;
        this.resumeGraceSecs = m.resume_grace_secs ?? 0;
        this.#emit("resumed", { peer: m.peer, source: m.source, channel: m.channel });
        break;
      case "member_count":
        // Large channels list speakers only; this is everyone.
        this.memberCount = m.count;
        this.#emit("member_count", m.count);
        break;
      case "member_joined":
        this.members.set(m.member.peer, m.member);
        // A peer-to-peer channel: a link with the newcomer.
        if (this.mode === "p2p") this.#meshConnect(m.member.peer);
        this.#emitMembers();
        break;
      case "member_updated":
        this.members.set(m.member.peer, m.member);
        this.#emitMembers();
        break;
      case "signal":
        this.#onSignal(m).catch((err) => this.#emit("error", { code: "p2p", message: err.message, request: "signal" }));
        break;
      case "mode":
        this.#onMode(m);
        break;
      case "switched":
        this.#onSwitched(m);
        break;
      case "member_left":
        // Our own departure (ICE lost, timeout, kicked) ends the membership too.
        if (m.peer === this.peer) return this.#teardown(m.reason, m.message);
        this.members.delete(m.peer);
        this.#meshClose(m.peer);
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
        // (hybrid) A report or signal that crossed a mode change: expected
        // now and then, nothing to show.
        if (HYBRID_RACES.has(`${m.request}:${m.code}`)) {
          this.hybridRaces = (this.hybridRaces ?? 0) + 1;
          break;
        }
        this.#emit("error", { code: m.code, message: m.message, request: m.request });
        // The server ends the session after these (and closes the socket):
        // no resume then.
        if (SESSION_ENDING.has(m.code)) this.ending = true;
        if (m.code === "session_expired") this.#teardown("expired");
        // Another connection (this client, come back before the server saw
        // this one die) took the member over.
        if (m.code === "resumed_elsewhere") this.#teardown("resumed_elsewhere", m.message);
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
    // (hybrid) Heard only while this member plays the SFU.
    el.muted = this.playing !== "sfu";
    document.body.append(el);
    el.play().catch(() => {}); // autoplay may need a gesture; Join was one
    this.audio.push(el);
  }

  // --- Hybrid channels: the mesh and the switches ---------------------------

  /** A link with `peer` (not ourselves, not twice): we offer when our id is the lower. */
  #meshConnect(peer) {
    if (peer === this.peer || this.mesh.has(peer) || this.peer === null) return;
    const link = { pc: null, audio: [], candidates: [], connected: false, timer: null };
    this.mesh.set(peer, link);
    // Not connected in time: the server moves the channel to the SFU.
    link.timer = setTimeout(() => {
      if (!link.connected && this.mesh.get(peer) === link) this.#meshFailed(peer, "timeout");
    }, this.meshTimeoutMs);
    if (this.peer < peer) {
      this.#meshOffer(peer, link).catch((err) => this.#emit("error", { code: "p2p", message: err.message, request: "signal" }));
    }
  }

  async #meshOffer(peer, link) {
    const pc = this.#meshPc(peer, link);
    if (this.mic) {
      pc.addTransceiver(this.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [this.mic] });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    this.#signal(peer, { kind: "offer", sdp: pc.localDescription.sdp });
  }

  /** The RTCPeerConnection of a link: candidates trickle through the server. */
  #meshPc(peer, link) {
    const pc = (link.pc = new RTCPeerConnection({ iceServers: this.iceServers }));
    pc.onicecandidate = (e) => {
      if (!e.candidate?.candidate) return;
      this.#signal(peer, {
        kind: "candidate",
        candidate: e.candidate.candidate,
        sdp_mid: e.candidate.sdpMid ?? undefined,
        sdp_mline_index: e.candidate.sdpMLineIndex ?? undefined,
      });
    };
    pc.ontrack = (e) => {
      const el = document.createElement("audio");
      el.autoplay = true;
      el.srcObject = new MediaStream([e.track]);
      el.hidden = true;
      el.muted = this.playing !== "p2p";
      document.body.append(el);
      el.play().catch(() => {});
      link.audio.push(el);
    };
    pc.oniceconnectionstatechange = () => {
      const state = pc.iceConnectionState;
      if (state === "connected" || state === "completed") {
        link.connected = true;
        clearTimeout(link.timer);
      } else if (state === "failed") {
        this.#meshFailed(peer, "ice_failed");
      }
    };
    return pc;
  }

  #signal(to, data) {
    // After a switch up began the links' signals are moot (the server
    // would refuse them as `wrong_mode`).
    if (this.mode !== "p2p") return;
    try {
      this.#send({ type: "signal", to, epoch: this.epoch, data });
    } catch {
      // The socket is down: the resume brings the member back; a link
      // that misses its signals then times out and is reported.
    }
  }

  async #onSignal(m) {
    const d = m.data;
    let link = this.mesh.get(m.from);
    if (d.kind === "offer") {
      if (!link) {
        this.#meshConnect(m.from);
        link = this.mesh.get(m.from);
      }
      if (!link) return;
      const pc = link.pc ?? this.#meshPc(m.from, link);
      await pc.setRemoteDescription({ type: "offer", sdp: d.sdp });
      if (this.mic) pc.addTrack(this.mic.getAudioTracks()[0], this.mic);
      await pc.setLocalDescription(await pc.createAnswer());
      this.#signal(m.from, { kind: "answer", sdp: pc.localDescription.sdp });
    } else if (d.kind === "answer") {
      if (!link?.pc) return;
      await link.pc.setRemoteDescription({ type: "answer", sdp: d.sdp });
    } else if (d.kind === "candidate") {
      if (!link) return;
      link.candidates.push({ candidate: d.candidate, sdpMid: d.sdp_mid ?? null, sdpMLineIndex: d.sdp_mline_index ?? 0 });
    }
    // Candidates wait for the other side's description.
    if (link?.pc?.remoteDescription) {
      for (const c of link.candidates.splice(0)) await link.pc.addIceCandidate(c).catch(() => {});
    }
  }

  /** A link failed: the server hears of it once (the channel then moves to the SFU). */
  #meshFailed(peer, reason) {
    const link = this.mesh.get(peer);
    if (!link || link.reported || this.mode !== "p2p") return;
    link.reported = true;
    try {
      this.#send({ type: "p2p_failed", peer, reason, epoch: this.epoch });
    } catch {
      // The socket is down: the link's timeout is seen again after a resume.
    }
  }

  #meshClose(peer) {
    const link = this.mesh.get(peer);
    if (!link) return;
    this.mesh.delete(peer);
    clearTimeout(link.timer);
    link.pc?.close();
    for (const el of link.audio) el.remove();
  }

  #closeMesh() {
    for (const peer of [...this.mesh.keys()]) this.#meshClose(peer);
  }

  /** The server began a switch: build the new path while the old one plays. */
  #onMode(m) {
    this.mode = m.mode;
    this.epoch = m.epoch;
    clearInterval(this.switching?.timer);
    this.switching = { to: m.mode, since: Date.now(), connectedAt: null, timer: null, flowSince: new Map() };
    this.#emit("mode", { mode: m.mode, reason: m.reason, epoch: m.epoch });
    if (m.mode === "sfu" && !this.pc) {
      this.#sfuJoin(m.epoch).catch((err) => this.#emit("error", { code: err.code ?? "sfu_join", message: err.message, request: "sfu_join" }));
    } else if (m.mode === "p2p") {
      for (const peer of this.members.keys()) this.#meshConnect(peer);
    }
    if (this.playing === m.mode) this.#swap(m.mode); // turned back: the old path still plays
    else this.switching.timer = setInterval(() => this.#checkSwap(), SWAP_CHECK_MS);
  }

  /** Our SFU session during a switch up. */
  async #sfuJoin(epoch) {
    const pc = await this.#sfuSession();
    const reply = await this.#request({ type: "sfu_join", offer: pc.localDescription.sdp, epoch }, "sfu_joined", "sfu_join");
    if (pc === this.pc) await pc.setRemoteDescription({ type: "answer", sdp: reply.answer });
  }

  /**
   * Whether `path` plays every voice that matters without a break for
   * STEADY_MS now: each other member audible on the path we play (or, towards
   * the mesh, on either) must have been fresh on `path` at every look since.
   */
  #flowing(path, sw) {
    const now = performance.timeOrigin + performance.now();
    const fresh = (c) => now - c.timestamp < FRESH_MS;
    const heard = new Set();
    if (path === "sfu") {
      for (const rx of this.pc?.getReceivers() ?? []) {
        for (const c of rx.getContributingSources?.() ?? []) if (fresh(c)) heard.add(c.source);
      }
    }
    let steady = true;
    for (const m of this.members.values()) {
      if (m.peer === this.peer) continue;
      const audible = path === "sfu" ? this.#meshSpeaks(m.peer, now) : this.#sfuSpeaks(m.source, now) || this.#meshSpeaks(m.peer, now);
      const link = this.mesh.get(m.peer);
      const flows =
        path === "sfu"
          ? !!m.source && heard.has(m.source)
          : !!link?.connected && link.pc.getReceivers().some((rx) => rx.getSynchronizationSources().some(fresh));
      if (!flows) sw.flowSince.delete(m.peer);
      else if (!sw.flowSince.has(m.peer)) sw.flowSince.set(m.peer, now);
      if (audible && !(now - (sw.flowSince.get(m.peer) ?? now) >= STEADY_MS)) steady = false;
    }
    return steady;
  }

  #meshSpeaks(peer, now) {
    const link = this.mesh.get(peer);
    return !!link?.pc?.getReceivers().some((rx) => rx.getSynchronizationSources().some((c) => now - c.timestamp < FLOWING_MS && (c.audioLevel ?? 1) > 0.001));
  }

  #sfuSpeaks(source, now) {
    if (!source) return false;
    return !!this.pc?.getReceivers().some((rx) => (rx.getContributingSources?.() ?? []).some((c) => c.source === source && now - c.timestamp < FLOWING_MS));
  }

  /** During a switch: swap when the new path delivers (or SWITCH_WAIT_MS after it connected). */
  #checkSwap() {
    const sw = this.switching;
    if (!sw || this.playing === sw.to) return;
    const connected = sw.to === "sfu" ? this.pc?.connectionState === "connected" : [...this.mesh.values()].every((l) => l.connected);
    if (!connected) return;
    sw.connectedAt ??= Date.now();
    if (this.#flowing(sw.to, sw) || Date.now() - sw.connectedAt > SWITCH_WAIT_MS) this.#swap(sw.to);
  }

  /** Plays `to` from now on, the other path muted, in one step; tells the server. */
  #swap(to) {
    this.playing = to;
    for (const el of this.audio) el.muted = to !== "sfu";
    for (const link of this.mesh.values()) for (const el of link.audio) el.muted = to !== "p2p";
    clearInterval(this.switching?.timer);
    try {
      this.#send({ type: "switched", mode: to, epoch: this.epoch });
    } catch {
      // The server's `switched` (timeout) completes it.
    }
    this.#emit("switched", { mode: to, epoch: this.epoch, complete: false });
  }

  /** The switch is over for everyone: release the old path. */
  #onSwitched(m) {
    if (m.epoch !== this.epoch) return;
    if (this.playing !== m.mode) this.#swap(m.mode);
    clearInterval(this.switching?.timer);
    this.switching = null;
    if (m.mode === "sfu") this.#closeMesh();
    else this.#closeMedia(); // the server ended our SFU session
    this.#emit("switched", { mode: m.mode, epoch: m.epoch, complete: true });
  }

  /** Releases everything; emits `left` when we were in a channel (reason set). */
  /** Closes the socket and the media session, keeping the microphone. */
  #dropSocket() {
    const ws = this.ws;
    if (ws) {
      ws.onopen = ws.onclose = ws.onmessage = ws.onerror = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
    }
    this.ws = null;
    this.#failWaiters(new Error("redirected"));
    this.#closeMedia();
  }

  /** Joins the same channel again on the node at `base` (it moved there). */
  #moveTo(base) {
    const args = this.joinArgs;
    const mic = this.hasMic;
    this.#teardown(null);
    this.url = wsUrlOf(base);
    this.#emit("state", "moving");
    this.join({ ...args, mic }).catch((err) => this.#emit("left", { reason: "moved", message: err.message }));
  }

  #teardown(reason, message) {
    clearInterval(this.levelTimer);
    this.levelTimer = null;
    const r = this.reconnecting;
    this.reconnecting = null;
    clearTimeout(r?.timer);
    for (const ws of [this.ws, r?.ws]) {
      if (!ws) continue;
      ws.onopen = ws.onclose = ws.onmessage = ws.onerror = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
    }
    this.ws = null;
    this.#failWaiters(new Error("left the channel"));
    this.#closeMedia();
    this.#closeMesh();
    clearInterval(this.switching?.timer);
    this.switching = null;
    this.mode = this.playing = "sfu";
    for (const t of this.mic?.getTracks() ?? []) t.stop();
    this.mic = null;
    this.resumeToken = null;
    this.resumeGraceSecs = 0;
    this.ending = false;
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

  /** Closes the peer connection and its audio elements (the microphone stays). */
  #closeMedia() {
    clearTimeout(this.iceTimer);
    this.iceTimer = null;
    this.restarting = null;
    this.pc?.close();
    this.pc = null;
    for (const el of this.audio) el.remove();
    this.audio = [];
  }

  #emitMembers() {
    this.#emit("members", [...this.members.values()]);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
