//! Accepting links.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quinn::{Connection, Endpoint, Incoming, VarInt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::conn::{close_failed, Link};
use super::{tls, LinkConfig, LinkError, Shared, CLOSE_NORMAL};

/// Handshakes (TLS + authentication) in progress at once; more incoming
/// connections are refused. Only addresses that answered a Retry get one.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Authenticated links waiting for [`Listener::accept`].
const ACCEPT_QUEUE: usize = 16;

/// Counters of a listener (a snapshot, see [`Listener::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Links authenticated and queued for [`Listener::accept`].
    pub accepted: u64,
    /// Connections closed because the peer's proof did not verify (wrong
    /// cluster secret, or an intercepted session).
    pub auth_failed: u64,
    /// Connections that failed otherwise before authentication: TLS
    /// handshake failure, no proof in time, a datagram or a bad magic
    /// before the proof, too many handshakes at once.
    pub handshake_failed: u64,
    /// Connection attempts answered with a QUIC Retry (their address was not
    /// validated yet): an honest dialer retries at once, a forged source
    /// address never sees the Retry.
    pub retried: u64,
    /// Authenticated dialers refused because their node id is the
    /// listener's own or another open link's.
    pub node_id_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    auth_failed: AtomicU64,
    handshake_failed: AtomicU64,
    retried: AtomicU64,
    node_id_refused: AtomicU64,
}

/// The node ids of the links this listener accepted, with their connection
/// (a closed one frees its id). At most one entry per node id.
type LinkedNodes = Arc<Mutex<HashMap<u16, Connection>>>;

/// Accepts authenticated links on a UDP address.
///
/// Dropping the listener stops accepting (new connections are refused);
/// links already accepted stay open. [`Listener::close`] also closes them.
pub struct Listener {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    links: mpsc::Receiver<Link>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Listener {
    /// Binds `addr` (port 0 picks one) with a fresh self-signed certificate.
    /// Must be called within a tokio runtime. An invalid `config` (an empty
    /// cluster secret, ...) is [`io::ErrorKind::InvalidInput`].
    pub fn bind(addr: SocketAddr, config: LinkConfig) -> io::Result<Listener> {
        let shared =
            Shared::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let server = tls::server_config(&shared.config).map_err(io::Error::other)?;
        // Stateless resets keyed by the cluster secret: a core restarted on
        // the same address resets the links its previous run held at their
        // next packet, so edges reconnect at once instead of waiting for the
        // idle timeout. Both keys must survive the restart: the reset token
        // key, and the key that lets the endpoint recognise connection IDs
        // it issued (with a fresh one, the old IDs look forged and their
        // packets are dropped without a reset).
        let derive = |label: &[u8]| {
            let k = aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                &shared.config.cluster_secret,
            );
            aws_lc_rs::hmac::sign(&k, label)
        };
        let reset = derive(b"voice-sfu cascade stateless reset");
        let reset_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, reset.as_ref());
        let cid = derive(b"voice-sfu cascade connection ids");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket = std::net::UdpSocket::bind(addr)?;
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (tx, links) = mpsc::channel(ACCEPT_QUEUE);
        let task = tokio::spawn(accept_loop(endpoint.clone(), shared, tx, counters.clone()));
        Ok(Listener {
            endpoint,
            local_addr,
            links,
            counters,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next authenticated link; `None` once the listener is closed.
    /// Connections that fail authentication are counted in
    /// [`Listener::stats`] and never returned. Cancel-safe.
    pub async fn accept(&mut self) -> Option<Link> {
        self.links.recv().await
    }

    /// Counters.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            auth_failed: self.counters.auth_failed.load(Ordering::Relaxed),
            handshake_failed: self.counters.handshake_failed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            node_id_refused: self.counters.node_id_refused.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every link accepted by this listener
    /// ([`super::CLOSE_NORMAL`]). [`Listener::accept`] then returns `None`.
    pub fn close(&self) {
        self.task.abort();
        self.endpoint.set_server_config(None);
        self.endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"listener closed");
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.set_server_config(None);
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    shared: Shared,
    links: mpsc::Sender<Link>,
    counters: Arc<Counters>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let nodes = LinkedNodes::default();
    loop {
        let incoming = tokio::select! {
            () = links.closed() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        // Stateless: no slot, no state, until the address proves it receives
        // (a spoofed Initial cannot hold a handshake slot).
        if !incoming.remote_address_validated() {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes; refused");
            counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let links = links.clone();
        let counters = counters.clone();
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let result = handshake(incoming, &shared, &counters, &nodes).await;
            drop(permit);
            match result {
                Ok(link) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "link accepted");
                    // A full queue waits; a closed listener drops (closes) it.
                    let _ = links.send(link).await;
                }
                Err(e @ LinkError::NodeIdInUse(_)) => {
                    tracing::warn!(%remote, error = %e, "link refused");
                }
                Err(e) => tracing::info!(%remote, error = %e, "link refused"),
            }
        });
    }
}

/// TLS handshake and authentication of one incoming connection, bounded by
/// the idle timeout. Failures are counted, then the connection is closed.
async fn handshake(
    incoming: Incoming,
    shared: &Shared,
    counters: &Counters,
    nodes: &LinkedNodes,
) -> Result<Link, LinkError> {
    let deadline = shared.config.idle_timeout;
    let own = shared.config.node_id;
    let mut connection = None;
    let attempt = async {
        let conn = incoming.await.map_err(|e| LinkError::Closed(e.into()))?;
        connection = Some(conn.clone());
        let admit = |node| admit_node(nodes, own, node, &conn);
        let authenticated = super::auth::server(&conn, &shared.key, own, admit).await?;
        Ok::<_, LinkError>((conn, authenticated))
    };
    let result = match tokio::time::timeout(deadline, attempt).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Timeout(deadline)),
    };
    match result {
        Ok((conn, authenticated)) => Ok(Link::start(conn, authenticated, None)),
        Err(e) => {
            let counter = match e {
                LinkError::AuthFailed => &counters.auth_failed,
                LinkError::NodeIdInUse(_) => &counters.node_id_refused,
                _ => &counters.handshake_failed,
            };
            // Count first, then close: whoever sees the close sees the count.
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(conn) = &connection {
                close_failed(conn, &e);
            }
            Err(e)
        }
    }
}

/// Whether an authenticated dialer with node id `node` may link: not the
/// listener's own id, not the id of another link still open. Records it.
fn admit_node(
    nodes: &LinkedNodes,
    own: u16,
    node: u16,
    conn: &Connection,
) -> Result<(), LinkError> {
    if node == own {
        return Err(LinkError::NodeIdInUse(format!(
            "node id {node} is the listener's own"
        )));
    }
    let mut nodes = nodes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(open) = nodes.get(&node).filter(|c| c.close_reason().is_none()) {
        return Err(LinkError::NodeIdInUse(format!(
            "node id {node} is already linked from {}",
            open.remote_address()
        )));
    }
    nodes.insert(node, conn.clone());
    Ok(())
}
