//! A media worker: one [`Engine`] and the UDP socket it owns, on its own
//! task. Signaling talks to it over a channel; it answers over one-shot
//! channels and pushes room events to each WebSocket member.
//!
//! The engine's timeouts are honoured exactly: the task sleeps until the
//! deadline `poll_output` returned, unless a datagram or a request comes
//! first. There is no periodic tick.
//!
//! Datagrams move in batches (`udp`): one wake-up reads what the socket has
//! queued with `recvmmsg`, and the copies the engine makes of them leave
//! with `sendmmsg`, up to 32 per system call.
//!
//! One worker carries every channel today. The seam for more is
//! [`Workers`](crate::server::Workers): a channel maps to one worker; a
//! channel spanning workers would link them with relay messages.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_core::{
    Command, Engine, EngineConfig, EngineStats, Event, Input, LeaveReason, LinkId, Output, PeerId,
    RelayMsg, Role, SourceId,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{Histogram, JoinBuckets};
use crate::protocol::{Member, ServerMsg, Voice};

mod udp;

pub use udp::SendDrops;

/// `recvmmsg` calls per wake-up at most (each up to [`udp::BATCH`]
/// datagrams) before requests and timers get their turn.
const RECV_CALLS_PER_WAKE: usize = 4;

/// A join, as signaling hands it to the worker.
#[derive(Debug)]
pub struct JoinRequest {
    /// Channel name.
    pub channel: String,
    /// Who joins.
    pub identity: String,
    /// Speaker or listener.
    pub role: Role,
    /// SDP offer.
    pub offer: String,
    /// May moderate others in the channel.
    pub can_moderate: bool,
    /// Where to push room events (WebSocket members); `None` for WHIP/WHEP.
    pub events: Option<mpsc::UnboundedSender<ServerMsg>>,
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The new member's peer id.
    pub peer: PeerId,
    /// Its voice.
    pub source: SourceId,
    /// Receive slots granted.
    pub slots: usize,
    /// SDP answer.
    pub answer: String,
    /// The channel's listed members, the new one included.
    pub members: Vec<Member>,
    /// All members of the channel on this node.
    pub member_count: usize,
    /// Named voices of other nodes.
    pub voices: Vec<Voice>,
    /// Speaking now (peers of this node).
    pub active_speakers: Vec<u64>,
    /// Dominant speaker, if a member here.
    pub dominant_speaker: Option<u64>,
    /// Dominant speaker's voice.
    pub dominant_source: Option<u32>,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server is draining.
    #[error("the server is shutting down")]
    Draining,
    /// The engine refused (bad offer, bad channel name…).
    #[error("{0}")]
    Refused(media_core::Error),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}

/// A moderation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moderation {
    /// Server-mute (true) or unmute.
    Mute(bool),
    /// Change the role.
    SetRole(Role),
}

/// Why a moderation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModerateError {
    /// The moderator has no `can_moderate` grant or is not joined.
    #[error("not allowed to moderate")]
    Forbidden,
    /// No such member in the moderator's channel.
    #[error("no such member in this channel")]
    NotFound,
    /// The engine refused.
    #[error("{0}")]
    Refused(String),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}

/// What `/metrics` reports of a worker.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Engine counters.
    pub stats: EngineStats,
    /// Channels with members.
    pub channels: usize,
    /// Members by role.
    pub speakers: usize,
    /// Members by role.
    pub listeners: usize,
    /// Joins by outcome.
    pub joins_ok: u64,
    /// Joins refused by the engine (bad offer…).
    pub joins_refused: u64,
    /// Datagrams the socket did not take, by reason.
    pub send_drops: SendDrops,
    /// System calls that sent datagrams (`sendmmsg`, up to a batch each).
    pub send_calls: u64,
    /// System calls that returned datagrams (`recvmmsg`).
    pub recv_calls: u64,
    /// Time from a datagram's arrival to the last forwarded copy handed to
    /// the socket, for datagrams that were forwarded.
    pub forward_latency: Histogram,
    /// Time from a join request to the member's media connected.
    pub join_time: Histogram<JoinBuckets>,
    /// Members still joined (for the drain).
    pub members: usize,
}

