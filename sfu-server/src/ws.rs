//! The WebSocket room protocol (docs/PROTOCOL.md): one socket, one member.
//!
//! A session holds one of `max_ws_connections` slots for its life. It must
//! be in a channel within `ws_join_timeout_secs` of connecting (or of
//! leaving one), else it is closed; a member is removed when its token's
//! `exp` passes. TURN credentials go out only with `authorized`, to a
//! token holder.
//!
//! A member whose socket drops (not a `leave`) is kept for
//! `resume_grace_secs` for a `resume` on a new socket ([`crate::resume`]).
//! A member whose network changed restarts ICE with `restart` (at most
//! `ice_restarts_per_minute`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use media_core::{PeerId, Role};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use crate::client_request::{Ask, ClientRequest};
use crate::ice_restart::RestartBudget;
use crate::metrics::Refusal;
use crate::protocol::{JoinedMsg, ServerMsg, SignalData};
use crate::resume::{Away, Membership};
use crate::rooms::mode::{Capability, SfuOnly};
use crate::rooms::{HandError, ModerateError, Moderation, MESH_CONNECT_TIMEOUT};
use crate::state::{secret_id, unix_now, AppState, Denied, JoinAsk, Need, RETRY_AFTER_SECS};
mod socket;

use socket::Socket;
pub use socket::{WsUpgrade, FRAGMENT_BYTES};

use crate::worker::{
    member_events, EventSink, JoinError, JoinRequest, MemberEvents, Report, RestartError, SfuError,
    Signaling,
};

/// WebSocket close code: the session broke a rule (RFC 6455 §7.4.1).
const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code: a message too big to process.
const CLOSE_TOO_BIG: u16 = 1009;
/// How long a session the server closes waits for the client's close.
const LINGER: Duration = Duration::from_secs(1);

/// `GET /ws`.
pub async fn upgrade(
    ws: WsUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = state.check_origin(&headers) {
        return denied.into_response();
    }
    let Ok(slot) = state.ws_slots.clone().try_acquire_owned() else {
        let mut denied = Denied::new(503, "busy", "the server has too many WebSocket sessions");
        denied.retry_after = Some(Duration::from_secs(RETRY_AFTER_SECS));
        return state.refuse(Refusal::WsConnections, denied).into_response();
    };
    // A frame is read whole before its message is checked: without
    // `max_frame_size` one frame could make the session buffer 16 MiB.
    // The read buffer grows to the largest frame when one comes (a join's
    // offer) and keeps that size; tungstenite's default starts it at
    // 128 KiB, which was half of a listener's memory. Each frame is
    // written at once (every send flushes anyway), and none is over
    // `FRAGMENT_BYTES` (the socket cuts longer messages), so neither is
    // the write buffer.
    let max = state.config.ws_max_message_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(1024)
        .write_buffer_size(0);
    ws.on_upgrade(config, move |socket| {
        let region = state.client_region(&headers);
        Session::new(state, remote, slot, region).run(socket)
    })
}

struct Session {
    state: Arc<AppState>,
    remote: SocketAddr,
    /// The client's region (a fleet places new channels by it).
    region: String,
    membership: Option<Membership>,
    /// The last `authorize` that no join has used yet: a `join` for the
    /// same channel may leave the token out, and is not counted against
    /// the join rates a second time.
    authorized: Option<Ask>,
    /// When the session is closed unless it is in a channel by then.
    join_deadline: Option<Instant>,
    /// When the member's token expires.
    expires: Option<Instant>,
    /// What takes the member over if this socket drops (`resume`).
    resume_token: Option<String>,
    /// Fires when a `resume` on another socket wants this member.
    displaced: Option<Arc<tokio::sync::Notify>>,
    /// Messages to send after the reply to the current request (what a
    /// resumed member missed).
    outbox: VecDeque<ServerMsg>,
    events_tx: EventSink,
    events_rx: MemberEvents,
    /// One of `max_ws_connections`.
    _slot: OwnedSemaphorePermit,
}

