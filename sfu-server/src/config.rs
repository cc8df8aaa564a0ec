//! Server configuration: built-in defaults, then a TOML file, then `SFU_*`
//! environment variables, then command-line flags (each overrides the
//! previous), and the checks that refuse unsafe or unworkable settings.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use media_core::{EngineId, MAX_SLOTS};

mod hybrid;

/// Server configuration: built-in defaults, then a TOML file, then `SFU_*`
/// environment variables, then command-line flags (each overrides the
/// previous).
///
/// The TOML file uses the field names as keys (`http = "0.0.0.0:8080"`,
/// `slots = 3`, `stun_urls = ["stun:stun.example.org:3478"]`, ...); unknown
/// keys are an error.
///
/// `Debug` redacts `auth_secret`, `turn_secret` and `admin_token`, so a configuration can be
/// logged.
#[derive(Clone, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP (signaling, WHIP/WHEP, metrics) listen address; default
    /// `127.0.0.1:8080`.
    pub http: SocketAddr,
    /// Media (UDP) socket address; default `127.0.0.1:0` (any free port). The
    /// bound address is advertised as the ICE host candidate. With several
    /// workers, worker `w` binds port `port + w` (or any free port for 0).
    pub udp: SocketAddr,
    /// Media workers: each an OS thread with its own engine and UDP port; a
    /// channel lives on one of them. 0 (the default): one per available
    /// core for a standalone node, one for a core or edge (a cluster node
    /// runs one worker today).
    pub workers: usize,
    /// Pin worker `w` to core `w` (modulo the cores there are); default false.
    pub pin_workers: bool,
    /// HS256 secret for join tokens; `None` is development mode (loopback
    /// clients only, no token needed).
    pub auth_secret: Option<String>,
    /// Allow binding beyond loopback without `auth_secret`.
    pub insecure: bool,
    /// Receive slots per listener (1 to [`MAX_SLOTS`]); default 3.
    pub slots: usize,
    /// (several workers) A channel spreads over the workers once its first
    /// worker carries this many of its members: new members go to the
    /// least-loaded worker, where the channel follows the first one over an
    /// in-process link (speaker selection stays on the first); its room
    /// (member count and list, raised hands, moderation) stays one across
    /// the workers. 0: a channel stays on one worker. `None` (the default):
    /// [`DEFAULT_SPREAD_AFTER`]. With `hybrid` it must be above `p2p_max`
    /// (a channel spreads only once it is on the SFU, and stays there while
    /// spread). The server resolves it at start-up
    /// ([`Config::effective_spread_after`]).
    pub spread_after: Option<usize>,
    /// Hall mode: members who join as listeners receive each voice in
    /// 40 ms packets (two 20 ms Opus frames joined, nothing decoded): half
    /// the packets and about a third fewer bytes per listener, for 20 ms
    /// more latency; speakers keep 20 ms. Default `false`.
    pub hall_mode: bool,
    /// STUN server URLs handed to clients, e.g.
    /// `["stun:stun.example.org:3478"]`; default empty.
    pub stun_urls: Vec<String>,
    /// TURN server URLs handed to clients with ephemeral credentials, e.g.
    /// `["turn:turn.example.org:3478?transport=udp"]`; default empty.
    pub turn_urls: Vec<String>,
    /// The TURN server's shared secret (coturn `use-auth-secret` /
    /// `static-auth-secret`); required when `turn_urls` is not empty.
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials in seconds; default 600. The TURN server
    /// checks the expiry when an allocation is made, not for its life: the
    /// credentials only need to outlive the connection set-up.
    pub turn_ttl_secs: u64,
    /// Graceful shutdown deadline in seconds; default 30.
    pub drain_timeout_secs: u64,
    /// Largest accepted HTTP request body in bytes; default 65536.
    pub max_body_bytes: usize,
    /// `tracing` `EnvFilter` directive; default `"info,str0m=error"` (str0m warns about every offer feature the engine declines, such as RED) (`RUST_LOG` wins
    /// when set).
    pub log: String,
    /// What this node is in a cluster; default `standalone`.
    pub role: NodeRole,
    /// This node's number in its cluster (0 to 4095): the high bits of the
    /// voice ids its engine gives out, announced to the core when an edge
    /// links. Every node of a cluster needs its own, so it is required for
    /// `core` and `edge`; a standalone node is 0 when unset.
    pub node_id: Option<u16>,
    /// (core) QUIC address edges dial; default `127.0.0.1:7000`.
    pub cluster_listen: SocketAddr,
    /// (edge) the cores to dial, primary first, then standbys.
    pub cluster_cores: Vec<SocketAddr>,
    /// Shared secret that authenticates the nodes of a cluster to each other
    /// (required for `core` and `edge`).
    pub cluster_secret: Option<String>,
    /// The fleet's Redis (`redis://[:password@]host:port/db`): the node
    /// registers there (id, region, addresses, load, refreshed every 0.5 s,
    /// gone 1.5 s after it stops). None (the default): no fleet. Needs a
    /// `node_id`.
    pub redis_url: Option<String>,
    /// This node's region in the fleet (letters, digits, `-`, `_`, `.`, at
    /// most 64); default `default`.
    pub region: String,
    /// The URL clients reach this node's signaling at, as the fleet
    /// advertises it (`https://sfu-3.example.org`); default
    /// `http://` + `http`.
    pub public_url: Option<String>,
    /// A request header a trusted load balancer sets to the client's region
    /// (`X-Region`); a new channel's core is then chosen in that region.
    /// Unset (the default): the client is in this node's region.
    pub region_header: Option<String>,
    /// (fleet) Regional edges: once a channel has more than this many
    /// members at its core, members joining from another region are served
    /// by a node of theirs, an edge that follows the core over the QUIC
    /// cascade (every node then accepts edges on `cluster_listen`, with
    /// `cluster_secret`, and runs one worker). 0 (the default): a channel
    /// is served by its core alone.
    pub edge_after: usize,
    /// Hybrid channels (docs/HYBRID.md): small channels whose members'
    /// clients can do it talk peer-to-peer (the server relays signaling
    /// only) and move onto the SFU as they grow. Default false. A
    /// standalone node only; `spread_after` above `p2p_max`.
    pub hybrid: bool,
    /// (hybrid) Most members of a peer-to-peer channel (1 to 16); default 7.
    pub p2p_max: usize,
    /// (hybrid) A channel on the SFU returns to P2P at this many members
    /// or fewer (at most `p2p_max`)...; default 5.
    pub p2p_return_at: usize,
    /// (hybrid) ...after this many seconds without interruption; default 10.
    pub p2p_return_after_secs: u64,
    /// (hybrid) The share of channels that may use P2P, in percent (0 to
    /// 100, steps of 0.01; a stable hash of the channel name decides);
    /// default 100.
    pub p2p_rollout_percent: f64,
    /// (hybrid) A switch not every member completed in this many seconds
    /// completes anyway (to the SFU) or falls back (to P2P); 1 to 60,
    /// default 10.
    pub p2p_switch_timeout_secs: u64,
    /// (hybrid) Channels that never use P2P; default none.
    pub p2p_disabled_channels: Vec<String>,
    /// Bearer token of the admin endpoints (`/admin/hybrid`: the hybrid
    /// settings at runtime); at least 32 bytes. Unset (the default): the
    /// endpoints answer 404.
    pub admin_token: Option<String>,
    /// PEM certificate chain: with `tls_key`, the HTTP address serves HTTPS
    /// and WSS (re-read on SIGHUP); default none (plain HTTP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Log lines as human-readable text (default) or one JSON object each.
    pub log_format: LogFormat,
    /// Members of one channel on this node at most; default 10000.
    pub max_members_per_channel: usize,
    /// Channels with members on this node at most; default 5000.
    pub max_channels: usize,
    /// Joins (and `authorize` requests) one token may make per minute; 0 is
    /// no limit; default 10.
    pub joins_per_token_per_minute: u32,
    /// Joins (and `authorize` requests) one client address may attempt per
    /// minute, refused ones included; 0 is no limit; default 60.
    pub joins_per_ip_per_minute: u32,
    /// TCP connections on the HTTP address at once (WebSockets included);
    /// default 16384.
    pub max_http_connections: usize,
    /// WebSocket sessions at once; default 15000.
    pub max_ws_connections: usize,
    /// Seconds a client has to send a request's headers (and an idle
    /// keep-alive connection waits for the next request); default 10.
    pub http_header_timeout_secs: u64,
    /// Seconds a WebSocket session may stay without being in a channel;
    /// default 20.
    pub ws_join_timeout_secs: u64,
    /// Largest WebSocket message (and frame) a client may send, in bytes;
    /// default 65536.
    pub ws_max_message_bytes: usize,
    /// ICE restarts one member may ask for per minute (`restart`, WHIP/WHEP
    /// `PATCH`); 0 is no limit; default 6.
    pub ice_restarts_per_minute: u32,
    /// Seconds a member whose WebSocket dropped is kept for a `resume`
    /// (others see no leave); 0 turns resume off; default 30.
    pub resume_grace_secs: u64,
    /// Web origins (`https://app.example.org`) whose pages may use `/ws` and
    /// WHIP/WHEP. Empty: any origin with a token, and in development mode
    /// loopback origins only.
    pub allowed_origins: Vec<String>,
    /// Development mode only: give every client the moderation grant
    /// (default false: nobody can moderate in development mode).
    pub dev_moderation: bool,
}

