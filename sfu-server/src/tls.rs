//! HTTPS and WSS on the HTTP address: PEM files (`tls_cert`, `tls_key`)
//! served with rustls (aws-lc-rs), re-read on SIGHUP so that a renewed
//! certificate takes effect without dropping anyone.
//!
//! Browsers give a page the microphone only in a secure context (HTTPS or
//! localhost), so a deployment reached by name needs TLS here or in a
//! reverse proxy in front.
//!
//! The certificate is chosen per handshake by [`Https`] (a rustls
//! `ResolvesServerCert`) from a swappable `Arc`: a reload affects only the
//! connections that start after it; established ones keep their session.
//!
//! Handshakes run in their own tasks, so a client that stalls mid-handshake
//! delays nobody else; at most [`MAX_HANDSHAKES`] run at once (a connection
//! past that is closed and counted) and each has [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Handshakes in progress at once; a connection past this is closed at
/// once (counted as `refused`). Enough for a burst of a few hundred joins;
/// a flood of idle TCP connections cannot hold more.
pub const MAX_HANDSHAKES: usize = 256;

/// A handshake not finished by then is abandoned (counted as `timeout`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the HTTP server to take them. The HTTP
/// server takes each at once (it spawns a task per connection); the bound
/// only keeps a stalled server from collecting connections without end.
const READY_QUEUE: usize = 64;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// `tls_cert` or `tls_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----): {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The key file holds no PEM private key rustls can use.
    #[error("{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What the parser or the crypto provider said.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("the private key in {} does not belong to the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the configuration (never expected with the defaults).
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    /// The configuration key the error is about (for `--check-config`).
    pub fn config_key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } => key,
            TlsError::Certificate { .. } | TlsError::Config(_) => "tls_cert",
            TlsError::Key { .. } | TlsError::Mismatch { .. } => "tls_key",
        }
    }
}

/// Reads a PEM certificate chain (leaf first) and its private key, and
/// checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |k: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            key: k,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("tls_cert", cert)?;
    let key_pem = read("tls_key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_owned(),
            reason: "the file has no certificate section".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// Counters of the HTTPS listener (`sfu_tls_*` in `/metrics`).
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes_ok: AtomicU64,
    /// Handshakes that failed (not TLS, no common cipher, client abort…).
    pub handshakes_failed: AtomicU64,
    /// Handshakes abandoned after [`HANDSHAKE_TIMEOUT`].
    pub handshakes_timed_out: AtomicU64,
    /// Connections closed unanswered: [`MAX_HANDSHAKES`] were in progress.
    pub handshakes_refused: AtomicU64,
    /// Certificate reloads that took effect.
    pub reloads_ok: AtomicU64,
    /// Certificate reloads that failed (the previous certificate stays).
    pub reloads_failed: AtomicU64,
}

impl TlsStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The HTTPS side of the server: the certificate files, the certificate
/// new handshakes get, and the counters.
#[derive(Debug)]
pub struct Https {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stats: TlsStats,
}

impl Https {
    /// Loads the certificate and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Https>, TlsError> {
        let certified = load(cert, key)?;
        Ok(Arc::new(Https {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(certified)),
            stats: TlsStats::default(),
        }))
    }

    /// From the configuration: `None` without `tls_cert`/`tls_key`
    /// ([`Config::validate`] refuses one without the other).
    pub fn from_config(config: &Config) -> Result<Option<Arc<Https>>, TlsError> {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Https::load(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads the files again; new handshakes get the new certificate. On an
    /// error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.cert_path, &self.key_path) {
            Ok(certified) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                *current = Arc::new(certified);
                TlsStats::count(&self.stats.reloads_ok);
                Ok(())
            }
            Err(e) => {
                TlsStats::count(&self.stats.reloads_failed);
                Err(e)
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    /// A rustls configuration that asks this object for the certificate on
    /// every handshake. TLS 1.3 only (the workspace builds rustls without
    /// TLS 1.2; every browser that has WebRTC speaks 1.3); ALPN `http/1.1`
    /// (the server speaks HTTP/1.1, which WebSocket upgrades need).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Https {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(current.clone())
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listener for `axum::serve` that yields connections whose TLS handshake
/// completed. Dropping it stops accepting and stops the SIGHUP reloads.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accept: AbortOnDrop,
    _hangup: Option<AbortOnDrop>,
}

impl TlsListener {
    /// Serves TLS on `tcp` with `https`'s certificate; on Unix, SIGHUP
    /// reloads it.
    pub fn new(tcp: TcpListener, https: Arc<Https>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let config = https.server_config().map_err(io::Error::other)?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accept = tokio::spawn(accept_loop(
            tcp,
            TlsAcceptor::from(config),
            https.clone(),
            tx,
        ));
        Ok(TlsListener {
            ready,
            local,
            _accept: AbortOnDrop(accept),
            _hangup: reload_on_hangup(https).map(AbortOnDrop),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it never does while the socket lives):
            // serve nothing more rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts TCP connections and runs each handshake in its own task.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    https: Arc<Https>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, remote) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: give the process a
                // moment instead of spinning on the error.
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            TlsStats::count(&https.stats.handshakes_refused);
            continue;
        };
        let (acceptor, https, ready) = (acceptor.clone(), https.clone(), ready.clone());
        tokio::spawn(async move {
            let stats = &https.stats;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    TlsStats::count(&stats.handshakes_ok);
                    let _ = ready.send((tls, remote)).await;
                }
                Ok(Err(e)) => {
                    TlsStats::count(&stats.handshakes_failed);
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                }
                Err(_) => TlsStats::count(&stats.handshakes_timed_out),
            }
            drop(slot);
        });
    }
}

/// Reloads the certificate on every SIGHUP (Unix), logging the outcome.
fn reload_on_hangup(https: Arc<Https>) -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: the TLS certificate will not be reloaded");
                return None;
            }
        };
        Some(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match https.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %https.cert_path.display(), "TLS certificate reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate reload failed; the previous certificate stays in use")
                    }
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = https;
        None
    }
}