/// Why a session ends on its own.
enum Ending {
    /// The client closed the socket (a close frame: it chose to go, as a
    /// closing tab does), or the worker ended the member's stream.
    Gone,
    /// The socket broke (no close frame: the network, a proxy): the member
    /// waits for a `resume`.
    Dropped,
    /// A message over the size limit.
    TooLarge,
    /// Not in a channel in time.
    JoinTimeout,
    /// The member's token expired.
    Expired,
    /// Another socket resumed the member (this one's client is presumably
    /// gone, unseen).
    Displaced,
}

impl Session {
    fn new(
        state: Arc<AppState>,
        remote: SocketAddr,
        slot: OwnedSemaphorePermit,
        region: String,
    ) -> Session {
        let (events_tx, events_rx) = member_events(Signaling::WebSocket);
        let join_deadline = Some(Instant::now() + state.join_timeout());
        Session {
            state,
            remote,
            region,
            membership: None,
            authorized: None,
            join_deadline,
            expires: None,
            resume_token: None,
            displaced: None,
            outbox: VecDeque::new(),
            events_tx,
            events_rx,
            _slot: slot,
        }
    }

    async fn run(mut self, mut socket: Socket) {
        // Before a token is seen: STUN only, never TURN credentials.
        let ice_servers = crate::turn::stun_servers(&self.state.config);
        if send(&mut socket, &ServerMsg::Hello { ice_servers })
            .await
            .is_err()
        {
            return;
        }
        // The requests' and the ending's futures are boxed: this task lives
        // as long as the member, and inline they would make every member's
        // task 1.2 KiB larger for what runs a few times in its life.
        let ending = loop {
            tokio::select! {
                msg = socket.recv() => {
                    let reply = match msg {
                        Some(Ok(Message::Text(t))) => Box::pin(self.handle(t.as_str())).await,
                        Some(Ok(Message::Binary(_))) => Some(ServerMsg::error("bad_request", "binary frames are not part of the protocol", None)),
                        // (A reader never yields a raw `Frame`.)
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
                        Some(Err(e)) if is_too_large(&e) => break Ending::TooLarge,
                        Some(Ok(Message::Close(_))) => break Ending::Gone,
                        Some(Err(_)) | None => break Ending::Dropped,
                    };
                    let mut gone = false;
                    for r in reply.into_iter().chain(self.outbox.drain(..)) {
                        if send(&mut socket, &r).await.is_err() {
                            gone = true;
                            break;
                        }
                    }
                    if gone {
                        break Ending::Dropped;
                    }
                }
                ev = self.events_rx.recv() => {
                    let Some(ev) = ev else { break Ending::Gone };
                    // Our own departure (ICE lost, removed) ends the membership.
                    if let (ServerMsg::MemberLeft { peer, .. }, Some(j)) = (&ev, &self.membership) {
                        if *peer == j.peer.0 {
                            self.left_channel();
                        }
                    }
                    // (hybrid) A new SFU session is a new voice.
                    if let (ServerMsg::SfuJoined { source, .. }, Some(j)) = (&ev, &mut self.membership) {
                        j.source = *source;
                    }
                    if send(&mut socket, &ev).await.is_err() {
                        break Ending::Dropped;
                    }
                }
                () = until(self.join_deadline) => break Ending::JoinTimeout,
                () = until(self.expires) => break Ending::Expired,
                () = notice(self.displaced.clone()) => break Ending::Displaced,
            }
        };
        if matches!(ending, Ending::Dropped | Ending::Displaced) {
            self.park();
        }
        Box::pin(self.end(&mut socket, ending)).await;
        self.leave().await;
    }

