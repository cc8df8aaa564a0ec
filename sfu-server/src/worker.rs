//! A media worker: one [`Engine`] and the UDP socket it owns, on its own
//! task, with the node's [`Rooms`](crate::rooms::Rooms). This file is the
//! handle signaling holds ([`Worker`], [`Workers`]) and the requests it
//! sends; `task` is the loop that carries datagrams, requests, engine
//! output and room messages; `udp` batches the datagrams; `events` is each
//! member's bounded event queue; `relay` the bounded queues to and from the
//! cluster's links.
//!
//! A node runs several workers (`workers`, by default one per core), each
//! on an OS thread of its own with its own engine and UDP port; signaling
//! stays on the tokio runtime. A channel starts on one worker, chosen when
//! its first member joins (`placement`: the least-loaded worker) and kept
//! while it has members; past `spread_after` members there it spreads:
//! new members go to the least-loaded worker, whose engine follows the
//! first over an in-process link, as the cascade links nodes. Its room
//! stays one: the workers hand each other their part of it (members,
//! listed members, raised hands: [`crate::rooms::RoomPart`]) and moderation
//! of a member goes to the worker that holds it ([`Workers::link_all`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_core::{Command, Engine, EngineConfig, EngineId, LinkId, PeerId, RelayMsg, Role};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::health::TaskEnd;
use crate::metrics::Snapshot;
use crate::protocol::SignalData;
use crate::rooms::mode::{Capability, HybridSettings, MeshFailure, Mode, ReportError};
use crate::rooms::{
    HandError, Joined, ModerateError, Moderation, RoomLimits, RoomPart, RoomRefusal, SfuJoinError,
    SignalError,
};

mod events;
mod placement;
mod relay;
mod task;
mod udp;

pub use events::{member_events, EventSink, MemberEvents, Signaling, MEMBER_EVENT_QUEUE};
pub use placement::{Placement, Ticket};
pub use relay::{
    link_queues, LinkMessages, LinkQueue, LinkSender, RelayOverflow, LINK_CONTROL_QUEUE,
    LINK_MEDIA_QUEUE, RELAY_CONTROL_WAIT, RELAY_IN_CONTROL_QUEUE, RELAY_IN_MEDIA_QUEUE,
};

use relay::RelayInput;
use task::Task;

/// Requests waiting for the worker at most; senders wait for room. Relay
/// messages have queues of their own ([`Worker::relay_in`]).
const REQUEST_QUEUE: usize = 1024;

/// The first id of the links between the workers of a node (the links of
/// the cluster and the fleet count from 1 and from 2^48).
const LOCAL_LINKS: u64 = 1 << 40;

/// The link id under which the other workers reach worker `w`.
fn local_link(w: usize) -> LinkId {
    LinkId(LOCAL_LINKS + w as u64)
}

/// Whether `link` is one between the workers of this node.
fn is_local_link(link: LinkId) -> bool {
    (LOCAL_LINKS..LOCAL_LINKS << 8).contains(&link.0)
}

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
    /// May speak (a moderator may make others speakers only with it).
    pub can_publish: bool,
    /// May moderate others in the channel.
    pub can_moderate: bool,
    /// Where to push the member's room messages ([`member_events`]);
    /// `None`: nowhere.
    pub events: Option<EventSink>,
    /// (a fleet's edge) The link to the channel's core, when this join
    /// opens the channel here as a relay of it; `None`: the worker's own
    /// upstream (a static edge), else the channel selects here.
    pub upstream: Option<LinkId>,
    /// (hybrid) Whether the member can take part in a peer-to-peer mesh.
    pub capability: Capability,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server is draining.
    #[error("the server is shutting down")]
    Draining,
    /// A limit of the room layer (members per channel, channels).
    #[error("{0}")]
    Full(RoomRefusal),
    /// The engine refused (bad offer, bad channel name…).
    #[error("{0}")]
    Refused(media_core::Error),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}

