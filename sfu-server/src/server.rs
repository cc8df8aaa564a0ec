//! The running server: workers, HTTP listener, drain on shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use media_core::{EngineConfig, PeerId};
use tokio::sync::{Mutex, Notify};

use crate::auth::{self, AuthError, Grants};
use crate::config::{Config, NodeRole};
use crate::metrics;
use crate::worker::{Snapshot, Worker};

/// The media workers. One today; a channel always lives on one worker (the
/// seam for several: pick by channel, link spanning channels with relays).
#[derive(Debug, Clone)]
pub struct Workers(Vec<Worker>);

impl Workers {
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

/// A WHIP/WHEP session: its unguessable resource id maps to a peer.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The member.
    pub peer: PeerId,
    /// Its channel (to find its worker).
    pub channel: String,
}

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct AppState {
    /// The configuration in force.
    pub config: Config,
    /// Media workers.
    pub workers: Workers,
    /// Set when shutdown began: joins are refused.
    pub draining: AtomicBool,
    /// WHIP/WHEP resources by id.
    pub resources: Mutex<HashMap<String, Resource>>,
    /// The HTTPS certificate and counters, when `tls_cert` is set.
    pub https: Option<Arc<crate::tls::Https>>,
}

/// Why a join is not authorized.
#[derive(Debug)]
pub struct Denied {
    /// HTTP status.
    pub status: u16,
    /// Protocol code (`unauthorized`, `forbidden`).
    pub code: &'static str,
    /// What to tell the client.
    pub message: String,
}

impl From<AuthError> for Denied {
    fn from(e: AuthError) -> Self {
        Denied {
            status: e.status(),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// What a join needs to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Send voice.
    Publish,
    /// Hear others.
    Subscribe,
}

/// Seconds since the Unix epoch (token expiry, TURN credentials).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// Checks a join: a valid token for `channel` with the grant `need`; in
    /// development mode (no secret) any loopback client, no token needed.
    pub fn authorize(
        &self,
        remote: SocketAddr,
        token: Option<&str>,
        channel: &str,
        need: Need,
        dev_identity: Option<&str>,
    ) -> Result<Grants, Denied> {
        let grants = match &self.config.auth_secret {
            None => {
                if !remote.ip().is_loopback() {
                    return Err(Denied {
                        status: 401,
                        code: "unauthorized",
                        message: "this server has no auth secret configured and admits loopback clients only".into(),
                    });
                }
                let fallback = format!("guest-{}", remote.port());
                Grants::dev(dev_identity.unwrap_or(&fallback))
            }
            Some(secret) => {
                let token = token.ok_or(AuthError::Missing)?;
                auth::verify(secret.as_bytes(), token, unix_now())?
            }
        };
        if !grants.admits(channel) {
            return Err(AuthError::WrongChannel.into());
        }
        match need {
            Need::Publish if !grants.can_publish => {
                Err(AuthError::NotAllowed("the token does not allow publishing").into())
            }
            Need::Subscribe if !grants.can_subscribe => {
                Err(AuthError::NotAllowed("the token does not allow listening").into())
            }
            _ => Ok(grants),
        }
    }

    /// Refuses joins from now on.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counters of all workers, summed.
    pub async fn snapshot(&self) -> Snapshot {
        let mut all = Vec::new();
        for w in self.workers.all() {
            all.push(w.snapshot().await);
        }
        metrics::sum(&all)
    }
}

/// A started server.
#[derive(Debug)]
pub struct Server {
    state: Arc<AppState>,
    http_addr: SocketAddr,
    stop: Arc<Notify>,
    http: tokio::task::JoinHandle<()>,
    cluster: crate::cluster::Cluster,
}

impl Server {
    /// Binds the HTTP listener and the media socket and starts serving.
    pub async fn start(config: Config) -> io::Result<Server> {
        let engine_config = EngineConfig {
            slots_per_listener: config.slots,
            seed: unix_now() ^ u64::from(std::process::id()) << 32,
            // The engine starts a moment later (in `Worker::spawn`): its
            // sender reports' NTP times are off by that much, consistently.
            wallclock_at_start: Some(std::time::SystemTime::now()),
            ..Default::default()
        };
        let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
        let upstream = (config.role == NodeRole::Edge).then_some(crate::cluster::UPSTREAM);
        let worker = Worker::spawn(config.udp, engine_config, Some(relay_tx), upstream).await?;
        let cluster = crate::cluster::start(&config, worker.clone(), relay_rx).await?;
        let https = crate::tls::Https::from_config(&config).map_err(io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(config.http).await?;
        let http_addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            config,
            workers: Workers(vec![worker]),
            draining: AtomicBool::new(false),
            resources: Mutex::new(HashMap::new()),
            https: https.clone(),
        });
        let app = crate::http::router(state.clone());
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let http = match https {
            Some(https) => tokio::spawn(serve_http(
                crate::tls::TlsListener::new(listener, https)?,
                app,
                stopped,
            )),
            None => tokio::spawn(serve_http(listener, app, stopped)),
        };
        Ok(Server {
            state,
            http_addr,
            stop,
            http,
            cluster,
        })
    }

    /// The HTTP address (signaling, demo page, metrics).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The media (UDP) address of the first worker.
    pub fn udp_addr(&self) -> SocketAddr {
        self.state.workers.all()[0].udp_addr()
    }

    /// (core) The QUIC address edges dial.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster.listen_addr
    }

    /// Shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Graceful shutdown: refuse joins, tell every member to move, and stop
    /// when nobody is left or `deadline` passed.
    pub async fn drain(self, deadline: Duration) {
        self.state.draining.store(true, Ordering::Relaxed);
        for w in self.state.workers.all() {
            w.drain(deadline).await;
        }
        let until = Instant::now() + deadline;
        loop {
            let members = self.state.snapshot().await.members;
            if members == 0 {
                tracing::info!("drained: no members left");
                break;
            }
            if Instant::now() >= until {
                tracing::warn!(members, "drain deadline passed; stopping");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.notify_one();
        let _ = self.http.await;
    }
}

/// Serves the routes on `listener` (plain TCP or TLS) until `stopped`.
async fn serve_http<L>(listener: L, app: axum::Router, stopped: Arc<Notify>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    // `tap_io` does nothing to the connection; it is how axum hands
    // `ConnectInfo<SocketAddr>` to the handlers for any listener type.
    let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::select! {
        r = axum::serve(listener, service) => {
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }
        _ = stopped.notified() => {}
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then drains.
pub async fn serve(config: Config) -> io::Result<()> {
    let dev = config.auth_secret.is_none();
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let text_logs = config.log_format == crate::config::LogFormat::Text;
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let shutdown = shutdown_signal();
    let server = Server::start(config).await?;
    let http = server.http_addr();
    tracing::info!(%http, udp = %server.udp_addr(), tls = scheme == "https", dev_mode = dev, "sfu-server listening");
    // For a person at a terminal; JSON logs must stay one object per line.
    if text_logs {
        println!(
            "sfu-server: open {scheme}://{http}/ in a browser (media on udp {})",
            server.udp_addr()
        );
        if dev {
            println!(
                "sfu-server: no auth secret configured: development mode, accepting clients from loopback only, without tokens"
            );
        }
    }
    shutdown.await;
    tracing::info!(deadline = ?drain, "shutting down: draining");
    server.drain(drain).await;
    Ok(())
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a SIGTERM that comes right after the
/// server said it is listening must drain it, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (int, term) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