enum Request {
    Join(JoinRequest, oneshot::Sender<Result<Joined, JoinError>>),
    Leave(PeerId, oneshot::Sender<bool>),
    Moderate {
        by: PeerId,
        target: PeerId,
        action: Moderation,
        reply: oneshot::Sender<Result<(), ModerateError>>,
    },
    Snapshot(oneshot::Sender<Snapshot>),
    Drain(Duration),
    /// A relay message arrived over a link (from the cascade transport).
    Relay(LinkId, RelayMsg),
    /// An engine command from the cluster side (upstream, link closed).
    Engine(Command),
    /// (edge) Subscribe every channel again.
    Resubscribe,
}

/// Handle to a running worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    tx: mpsc::Sender<Request>,
    udp_addr: SocketAddr,
}

impl Worker {
    /// Binds the media socket and starts the worker task. Relay messages the
    /// engine emits go to `relay_out` (the cascade transport). With an
    /// `upstream`, every channel follows the origin over that link (an edge).
    pub async fn spawn(
        udp: SocketAddr,
        mut config: EngineConfig,
        relay_out: Option<mpsc::UnboundedSender<(LinkId, RelayMsg)>>,
        upstream: Option<LinkId>,
    ) -> io::Result<Worker> {
        let socket = UdpSocket::bind(udp).await?;
        let udp_addr = socket.local_addr()?;
        config.host_candidates = vec![udp_addr];
        let (tx, rx) = mpsc::channel(1024);
        let engine = Engine::new(config, Instant::now());
        let task = Task {
            engine,
            socket: Arc::new(socket),
            rx,
            members: HashMap::new(),
            channels: HashMap::new(),
            views: HashMap::new(),
            counts: HashMap::new(),
            pending: HashMap::new(),
            next_peer: 1,
            draining: false,
            relay_out,
            upstream,
            snapshot: Snapshot::default(),
            outbox: udp::Outbox::default(),
            forwarded_arrivals: Vec::new(),
        };
        tokio::spawn(task.run());
        Ok(Worker { tx, udp_addr })
    }

    /// The media socket's address (the ICE host candidate).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Joins a member; resolves with the answer.
    pub async fn join(&self, req: JoinRequest) -> Result<Joined, JoinError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Join(req, reply))
            .await
            .map_err(|_| JoinError::WorkerGone)?;
        rx.await.map_err(|_| JoinError::WorkerGone)?
    }

    /// Makes a member leave. False when it was not joined.
    pub async fn leave(&self, peer: PeerId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Leave(peer, reply)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// `by` moderates `target` (same channel, `by` must be allowed).
    pub async fn moderate(
        &self,
        by: PeerId,
        target: PeerId,
        action: Moderation,
    ) -> Result<(), ModerateError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Moderate {
                by,
                target,
                action,
                reply,
            })
            .await
            .map_err(|_| ModerateError::WorkerGone)?;
        rx.await.map_err(|_| ModerateError::WorkerGone)?
    }

    /// Counters for `/metrics`.
    pub async fn snapshot(&self) -> Snapshot {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Snapshot(reply)).await.is_err() {
            return Snapshot::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Hands the engine a relay message that arrived over `link`.
    pub fn relay_in(&self, link: LinkId, msg: RelayMsg) {
        // Media must not wait behind a full queue: drop it (it is stale by
        // then); control waits.
        if let Err(mpsc::error::TrySendError::Full(Request::Relay(link, msg))) =
            self.tx.try_send(Request::Relay(link, msg))
        {
            if !matches!(msg, RelayMsg::Media { .. }) {
                let tx = self.tx.clone();
                tokio::spawn(async move { tx.send(Request::Relay(link, msg)).await });
            }
        }
    }

    /// (edge) Subscribes every channel again over the upstream link (after
    /// it was rebuilt).
    pub async fn resubscribe(&self) {
        let _ = self.tx.send(Request::Resubscribe).await;
    }

    /// Sends the engine a command about channels and links.
    pub async fn engine_command(&self, command: Command) {
        let _ = self.tx.send(Request::Engine(command)).await;
    }

    /// Refuses new joins and tells every member to move before `deadline`.
    pub async fn drain(&self, deadline: Duration) {
        let _ = self.tx.send(Request::Drain(deadline)).await;
    }
}

/// Listeners are announced to the others (`member_joined`/`member_left`,
/// and in a joiner's member list) only while their channel has at most this
/// many members on the node; speakers always are. Announcing every listener
/// of a 10,000-member hall to every other would be 10^8 messages, and a
/// member list nobody can read. `member_count` tells everyone how many there
/// are.
pub const LISTED_LISTENERS_UP_TO: usize = 100;