/// Why an ICE restart was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// The engine refused the offer (unknown member, an offer that does not
    /// parse or does not match the session): the session goes on as it was.
    #[error("{0}")]
    Refused(media_core::Error),
    /// The member left before the answer.
    #[error("the member left")]
    Left,
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}

/// A channel of a worker's engine, as [`Worker::channels`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLoad {
    /// Its name.
    pub channel: String,
    /// Its members on this worker (0 for a channel only other engines
    /// subscribe to).
    pub members: usize,
    /// The link it follows its origin over, if it is a relay.
    pub upstream: Option<LinkId>,
}

/// What signaling asks of the worker.
enum Request {
    Join(JoinRequest, oneshot::Sender<Result<Joined, JoinError>>),
    Leave(PeerId, oneshot::Sender<bool>),
    /// An ICE restart: the member's new offer; the answer comes back.
    Restart {
        peer: PeerId,
        offer: String,
        reply: oneshot::Sender<Result<String, RestartError>>,
    },
    Moderate {
        by: PeerId,
        target: PeerId,
        action: Moderation,
        reply: oneshot::Sender<Result<(), ModerateError>>,
    },
    /// A member raises (or lowers) its hand.
    Hand {
        peer: PeerId,
        raised: bool,
        reply: oneshot::Sender<Result<(), HandError>>,
    },
    /// (hybrid) A P2P member's SFU session; its answer comes as an event
    /// (`sfu_joined`).
    SfuJoin {
        peer: PeerId,
        offer: String,
        epoch: u64,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// (hybrid) Signaling for another member.
    Signal {
        from: PeerId,
        to: PeerId,
        epoch: u64,
        data: SignalData,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    /// (hybrid) A member's report: it swapped playback, or a mesh link
    /// failed.
    Report {
        peer: PeerId,
        report: Report,
        reply: oneshot::Sender<Result<(), ReportError>>,
    },
    /// (hybrid) New settings.
    Hybrid(HybridSettings),
    Snapshot(oneshot::Sender<Snapshot>),
    /// Graceful shutdown: refuse joins, tell members to move by then.
    Drain(Duration),
    /// The end of a drain: every member still joined leaves.
    LeaveAll,
    /// Every member of a channel is told `msg` (its last message: the
    /// session ends) and leaves (the channel moved to another node).
    Move(String, crate::protocol::ServerMsg),
    /// A link is up to the engine numbered so (its voices' owner): the
    /// engine's relay messages for it go to this sender (replacing the
    /// link's previous one).
    LinkOpened(LinkId, EngineId, LinkSender),
    /// An engine command from the cluster side (upstream, link closed).
    Engine(Command),
    /// (edge) Subscribe again every channel that follows an origin over
    /// this link (it was rebuilt).
    Resubscribe(LinkId),
    /// Make a channel follow the origin over a link, or select itself
    /// (`None`: this node became its core).
    Follow(String, Option<LinkId>),
    /// Every channel of the engine with its members here.
    Channels(oneshot::Sender<Vec<ChannelLoad>>),
    /// The node's other workers: their engine numbers and requests (this
    /// worker is number `index`), and the counter of the node's raised
    /// hands.
    Siblings {
        index: usize,
        siblings: Vec<(u16, mpsc::WeakSender<Request>)>,
        spread_after: usize,
        hand_clock: Arc<std::sync::atomic::AtomicU64>,
    },
    /// Another worker's part of a spread channel.
    Part(RoomPart),
    /// A moderator of another worker moderates a member here.
    ModerateFor {
        channel: String,
        target: PeerId,
        action: Moderation,
        reply: oneshot::Sender<Result<(), ModerateError>>,
    },
    /// Debug builds: panic on purpose (the dead-worker tests).
    #[cfg(debug_assertions)]
    Crash,
}

/// (hybrid) A member's report about its channel's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// It swapped its playback to `mode` for `epoch`.
    Switched {
        /// The mode.
        mode: Mode,
        /// The switch's epoch.
        epoch: u64,
    },
    /// Its mesh link with `peer` failed.
    P2pFailed {
        /// The other end.
        peer: PeerId,
        /// Why.
        failure: MeshFailure,
        /// The link's epoch.
        epoch: u64,
    },
}

/// Why an `sfu_join` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The room layer refused it.
    #[error("{0}")]
    Refused(SfuJoinError),
    /// The engine refused the offer.
    #[error("{0}")]
    Offer(media_core::Error),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}