    /// The socket dropped: the member waits `resume_grace_secs` for a
    /// `resume` (when it has a token), else it leaves (the caller).
    fn park(&mut self) {
        let grace = self.state.config.resume_grace_secs;
        self.displaced = None;
        let (Some(token), true) = (self.resume_token.take(), grace > 0) else {
            return;
        };
        let Some(membership) = self.membership.take() else {
            return;
        };
        let (events_tx, events_rx) = member_events(Signaling::WebSocket);
        let away = Away {
            membership,
            events_tx: std::mem::replace(&mut self.events_tx, events_tx),
            events_rx: std::mem::replace(&mut self.events_rx, events_rx),
            expires: self.expires.take(),
            missed: Vec::new(),
        };
        tracing::debug!(peer = %away.membership.peer, "socket dropped: the member waits for a resume");
        self.state
            .resumes
            .park(token, away, Duration::from_secs(grace));
    }

    /// Tells the client why the server ends the session, and closes it.
    async fn end(&mut self, socket: &mut Socket, ending: Ending) {
        let (refusal, code, message, close) = match ending {
            Ending::Gone | Ending::Dropped => return,
            Ending::Displaced => {
                let msg = "another connection resumed this member";
                let _ = send(socket, &ServerMsg::error("resumed_elsewhere", msg, None)).await;
                let _ = socket.close(CLOSE_POLICY, "resumed_elsewhere").await;
                linger(socket).await;
                return;
            }
            Ending::TooLarge => (
                Refusal::WsTooLarge,
                "too_large",
                format!(
                    "messages are limited to {} bytes",
                    self.state.config.ws_max_message_bytes
                ),
                CLOSE_TOO_BIG,
            ),
            Ending::JoinTimeout => (
                Refusal::WsJoinTimeout,
                "join_timeout",
                format!(
                    "no channel joined within {} s",
                    self.state.config.ws_join_timeout_secs
                ),
                CLOSE_POLICY,
            ),
            Ending::Expired => (
                Refusal::SessionExpired,
                "session_expired",
                "the token expired: join again with a fresh one".to_owned(),
                CLOSE_POLICY,
            ),
        };
        self.state.refusals.count(refusal);
        // The member leaves before the client is told, so that a client
        // that rejoins at once is not refused as already joined elsewhere.
        self.leave().await;
        let _ = send(socket, &ServerMsg::error(code, message, None)).await;
        let _ = socket.close(close, code).await;
        linger(socket).await;
    }

    async fn leave(&mut self) {
        if let Some(j) = self.membership.take() {
            j.worker.leave(j.peer).await;
        }
        self.left_channel();
    }

    /// Not in a channel any more: the join timeout runs again.
    fn left_channel(&mut self) {
        self.membership = None;
        self.expires = None;
        self.set_resume_token(None);
        if self.join_deadline.is_none() {
            self.join_deadline = Some(Instant::now() + self.state.join_timeout());
        }
    }

    async fn handle(&mut self, text: &str) -> Option<ServerMsg> {
        let max = self.state.config.ws_max_message_bytes;
        let request = match ClientRequest::parse(text, max) {
            Ok(r) => r,
            Err(e) => {
                if e.code == "invalid_name" {
                    self.state.refusals.count(Refusal::BadName);
                }
                return Some(ServerMsg::error(e.code, e.message, e.request));
            }
        };
        match request {
            ClientRequest::Ping => Some(ServerMsg::Pong),
            ClientRequest::Leave => {
                if self.membership.is_none() {
                    return Some(ServerMsg::error(
                        "not_joined",
                        "not in a channel",
                        Some("leave"),
                    ));
                }
                self.leave().await;
                None
            }
            ClientRequest::Authorize(ask) => Some(self.authorize(ask)),
            ClientRequest::Join { ask, offer, p2p } => Some(self.join(ask, offer, p2p).await),
            ClientRequest::SfuJoin { offer, epoch } => self.sfu_join(offer, epoch).await,
            ClientRequest::Signal { to, epoch, data } => self.signal(to, epoch, data).await,
            ClientRequest::Switched { mode, epoch } => {
                self.report(Report::Switched { mode, epoch }, "switched")
                    .await
            }
            ClientRequest::P2pFailed {
                peer,
                failure,
                epoch,
            } => {
                let report = Report::P2pFailed {
                    peer,
                    failure,
                    epoch,
                };
                self.report(report, "p2p_failed").await
            }
            ClientRequest::Moderate { peer, action } => self.moderate(peer, action).await,
            ClientRequest::Hand { raised } => self.hand(raised).await,
            ClientRequest::Restart { offer } => Some(self.restart(offer).await),
            ClientRequest::Resume { token } => Some(self.resume(&token).await),
        }
    }