/// Least time between two `member_count` messages of a channel.
const MEMBER_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// `member_count` state of a channel.
#[derive(Default)]
struct CountState {
    last_sent: Option<Instant>,
    dirty: bool,
}

struct MemberState {
    channel: String,
    /// The others were told about this member (`member_joined`), so they
    /// are told when it leaves.
    listed: bool,
    identity: String,
    role: Role,
    muted: bool,
    source: Option<SourceId>,
    can_moderate: bool,
    events: Option<mpsc::UnboundedSender<ServerMsg>>,
    /// When the join request came (`sfu_join_seconds`).
    joined_at: Instant,
}

impl MemberState {
    fn view(&self, peer: PeerId) -> Member {
        Member {
            peer: peer.0,
            identity: self.identity.clone(),
            role: role_name(self.role).to_string(),
            muted: self.muted,
            source: self.source.map_or(0, |s| s.0),
        }
    }

    fn send(&self, msg: ServerMsg) {
        if let Some(tx) = &self.events {
            let _ = tx.send(msg);
        }
    }
}

/// `"speaker"` / `"listener"`.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Speaker => "speaker",
        Role::Listener => "listener",
    }
}

/// The speaker state of a channel, for members who join later.
#[derive(Default)]
struct ChannelView {
    active: Vec<SourceId>,
    dominant: Option<SourceId>,
    voices: BTreeMap<u32, String>,
}

struct Task {
    engine: Engine,
    socket: Arc<UdpSocket>,
    rx: mpsc::Receiver<Request>,
    members: HashMap<PeerId, MemberState>,
    channels: HashMap<String, BTreeMap<PeerId, ()>>,
    /// What a member joining now needs to know of each channel.
    views: HashMap<String, ChannelView>,
    /// `member_count` throttling per channel.
    counts: HashMap<String, CountState>,
    pending: HashMap<PeerId, oneshot::Sender<Result<Joined, JoinError>>>,
    next_peer: u64,
    draining: bool,
    relay_out: Option<mpsc::UnboundedSender<(LinkId, RelayMsg)>>,
    upstream: Option<LinkId>,
    snapshot: Snapshot,
    /// Transmits of the engine waiting for the next `sendmmsg`.
    outbox: udp::Outbox,
    /// Arrival times of the datagrams forwarded since the last flush.
    forwarded_arrivals: Vec<Instant>,
}

