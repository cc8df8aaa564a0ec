//! Accepting links.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quinn::{Endpoint, Incoming, VarInt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::conn::{close_failed, Link};
use super::{tls, LinkConfig, LinkError, Shared, CLOSE_NORMAL};

/// Handshakes (TLS + authentication) in progress at once; more incoming
/// connections are refused.
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
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    auth_failed: AtomicU64,
    handshake_failed: AtomicU64,
}

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
    loop {
        let incoming = tokio::select! {
            () = links.closed() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes; refused");
            counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let links = links.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let result = handshake(incoming, &shared, &counters).await;
            drop(permit);
            match result {
                Ok(link) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "link accepted");
                    // A full queue waits; a closed listener drops (closes) it.
                    let _ = links.send(link).await;
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
) -> Result<Link, LinkError> {
    let deadline = shared.config.idle_timeout;
    let mut connection = None;
    let attempt = async {
        let conn = incoming.await.map_err(|e| LinkError::Closed(e.into()))?;
        connection = Some(conn.clone());
        let (send, recv) = super::auth::server(&conn, &shared.key).await?;
        Ok::<_, LinkError>((conn, send, recv))
    };
    let result = match tokio::time::timeout(deadline, attempt).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Timeout(deadline)),
    };
    match result {
        Ok((conn, send, recv)) => Ok(Link::start(conn, send, recv, None)),
        Err(e) => {
            let counter = if matches!(e, LinkError::AuthFailed) {
                &counters.auth_failed
            } else {
                &counters.handshake_failed
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