    /// What every `authorize` and `join` is refused for first, as code and
    /// message.
    fn refused_before_ask(&self) -> Option<(&'static str, &'static str)> {
        if self.membership.is_some() {
            return Some(("already_joined", "leave first to join another channel"));
        }
        if self.state.is_draining() {
            return Some(("shutting_down", "the server is shutting down"));
        }
        None
    }

    /// `ask` as the admission checks take it.
    fn join_ask<'a>(&self, ask: &'a Ask) -> JoinAsk<'a> {
        JoinAsk {
            remote: self.remote,
            token: ask.token.as_deref(),
            channel: &ask.channel,
            need: need(ask.role),
            dev_identity: ask.identity.as_deref(),
        }
    }

    fn authorize(&mut self, ask: Ask) -> ServerMsg {
        let req = "authorize";
        if let Some((code, message)) = self.refused_before_ask() {
            return ServerMsg::error(code, message, Some(req));
        }
        let grants = match self.state.admit(&self.join_ask(&ask)) {
            Ok(g) => g,
            Err(d) => return refusal(d, req),
        };
        let ice_servers = crate::turn::ice_servers(&self.state.config, &grants.sub, unix_now());
        let msg = ServerMsg::Authorized {
            identity: grants.sub,
            channel: ask.channel.clone(),
            can_publish: grants.can_publish,
            can_subscribe: grants.can_subscribe,
            can_moderate: grants.can_moderate,
            expires: (grants.exp != u64::MAX).then_some(grants.exp),
            ice_servers,
        };
        self.authorized = Some(ask);
        msg
    }

    async fn join(&mut self, ask: Ask, offer: String, p2p: bool) -> ServerMsg {
        let req = "join";
        if let Some((code, message)) = self.refused_before_ask() {
            return ServerMsg::error(code, message, Some(req));
        }
        // A join after an `authorize` for the same channel (and role) uses
        // that token and was counted then.
        let (ask, admitted) = match self.authorized.take() {
            Some(before)
                if before.channel == ask.channel
                    && ask.role.is_none_or(|r| Some(r) == before.role)
                    && ask
                        .token
                        .as_ref()
                        .is_none_or(|t| Some(t) == before.token.as_ref())
                    && ask
                        .identity
                        .as_ref()
                        .is_none_or(|i| Some(i) == before.identity.as_ref()) =>
            {
                (before, true)
            }
            _ => (ask, false),
        };
        let checked = if admitted {
            self.state.authorize(&self.join_ask(&ask))
        } else {
            self.state.admit(&self.join_ask(&ask))
        };
        let grants = match checked {
            Ok(g) => g,
            Err(d) => return refusal(d, req),
        };
        let role = ask.role.unwrap_or(if grants.can_publish {
            Role::Speaker
        } else {
            Role::Listener
        });
        // The token's region claim, else the load balancer's or the node's.
        let region = grants.region.as_deref().unwrap_or(&self.region);
        let upstream = match self.state.place_join(&ask.channel, region).await {
            Ok(upstream) => upstream,
            Err(Ok((_, url))) => {
                return ServerMsg::Redirect {
                    url,
                    channel: ask.channel.clone(),
                    request: Some(req.to_owned()),
                }
            }
            Err(Err(denied)) => return refusal(denied, req),
        };
        let worker = match self.state.workers.place(&ask.channel) {
            Ok(w) => w,
            Err(full) => return refusal(self.state.room_full(full), req),
        };
        let res = worker
            .join(JoinRequest {
                channel: ask.channel.clone(),
                identity: grants.sub.clone(),
                role,
                offer,
                can_publish: grants.can_publish,
                can_moderate: grants.can_moderate,
                events: Some(self.events_tx.clone()),
                upstream: upstream.or(worker.upstream),
                capability: match (p2p, grants.p2p) {
                    (_, Some(false)) => Capability::SfuOnly(SfuOnly::Token),
                    (true, _) => Capability::P2p,
                    (false, _) => Capability::SfuOnly(SfuOnly::Client),
                },
            })
            .await;
        match res {
            Ok(j) => {
                self.state.joined(&ask.channel, j.member_count);
                self.membership = Some(Membership {
                    peer: j.peer,
                    source: j.source.0,
                    channel: ask.channel.clone(),
                    worker,
                    restarts: RestartBudget::new(self.state.config.ice_restarts_per_minute),
                });
                self.join_deadline = None;
                self.expires = instant_of_unix(grants.exp);
                self.set_resume_token(self.new_resume_token());
                ServerMsg::Joined(Box::new(JoinedMsg {
                    peer: j.peer.0,
                    source: j.source.0,
                    slots: j.slots,
                    answer: j.answer,
                    members: j.members,
                    member_count: j.member_count,
                    voices: j.voices,
                    active_speakers: j.active_speakers,
                    dominant_speaker: j.dominant_speaker,
                    dominant_source: j.dominant_source,
                    resume_token: self.resume_token.clone(),
                    resume_grace_secs: self.resume_grace_secs(),
                    mode: j.mode.name(),
                    epoch: j.epoch,
                    mesh_connect_timeout_ms: MESH_CONNECT_TIMEOUT.as_millis() as u64,
                }))
            }
            Err(JoinError::Full(full)) => refusal(self.state.room_full(full), req),
            Err(JoinError::Draining) => {
                ServerMsg::error("shutting_down", "the server is shutting down", Some(req))
            }
            Err(e @ JoinError::Refused(_)) => {
                ServerMsg::error("invalid_offer", e.to_string(), Some(req))
            }
            Err(e) => ServerMsg::error("internal", e.to_string(), Some(req)),
        }
    }

    /// A fresh resume token, when resume is on.
    fn new_resume_token(&self) -> Option<String> {
        (self.state.config.resume_grace_secs > 0)
            .then(secret_id)
            .flatten()
    }

    /// This member's resume token from now on: the session holds it live
    /// (a `resume` with it elsewhere takes the member from this socket).
    fn set_resume_token(&mut self, token: Option<String>) {
        if let Some(old) = self.resume_token.take() {
            self.state.resumes.release_live(&old);
        }
        self.displaced = token.as_deref().map(|t| self.state.resumes.hold_live(t));
        self.resume_token = token;
    }

    /// The grace period clients are told: 0 when this member has no token.
    fn resume_grace_secs(&self) -> u64 {
        if self.resume_token.is_some() {
            self.state.config.resume_grace_secs
        } else {
            0
        }
    }

    /// `restart`: the member's new offer after its network changed.
    async fn restart(&mut self, offer: String) -> ServerMsg {
        let req = Some("restart");
        let Some(j) = &mut self.membership else {
            return ServerMsg::error("not_joined", "join a channel first", req);
        };
        if let Err(wait) = j.restarts.take(std::time::Instant::now()) {
            self.state.refusals.count(Refusal::RestartRate);
            let mut denied = Denied::new(
                429,
                "rate_limited",
                format!(
                    "at most {} ICE restarts a minute",
                    self.state.config.ice_restarts_per_minute
                ),
            );
            denied.retry_after = Some(wait);
            return refusal(denied, "restart");
        }
        match j.worker.restart(j.peer, offer).await {
            Ok(answer) => ServerMsg::Restarted { answer },
            Err(e @ RestartError::Refused(_)) => {
                ServerMsg::error("invalid_offer", e.to_string(), req)
            }
            Err(RestartError::Left) => {
                ServerMsg::error("not_joined", "the member left the channel", req)
            }
            Err(e @ RestartError::WorkerGone) => ServerMsg::error("internal", e.to_string(), req),
        }
    }

    /// `resume`: this socket takes over a member whose socket dropped.
    async fn resume(&mut self, token: &str) -> ServerMsg {
        let req = Some("resume");
        if self.membership.is_some() {
            return ServerMsg::error("already_joined", "this socket is in a channel", req);
        }
        let Some(away) = self.state.resumes.take(token).await else {
            self.state.refusals.count(Refusal::Resume);
            return ServerMsg::error(
                "resume_failed",
                "no member waits for this token (used, unknown, or past its grace period): join again",
                req,
            );
        };
        let Away {
            membership,
            events_tx,
            events_rx,
            expires,
            missed,
        } = away;
        tracing::debug!(peer = %membership.peer, "member resumed on a new socket");
        self.events_tx = events_tx;
        self.events_rx = events_rx;
        self.expires = expires;
        self.join_deadline = None;
        self.authorized = None;
        self.outbox.extend(missed);
        self.set_resume_token(self.new_resume_token());
        let msg = ServerMsg::Resumed {
            peer: membership.peer.0,
            source: membership.source,
            channel: membership.channel.clone(),
            resume_token: self.resume_token.clone().unwrap_or_default(),
            resume_grace_secs: self.resume_grace_secs(),
        };
        self.membership = Some(membership);
        msg
    }

    async fn moderate(&mut self, peer: PeerId, action: Moderation) -> Option<ServerMsg> {
        let req = Some("moderate");
        let Some(j) = &self.membership else {
            return Some(ServerMsg::error("not_joined", "join a channel first", req));
        };
        match j.worker.moderate(j.peer, peer, action).await {
            // Success is seen as the member_updated broadcast.
            Ok(()) => None,
            Err(ModerateError::Forbidden) => Some(ServerMsg::error(
                "forbidden",
                "your token does not allow moderation",
                req,
            )),
            Err(e @ (ModerateError::BeyondOwnGrant | ModerateError::TargetModerates)) => {
                Some(ServerMsg::error("forbidden", e.to_string(), req))
            }
            Err(e @ ModerateError::CannotSpeak) => {
                Some(ServerMsg::error("cannot_speak", e.to_string(), req))
            }
            Err(ModerateError::NotFound) => Some(ServerMsg::error(
                "not_found",
                format!("no member {} in this channel", peer.0),
                req,
            )),
            Err(e) => Some(ServerMsg::error("bad_request", e.to_string(), req)),
        }
    }

    /// (hybrid) `sfu_join`: this member's SFU session during a switch up;
    /// the answer comes as `sfu_joined`.
    async fn sfu_join(&mut self, offer: String, epoch: u64) -> Option<ServerMsg> {
        let req = Some("sfu_join");
        let Some(j) = &self.membership else {
            return Some(ServerMsg::error("not_joined", "join a channel first", req));
        };
        match j.worker.sfu_join(j.peer, offer, epoch).await {
            Ok(()) => None,
            Err(SfuError::Refused(e)) => Some(ServerMsg::error(e.code(), e.to_string(), req)),
            Err(e @ SfuError::Offer(_)) => {
                Some(ServerMsg::error("invalid_offer", e.to_string(), req))
            }
            Err(e @ SfuError::WorkerGone) => Some(ServerMsg::error("internal", e.to_string(), req)),
        }
    }

    /// (hybrid) `signal`: relayed to the other member, or refused.
    async fn signal(&mut self, to: PeerId, epoch: u64, data: SignalData) -> Option<ServerMsg> {
        let req = Some("signal");
        let Some(j) = &self.membership else {
            return Some(ServerMsg::error("not_joined", "join a channel first", req));
        };
        match j.worker.signal(j.peer, to, epoch, data).await {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(ServerMsg::error(e.code(), e.to_string(), req)),
            None => Some(ServerMsg::error(
                "internal",
                "the media worker stopped",
                req,
            )),
        }
    }

    /// (hybrid) `switched` and `p2p_failed`: a report the policy takes or
    /// ignores (stale, wrong mode); an ignored one is answered with an
    /// error, which a client may also ignore.
    async fn report(&mut self, report: Report, req: &'static str) -> Option<ServerMsg> {
        let Some(j) = &self.membership else {
            return Some(ServerMsg::error(
                "not_joined",
                "join a channel first",
                Some(req),
            ));
        };
        match j.worker.report(j.peer, report).await {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(ServerMsg::error("ignored", e.to_string(), Some(req))),
            None => Some(ServerMsg::error(
                "internal",
                "the media worker stopped",
                Some(req),
            )),
        }
    }

    /// `raise_hand` / `lower_hand`: success is seen as the `hand` message
    /// (none when nothing changed).
    async fn hand(&mut self, raised: bool) -> Option<ServerMsg> {
        let req = Some(if raised { "raise_hand" } else { "lower_hand" });
        let Some(j) = &self.membership else {
            return Some(ServerMsg::error("not_joined", "join a channel first", req));
        };
        let e = match j.worker.hand(j.peer, raised).await {
            Ok(()) => return None,
            Err(e) => e,
        };
        let code = match e {
            HandError::NotJoined => "not_joined",
            HandError::AlreadySpeaker => "already_speaker",
            HandError::Full(_) => {
                self.state.refusals.count(Refusal::HandsFull);
                "hands_full"
            }
            HandError::WorkerGone => "internal",
        };
        Some(ServerMsg::error(code, e.to_string(), req))
    }
}