impl Task {
    async fn run(mut self) {
        let local = match self.socket.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let mut inbox = udp::Inbox::new();
        let mut deadline = self.flush();
        // One timer, moved only when the engine's deadline moves.
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut armed = Some(deadline);
        loop {
            tokio::select! {
                biased;
                req = self.rx.recv() => {
                    let Some(req) = req else { return };
                    self.request(req);
                    deadline = self.flush();
                }
                ready = self.socket.readable() => {
                    if ready.is_err() {
                        // The runtime's I/O driver is gone.
                        return;
                    }
                    self.receive(&mut inbox, local);
                    deadline = self.flush();
                }
                () = &mut sleep => {
                    armed = None;
                    let _ = self.engine.handle_input(Input::Timeout(Instant::now()));
                    deadline = self.flush();
                }
            }
            if armed != Some(deadline) {
                sleep.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
        }
    }

    /// Reads what the socket has queued (a few batches at most) and hands it
    /// to the engine.
    fn receive(&mut self, inbox: &mut udp::Inbox, local: SocketAddr) {
        for _ in 0..RECV_CALLS_PER_WAKE {
            // `Ok(None)`: drained (readiness cleared); an error (an ICMP
            // report surfacing, say) ends this wake-up too.
            let Ok(Some(n)) = inbox.recv(&self.socket) else {
                break;
            };
            let now = Instant::now();
            for i in 0..n {
                let Some((source, datagram)) = inbox.datagram(i) else {
                    continue;
                };
                let forwarded = self.engine.stats().rtp_forwarded;
                let _ = self.engine.handle_input(Input::Receive {
                    now,
                    source,
                    destination: local,
                    datagram,
                });
                // Queue the copies as we go: the engine's queue stays short
                // and full batches leave before the next datagram is read.
                self.drain_outputs();
                if self.engine.stats().rtp_forwarded > forwarded {
                    self.forwarded_arrivals.push(now);
                }
            }
        }
        self.snapshot.recv_calls = inbox.calls;
    }

    /// Sends what the engine queued, handles its events; returns when to
    /// wake it next. Each datagram forwarded since the last flush counts in
    /// the latency histogram: from its arrival to now, when its last copy
    /// has been handed to the socket.
    fn flush(&mut self) -> Instant {
        let deadline = self
            .drain_outputs()
            .min(self.send_member_counts(Instant::now()));
        self.outbox.flush(&self.socket);
        if !self.forwarded_arrivals.is_empty() {
            let sent = Instant::now();
            for at in self.forwarded_arrivals.drain(..) {
                self.snapshot
                    .forward_latency
                    .observe(sent.saturating_duration_since(at));
            }
        }
        self.snapshot.send_drops = self.outbox.drops;
        self.snapshot.send_calls = self.outbox.calls;
        self.snapshot.stats = self.engine.stats().clone();
        deadline
    }

    /// Drains the engine until its next timeout. Datagrams go to the outbox
    /// (sent whenever a batch is full; the caller flushes the rest).
    fn drain_outputs(&mut self) -> Instant {
        loop {
            match self.engine.poll_output() {
                Output::Transmit(t) => self.outbox.push(&self.socket, t.destination, t.contents),
                Output::Relay { link, msg } => {
                    if let Some(tx) = &self.relay_out {
                        let _ = tx.send((link, msg));
                    }
                }
                Output::Event(e) => self.event(e),
                Output::Timeout(t) => return t,
            }
        }
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Join(j, reply) => self.join(j, reply),
            Request::Leave(peer, reply) => {
                let ok = self
                    .engine
                    .handle_input(Input::Command {
                        now: Instant::now(),
                        command: Command::Leave { peer },
                    })
                    .is_ok();
                let _ = reply.send(ok);
            }
            Request::Moderate {
                by,
                target,
                action,
                reply,
            } => {
                let _ = reply.send(self.moderate(by, target, action));
            }
            Request::Snapshot(reply) => {
                let mut s = self.snapshot.clone();
                s.channels = self.channels.len();
                s.members = self.members.len();
                s.speakers = self
                    .members
                    .values()
                    .filter(|m| m.role == Role::Speaker)
                    .count();
                s.listeners = s.members - s.speakers;
                let _ = reply.send(s);
            }
            Request::Relay(link, msg) => {
                let _ = self.engine.handle_input(Input::Relay {
                    now: Instant::now(),
                    link,
                    msg,
                });
            }
            Request::Engine(command) => {
                if let Err(e) = self.engine.handle_input(Input::Command {
                    now: Instant::now(),
                    command,
                }) {
                    tracing::warn!(error = %e, "cluster command refused");
                }
            }
            Request::Resubscribe => {
                let channels: Vec<String> = self.channels.keys().cloned().collect();
                for channel in channels {
                    self.follow_upstream(channel);
                }
            }
            Request::Drain(deadline) => {
                self.draining = true;
                let msg = ServerMsg::Shutdown {
                    reason: "the server is shutting down; join again elsewhere".into(),
                    deadline_ms: deadline.as_millis() as u64,
                };
                for m in self.members.values() {
                    m.send(msg.clone());
                }
            }
        }
    }

    fn join(&mut self, j: JoinRequest, reply: oneshot::Sender<Result<Joined, JoinError>>) {
        if self.draining {
            let _ = reply.send(Err(JoinError::Draining));
            return;
        }
        if !self.channels.contains_key(&j.channel) {
            self.follow_upstream(j.channel.clone());
        }
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        let res = self.engine.handle_input(Input::Command {
            now: Instant::now(),
            command: Command::Join {
                peer,
                channel: j.channel.clone(),
                identity: j.identity.clone(),
                role: j.role,
                offer: j.offer,
            },
        });
        if let Err(e) = res {
            self.snapshot.joins_refused += 1;
            tracing::info!(channel = %j.channel, identity = %j.identity, error = %e, "join refused");
            let _ = reply.send(Err(JoinError::Refused(e)));
            return;
        }
        self.snapshot.joins_ok += 1;
        tracing::info!(%peer, channel = %j.channel, identity = %j.identity, role = role_name(j.role), "member joined");
        self.members.insert(
            peer,
            MemberState {
                channel: j.channel.clone(),
                listed: false,
                identity: j.identity,
                role: j.role,
                muted: false,
                source: None,
                can_moderate: j.can_moderate,
                events: j.events,
                joined_at: Instant::now(),
            },
        );
        self.channels.entry(j.channel).or_default().insert(peer, ());
        // The answer comes out of poll_output (Event::Answer) right after.
        self.pending.insert(peer, reply);
    }