/// The media workers of the node and the placement of its channels on them.
#[derive(Debug, Clone)]
pub struct Workers {
    workers: Vec<Worker>,
    placement: Arc<Placement>,
    spread_after: usize,
}

impl Workers {
    /// The node's workers (at least one); at most `limits.max_channels`
    /// channels across them, `limits.max_members_per_channel` members in
    /// one channel on all of them; a channel spreads over them past `spread_after` members
    /// on its origin worker (0: never), over the workers' in-process links
    /// ([`Workers::link_all`]).
    pub fn new(workers: Vec<Worker>, limits: RoomLimits, spread_after: usize) -> Workers {
        assert!(!workers.is_empty(), "a node needs a worker");
        let placement = Placement::new(
            workers.len(),
            limits.max_channels,
            limits.max_members_per_channel,
            spread_after,
        );
        Workers {
            workers,
            placement,
            spread_after,
        }
    }

    /// Links every worker's engine to every other's, in process: worker
    /// `a` reaches worker `b` over `LinkId(LOCAL_LINKS + b)`, and what it
    /// sends arrives in `b`'s relay input as from `LinkId(LOCAL_LINKS +
    /// a)`. `engines[w]` is worker `w`'s engine number.
    pub async fn link_all(&self, engines: &[EngineId]) {
        // One room per channel across the workers: each tells the others
        // its part of the spread channels, and moderation reaches their
        // members.
        let hand_clock = Arc::new(std::sync::atomic::AtomicU64::new(1));
        for (a, worker) in self.workers.iter().enumerate() {
            let siblings = self
                .workers
                .iter()
                .enumerate()
                .filter(|(b, _)| *b != a)
                .map(|(b, w)| (engines[b].get(), w.tx.downgrade()))
                .collect();
            let req = Request::Siblings {
                index: a,
                siblings,
                spread_after: self.spread_after,
                hand_clock: hand_clock.clone(),
            };
            let _ = worker.tx.send(req).await;
        }
        for (a, from) in self.workers.iter().enumerate() {
            for (b, to) in self.workers.iter().enumerate() {
                if a == b {
                    continue;
                }
                let sender = LinkSender::to_worker(to.relay.clone(), local_link(a));
                from.link_opened(local_link(b), engines[b], sender).await;
            }
        }
    }

    /// The worker that carries `channel` for one more member (the
    /// least-loaded one for a new channel or a big one that spreads), held
    /// until the returned handle and its clones are dropped. Refused when
    /// the channel is new and the node carries `max_channels` already.
    pub fn place(&self, channel: &str) -> Result<PlacedWorker, RoomRefusal> {
        let ticket = self.placement.place(channel)?;
        let upstream = (ticket.worker() != ticket.origin()).then(|| local_link(ticket.origin()));
        Ok(PlacedWorker {
            worker: self.workers[ticket.worker()].clone(),
            upstream,
            _ticket: Arc::new(ticket),
        })
    }

    /// The placement of the channels (for tests and `/metrics`).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Every worker.
    pub fn all(&self) -> &[Worker] {
        &self.workers
    }
}

/// A member's worker, with the [`Ticket`] that keeps its channel there: the
/// member's session holds it (and clones of it) for as long as the member
/// may be in the channel. Derefs to the [`Worker`].
#[derive(Debug, Clone)]
pub struct PlacedWorker {
    worker: Worker,
    /// The link to the channel's origin worker, when the member is placed
    /// on another worker (a spread channel): the join names it.
    pub upstream: Option<LinkId>,
    /// Held for its `Drop`: the channel stays on this worker while any clone lives.
    _ticket: Arc<Ticket>,
}

