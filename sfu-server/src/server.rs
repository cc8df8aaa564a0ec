//! The running server: workers, HTTP listener, drain on shutdown, and the
//! exit of a node whose media worker died (see [`crate::health`]).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_core::{EngineConfig, EngineId};
use tokio::sync::Notify;

use crate::config::{Config, NodeRole};
use crate::connections::{self, ConnectionLimits};
use crate::fleet::{Keys, NodeRecord, Placed, Placer, RedisFleet, Refollow, Registry};
use crate::health::Health;
use crate::rooms::RoomLimits;
use crate::state::AppState;
use crate::worker::{ChannelLoad, Runs, Worker, Workers};

/// How long the members of a failed node's other workers are given to move
/// before the process exits (the dead worker's members are told at once).
const FAILED_NODE_GRACE: Duration = Duration::from_secs(2);

/// Least time between a failure and the exit: the sessions write the last
/// message their members were handed.
const LAST_MESSAGES: Duration = Duration::from_millis(500);

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
    pub async fn start(mut config: Config) -> io::Result<Server> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let upstream = (config.role == NodeRole::Edge).then_some(crate::cluster::UPSTREAM);
        let limits = RoomLimits {
            max_members_per_channel: config.max_members_per_channel,
            max_channels: config.max_channels,
        };
        let count = config.worker_count();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let health = Health::new(count);
        let mut workers = Vec::with_capacity(count);
        let mut engines = Vec::with_capacity(count);
        for w in 0..count {
            let runs = Runs::Thread {
                index: w,
                pin: config.pin_workers.then_some(w % cores),
            };
            let engine = engine_config(&config, w)?;
            engines.push(engine.engine_id);
            let (worker, task) =
                Worker::spawn(config.worker_udp(w), engine, limits, upstream, runs).await?;
            health.watch_worker(w, task);
            workers.push(worker);
        }
        tracing::info!(workers = count, "media workers started");
        let hybrid = config
            .hybrid_settings()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if hybrid.enabled {
            for w in &workers {
                w.set_hybrid(hybrid.clone()).await;
            }
            tracing::info!(
                p2p_max = hybrid.p2p_max,
                rollout_percent = hybrid.rollout.percent(),
                "hybrid channels: small groups talk peer-to-peer"
            );
        }
        // A cluster node, and a fleet node with edges, has one worker
        // (`Config::validate`).
        let cluster = crate::cluster::start(&config, workers[0].clone(), &health).await?;
        let uplinks = if config.fleet_edges() {
            Some(crate::cluster::Uplinks::new(&config, workers[0].clone())?)
        } else {
            None
        };
        let https = crate::tls::Https::from_config(&config).map_err(io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(config.http).await?;
        let http_addr = listener.local_addr()?;
        // Resolved once: the placement keeps it, and a change of the hybrid
        // keys at runtime is checked against it.
        let spread_after = config.effective_spread_after();
        config.spread_after = Some(spread_after);
        let workers = Workers::new(workers, limits, spread_after);
        if count > 1 && spread_after > 0 {
            workers.link_all(&engines).await;
        }
        let state = Arc::new(AppState::new(config, workers, https.clone(), health));
        if let Some(uplinks) = uplinks {
            let _ = state.uplinks.set(Arc::new(uplinks));
        }
        if let Some(url) = &state.config.redis_url {
            join_fleet(&state, url, http_addr, cluster.listen_addr).await?;
        }
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

    /// The media (UDP) addresses of every worker, by index.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.state
            .workers
            .all()
            .iter()
            .map(|w| w.udp_addr())
            .collect()
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
    /// when no WebSocket member is left or `deadline` passed; then end the
    /// sessions still there (WHIP/WHEP members, whom nobody can tell to
    /// move, and WebSocket members who did not).
    pub async fn drain(self, deadline: Duration) {
        self.state.draining.store(true, Ordering::Relaxed);
        for w in self.state.workers.all() {
            w.drain(deadline).await;
        }
        let until = Instant::now() + deadline;
        loop {
            let s = self.state.snapshot().await;
            if s.websocket_members == 0 {
                tracing::info!(whip_whep = s.members, "drained: no WebSocket member left");
                break;
            }
            if Instant::now() >= until {
                tracing::warn!(members = s.members, "drain deadline passed; stopping");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in self.state.workers.all() {
            w.leave_all().await;
        }
        self.leave_fleet().await;
        self.stop.notify_one();
        let _ = self.http.await;
    }

    /// Takes the node's record out of the fleet (it would expire anyway).
    async fn leave_fleet(&self) {
        let Some(registry) = self.state.fleet.get() else {
            return;
        };
        registry.stop();
        if let Some(placer) = self.state.placer.get() {
            placer.release_all().await;
        }
        if let Some(id) = self.state.config.node_id {
            if let Err(e) = registry.fleet().deregister(id).await {
                tracing::warn!(error = %e, "the node's record stays in redis until it expires");
            }
        }
    }

    /// The node failed (a media worker died): joins are refused, the
    /// members of the workers still running are told to move and given
    /// [`FAILED_NODE_GRACE`], and the dead worker's members (told when its
    /// task ended) get [`LAST_MESSAGES`] to read why.
    pub async fn fail(self) {
        let last_messages = Instant::now() + LAST_MESSAGES;
        self.drain(FAILED_NODE_GRACE).await;
        tokio::time::sleep_until(last_messages.into()).await;
    }
}

/// How often a node refreshes its record in the fleet.
pub const FLEET_REFRESH: Duration = Duration::from_millis(500);
/// How long a channel's lease outlives its holder's last renewal: a dead
/// core's channels can be claimed by another node after at most this.
pub const FLEET_LEASE_TTL: Duration = Duration::from_secs(2);
/// How often a node renews its channels' leases (three renewals may fail
/// before a lease runs out).
pub const FLEET_LEASE_RENEW: Duration = Duration::from_millis(500);
/// How long a node's record outlives its last refresh: a dead node is out
/// of the registry (no new channel is placed on it) after at most this.
pub const FLEET_NODE_TTL: Duration = Duration::from_millis(1500);
/// Every Redis call's deadline.
const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The prefix of the fleet's keys in Redis.
pub const FLEET_KEYS: &str = "sfu:";

/// Connects to the fleet's Redis (refusing to start when it cannot be
/// reached: a misconfigured URL must not go unnoticed) and keeps the node's
/// record there.
async fn join_fleet(
    state: &Arc<AppState>,
    url: &str,
    http: SocketAddr,
    cluster: Option<SocketAddr>,
) -> io::Result<()> {
    let fleet = RedisFleet::connect(url, Keys::new(FLEET_KEYS), REDIS_CALL_TIMEOUT)
        .await
        .map_err(|e| io::Error::other(format!("the fleet's redis (redis_url): {e}")))?;
    // Node ids number voices and leases: two live nodes must never share
    // one. A record with this id and another URL is another node's (this
    // node restarting within the record's TTL has the same URL).
    let me = node_record(state, http, cluster).await;
    let nodes = fleet
        .nodes()
        .await
        .map_err(|e| io::Error::other(format!("the fleet's redis (redis_url): {e}")))?;
    if let Some(other) = nodes.iter().find(|n| n.id == me.id && n.url != me.url) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "node_id {} is in use in the fleet by the node at {}: give every node its own",
                me.id, other.url
            ),
        ));
    }
    let weak = Arc::downgrade(state);
    let cpu = Arc::new(CpuRate::default());
    let registry = Registry::spawn(
        Arc::new(fleet),
        move || {
            let state = weak.upgrade();
            let cores = cpu.cores();
            async move {
                let state = state?;
                let mut record = node_record(&state, http, cluster).await;
                record.cpu = cores;
                Some(record)
            }
        },
        FLEET_REFRESH,
        FLEET_NODE_TTL,
    );
    tracing::info!(region = %state.config.region, "registered in the fleet");
    let placer = Arc::new(Placer::new(
        registry.fleet().clone(),
        state.config.node_id.unwrap_or(0),
        &state.config.region,
        FLEET_LEASE_TTL,
    ));
    let _ = state.fleet.set(registry);
    let _ = state.placer.set(placer.clone());
    tokio::spawn(keep_leases(Arc::downgrade(state), placer));
    Ok(())
}