    /// (edge) Makes `channel` follow the origin over the upstream link.
    fn follow_upstream(&mut self, channel: String) {
        let Some(link) = self.upstream else { return };
        let _ = self.engine.handle_input(Input::Command {
            now: Instant::now(),
            command: Command::SetUpstream {
                channel,
                link: Some(link),
            },
        });
    }

    fn moderate(
        &mut self,
        by: PeerId,
        target: PeerId,
        action: Moderation,
    ) -> Result<(), ModerateError> {
        let moderator = self.members.get(&by).ok_or(ModerateError::Forbidden)?;
        if !moderator.can_moderate {
            return Err(ModerateError::Forbidden);
        }
        let channel = moderator.channel.clone();
        match self.members.get(&target) {
            Some(m) if m.channel == channel => {}
            _ => return Err(ModerateError::NotFound),
        }
        let command = match action {
            Moderation::Mute(muted) => Command::SetMuted {
                peer: target,
                muted,
            },
            Moderation::SetRole(role) => Command::SetRole { peer: target, role },
        };
        self.engine
            .handle_input(Input::Command {
                now: Instant::now(),
                command,
            })
            .map_err(|e| ModerateError::Refused(e.to_string()))?;
        let m = self
            .members
            .get_mut(&target)
            .ok_or(ModerateError::NotFound)?;
        match action {
            Moderation::Mute(muted) => m.muted = muted,
            Moderation::SetRole(role) => m.role = role,
        }
        let view = m.view(target);
        // An unlisted listener made a speaker is announced now.
        let msg = if m.listed {
            ServerMsg::MemberUpdated { member: view }
        } else if m.role == Role::Speaker {
            m.listed = true;
            ServerMsg::MemberJoined { member: view }
        } else {
            m.send(ServerMsg::MemberUpdated { member: view });
            return Ok(());
        };
        self.broadcast(&channel, None, msg);
        Ok(())
    }

    fn broadcast(&self, channel: &str, except: Option<PeerId>, msg: ServerMsg) {
        let Some(peers) = self.channels.get(channel) else {
            return;
        };
        for peer in peers.keys() {
            if Some(*peer) == except {
                continue;
            }
            if let Some(m) = self.members.get(peer) {
                m.send(msg.clone());
            }
        }
    }

