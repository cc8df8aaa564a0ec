//! The WebSocket room protocol (docs/PROTOCOL.md): one socket, one member.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use media_core::{PeerId, Role};

use crate::protocol::{ClientMsg, ServerMsg};
use crate::rooms::{ModerateError, Moderation};
use crate::state::{unix_now, AppState, Need};
use crate::worker::{
    member_events, EventSink, JoinError, JoinRequest, MemberEvents, Signaling, Worker,
};

/// Largest message a client may send. Offers are a few KiB.
const MAX_MESSAGE: usize = 64 * 1024;

/// `GET /ws`.
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    // Frames up to 1 MiB are read so that an oversized one gets an error
    // message (and the socket stays usable) rather than a dropped connection.
    // The read buffer grows to the largest frame when one comes; tungstenite's
    // default starts it at 128 KiB, which was half of a listener's memory.
    ws.max_message_size(1024 * 1024)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| Session::new(state, remote).run(socket))
}

/// The channel membership of a session: its peer and the worker that
/// carries it.
struct Membership {
    peer: PeerId,
    worker: Worker,
}

struct Session {
    state: Arc<AppState>,
    remote: SocketAddr,
    membership: Option<Membership>,
    events_tx: EventSink,
    events_rx: MemberEvents,
}

impl Session {
    fn new(state: Arc<AppState>, remote: SocketAddr) -> Session {
        let (events_tx, events_rx) = member_events(Signaling::WebSocket);
        Session {
            state,
            remote,
            membership: None,
            events_tx,
            events_rx,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        // TURN usernames carry an identity; before the join there is none,
        // so the connection's address stands in.
        let ice_servers = crate::turn::ice_servers(
            &self.state.config,
            &format!("ws-{}", self.remote),
            unix_now(),
        );
        if send(&mut socket, &ServerMsg::Hello { ice_servers })
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                msg = socket.recv() => {
                    let Some(Ok(msg)) = msg else { break };
                    let reply = match msg {
                        Message::Text(t) => self.handle(t.as_str()).await,
                        Message::Binary(_) => Some(ServerMsg::error("bad_request", "binary frames are not part of the protocol", None)),
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => None,
                    };
                    if let Some(r) = reply {
                        if send(&mut socket, &r).await.is_err() {
                            break;
                        }
                    }
                }
                ev = self.events_rx.recv() => {
                    let Some(ev) = ev else { break };
                    // Our own departure (ICE lost, removed) ends the membership.
                    if let (ServerMsg::MemberLeft { peer, .. }, Some(j)) = (&ev, &self.membership) {
                        if *peer == j.peer.0 {
                            self.membership = None;
                        }
                    }
                    if send(&mut socket, &ev).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.leave().await;
    }

    async fn leave(&mut self) {
        if let Some(j) = self.membership.take() {
            j.worker.leave(j.peer).await;
        }
    }

    async fn handle(&mut self, text: &str) -> Option<ServerMsg> {
        if text.len() > MAX_MESSAGE {
            return Some(ServerMsg::error(
                "too_large",
                "messages are limited to 64 KiB",
                None,
            ));
        }
        let msg: ClientMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return Some(ServerMsg::error(
                    "bad_request",
                    format!("not a protocol message: {e}"),
                    None,
                ))
            }
        };
        match msg {
            ClientMsg::Ping => Some(ServerMsg::Pong),
            ClientMsg::Leave => {
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
            ClientMsg::Join {
                channel,
                offer,
                token,
                role,
                identity,
            } => Some(self.join(channel, offer, token, role, identity).await),
            ClientMsg::Moderate { action, peer, role } => self.moderate(&action, peer, role).await,
        }
    }

    async fn join(
        &mut self,
        channel: String,
        offer: String,
        token: Option<String>,
        role: Option<String>,
        identity: Option<String>,
    ) -> ServerMsg {
        let req = Some("join");
        if self.membership.is_some() {
            return ServerMsg::error("already_joined", "leave first to join another channel", req);
        }
        if self.state.is_draining() {
            return ServerMsg::error("shutting_down", "the server is shutting down", req);
        }
        let role = match role.as_deref() {
            None => None,
            Some("speaker") => Some(Role::Speaker),
            Some("listener") => Some(Role::Listener),
            Some(other) => {
                return ServerMsg::error(
                    "bad_request",
                    format!("role must be \"speaker\" or \"listener\", not {other:?}"),
                    req,
                )
            }
        };
        // Without an explicit role: a speaker if the token may publish.
        let need = match role {
            Some(Role::Listener) => Need::Subscribe,
            _ => Need::Publish,
        };
        let grants = match self.state.authorize(
            self.remote,
            token.as_deref(),
            &channel,
            need,
            identity.as_deref(),
        ) {
            Ok(g) => g,
            Err(d) if role.is_none() && d.code == "forbidden" => {
                // Not allowed to publish: try as a listener.
                match self.state.authorize(
                    self.remote,
                    token.as_deref(),
                    &channel,
                    Need::Subscribe,
                    identity.as_deref(),
                ) {
                    Ok(g) => g,
                    Err(d) => return ServerMsg::error(d.code, d.message, req),
                }
            }
            Err(d) => return ServerMsg::error(d.code, d.message, req),
        };
        let role = role.unwrap_or(if grants.can_publish {
            Role::Speaker
        } else {
            Role::Listener
        });
        let worker = self.state.workers.for_channel(&channel).clone();
        let res = worker
            .join(JoinRequest {
                channel,
                identity: grants.sub.clone(),
                role,
                offer,
                can_moderate: grants.can_moderate,
                events: Some(self.events_tx.clone()),
            })
            .await;
        match res {
            Ok(j) => {
                self.membership = Some(Membership {
                    peer: j.peer,
                    worker,
                });
                ServerMsg::Joined {
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
                }
            }
            Err(JoinError::Draining) => {
                ServerMsg::error("shutting_down", "the server is shutting down", req)
            }
            Err(e @ JoinError::Refused(_)) => ServerMsg::error("invalid_offer", e.to_string(), req),
            Err(e) => ServerMsg::error("internal", e.to_string(), req),
        }
    }

    async fn moderate(
        &mut self,
        action: &str,
        peer: u64,
        role: Option<String>,
    ) -> Option<ServerMsg> {
        let req = Some("moderate");
        let Some(j) = &self.membership else {
            return Some(ServerMsg::error("not_joined", "join a channel first", req));
        };
        let action = match (action, role.as_deref()) {
            ("mute", _) => Moderation::Mute(true),
            ("unmute", _) => Moderation::Mute(false),
            ("set_role", Some("speaker")) => Moderation::SetRole(Role::Speaker),
            ("set_role", Some("listener")) => Moderation::SetRole(Role::Listener),
            ("set_role", _) => {
                return Some(ServerMsg::error(
                    "bad_request",
                    "set_role needs role \"speaker\" or \"listener\"",
                    req,
                ))
            }
            (other, _) => {
                return Some(ServerMsg::error(
                    "bad_request",
                    format!("unknown action {other:?}: mute, unmute or set_role"),
                    req,
                ))
            }
        };
        match j.worker.moderate(j.peer, PeerId(peer), action).await {
            // Success is seen as the member_updated broadcast.
            Ok(()) => None,
            Err(ModerateError::Forbidden) => Some(ServerMsg::error(
                "forbidden",
                "your token does not allow moderation",
                req,
            )),
            Err(ModerateError::NotFound) => Some(ServerMsg::error(
                "not_found",
                format!("no member {peer} in this channel"),
                req,
            )),
            Err(e) => Some(ServerMsg::error("bad_request", e.to_string(), req)),
        }
    }
}

async fn send(socket: &mut WebSocket, msg: &ServerMsg) -> Result<(), axum::Error> {
    let text = serde_json::to_string(msg).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}