/// What a join with `role` needs of the token.
fn need(role: Option<Role>) -> Need {
    match role {
        Some(Role::Speaker) => Need::Publish,
        Some(Role::Listener) => Need::Subscribe,
        None => Need::Either,
    }
}

/// A refusal as the protocol's error message.
fn refusal(denied: Denied, request: &str) -> ServerMsg {
    let retry_after_secs = denied.retry_after_secs();
    ServerMsg::Error {
        code: denied.code.to_owned(),
        message: denied.message,
        request: Some(request.to_owned()),
        retry_after_secs,
    }
}

/// The instant of a Unix time in seconds, `None` when it is too far ahead
/// to matter (development mode's "never").
fn instant_of_unix(unix: u64) -> Option<Instant> {
    let left = Duration::from_secs(unix.saturating_sub(unix_now()));
    Instant::now().checked_add(left)
}

/// Waits for `notice`, or forever.
async fn notice(notice: Option<Arc<tokio::sync::Notify>>) {
    match notice {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// After the server's close frame: waits (at most [`LINGER`]) for the
/// client to answer it and close, so that the socket is not closed with
/// unread data in it, which resets the connection and discards the error
/// and close frame if the client did not read them yet. After an
/// oversized frame the rest of it is unread and the stream reads nothing
/// more: then the wait runs out.
async fn linger(socket: &mut Socket) {
    let deadline = Instant::now() + LINGER;
    let mut errors = 0;
    let _ = tokio::time::timeout_at(deadline, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Close(_))) => return,
                // The stream gave up (as it does after an oversized frame)
                // or keeps failing: only time lets the client read.
                None => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
                Some(Err(_)) if errors >= 3 => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
                Some(Err(_)) => errors += 1,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// Whether a read failed because a frame or message was over the limit.
fn is_too_large(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Capacity(_))
}

async fn send(socket: &mut Socket, msg: &ServerMsg) -> Result<(), tungstenite::Error> {
    socket
        .send_text(serde_json::to_string(msg).unwrap_or_default())
        .await
}