/// A region name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn is_region(r: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !r.is_empty() && r.len() <= 64 && r.chars().all(plain)
}

/// Media workers on one node at most.
pub const MAX_WORKERS: usize = 256;

/// A channel spreads over the workers once its first one carries this many
/// of its members (`spread_after` unset): below it one worker forwards a
/// channel with room to spare (about 4,000 forwarded datagrams a second per
/// core-percent here), above it the copies of one packet share the cores.
pub const DEFAULT_SPREAD_AFTER: usize = 200;

/// Secrets shorter than this many bytes are refused: a shorter HMAC key is
/// within reach of an offline guess from one token or one TURN credential.
pub const MIN_SECRET_BYTES: usize = 32;

/// How log lines are written (to standard output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A node's place in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// One node, no cluster.
    Standalone,
    /// Selects the speakers of its channels and relays them to edges.
    Core,
    /// Carries listeners (and speakers) of channels whose core is elsewhere.
    Edge,
}

impl std::str::FromStr for NodeRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standalone" => Ok(NodeRole::Standalone),
            "core" => Ok(NodeRole::Core),
            "edge" => Ok(NodeRole::Edge),
            other => Err(format!("{other:?} is not standalone, core or edge")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            udp: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 0,
            pin_workers: false,
            auth_secret: None,
            insecure: false,
            slots: 3,
            hall_mode: false,
            spread_after: None,
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: 600,
            drain_timeout_secs: 30,
            role: NodeRole::Standalone,
            node_id: None,
            cluster_listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            cluster_cores: Vec::new(),
            cluster_secret: None,
            redis_url: None,
            region: "default".to_owned(),
            public_url: None,
            region_header: None,
            edge_after: 0,
            hybrid: false,
            p2p_max: 7,
            p2p_return_at: 5,
            p2p_return_after_secs: 10,
            p2p_rollout_percent: 100.0,
            p2p_switch_timeout_secs: 10,
            p2p_disabled_channels: Vec::new(),
            admin_token: None,
            max_body_bytes: 65_536,
            log: "info,str0m=error".to_owned(),
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Text,
            max_members_per_channel: 10_000,
            max_channels: 5_000,
            joins_per_token_per_minute: 10,
            joins_per_ip_per_minute: 60,
            max_http_connections: 16_384,
            max_ws_connections: 15_000,
            http_header_timeout_secs: 10,
            ws_join_timeout_secs: 20,
            ws_max_message_bytes: 65_536,
            ice_restarts_per_minute: 6,
            resume_grace_secs: 30,
            allowed_origins: Vec::new(),
            dev_moderation: false,
        }
    }
}