impl std::ops::Deref for PlacedWorker {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.worker
    }
}

/// Where a worker's loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// As a task on the runtime that spawns it (tests; an embedder that
    /// gives media a runtime of its own).
    Task,
    /// On an OS thread of its own (`sfu-worker-INDEX`) with a
    /// single-threaded runtime, pinned to core `pin` when given: what the
    /// server does, so that no signaling shares a thread with a packet loop.
    Thread {
        /// The worker's index (the thread's name).
        index: usize,
        /// The core to pin it to (Linux; elsewhere ignored).
        pin: Option<usize>,
    },
}

/// Handle to a running worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    tx: mpsc::Sender<Request>,
    relay: RelayInput,
    udp_addr: SocketAddr,
}

impl Worker {
    /// Binds the media socket and starts the worker's loop where `runs`
    /// says; returns the handle and a task that ends when the loop does (to
    /// be watched: see [`crate::health`]; a panic of the loop is reported
    /// as one either way). Relay messages the engine emits go to the links
    /// announced with [`Worker::link_opened`]. With an `upstream`, every
    /// channel follows the origin over that link (an edge). Joins are
    /// admitted within `limits`.
    pub async fn spawn(
        udp: SocketAddr,
        mut config: EngineConfig,
        limits: RoomLimits,
        upstream: Option<LinkId>,
        runs: Runs,
    ) -> io::Result<(Worker, JoinHandle<TaskEnd>)> {
        let socket = std::net::UdpSocket::bind(udp)?;
        socket.set_nonblocking(true)?;
        let udp_addr = socket.local_addr()?;
        match udp::set_recv_buffer(&socket, udp::RECV_BUFFER) {
            Ok(granted) => tracing::debug!(granted, "media socket receive buffer"),
            Err(e) => tracing::warn!(error = %e, "media socket receive buffer not raised"),
        }
        config.host_candidates = vec![udp_addr];
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (relay, relay_inbox) = relay::relay_input();
        let engine = Engine::new(config, Instant::now());
        let input = relay.clone();
        let own_thread = matches!(runs, Runs::Thread { .. });
        // The socket joins the reactor of the runtime the loop runs on.
        let run = async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => return TaskEnd::Failed(format!("the media socket: {e}")),
            };
            let mut task = Task::new(engine, limits, socket, rx, relay_inbox, &input, upstream);
            task.own_thread = own_thread;
            task.run().await
        };
        let handle = match runs {
            Runs::Task => tokio::spawn(run),
            Runs::Thread { index, pin } => {
                let (done, ended) = oneshot::channel();
                std::thread::Builder::new()
                    .name(format!("sfu-worker-{index}"))
                    .spawn(move || {
                        if let Some(core) = pin {
                            pin_to_core(index, core);
                        }
                        let _ = done.send(run_on_own_runtime(run));
                    })?;
                tokio::spawn(async move {
                    ended.await.unwrap_or_else(|_| {
                        TaskEnd::Failed("its thread ended without saying why".into())
                    })
                })
            }
        };
        Ok((
            Worker {
                tx,
                relay,
                udp_addr,
            },
            handle,
        ))
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

    /// Applies `peer`'s ICE-restart offer to its session; resolves with the
    /// answer. A refused offer leaves the session as it was.
    pub async fn restart(&self, peer: PeerId, offer: String) -> Result<String, RestartError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Restart { peer, offer, reply })
            .await
            .map_err(|_| RestartError::WorkerGone)?;
        rx.await.map_err(|_| RestartError::WorkerGone)?
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

    /// `peer` raises (`raised`) or lowers its hand.
    pub async fn hand(&self, peer: PeerId, raised: bool) -> Result<(), HandError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Hand {
                peer,
                raised,
                reply,
            })
            .await
            .map_err(|_| HandError::WorkerGone)?;
        rx.await.map_err(|_| HandError::WorkerGone)?
    }

    /// (hybrid) Joins `peer`, a member without an SFU session, to the SFU
    /// with `offer` during the switch of `epoch`; the answer comes as its
    /// `sfu_joined` event.
    pub async fn sfu_join(&self, peer: PeerId, offer: String, epoch: u64) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        let req = Request::SfuJoin {
            peer,
            offer,
            epoch,
            reply,
        };
        self.tx.send(req).await.map_err(|_| SfuError::WorkerGone)?;
        rx.await.map_err(|_| SfuError::WorkerGone)?
    }

    /// (hybrid) Relays `from`'s signal to `to` (checked by the room layer).
    /// `None`: the worker is gone.
    pub async fn signal(
        &self,
        from: PeerId,
        to: PeerId,
        epoch: u64,
        data: SignalData,
    ) -> Option<Result<(), SignalError>> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Signal {
            from,
            to,
            epoch,
            data,
            reply,
        };
        self.tx.send(req).await.ok()?;
        rx.await.ok()
    }

    /// (hybrid) `peer`'s report about its channel's mode. `None`: the
    /// worker is gone.
    pub async fn report(&self, peer: PeerId, report: Report) -> Option<Result<(), ReportError>> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Report {
            peer,
            report,
            reply,
        };
        self.tx.send(req).await.ok()?;
        rx.await.ok()
    }

    /// (hybrid) New settings, applied to every channel of the worker.
    pub async fn set_hybrid(&self, settings: HybridSettings) {
        let _ = self.tx.send(Request::Hybrid(settings)).await;
    }

    /// Counters for `/metrics`.
    pub async fn snapshot(&self) -> Snapshot {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Snapshot(reply)).await.is_err() {
            return Snapshot::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Hands the engine a relay message that arrived over `link`. Media
    /// that finds the worker's queue full is dropped and counted; control
    /// waits for room, at most [`RELAY_CONTROL_WAIT`], and is then refused:
    /// the caller must close `link` (its messages would otherwise be lost
    /// or reordered).
    pub async fn relay_in(&self, link: LinkId, msg: RelayMsg) -> Result<(), RelayOverflow> {
        self.relay.push(link, msg).await
    }

    /// `link` is up, to the node whose engine number is `engine`: the
    /// engine's relay messages for it go to `sender` from now on. Call it
    /// before handing the worker anything from the link.
    pub async fn link_opened(&self, link: LinkId, engine: EngineId, sender: LinkSender) {
        let _ = self
            .tx
            .send(Request::LinkOpened(link, engine, sender))
            .await;
    }

    /// (edge) Subscribes again every channel that follows its origin over
    /// `link` (after the link was rebuilt).
    pub async fn resubscribe(&self, link: LinkId) {
        let _ = self.tx.send(Request::Resubscribe(link)).await;
    }

    /// Makes `channel` follow the origin over `link` (keeping its members'
    /// slots: no renegotiation), or select its speakers here (`None`).
    pub async fn follow(&self, channel: String, link: Option<LinkId>) {
        let _ = self.tx.send(Request::Follow(channel, link)).await;
    }

    /// Every channel the engine holds (with members here, or subscribed to
    /// over links) and its members here; empty when the worker is gone.
    pub async fn channels(&self) -> Vec<ChannelLoad> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Channels(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Sends the engine a command about channels and links
    /// (`LinkClosed` also forgets the link's queues).
    pub async fn engine_command(&self, command: Command) {
        let _ = self.tx.send(Request::Engine(command)).await;
    }

    /// Refuses new joins and tells every member to move before `deadline`.
    pub async fn drain(&self, deadline: Duration) {
        let _ = self.tx.send(Request::Drain(deadline)).await;
    }

    /// Ends the session of every member still joined (the end of a drain:
    /// WHIP/WHEP members, who cannot be told to move, and WebSocket members
    /// who did not).
    pub async fn leave_all(&self) {
        let _ = self.tx.send(Request::LeaveAll).await;
    }

    /// Tells every member of `channel` on this worker `msg`, its last
    /// message (their sessions end), and makes them leave: the channel is
    /// served by another node now.
    pub async fn move_channel(&self, channel: String, msg: crate::protocol::ServerMsg) {
        let _ = self.tx.send(Request::Move(channel, msg)).await;
    }

    /// Debug builds only: makes the worker task panic, as a bug would (the
    /// tests of what a dead worker does to the node).
    #[cfg(debug_assertions)]
    pub async fn crash_for_test(&self) {
        let _ = self.tx.send(Request::Crash).await;
    }
}

/// Runs a worker's loop to its end on a single-threaded runtime of its own
/// (the calling thread); a panic is caught and reported as the end.
fn run_on_own_runtime(run: impl std::future::Future<Output = TaskEnd>) -> TaskEnd {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return TaskEnd::Failed(format!("its runtime did not start: {e}")),
    };
    // The loop's state is dropped while unwinding (its members are told):
    // nothing of it is used after a panic.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run))) {
        Ok(end) => end,
        Err(panic) => TaskEnd::Failed(format!(
            "panicked: {}",
            crate::health::panic_message(panic.as_ref())
        )),
    }
}

