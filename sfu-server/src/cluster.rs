//! The node's place in a cluster: a core accepts edges over QUIC and relays
//! its channels' selected voices to them; an edge dials its core (primary,
//! then standbys) and follows it for every channel it carries.
//!
//! The worker's engine does the media logic (`RelayMsg`, origin and relay
//! channels); this module only moves messages between the engine and the
//! `cascade` links and tells the engine when links come and go, and which
//! node is at the other end (the node id each side announced in the link's
//! hello is the engine number of its voices: one worker per node).
//!
//! Node ids must be distinct across the cluster: the core's listener refuses
//! an edge whose id is the core's own or another linked edge's (logged,
//! counted in the listener's stats), and the engine then accepts from each
//! edge only voices numbered by that edge.
//!
//! Each link has a send task of its own, fed by bounded queues
//! ([`crate::worker::link_queues`]): a link that stops reading fills its
//! own queue (its media is dropped, its control closes it) and holds up no
//! other link. What a link receives goes to the worker ([`Worker::relay_in`]):
//! media without waiting, control waiting briefly for room; a link whose
//! control finds no room in time is closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use cascade::link::{Dialer, DialerEvent, Link, LinkConfig, LinkEvent, LinkHandle, Listener};
use media_core::{Command, EngineId, LinkId, RelayMsg};
use tokio::task::AbortHandle;

use crate::config::{Config, NodeRole};
use crate::health::{Health, TaskEnd};
use crate::worker::{link_queues, LinkQueue, Worker};

/// Where a static edge's cores are: the configured list (primary first),
/// or any other source an embedder plugs in. A fleet on Redis does not go
/// through it: there each channel's core is its lease's holder
/// ([`crate::fleet::Placer`]), and a node follows it per channel
/// ([`Uplinks`]).
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The cores an edge should dial, in order of preference.
    fn cores(&self) -> Vec<SocketAddr>;
}

/// The cores from the configuration (`--cluster-core`, primary first).
#[derive(Debug, Clone)]
pub struct StaticDirectory(pub Vec<SocketAddr>);

impl Directory for StaticDirectory {
    fn cores(&self) -> Vec<SocketAddr> {
        self.0.clone()
    }
}

/// The link an edge's channels follow (there is one upstream at a time; a
/// failover rebuilds it under the same id).
pub const UPSTREAM: LinkId = LinkId(1);