/// A URL with the password it may hold (`user:password@`) redacted.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Shows a secret as `Some("<redacted>")` / `None`.
fn redact(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("udp", &self.udp)
            .field("workers", &self.workers)
            .field("pin_workers", &self.pin_workers)
            .field("auth_secret", &redact(&self.auth_secret))
            .field("insecure", &self.insecure)
            .field("slots", &self.slots)
            .field("hall_mode", &self.hall_mode)
            .field("spread_after", &self.spread_after)
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_secret", &redact(&self.turn_secret))
            .field("admin_token", &redact(&self.admin_token))
            .field("turn_ttl_secs", &self.turn_ttl_secs)
            .field("drain_timeout_secs", &self.drain_timeout_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("log", &self.log)
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .field("cluster_listen", &self.cluster_listen)
            .field("cluster_cores", &self.cluster_cores)
            .field("cluster_secret", &redact(&self.cluster_secret))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("region", &self.region)
            .field("public_url", &self.public_url)
            .field("region_header", &self.region_header)
            .field("edge_after", &self.edge_after)
            .field("hybrid", &self.hybrid)
            .field("p2p_max", &self.p2p_max)
            .field("p2p_return_at", &self.p2p_return_at)
            .field("p2p_return_after_secs", &self.p2p_return_after_secs)
            .field("p2p_rollout_percent", &self.p2p_rollout_percent)
            .field("p2p_switch_timeout_secs", &self.p2p_switch_timeout_secs)
            .field("p2p_disabled_channels", &self.p2p_disabled_channels)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("log_format", &self.log_format)
            .field("max_members_per_channel", &self.max_members_per_channel)
            .field("max_channels", &self.max_channels)
            .field(
                "joins_per_token_per_minute",
                &self.joins_per_token_per_minute,
            )
            .field("joins_per_ip_per_minute", &self.joins_per_ip_per_minute)
            .field("max_http_connections", &self.max_http_connections)
            .field("max_ws_connections", &self.max_ws_connections)
            .field("http_header_timeout_secs", &self.http_header_timeout_secs)
            .field("ws_join_timeout_secs", &self.ws_join_timeout_secs)
            .field("ws_max_message_bytes", &self.ws_max_message_bytes)
            .field("ice_restarts_per_minute", &self.ice_restarts_per_minute)
            .field("resume_grace_secs", &self.resume_grace_secs)
            .field("allowed_origins", &self.allowed_origins)
            .field("dev_moderation", &self.dev_moderation)
            .finish()
    }
}