/// Renews this node's leases every [`FLEET_LEASE_RENEW`], releases those of
/// channels that emptied, moves the members of channels another node
/// took over (fencing: they are told to go there and leave) and, with
/// edges, marks the big channels it is the core of and makes the channels
/// it serves as an edge follow their lease (a new core, or this node),
/// until the node's state is gone.
async fn keep_leases(state: std::sync::Weak<AppState>, placer: Arc<Placer>) {
    let mut tick = tokio::time::interval(FLEET_LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        // Channels the engines hold: with members here, or (as a core)
        // with edges subscribed to them.
        let mut loads = Vec::new();
        for w in state.workers.all() {
            loads.extend(w.channels().await);
        }
        let live: HashSet<&str> = loads.iter().map(|l| l.channel.as_str()).collect();
        let lost = placer
            .maintain(|c| live.contains(c) || state.workers.placement().worker_of(c).is_some())
            .await;
        if let Some(uplinks) = state.uplinks.get() {
            follow_leases(&state, &placer, uplinks, &loads).await;
        }
        for channel in lost {
            let msg = match placer.place(&channel, &state.config.region).await {
                Placed::Elsewhere { url, .. } => crate::protocol::ServerMsg::Redirect {
                    url,
                    channel: channel.clone(),
                    request: None,
                },
                _ => crate::protocol::ServerMsg::error(
                    "channel_moving",
                    "the channel moved to another node: join again",
                    None,
                ),
            };
            for w in state.workers.all() {
                w.move_channel(channel.clone(), msg.clone()).await;
            }
        }
    }
}