/// Pins the calling thread (worker `index`) to `core`; a failure is logged
/// and the worker runs unpinned.
#[cfg(target_os = "linux")]
fn pin_to_core(index: usize, core: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    let pinned = set
        .set(core)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => tracing::info!(worker = index, core, "media worker pinned"),
        Err(e) => tracing::warn!(worker = index, core, error = %e, "media worker not pinned"),
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_core(index: usize, core: usize) {
    tracing::warn!(
        worker = index,
        core,
        "pinning workers is supported on Linux only"
    );
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use media_core::SourceId;

    use super::*;

    fn media(seq: u64) -> RelayMsg {
        RelayMsg::Media {
            channel: "flood".into(),
            source: SourceId(7),
            seq,
            rtp_ts: 0,
            level: 0,
            vad: Some(true),
            payload: Bytes::from_static(b"opus"),
        }
    }

    /// A link floods the worker with relay messages: the worker's memory and
    /// the number of tasks stay bounded, media past the bound is dropped and
    /// counted, control waits its turn (nothing is refused while the worker
    /// takes it), and everything queued reaches the engine, in turns with
    /// the worker's other work. On one thread nothing else runs while the
    /// flood is pushed, so the media queue fills exactly to its bound.
    #[tokio::test(flavor = "current_thread")]
    async fn a_relay_flood_is_bounded_and_counted_and_control_waits_its_turn() {
        let (worker, _task) = Worker::spawn(
            "127.0.0.1:0".parse().unwrap(),
            EngineConfig::new([7; 32]),
            crate::rooms::RoomLimits::default(),
            None,
            Runs::Task,
        )
        .await
        .unwrap();
        let tasks_before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let flood = 10 * RELAY_IN_MEDIA_QUEUE;
        for seq in 0..flood {
            let pushed = worker.relay_in(LinkId(1), media(seq as u64)).await;
            assert_eq!(pushed, Ok(()));
        }
        let control = 3 * RELAY_IN_CONTROL_QUEUE;
        for i in 0..control {
            let msg = RelayMsg::Subscribe {
                channel: format!("c{i}").into(),
            };
            assert_eq!(worker.relay_in(LinkId(2), msg).await, Ok(()), "{i}");
        }
        // No task per message.
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(tasks, tasks_before);

        let s = worker.snapshot().await;
        assert_eq!(s.relay_in_dropped, (flood - RELAY_IN_MEDIA_QUEUE) as u64);
        assert_eq!(s.relay_in_overflows, 0);
        let queued = (RELAY_IN_MEDIA_QUEUE + control) as u64;
        let handled = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let handled = worker.snapshot().await.stats.relay_in;
                if handled >= queued {
                    return handled;
                }
            }
        })
        .await
        .expect("the worker takes the queued messages");
        assert_eq!(handled, queued);
    }
}