/// Values given on the command line (all optional); they override the file
/// and the environment.
///
/// `Debug` redacts `auth_secret`.
#[derive(Default, Clone)]
pub struct Overrides {
    /// `--http ADDR`.
    pub http: Option<SocketAddr>,
    /// `--udp ADDR`.
    pub udp: Option<SocketAddr>,
    /// `--workers N`.
    pub workers: Option<usize>,
    /// `--pin-workers` (can only turn the setting on).
    pub pin_workers: bool,
    /// `--auth-secret S`.
    pub auth_secret: Option<String>,
    /// `--insecure` (can only turn the setting on).
    pub insecure: bool,
    /// `--slots N`.
    pub slots: Option<usize>,
    /// `--hall-mode`.
    pub hall_mode: bool,
    /// `--spread-after N`.
    pub spread_after: Option<usize>,
    /// `--log FILTER`.
    pub log: Option<String>,
    /// `--role standalone|core|edge`.
    pub role: Option<NodeRole>,
    /// `--node-id N`.
    pub node_id: Option<u16>,
    /// `--cluster-listen ADDR`.
    pub cluster_listen: Option<SocketAddr>,
    /// `--cluster-core ADDR` (repeated: primary first).
    pub cluster_cores: Vec<SocketAddr>,
    /// `--cluster-secret S`.
    pub cluster_secret: Option<String>,
    /// `--redis URL`.
    pub redis_url: Option<String>,
    /// `--region R`.
    pub region: Option<String>,
    /// `--edge-after N`.
    pub edge_after: Option<usize>,
    /// `--hybrid` (can only turn the setting on).
    pub hybrid: bool,
    /// `--p2p-max N`.
    pub p2p_max: Option<usize>,
    /// `--region-header NAME`.
    pub region_header: Option<String>,
    /// `--tls-cert FILE`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`.
    pub tls_key: Option<PathBuf>,
    /// `--log-format text|json`.
    pub log_format: Option<LogFormat>,
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("http", &self.http)
            .field("udp", &self.udp)
            .field("auth_secret", &redact(&self.auth_secret))
            .field("insecure", &self.insecure)
            .field("slots", &self.slots)
            .field("log", &self.log)
            .finish()
    }
}