/// The process's CPU use between two readings, in cores.
#[derive(Debug, Default)]
struct CpuRate(std::sync::Mutex<Option<(Instant, f64)>>);

impl CpuRate {
    /// Cores busy since the last call (0 at the first, or without
    /// `/proc`), rounded to hundredths.
    fn cores(&self) -> f64 {
        let Some(now) = crate::process::ProcessStats::read().map(|p| p.cpu_seconds) else {
            return 0.0;
        };
        let at = Instant::now();
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cores = match *last {
            Some((then, before)) if at > then => {
                (now - before).max(0.0) / (at - then).as_secs_f64()
            }
            _ => 0.0,
        };
        *last = Some((at, now));
        (cores * 100.0).round() / 100.0
    }
}

/// (a fleet with edges) Marks the big channels this node is the core of
/// (past `edge_after` members here), makes each channel it serves as an
/// edge follow what its lease says (this node, promoted, or another core),
/// and closes the links to cores no channel follows any more.
async fn follow_leases(
    state: &AppState,
    placer: &Placer,
    uplinks: &crate::cluster::Uplinks,
    loads: &[ChannelLoad],
) {
    let big: Vec<String> = loads
        .iter()
        .filter(|l| l.upstream.is_none() && l.members > state.config.edge_after)
        .filter(|l| placer.lease_of(&l.channel).is_some())
        .map(|l| l.channel.clone())
        .collect();
    placer.mark_fanout(&big).await;
    let following: Vec<(String, u16)> = loads
        .iter()
        .filter_map(|l| Some((l.channel.clone(), uplinks.node_of(l.upstream?)?)))
        .collect();
    let worker = &state.workers.all()[0];
    let mut cores: HashSet<u16> = following.iter().map(|(_, n)| *n).collect();
    for (channel, next) in placer.refollow(&following).await {
        match next {
            Refollow::Promote => worker.follow(channel, None).await,
            Refollow::Follow { core, cluster } => match uplinks.link_to(core, cluster) {
                Ok(link) => {
                    cores.insert(core);
                    worker.follow(channel, Some(link)).await;
                }
                Err(e) => tracing::warn!(channel, core, error = %e, "cannot link to the new core"),
            },
        }
    }
    uplinks.retain(|n| cores.contains(&n));
}

/// What this node, serving signaling on `http` and accepting edges on
/// `cluster`, says about itself in the fleet.
async fn node_record(
    state: &AppState,
    http: SocketAddr,
    cluster: Option<SocketAddr>,
) -> NodeRecord {
    let c = &state.config;
    let load = state.snapshot().await;
    let scheme = if c.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    NodeRecord {
        id: c.node_id.unwrap_or(0),
        region: c.region.clone(),
        core: c.role != NodeRole::Edge,
        edge: c.role == NodeRole::Edge || c.fleet_edges(),
        url: c
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{http}")),
        media: state.workers.all().iter().map(|w| w.udp_addr()).collect(),
        cluster,
        draining: state.is_draining(),
        members: load.members as u64,
        channels: load.channels as u64,
        cpu: 0.0,
    }
}

