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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cascade::link::{Dialer, DialerEvent, LinkConfig, LinkEvent, LinkHandle, Listener};
use media_core::{Command, EngineId, LinkId, RelayMsg};
use tokio::sync::mpsc;

use crate::config::{Config, NodeRole};
use crate::worker::Worker;

/// Where the cores are: the seam for the cluster directory. Static (the
/// configured list) today; a Redis-backed directory (node registry, channel
/// placement claimed atomically) implements the same trait later.
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

/// Relay messages the engine emits, to be sent over links.
pub type RelayOut = mpsc::UnboundedReceiver<(LinkId, RelayMsg)>;

/// What the cluster side runs; dropping it stops it.
#[derive(Debug)]
pub struct Cluster {
    /// (core) the QUIC address edges dial.
    pub listen_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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

type Links = Arc<Mutex<HashMap<LinkId, LinkHandle>>>;

/// Sends what the engine emits over the link it names: media as a datagram
/// (dropped if the link cannot take it now), the rest on the control stream.
async fn send_out(mut out: RelayOut, links: Links) {
    while let Some((link, msg)) = out.recv().await {
        let handle = links.lock().ok().and_then(|l| l.get(&link).cloned());
        let Some(handle) = handle else { continue };
        if matches!(msg, RelayMsg::Media { .. }) {
            handle.send_media(&msg);
        } else if let Err(e) = handle.send_control(&msg).await {
            tracing::debug!(?link, error = %e, "control message not sent");
        }
    }
}

/// Starts the cluster side for `config.role` (nothing for standalone), with
/// the static directory of the configuration.
pub async fn start(config: &Config, worker: Worker, out: RelayOut) -> io::Result<Cluster> {
    let directory = StaticDirectory(config.cluster_cores.clone());
    start_with(config, &directory, worker, out).await
}

/// [`start`] with any [`Directory`].
pub async fn start_with(
    config: &Config,
    directory: &dyn Directory,
    worker: Worker,
    out: RelayOut,
) -> io::Result<Cluster> {
    let links: Links = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = vec![tokio::spawn(send_out(out, links.clone()))];
    let mut listen_addr = None;
    match config.role {
        NodeRole::Standalone => {}
        NodeRole::Core => {
            let mut listener = Listener::bind(config.cluster_listen, link_config(config)?)?;
            listen_addr = Some(listener.local_addr());
            tracing::info!(addr = %listener.local_addr(), "core: accepting edges");
            tasks.push(tokio::spawn(async move {
                let mut next = 1u64;
                while let Some(mut link) = listener.accept().await {
                    let Some(engine) = peer_engine(&link.handle()) else {
                        continue;
                    };
                    let id = LinkId(next);
                    next += 1;
                    let node = link.peer_node_id();
                    tracing::info!(edge = %link.remote_addr(), node, ?id, "edge linked");
                    if let Ok(mut l) = links.lock() {
                        l.insert(id, link.handle());
                    }
                    let (worker, links) = (worker.clone(), links.clone());
                    tokio::spawn(async move {
                        // Before any of its messages: the engine drops what
                        // comes over a link it was not told about.
                        worker
                            .engine_command(Command::LinkOpened { link: id, engine })
                            .await;
                        loop {
                            match link.recv_event().await {
                                Some(LinkEvent::Message(m)) => worker.relay_in(id, m),
                                Some(LinkEvent::Closed(reason)) => {
                                    tracing::info!(?id, ?reason, "edge link closed");
                                    break;
                                }
                                None => break,
                            }
                        }
                        if let Ok(mut l) = links.lock() {
                            l.remove(&id);
                        }
                        worker
                            .engine_command(Command::LinkClosed { link: id })
                            .await;
                    });
                }
            }));
        }
        NodeRole::Edge => {
            let mut dialer = Dialer::spawn(directory.cores(), link_config(config)?)
                .map_err(|e| io::Error::other(e.to_string()))?;
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = dialer.next_event().await {
                    match ev {
                        DialerEvent::Connected(handle) => {
                            let Some(engine) = peer_engine(&handle) else {
                                continue;
                            };
                            let node = handle.peer_node_id();
                            tracing::info!(core = %handle.remote_addr(), node, "linked to core");
                            if let Ok(mut l) = links.lock() {
                                l.insert(UPSTREAM, handle);
                            }
                            worker
                                .engine_command(Command::LinkOpened {
                                    link: UPSTREAM,
                                    engine,
                                })
                                .await;
                            // Every subscription died with the old link.
                            worker.resubscribe().await;
                        }
                        DialerEvent::Message(m) => worker.relay_in(UPSTREAM, m),
                        DialerEvent::Disconnected(reason) => {
                            tracing::warn!(?reason, "core link lost; reconnecting");
                            if let Ok(mut l) = links.lock() {
                                l.remove(&UPSTREAM);
                            }
                            worker
                                .engine_command(Command::LinkClosed { link: UPSTREAM })
                                .await;
                        }
                    }
                }
            }));
        }
    }
    Ok(Cluster { listen_addr, tasks })
}