/// Why a configuration could not be loaded or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys or
    /// values of the wrong type.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (names the line, column and key).
        message: String,
    },
    /// An `SFU_*` environment variable has a value that cannot be used.
    #[error("invalid environment variable {name}={value:?}: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A socket would be reachable beyond loopback while anyone may join
    /// without a token.
    #[error(
        "refusing to bind the {what} socket to {addr}, beyond loopback, without auth_secret: \
         anyone who can reach it could join without a token. Set auth_secret \
         (SFU_AUTH_SECRET or --auth-secret) or pass --insecure (SFU_INSECURE=1) to allow it"
    )]
    UnsafeBinding {
        /// `"HTTP"` or `"UDP"`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// TURN URLs are configured but no secret to mint credentials for them.
    #[error(
        "turn_urls are configured but turn_secret is not: set turn_secret (SFU_TURN_SECRET, \
         the TURN server's static-auth-secret) or remove turn_urls"
    )]
    TurnWithoutSecret,
    /// A setting has a value that cannot work.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Loads: defaults ← optional TOML file ← environment (`SFU_HTTP`,
    /// `SFU_UDP`, `SFU_WORKERS`, `SFU_PIN_WORKERS`, `SFU_AUTH_SECRET`, `SFU_INSECURE`, `SFU_SLOTS`, `SFU_HALL_MODE`, `SFU_SPREAD_AFTER`,
    /// `SFU_STUN_URLS` (comma separated), `SFU_TURN_URLS` (comma separated),
    /// `SFU_TURN_SECRET`, `SFU_TURN_TTL_SECS`, `SFU_DRAIN_TIMEOUT_SECS`,
    /// `SFU_MAX_BODY_BYTES`, `SFU_LOG`, `SFU_LOG_FORMAT`, `SFU_ROLE`,
    /// `SFU_NODE_ID`, `SFU_CLUSTER_*`, `SFU_REDIS_URL`, `SFU_REGION`, `SFU_PUBLIC_URL`, `SFU_REGION_HEADER`, `SFU_EDGE_AFTER`, `SFU_HYBRID`, `SFU_P2P_*`, `SFU_TLS_CERT`, `SFU_TLS_KEY`, and the limits and
    /// origin rules: `SFU_MAX_MEMBERS_PER_CHANNEL`, `SFU_MAX_CHANNELS`,
    /// `SFU_JOINS_PER_TOKEN_PER_MINUTE`, `SFU_JOINS_PER_IP_PER_MINUTE`,
    /// `SFU_MAX_HTTP_CONNECTIONS`, `SFU_MAX_WS_CONNECTIONS`,
    /// `SFU_HTTP_HEADER_TIMEOUT_SECS`, `SFU_WS_JOIN_TIMEOUT_SECS`,
    /// `SFU_WS_MAX_MESSAGE_BYTES`, `SFU_ALLOWED_ORIGINS` (comma separated),
    /// `SFU_DEV_MODERATION`) ← command-line overrides.
    ///
    /// `env` looks a variable up (`|k| std::env::var(k).ok()` in the binary).
    /// Does not [`validate`](Config::validate).
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.apply_overrides(overrides);
        Ok(config)
    }

    /// Reads a TOML file over the defaults.
    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Applies the `SFU_*` environment variables that are set.
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("SFU_HTTP") {
            self.http = parse_env("SFU_HTTP", v)?;
        }
        if let Some(v) = env("SFU_UDP") {
            self.udp = parse_env("SFU_UDP", v)?;
        }
        if let Some(v) = env("SFU_WORKERS") {
            self.workers = parse_env("SFU_WORKERS", v)?;
        }
        if let Some(v) = env("SFU_PIN_WORKERS") {
            self.pin_workers = parse_bool("SFU_PIN_WORKERS", v)?;
        }
        if let Some(v) = env("SFU_AUTH_SECRET") {
            // An empty value is kept (and refused by `validate`) rather than
            // silently falling back to development mode.
            self.auth_secret = Some(v);
        }
        if let Some(v) = env("SFU_INSECURE") {
            self.insecure = parse_bool("SFU_INSECURE", v)?;
        }
        if let Some(v) = env("SFU_SLOTS") {
            self.slots = parse_env("SFU_SLOTS", v)?;
        }
        if let Some(v) = env("SFU_SPREAD_AFTER") {
            self.spread_after = Some(parse_env("SFU_SPREAD_AFTER", v)?);
        }
        if let Some(v) = env("SFU_HALL_MODE") {
            self.hall_mode = parse_bool("SFU_HALL_MODE", v)?;
        }
        if let Some(v) = env("SFU_STUN_URLS") {
            self.stun_urls = split_list(&v);
        }
        if let Some(v) = env("SFU_TURN_URLS") {
            self.turn_urls = split_list(&v);
        }
        if let Some(v) = env("SFU_TURN_SECRET") {
            self.turn_secret = Some(v);
        }
        if let Some(v) = env("SFU_TURN_TTL_SECS") {
            self.turn_ttl_secs = parse_env("SFU_TURN_TTL_SECS", v)?;
        }
        if let Some(v) = env("SFU_DRAIN_TIMEOUT_SECS") {
            self.drain_timeout_secs = parse_env("SFU_DRAIN_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = env("SFU_MAX_BODY_BYTES") {
            self.max_body_bytes = parse_env("SFU_MAX_BODY_BYTES", v)?;
        }
        if let Some(v) = env("SFU_LOG") {
            self.log = v;
        }
        if let Some(v) = env("SFU_ROLE") {
            self.role = v.parse().map_err(|reason| ConfigError::Env {
                name: "SFU_ROLE",
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(v) = env("SFU_NODE_ID") {
            self.node_id = Some(parse_env("SFU_NODE_ID", v)?);
        }
        if let Some(v) = env("SFU_CLUSTER_LISTEN") {
            self.cluster_listen = parse_env("SFU_CLUSTER_LISTEN", v)?;
        }
        if let Some(v) = env("SFU_CLUSTER_CORES") {
            self.cluster_cores = split_list(&v)
                .into_iter()
                .map(|a| parse_env("SFU_CLUSTER_CORES", a))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = env("SFU_CLUSTER_SECRET") {
            self.cluster_secret = Some(v);
        }
        if let Some(v) = env("SFU_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = env("SFU_REGION") {
            self.region = v;
        }
        if let Some(v) = env("SFU_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = env("SFU_REGION_HEADER") {
            self.region_header = Some(v);
        }
        if let Some(v) = env("SFU_EDGE_AFTER") {
            self.edge_after = parse_env("SFU_EDGE_AFTER", v)?;
        }
        self.apply_hybrid_env(env)?;
        if let Some(v) = env("SFU_TLS_CERT") {
            self.tls_cert = Some(v.into());
        }
        if let Some(v) = env("SFU_TLS_KEY") {
            self.tls_key = Some(v.into());
        }
        if let Some(v) = env("SFU_LOG_FORMAT") {
            self.log_format =
                clap::ValueEnum::from_str(v.trim(), true).map_err(|reason| ConfigError::Env {
                    name: "SFU_LOG_FORMAT",
                    value: v.clone(),
                    reason,
                })?;
        }
        self.apply_limits_env(env)
    }

    /// Applies the `SFU_*` variables of the limits and the origin rules.
    fn apply_limits_env(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = env("SFU_MAX_MEMBERS_PER_CHANNEL") {
            self.max_members_per_channel = parse_env("SFU_MAX_MEMBERS_PER_CHANNEL", v)?;
        }
        if let Some(v) = env("SFU_MAX_CHANNELS") {
            self.max_channels = parse_env("SFU_MAX_CHANNELS", v)?;
        }
        if let Some(v) = env("SFU_JOINS_PER_TOKEN_PER_MINUTE") {
            self.joins_per_token_per_minute = parse_env("SFU_JOINS_PER_TOKEN_PER_MINUTE", v)?;
        }
        if let Some(v) = env("SFU_JOINS_PER_IP_PER_MINUTE") {
            self.joins_per_ip_per_minute = parse_env("SFU_JOINS_PER_IP_PER_MINUTE", v)?;
        }
        if let Some(v) = env("SFU_MAX_HTTP_CONNECTIONS") {
            self.max_http_connections = parse_env("SFU_MAX_HTTP_CONNECTIONS", v)?;
        }
        if let Some(v) = env("SFU_MAX_WS_CONNECTIONS") {
            self.max_ws_connections = parse_env("SFU_MAX_WS_CONNECTIONS", v)?;
        }
        if let Some(v) = env("SFU_HTTP_HEADER_TIMEOUT_SECS") {
            self.http_header_timeout_secs = parse_env("SFU_HTTP_HEADER_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = env("SFU_WS_JOIN_TIMEOUT_SECS") {
            self.ws_join_timeout_secs = parse_env("SFU_WS_JOIN_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = env("SFU_WS_MAX_MESSAGE_BYTES") {
            self.ws_max_message_bytes = parse_env("SFU_WS_MAX_MESSAGE_BYTES", v)?;
        }
        if let Some(v) = env("SFU_ICE_RESTARTS_PER_MINUTE") {
            self.ice_restarts_per_minute = parse_env("SFU_ICE_RESTARTS_PER_MINUTE", v)?;
        }
        if let Some(v) = env("SFU_RESUME_GRACE_SECS") {
            self.resume_grace_secs = parse_env("SFU_RESUME_GRACE_SECS", v)?;
        }
        if let Some(v) = env("SFU_ALLOWED_ORIGINS") {
            self.allowed_origins = split_list(&v);
        }
        if let Some(v) = env("SFU_DEV_MODERATION") {
            self.dev_moderation = parse_bool("SFU_DEV_MODERATION", v)?;
        }
        Ok(())
    }

    /// Applies the command-line values that were given.
    fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(http) = o.http {
            self.http = http;
        }
        if let Some(udp) = o.udp {
            self.udp = udp;
        }
        if let Some(n) = o.workers {
            self.workers = n;
        }
        if o.pin_workers {
            self.pin_workers = true;
        }
        if let Some(secret) = &o.auth_secret {
            self.auth_secret = Some(secret.clone());
        }
        if o.insecure {
            self.insecure = true;
        }
        if let Some(slots) = o.slots {
            self.slots = slots;
        }
        if o.hall_mode {
            self.hall_mode = true;
        }
        if let Some(n) = o.spread_after {
            self.spread_after = Some(n);
        }
        if let Some(log) = &o.log {
            self.log = log.clone();
        }
        if let Some(role) = o.role {
            self.role = role;
        }
        if let Some(n) = o.node_id {
            self.node_id = Some(n);
        }
        if let Some(a) = o.cluster_listen {
            self.cluster_listen = a;
        }
        if !o.cluster_cores.is_empty() {
            self.cluster_cores = o.cluster_cores.clone();
        }
        if let Some(s) = &o.cluster_secret {
            self.cluster_secret = Some(s.clone());
        }
        if let Some(u) = &o.redis_url {
            self.redis_url = Some(u.clone());
        }
        if let Some(r) = &o.region {
            self.region = r.clone();
        }
        if let Some(n) = o.edge_after {
            self.edge_after = n;
        }
        if o.hybrid {
            self.hybrid = true;
        }
        if let Some(n) = o.p2p_max {
            self.p2p_max = n;
        }
        if let Some(h) = &o.region_header {
            self.region_header = Some(h.clone());
        }
        if let Some(p) = &o.tls_cert {
            self.tls_cert = Some(p.clone());
        }
        if let Some(p) = &o.tls_key {
            self.tls_key = Some(p.clone());
        }
        if let Some(f) = o.log_format {
            self.log_format = f;
        }
    }

    /// Refuses configurations that would be unsafe or cannot work: HTTP or
    /// UDP bound beyond loopback without `auth_secret` unless `insecure`;
    /// `turn_urls` without `turn_secret`; `slots` 0 or more than
    /// [`MAX_SLOTS`]; an empty `auth_secret` or `turn_secret`; any secret
    /// shorter than [`MIN_SECRET_BYTES`]; a limit of 0; an allowed origin
    /// that is not an origin; STUN/TURN URLs
    /// with the wrong scheme or characters that cannot go into a header;
    /// `turn_ttl_secs` or `max_body_bytes` of 0; a `log` directive that does
    /// not parse; a core or edge without a cluster secret or a `node_id`; a
    /// `node_id` above 4095.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.role != NodeRole::Standalone
            && self.cluster_secret.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConfigError::Invalid {
                field: "cluster_secret",
                reason: "a core or edge needs a cluster secret (SFU_CLUSTER_SECRET or --cluster-secret) to authenticate the other nodes".into(),
            });
        }
        match self.node_id {
            Some(n) if n > EngineId::MAX => {
                return Err(ConfigError::Invalid {
                    field: "node_id",
                    reason: format!("{n} is above {}", EngineId::MAX),
                })
            }
            None if self.role != NodeRole::Standalone => {
                return Err(ConfigError::Invalid {
                    field: "node_id",
                    reason: "a core or edge needs its own node id, distinct from every other \
                             node of the cluster (SFU_NODE_ID or --node-id N)"
                        .into(),
                })
            }
            _ => {}
        }
        self.validate_workers()?;
        self.validate_fleet()?;
        self.validate_hybrid()?;
        if self.role == NodeRole::Edge && self.cluster_cores.is_empty() {
            return Err(ConfigError::Invalid {
                field: "cluster_cores",
                reason: "an edge needs at least one core to dial (--cluster-core ADDR)".into(),
            });
        }
        if self.auth_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid {
                field: "auth_secret",
                reason: "it is empty; give a long random string, or leave it unset for \
                         development mode (loopback only)"
                    .to_owned(),
            });
        }
        check_secret("auth_secret", self.auth_secret.as_deref())?;
        check_secret("turn_secret", self.turn_secret.as_deref())?;
        check_secret("admin_token", self.admin_token.as_deref())?;
        check_secret("cluster_secret", self.cluster_secret.as_deref())?;
        if self.auth_secret.is_none() && !self.insecure {
            for (what, addr) in [("HTTP", self.http), ("UDP", self.udp)] {
                if !addr.ip().to_canonical().is_loopback() {
                    return Err(ConfigError::UnsafeBinding { what, addr });
                }
            }
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(ConfigError::Invalid {
                field: "slots",
                reason: format!("{} is out of range 1..={MAX_SLOTS}", self.slots),
            });
        }
        if self.turn_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid {
                field: "turn_secret",
                reason: "it is empty".to_owned(),
            });
        }
        if !self.turn_urls.is_empty() && self.turn_secret.is_none() {
            return Err(ConfigError::TurnWithoutSecret);
        }
        check_urls("stun_urls", &self.stun_urls, &["stun:", "stuns:"])?;
        check_urls("turn_urls", &self.turn_urls, &["turn:", "turns:"])?;
        if self.turn_ttl_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "turn_ttl_secs",
                reason: "must be at least 1".to_owned(),
            });
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                field: "max_body_bytes",
                reason: "must be at least 1".to_owned(),
            });
        }
        self.validate_limits()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                field: if self.tls_cert.is_some() {
                    "tls_key"
                } else {
                    "tls_cert"
                },
                reason:
                    "tls_cert and tls_key go together: give both (HTTPS) or neither (plain HTTP)"
                        .into(),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError::Invalid {
                field: "log",
                reason: format!("{:?} is not a valid tracing filter: {e}", self.log),
            });
        }
        Ok(())
    }

    /// A node of a fleet with regional edges (`redis_url` and
    /// `edge_after`): it accepts edges and follows other nodes' channels.
    pub fn fleet_edges(&self) -> bool {
        self.redis_url.is_some() && self.edge_after > 0
    }

    /// The members a channel's first worker carries before it spreads over
    /// the others (`spread_after` resolved): 0 on a node of one worker,
    /// else the setting, else [`DEFAULT_SPREAD_AFTER`].
    pub fn effective_spread_after(&self) -> usize {
        if self.worker_count() == 1 {
            return 0;
        }
        self.spread_after.unwrap_or(DEFAULT_SPREAD_AFTER)
    }

    /// The media workers this node runs (`workers`, with 0 resolved).
    pub fn worker_count(&self) -> usize {
        match (self.workers, self.role) {
            (0, NodeRole::Standalone) if !self.fleet_edges() => {
                std::thread::available_parallelism()
                    .map_or(1, std::num::NonZeroUsize::get)
                    .min(MAX_WORKERS)
            }
            (0, _) => 1,
            (n, _) => n,
        }
    }

    /// Refuses more workers than [`MAX_WORKERS`], several on a cluster
    /// node, engine numbers (`node_id × workers + w`) past
    /// [`EngineId::MAX`], and worker ports past 65535.
    fn validate_workers(&self) -> Result<(), ConfigError> {
        let n = self.worker_count();
        let invalid = |reason: String| ConfigError::Invalid {
            field: "workers",
            reason,
        };
        if n > MAX_WORKERS {
            return Err(invalid(format!("{n} is above {MAX_WORKERS}")));
        }
        if n > 1 && self.fleet_edges() {
            return Err(invalid(format!(
                "a fleet node with edges (edge_after) runs one media worker today (its links \
                 to other nodes carry one engine's voices); set workers = 1, not {n}"
            )));
        }
        if n > 1 && self.role != NodeRole::Standalone {
            return Err(invalid(format!(
                "a core or edge runs one media worker today (a channel cannot yet span the \
                 workers of a cluster node); set workers = 1 (SFU_WORKERS=1 or --workers 1), \
                 not {n}"
            )));
        }
        let node = usize::from(self.node_id.unwrap_or(0));
        if (node + 1) * n - 1 > usize::from(EngineId::MAX) {
            return Err(invalid(format!(
                "node_id {node} with {n} workers numbers engines past {}: the voice ids of \
                 worker w are numbered node_id × workers + w",
                EngineId::MAX
            )));
        }
        if self.udp.port() != 0 && usize::from(self.udp.port()) + n - 1 > usize::from(u16::MAX) {
            return Err(invalid(format!(
                "{n} workers need UDP ports {} to {}, past 65535",
                self.udp.port(),
                usize::from(self.udp.port()) + n - 1
            )));
        }
        Ok(())
    }

    /// Refuses a Redis URL that is not `redis://`, a fleet node without a
    /// `node_id`, a region that is not a short plain name, and a public URL
    /// that is not `http(s)://`.
    fn validate_fleet(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if let Some(url) = &self.redis_url {
            if !url.starts_with("redis://") {
                return invalid(
                    "redis_url",
                    "give redis://[:password@]host:port/db (rediss:// is not built in)",
                );
            }
            if self.role != NodeRole::Standalone {
                return invalid(
                    "redis_url",
                    "a fleet's nodes are standalone: each is the core of the channels whose \
                     lease it holds, and with edge_after an edge of other nodes' big channels; \
                     a static cluster (role core/edge) cannot join a fleet",
                );
            }
            if self.edge_after > 0 && self.cluster_secret.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "cluster_secret",
                    "a fleet with edges (edge_after) needs a cluster secret (SFU_CLUSTER_SECRET \
                     or --cluster-secret) to authenticate its nodes' links to each other",
                );
            }
            if self.node_id.is_none() {
                return invalid(
                    "node_id",
                    "a node of a fleet (redis_url) needs its own node id, distinct from every \
                     other node's (SFU_NODE_ID or --node-id N)",
                );
            }
        }
        if !is_region(&self.region) {
            return invalid(
                "region",
                "1 to 64 letters, digits, '-', '_' or '.' (e.g. \"eu-west\")",
            );
        }
        if let Some(h) = &self.region_header {
            if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return invalid("region_header", "not a header name (e.g. \"X-Region\")");
            }
        }
        if let Some(url) = &self.public_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return invalid(
                    "public_url",
                    "give the URL clients reach this node at, e.g. https://sfu-3.example.org",
                );
            }
        }
        Ok(())
    }

    /// The media address of worker `w`: `udp`, its port moved on by `w`
    /// (any free port stays any free port).
    pub fn worker_udp(&self, w: usize) -> SocketAddr {
        let mut addr = self.udp;
        if addr.port() != 0 {
            let port = usize::from(addr.port()) + w;
            addr.set_port(u16::try_from(port).unwrap_or(u16::MAX));
        }
        addr
    }

    /// Refuses limits of 0 (a limit that admits nobody is a mistake; rate
    /// limits take 0 as "none") and allowed origins that are not origins.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            (
                "max_members_per_channel",
                self.max_members_per_channel as u64,
            ),
            ("max_channels", self.max_channels as u64),
            ("max_http_connections", self.max_http_connections as u64),
            ("max_ws_connections", self.max_ws_connections as u64),
            ("http_header_timeout_secs", self.http_header_timeout_secs),
            ("ws_join_timeout_secs", self.ws_join_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        // An offer with a few dozen m-lines is a few KiB; below 4 KiB even
        // an ordinary join would not fit.
        if self.ws_max_message_bytes < 4096 {
            return Err(ConfigError::Invalid {
                field: "ws_max_message_bytes",
                reason: format!("{} is below 4096", self.ws_max_message_bytes),
            });
        }
        for origin in &self.allowed_origins {
            if !crate::origin::is_origin(origin) {
                return Err(ConfigError::Invalid {
                    field: "allowed_origins",
                    reason: format!(
                        "{origin:?} is not an origin: scheme://host[:port], without a path \
                         (e.g. \"https://app.example.org\")"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether this is development mode (no `auth_secret`): joins are
    /// accepted from loopback clients only, without a token, with all grants.
    pub fn dev_mode(&self) -> bool {
        self.auth_secret.is_none()
    }
}

/// Parses one environment variable's value with `FromStr`.
fn parse_env<T>(name: &'static str, value: String) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    match value.trim().parse() {
        Ok(v) => Ok(v),
        Err(e) => Err(ConfigError::Env {
            name,
            reason: e.to_string(),
            value,
        }),
    }
}

/// Parses a boolean environment variable (`1/0`, `true/false`, `yes/no`,
/// `on/off`, any case).
fn parse_bool(name: &'static str, value: String) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Env {
            name,
            value,
            reason: "expected one of 1, 0, true, false, yes, no, on, off".to_owned(),
        }),
    }
}

/// Refuses a secret (when set) shorter than [`MIN_SECRET_BYTES`], saying how
/// to make a good one.
fn check_secret(field: &'static str, secret: Option<&str>) -> Result<(), ConfigError> {
    match secret {
        Some(s) if s.len() < MIN_SECRET_BYTES => Err(ConfigError::Invalid {
            field,
            reason: format!(
                "it is {} bytes; it must be at least {MIN_SECRET_BYTES} bytes of random, \
                 e.g. the output of `head -c 32 /dev/urandom | base64`",
                s.len()
            ),
        }),
        _ => Ok(()),
    }
}

/// Splits a comma-separated list, trimming items and dropping empty ones.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks ICE server URLs: the right scheme, and nothing that would break a
/// `Link` header (`<`, `>`, `"`, whitespace, control characters).
fn check_urls(field: &'static str, urls: &[String], schemes: &[&str]) -> Result<(), ConfigError> {
    for url in urls {
        let lower = url.to_ascii_lowercase();
        let has_scheme_and_host = schemes
            .iter()
            .any(|s| lower.starts_with(s) && lower.len() > s.len());
        if !has_scheme_and_host {
            return Err(ConfigError::Invalid {
                field,
                reason: format!("{url:?} must be a {} URL with a host", schemes.join(" or ")),
            });
        }
        if url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
        {
            return Err(ConfigError::Invalid {
                field,
                reason: format!("{url:?} contains whitespace, a quote or angle brackets"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