    /// The listed members of `channel` and `also` (the joiner).
    fn members_of(&self, channel: &str, also: PeerId) -> Vec<Member> {
        self.channels
            .get(channel)
            .map(|peers| {
                peers
                    .keys()
                    .filter_map(|p| {
                        let m = self.members.get(p)?;
                        (m.listed || *p == also).then(|| m.view(*p))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn channel_len(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |p| p.len())
    }

    /// Marks `channel`'s member count as changed.
    fn count_changed(&mut self, channel: &str) {
        self.counts.entry(channel.to_string()).or_default().dirty = true;
    }

    /// Sends the member counts that changed and whose interval passed;
    /// returns when the next one is due (far away when none is).
    fn send_member_counts(&mut self, now: Instant) -> Instant {
        let mut next = now + std::time::Duration::from_secs(3600);
        let mut due = Vec::new();
        self.counts.retain(|channel, c| {
            if !c.dirty {
                // Forget channels that went quiet for a while.
                return c.last_sent.is_some_and(|t| now < t + MEMBER_COUNT_INTERVAL);
            }
            match c.last_sent.map(|t| t + MEMBER_COUNT_INTERVAL) {
                Some(at) if at > now => next = next.min(at),
                _ => {
                    c.dirty = false;
                    c.last_sent = Some(now);
                    due.push(channel.clone());
                }
            }
            true
        });
        for channel in due {
            let count = self.channel_len(&channel);
            self.broadcast(&channel, None, ServerMsg::MemberCount { count });
        }
        next
    }

    fn peer_of(&self, source: SourceId) -> Option<u64> {
        self.engine.source_peer(source).map(|p| p.0)
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Answer {
                peer,
                source,
                slots,
                sdp,
            } => {
                let Some(m) = self.members.get_mut(&peer) else {
                    return;
                };
                m.source = Some(source);
                let channel = m.channel.clone();
                let role = m.role;
                let view = m.view(peer);
                let member_count = self.channel_len(&channel);
                let listed = role == Role::Speaker || member_count <= LISTED_LISTENERS_UP_TO;
                if let Some(m) = self.members.get_mut(&peer) {
                    m.listed = listed;
                }
                let members = self.members_of(&channel, peer);
                let cv = self.views.entry(channel.clone()).or_default();
                let (active, dominant) = (cv.active.clone(), cv.dominant);
                let voices = cv
                    .voices
                    .iter()
                    .map(|(s, i)| Voice {
                        source: *s,
                        identity: i.clone(),
                    })
                    .collect();
                if let Some(reply) = self.pending.remove(&peer) {
                    let _ = reply.send(Ok(Joined {
                        peer,
                        source,
                        slots,
                        answer: sdp,
                        members,
                        member_count,
                        voices,
                        active_speakers: active.iter().filter_map(|s| self.peer_of(*s)).collect(),
                        dominant_speaker: dominant.and_then(|s| self.peer_of(s)),
                        dominant_source: dominant.map(|s| s.0),
                    }));
                }
                if listed {
                    self.broadcast(
                        &channel,
                        Some(peer),
                        ServerMsg::MemberJoined { member: view },
                    );
                }
                self.count_changed(&channel);
            }
            Event::PeerConnected { peer } => {
                tracing::debug!(%peer, "media connected");
                if let Some(m) = self.members.get(&peer) {
                    self.snapshot.join_time.observe(m.joined_at.elapsed());
                    m.send(ServerMsg::Connected);
                }
            }
            Event::PeerLeft { peer, reason } => {
                let Some(m) = self.members.remove(&peer) else {
                    return;
                };
                tracing::info!(%peer, channel = %m.channel, identity = %m.identity, ?reason, "member left");
                let reason = match reason {
                    LeaveReason::Left => "left",
                    LeaveReason::Disconnected => "disconnected",
                    LeaveReason::ConnectTimeout => "timeout",
                    _ => "failed",
                };
                let msg = ServerMsg::MemberLeft {
                    peer: peer.0,
                    reason: reason.to_string(),
                };
                m.send(msg.clone());
                if let Some(peers) = self.channels.get_mut(&m.channel) {
                    peers.remove(&peer);
                    if peers.is_empty() {
                        self.channels.remove(&m.channel);
                        self.views.remove(&m.channel);
                        self.counts.remove(&m.channel);
                    }
                }
                if m.listed {
                    self.broadcast(&m.channel, None, msg);
                }
                if self.channels.contains_key(&m.channel) {
                    self.count_changed(&m.channel);
                }
            }
            Event::SlotChanged {
                peer,
                slot,
                mid,
                source,
            } => {
                let who = source.and_then(|s| self.peer_of(s));
                if let Some(m) = self.members.get(&peer) {
                    m.send(ServerMsg::Slot {
                        slot,
                        mid,
                        peer: who,
                        source: source.map(|s| s.0),
                    });
                }
            }
            Event::ActiveSpeakers { channel, speakers } => {
                let peers = speakers.iter().filter_map(|s| self.peer_of(*s)).collect();
                let sources = speakers.iter().map(|s| s.0).collect();
                self.views.entry(channel.to_string()).or_default().active = speakers;
                self.broadcast(
                    &channel,
                    None,
                    ServerMsg::ActiveSpeakers {
                        speakers: peers,
                        sources,
                    },
                );
            }
            Event::DominantSpeaker { channel, speaker } => {
                let peer = speaker.and_then(|s| self.peer_of(s));
                self.views.entry(channel.to_string()).or_default().dominant = speaker;
                self.broadcast(
                    &channel,
                    None,
                    ServerMsg::DominantSpeaker {
                        peer,
                        source: speaker.map(|s| s.0),
                    },
                );
            }
            Event::RemoteSource {
                channel,
                source,
                identity,
            } => {
                let voices = &mut self.views.entry(channel.to_string()).or_default().voices;
                if identity.is_empty() {
                    voices.remove(&source.0);
                } else {
                    voices.insert(source.0, identity.to_string());
                }
                let voice = Voice {
                    source: source.0,
                    identity: identity.to_string(),
                };
                self.broadcast(&channel, None, ServerMsg::Voice { voice });
            }
            _ => {}
        }
    }
}
