//! A media worker: one [`Engine`] and the UDP socket it owns, on its own
//! task, with the node's [`Rooms`](crate::rooms::Rooms). This file is the
//! handle signaling holds ([`Worker`], [`Workers`]) and the requests it
//! sends; `task` is the loop that carries datagrams, requests, engine
//! output and room messages; `udp` batches the datagrams; `events` is each
//! member's bounded event queue; `relay` the bounded queues to and from the
//! cluster's links.
//!
//! One worker carries every channel today. The seam for more is
//! [`Workers`]: a channel maps to one worker; a channel spanning workers
//! would link them with relay messages.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media_core::{Command, Engine, EngineConfig, EngineId, LinkId, PeerId, RelayMsg, Role};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::health::TaskEnd;
use crate::metrics::Snapshot;
use crate::rooms::{HandError, Joined, ModerateError, Moderation, RoomLimits, RoomRefusal};

mod events;
mod relay;
mod task;
mod udp;

pub use events::{member_events, EventSink, MemberEvents, Signaling, MEMBER_EVENT_QUEUE};
pub use relay::{
    link_queues, LinkMessages, LinkQueue, LinkSender, RelayOverflow, LINK_CONTROL_QUEUE,
    LINK_MEDIA_QUEUE, RELAY_CONTROL_WAIT, RELAY_IN_CONTROL_QUEUE, RELAY_IN_MEDIA_QUEUE,
};

use relay::RelayInput;
use task::Task;

/// Requests waiting for the worker at most; senders wait for room. Relay
/// messages have queues of their own ([`Worker::relay_in`]).
const REQUEST_QUEUE: usize = 1024;

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
    Snapshot(oneshot::Sender<Snapshot>),
    /// Graceful shutdown: refuse joins, tell members to move by then.
    Drain(Duration),
    /// The end of a drain: every member still joined leaves.
    LeaveAll,
    /// A link is up to the engine numbered so (its voices' owner): the
    /// engine's relay messages for it go to this sender (replacing the
    /// link's previous one).
    LinkOpened(LinkId, EngineId, LinkSender),
    /// An engine command from the cluster side (upstream, link closed).
    Engine(Command),
    /// (edge) Subscribe every channel again.
    Resubscribe,
    /// Debug builds: panic on purpose (the dead-worker tests).
    #[cfg(debug_assertions)]
    Crash,
}

/// The media workers of the node. One today; a channel always lives on one
/// worker (the seam for several: pick by channel, link channels spanning
/// workers with relays).
#[derive(Debug, Clone)]
pub struct Workers(Vec<Worker>);

impl Workers {
    /// The node's workers (at least one).
    pub fn new(workers: Vec<Worker>) -> Workers {
        assert!(!workers.is_empty(), "a node needs a worker");
        Workers(workers)
    }

    /// The worker that carries `channel`.
    pub fn for_channel(&self, channel: &str) -> &Worker {
        let i = channel
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.0[i % self.0.len()]
    }

    /// Every worker.
    pub fn all(&self) -> &[Worker] {
        &self.0
    }
}

/// Handle to a running worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    tx: mpsc::Sender<Request>,
    relay: RelayInput,
    udp_addr: SocketAddr,
}

impl Worker {
    /// Binds the media socket and starts the worker task; returns the handle
    /// and the task (to be watched: see [`crate::health`]). Relay messages
    /// the engine emits go to the links announced with
    /// [`Worker::link_opened`]. With an `upstream`, every channel follows
    /// the origin over that link (an edge). Joins are admitted within
    /// `limits`.
    pub async fn spawn(
        udp: SocketAddr,
        mut config: EngineConfig,
        limits: RoomLimits,
        upstream: Option<LinkId>,
    ) -> io::Result<(Worker, JoinHandle<TaskEnd>)> {
        let socket = UdpSocket::bind(udp).await?;
        let udp_addr = socket.local_addr()?;
        match udp::set_recv_buffer(&socket, udp::RECV_BUFFER) {
            Ok(granted) => tracing::debug!(granted, "media socket receive buffer"),
            Err(e) => tracing::warn!(error = %e, "media socket receive buffer not raised"),
        }
        config.host_candidates = vec![udp_addr];
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (relay, relay_inbox) = relay::relay_input();
        let engine = Engine::new(config, Instant::now());
        let task = Task::new(engine, limits, socket, rx, relay_inbox, &relay, upstream);
        let handle = tokio::spawn(task.run());
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

    /// (edge) Subscribes every channel again over the upstream link (after
    /// it was rebuilt).
    pub async fn resubscribe(&self) {
        let _ = self.tx.send(Request::Resubscribe).await;
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

    /// Debug builds only: makes the worker task panic, as a bug would (the
    /// tests of what a dead worker does to the node).
    #[cfg(debug_assertions)]
    pub async fn crash_for_test(&self) {
        let _ = self.tx.send(Request::Crash).await;
    }
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
