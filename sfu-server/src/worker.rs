//! A media worker: one [`Engine`] and the UDP socket it owns, on its own
//! task, with the node's [`Rooms`](crate::rooms::Rooms). This file is the
//! handle signaling holds ([`Worker`], [`Workers`]) and the requests it
//! sends; `task` is the loop that carries datagrams, requests, engine
//! output and room messages; `udp` batches the datagrams.
//!
//! One worker carries every channel today. The seam for more is
//! [`Workers`]: a channel maps to one worker; a channel spanning workers
//! would link them with relay messages.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media_core::{Command, Engine, EngineConfig, LinkId, PeerId, RelayMsg, Role};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Snapshot;
use crate::protocol::ServerMsg;
use crate::rooms::{Joined, ModerateError, Moderation, RoomLimits, RoomRefusal};

mod task;
mod udp;

use task::Task;

/// Requests waiting for the worker at most; senders wait for room (relay
/// media is dropped instead, see [`Worker::relay_in`]).
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
    /// Where to push the member's room messages; `None`: nowhere.
    pub events: Option<mpsc::UnboundedSender<ServerMsg>>,
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

/// What signaling asks of the worker.
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
    /// Graceful shutdown: refuse joins, tell members to move by then.
    Drain(Duration),
    /// A relay message arrived over a link (from the cascade transport).
    Relay(LinkId, RelayMsg),
    /// An engine command from the cluster side (upstream, link closed).
    Engine(Command),
    /// (edge) Subscribe every channel again.
    Resubscribe,
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
    udp_addr: SocketAddr,
}

impl Worker {
    /// Binds the media socket and starts the worker task. Relay messages the
    /// engine emits go to `relay_out` (the cascade transport). With an
    /// `upstream`, every channel follows the origin over that link (an edge).
    /// Joins are admitted within `limits`.
    pub async fn spawn(
        udp: SocketAddr,
        mut config: EngineConfig,
        limits: RoomLimits,
        relay_out: Option<mpsc::UnboundedSender<(LinkId, RelayMsg)>>,
        upstream: Option<LinkId>,
    ) -> io::Result<Worker> {
        let socket = UdpSocket::bind(udp).await?;
        let udp_addr = socket.local_addr()?;
        config.host_candidates = vec![udp_addr];
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let engine = Engine::new(config, Instant::now());
        let task = Task::new(engine, limits, socket, rx, relay_out, upstream);
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