/// What the cluster side runs; dropping it stops it.
#[derive(Debug)]
pub struct Cluster {
    /// (core) the QUIC address edges dial.
    pub listen_addr: Option<SocketAddr>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn link_config(config: &Config) -> io::Result<LinkConfig> {
    let secret = config.cluster_secret.clone().unwrap_or_default();
    let mut link =
        LinkConfig::new(secret.into_bytes()).map_err(|e| io::Error::other(e.to_string()))?;
    link.node_id = config.node_id.unwrap_or(0);
    Ok(link)
}

/// The engine number of the node at the other end of `link`, or `None` (the
/// link closed) when its node id cannot number voices.
fn peer_engine(link: &LinkHandle) -> Option<EngineId> {
    let node = link.peer_node_id();
    let engine = EngineId::new(node);
    if engine.is_none() {
        tracing::warn!(peer = %link.remote_addr(), node, max = EngineId::MAX, "node id out of range; link closed");
        link.close();
    }
    engine
}

/// Sends what the worker queued for one link (control on the ordered
/// stream, media as datagrams) until the worker drops the link's sender,
/// then closes the link: the worker drops it when the link is gone, or when
/// the link's queue overflowed (it does not read).
async fn send_link(queue: LinkQueue, handle: LinkHandle) {
    let LinkQueue {
        mut messages,
        dropped,
    } = queue;
    let sending = async {
        while let Some(msg) = messages.next().await {
            if matches!(msg, RelayMsg::Media { .. }) {
                handle.send_media(&msg);
            } else if let Err(e) = handle.send_control(&msg).await {
                tracing::debug!(error = %e, "control message not sent");
            }
        }
    };
    // A stalled link can hold `send_control` forever: the worker's drop
    // ends the wait too.
    tokio::select! {
        () = sending => {}
        _ = dropped => {}
    }
    handle.close();
}

/// (core) One edge's link: its send task, then what it sends us until it
/// closes.
async fn serve_edge(mut link: Link, id: LinkId, engine: EngineId, worker: Worker) {
    let (sender, queue) = link_queues();
    // Before anything from the link reaches the worker: the engine drops
    // what comes over a link it was not told about, and its answers to the
    // link need the queue.
    worker.link_opened(id, engine, sender).await;
    tokio::spawn(send_link(queue, link.handle()));
    loop {
        match link.recv_event().await {
            Some(LinkEvent::Message(m)) => {
                if worker.relay_in(id, m).await.is_err() {
                    tracing::warn!(?id, "edge link closed: its control messages found no room in the worker's queue");
                    link.close();
                    break;
                }
            }
            Some(LinkEvent::Closed(reason)) => {
                tracing::info!(?id, ?reason, "edge link closed");
                break;
            }
            None => break,
        }
    }
    worker
        .engine_command(Command::LinkClosed { link: id })
        .await;
}

/// Starts the cluster side for `config.role` (nothing for standalone), with
/// the static directory of the configuration. Its accept loop (core) or
/// dialer (edge) ending fails the node (`health`).
pub async fn start(config: &Config, worker: Worker, health: &Arc<Health>) -> io::Result<Cluster> {
    let directory = StaticDirectory(config.cluster_cores.clone());
    start_with(config, &directory, worker, health).await
}

/// [`start`] with any [`Directory`].
pub async fn start_with(
    config: &Config,
    directory: &dyn Directory,
    worker: Worker,
    health: &Arc<Health>,
) -> io::Result<Cluster> {
    let mut tasks = Vec::new();
    let mut listen_addr = None;
    match config.role {
        NodeRole::Standalone if config.fleet_edges() => {
            // A fleet node with edges: any node may be a channel's core,
            // so every one accepts edges.
            let (addr, accept) = accept_edges(config, worker)?;
            listen_addr = Some(addr);
            tasks.push(accept.abort_handle());
            health.watch("the fleet node's accept loop", accept);
        }
        NodeRole::Standalone => {}
        NodeRole::Core => {
            let (addr, accept) = accept_edges(config, worker)?;
            listen_addr = Some(addr);
            tasks.push(accept.abort_handle());
            health.watch("the core's accept loop", accept);
        }
        NodeRole::Edge => {
            let dialer = Dialer::spawn(directory.cores(), link_config(config)?)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let dial = tokio::spawn(async move {
                follow_core(dialer, UPSTREAM, worker).await;
                TaskEnd::Failed("the dialer stopped".into())
            });
            tasks.push(dial.abort_handle());
            health.watch("the edge's dialer", dial);
        }
    }
    Ok(Cluster { listen_addr, tasks })
}

/// (core) Accepts edges on `cluster_listen`, each link served by a task of
/// its own: the bound address and the accept loop (it ends only when the
/// listener fails).
fn accept_edges(
    config: &Config,
    worker: Worker,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<TaskEnd>)> {
    let mut listener = Listener::bind(config.cluster_listen, link_config(config)?)?;
    let addr = listener.local_addr();
    tracing::info!(%addr, "accepting edges");
    let accept = tokio::spawn(async move {
        let mut next = 1u64;
        while let Some(link) = listener.accept().await {
            let Some(engine) = peer_engine(&link.handle()) else {
                continue;
            };
            let id = LinkId(next);
            next += 1;
            let node = link.peer_node_id();
            tracing::info!(edge = %link.remote_addr(), node, ?id, "edge linked");
            tokio::spawn(serve_edge(link, id, engine, worker.clone()));
        }
        TaskEnd::Failed("the cluster listener closed".into())
    });
    Ok((addr, accept))
}

/// (edge) Follows a core through `dialer` as link `id`: each connection is
/// announced to the worker, the channels following it subscribe again, and
/// what it sends goes to the worker, until the dialer stops.
async fn follow_core(mut dialer: Dialer, id: LinkId, worker: Worker) {
    let mut current: Option<LinkHandle> = None;
    while let Some(ev) = dialer.next_event().await {
        match ev {
            DialerEvent::Connected(handle) => {
                let Some(engine) = peer_engine(&handle) else {
                    continue;
                };
                let node = handle.peer_node_id();
                tracing::info!(core = %handle.remote_addr(), node, ?id, "linked to core");
                let (sender, queue) = link_queues();
                worker.link_opened(id, engine, sender).await;
                tokio::spawn(send_link(queue, handle.clone()));
                current = Some(handle);
                // Every subscription died with the old link.
                worker.resubscribe(id).await;
            }
            DialerEvent::Message(m) => {
                if worker.relay_in(id, m).await.is_err() {
                    tracing::warn!(?id, "core link closed: its control messages found no room in the worker's queue; reconnecting");
                    if let Some(link) = current.take() {
                        link.close();
                    }
                }
            }
            DialerEvent::Disconnected(reason) => {
                tracing::warn!(?id, ?reason, "core link lost; reconnecting");
                current = None;
                worker
                    .engine_command(Command::LinkClosed { link: id })
                    .await;
            }
        }
    }
}

/// The first link id of a fleet node's links to cores (the links edges
/// open to this node count from 1).
const FIRST_UPLINK: u64 = 1 << 48;

/// (a fleet's edge) One link per core this node follows channels of,
/// dialed when the first channel needs it and closed when the last one
/// stops following that core.
#[derive(Debug)]
pub struct Uplinks {
    worker: Worker,
    config: LinkConfig,
    links: std::sync::Mutex<Uplinked>,
}

#[derive(Debug, Default)]
struct Uplinked {
    by_node: std::collections::HashMap<u16, Uplink>,
    next: u64,
}

#[derive(Debug)]
struct Uplink {
    id: LinkId,
    addr: SocketAddr,
    task: AbortHandle,
    /// Since when no channel follows it ([`Uplinks::retain`]).
    unused_since: Option<std::time::Instant>,
}

/// How long a link no channel follows stays open: a join placed here as an
/// edge opens its link before the worker has the channel.
const UPLINK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Uplinks {
    /// Links of `worker`'s engine to cores, authenticated as `config`
    /// says.
    pub fn new(config: &Config, worker: Worker) -> io::Result<Uplinks> {
        Ok(Uplinks {
            worker,
            config: link_config(config)?,
            links: std::sync::Mutex::new(Uplinked {
                by_node: std::collections::HashMap::new(),
                next: FIRST_UPLINK,
            }),
        })
    }

    /// The link to node `node`, whose cascade listens at `addr`: the one
    /// there is, or a new one (dialed from now on; the channels that follow
    /// it subscribe once it connects). A node that moved to another
    /// address gets a new link.
    pub fn link_to(&self, node: u16, addr: SocketAddr) -> io::Result<LinkId> {
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(up) = links.by_node.get_mut(&node) {
            if up.addr == addr {
                up.unused_since = None;
                return Ok(up.id);
            }
        }
        let dialer = Dialer::spawn(vec![addr], self.config.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let id = LinkId(links.next);
        links.next += 1;
        let task = tokio::spawn(follow_core(dialer, id, self.worker.clone())).abort_handle();
        tracing::info!(node, %addr, ?id, "following a core");
        let up = Uplink {
            id,
            addr,
            task,
            unused_since: None,
        };
        if let Some(old) = links.by_node.insert(node, up) {
            self.close(old);
        }
        Ok(id)
    }

    /// The node at the other end of `link`, if it is one of these.
    pub fn node_of(&self, link: LinkId) -> Option<u16> {
        let links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        links
            .by_node
            .iter()
            .find(|(_, up)| up.id == link)
            .map(|(node, _)| *node)
    }

    /// Closes the links to nodes `keep` has not named for
    /// [`UPLINK_GRACE`].
    pub fn retain(&self, keep: impl Fn(u16) -> bool) {
        let now = std::time::Instant::now();
        let gone: Vec<Uplink> = {
            let mut links = self
                .links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut idle = Vec::new();
            for (node, up) in &mut links.by_node {
                if keep(*node) {
                    up.unused_since = None;
                } else if now - *up.unused_since.get_or_insert(now) >= UPLINK_GRACE {
                    idle.push(*node);
                }
            }
            idle.into_iter()
                .filter_map(|n| links.by_node.remove(&n))
                .collect()
        };
        for up in gone {
            tracing::info!(?up.id, addr = %up.addr, "no channel follows this core any more");
            self.close(up);
        }
    }

    fn close(&self, up: Uplink) {
        up.task.abort();
        let worker = self.worker.clone();
        tokio::spawn(async move {
            worker
                .engine_command(Command::LinkClosed { link: up.id })
                .await;
        });
    }
}

impl Drop for Uplinks {
    fn drop(&mut self) {
        for up in self
            .links
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_node
            .values()
        {
            up.task.abort();
        }
    }
}