/// The configuration of worker `w`'s engine: its random generator keyed
/// from the operating system's secure generator (every ICE password derives
/// from it), its engine number `node_id × workers + w`, so that the voice
/// ids of every worker of every node differ (with one worker, the node id).
pub fn engine_config(config: &Config, w: usize) -> io::Result<EngineConfig> {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed)
        .map_err(|_| io::Error::other("the operating system's random generator failed"))?;
    let node = usize::from(config.node_id.unwrap_or(0));
    let number = node * config.worker_count() + w;
    let engine_id = u16::try_from(number)
        .ok()
        .and_then(EngineId::new)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "node_id {node}, worker {w} of {}: engine number {number} is above {}",
                    config.worker_count(),
                    EngineId::MAX
                ),
            )
        })?;
    Ok(EngineConfig {
        slots_per_listener: config.slots,
        pack_listeners: config.hall_mode,
        engine_id,
        // The engine starts a moment later (in `Worker::spawn`): its
        // sender reports' NTP times are off by that much, consistently.
        wallclock_at_start: Some(std::time::SystemTime::now()),
        ..EngineConfig::new(seed)
    })
}

/// Loads the configuration again (the file, the environment, the flags),
/// for SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// Runs the server until Ctrl-C or SIGTERM, then drains.
pub async fn serve(config: Config) -> io::Result<()> {
    serve_with_reload(config, None).await
}

/// [`serve`], and on SIGHUP (Unix) the hybrid keys of the configuration
/// `reload` loads are applied at runtime (the other keys need a restart;
/// the TLS certificate is re-read on SIGHUP anyway). A configuration that
/// does not load or is refused keeps the settings in force, logged and
/// counted (`sfu_config_reloads_total{outcome="failed"}`).
pub async fn serve_with_reload(config: Config, reload: Option<Reload>) -> io::Result<()> {
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
    // Before the server says it listens, as the shutdown handlers.
    #[cfg(all(unix, debug_assertions))]
    crash_worker_on_sigusr2(server.state().workers.all()[0].clone())?;
    if let Some(reload) = reload {
        reload_hybrid_on_hangup(server.state().clone(), reload)?;
    }
    let http = server.http_addr();
    let udp = server.udp_addrs();
    tracing::info!(%http, udp = ?udp, tls = scheme == "https", dev_mode = dev, "sfu-server listening");
    // For a person at a terminal; JSON logs must stay one object per line.
    if text_logs {
        let media: Vec<String> = udp.iter().map(ToString::to_string).collect();
        println!(
            "sfu-server: open {scheme}://{http}/ in a browser (media on udp {})",
            media.join(", ")
        );
        if dev {
            println!(
                "sfu-server: no auth secret configured: development mode, accepting clients from loopback only, without tokens"
            );
        }
    }
    let health = server.state().health.clone();
    tokio::select! {
        () = shutdown => {
            tracing::info!(deadline = ?drain, "shutting down: draining");
            server.drain(drain).await;
            Ok(())
        }
        reason = health.failed() => {
            tracing::error!(%reason, "the node failed: telling members, then exiting");
            server.fail().await;
            // A non-zero exit: systemd (Restart=on-failure) or Kubernetes
            // restarts the node.
            Err(io::Error::other(format!("the node failed: {reason}")))
        }
    }
}

/// On every SIGHUP: the hybrid settings of the configuration as it loads
/// now, checked, applied to every worker.
#[cfg(unix)]
fn reload_hybrid_on_hangup(state: Arc<AppState>, reload: Reload) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let settings = reload().and_then(|mut c| {
                // Not reloaded: the workers' placement keeps what it
                // started with.
                c.spread_after = state.config.spread_after;
                c.validate()?;
                c.hybrid_settings()
            });
            match settings {
                Ok(settings) => {
                    tracing::info!(
                        enabled = settings.enabled,
                        p2p_max = settings.p2p_max,
                        rollout_percent = settings.rollout.percent(),
                        "SIGHUP: hybrid settings reloaded"
                    );
                    state.set_hybrid(settings).await;
                    state.config_reloads[0].fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the configuration was refused; the settings in force stay");
                    state.config_reloads[1].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_hybrid_on_hangup(_state: Arc<AppState>, _reload: Reload) -> io::Result<()> {
    Ok(())
}

/// Debug builds: SIGUSR2 makes the media worker panic, so that the tests can
/// watch a built binary deal with a dead worker. Release builds have no such
/// hook.
#[cfg(all(unix, debug_assertions))]
fn crash_worker_on_sigusr2(worker: Worker) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        if usr2.recv().await.is_some() {
            tracing::warn!("SIGUSR2: crashing the media worker on purpose (debug build)");
            worker.crash_for_test().await;
        }
    });
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
