//! The running server: workers, HTTP listener, drain on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_core::{EngineConfig, EngineId};
use tokio::sync::Notify;

use crate::config::{Config, NodeRole};
use crate::connections::{self, ConnectionLimits};
use crate::rooms::RoomLimits;
use crate::state::AppState;
use crate::worker::{Worker, Workers};

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
    /// Binds the HTTP listener and the media socket and starts serving. A
    /// configuration [`Config::validate`] refuses is refused here too
    /// (`InvalidInput`), so that no embedder runs with a weak secret.
    pub async fn start(config: Config) -> io::Result<Server> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let engine_config = engine_config(&config)?;
        let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
        let upstream = (config.role == NodeRole::Edge).then_some(crate::cluster::UPSTREAM);
        let limits = RoomLimits {
            max_members_per_channel: config.max_members_per_channel,
            max_channels: config.max_channels,
        };
        let worker =
            Worker::spawn(config.udp, engine_config, limits, Some(relay_tx), upstream).await?;
        let cluster = crate::cluster::start(&config, worker.clone(), relay_rx).await?;
        let https = crate::tls::Https::from_config(&config).map_err(io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(config.http).await?;
        let http_addr = listener.local_addr()?;
        let state = Arc::new(AppState::new(
            config,
            Workers::new(vec![worker]),
            https.clone(),
        ));
        let app = crate::http::router(state.clone());
        let stop = Arc::new(Notify::new());
        let (stopped, refusals) = (stop.clone(), state.refusals.clone());
        let limits = ConnectionLimits {
            max_connections: state.config.max_http_connections,
            header_timeout: Duration::from_secs(state.config.http_header_timeout_secs),
        };
        let http = match https {
            Some(https) => {
                let tls = crate::tls::TlsListener::new(listener, https)?;
                tokio::spawn(connections::serve(tls, app, limits, refusals, stopped))
            }
            None => tokio::spawn(connections::serve(listener, app, limits, refusals, stopped)),
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

/// The configuration of this node's engine: its random generator keyed
/// from the operating system's secure generator (every ICE password derives
/// from it), its engine number the node id (one worker per node; with
/// several, worker `w` of `W` would be `node_id × W + w`).
pub fn engine_config(config: &Config) -> io::Result<EngineConfig> {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed)
        .map_err(|_| io::Error::other("the operating system's random generator failed"))?;
    let node = config.node_id.unwrap_or(0);
    let engine_id = EngineId::new(node).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("node_id {node} is above {}", EngineId::MAX),
        )
    })?;
    Ok(EngineConfig {
        slots_per_listener: config.slots,
        engine_id,
        // The engine starts a moment later (in `Worker::spawn`): its
        // sender reports' NTP times are off by that much, consistently.
        wallclock_at_start: Some(std::time::SystemTime::now()),
        ..EngineConfig::new(seed)
    })
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
