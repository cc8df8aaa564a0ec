//! What the HTTP and WebSocket handlers share: the configuration, the
//! workers, the drain flag, WHIP/WHEP resources, the refusal counters, and
//! the admission checks: [`AppState::check_origin`] (which pages),
//! [`AppState::authorize`] (which token, which grants, which names) and
//! [`AppState::admit`] (that, within the join rates). A leaf: it imports no
//! handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use media_core::PeerId;
use tokio::sync::{Mutex, Semaphore};

use crate::auth::{self, AuthError, Grants};
use crate::config::Config;
use crate::join_rate::{JoinRates, RateRefusal, TokenKey};
use crate::metrics::{self, Refusal, Refusals, Snapshot};
use crate::names;
use crate::origin::{self, OriginRefusal};
use crate::rooms::RoomRefusal;
use crate::worker::Workers;

/// 128 bits from the OS as 32 lowercase hex digits: for what nobody may
/// guess (resource ids, resume tokens). `None` if the OS has no randomness
/// to give, which the caller must not paper over with anything guessable.
pub fn secret_id() -> Option<String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What a client refused for a full server is told to wait, in seconds
/// (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 5;

/// A WHIP/WHEP session: its unguessable resource id maps to a peer.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The member.
    pub peer: PeerId,
    /// Its worker (holding its channel there while the resource lives).
    pub worker: crate::worker::PlacedWorker,
    /// The client's last offer: an ICE restart by `PATCH` swaps new
    /// credentials into it.
    pub offer: String,
    /// The entity tag of the ICE session (`ETag`, `If-Match`): the
    /// server's ICE ufrag, which changes with each restart.
    pub etag: String,
    /// ICE restarts in the last minute.
    pub restarts: crate::ice_restart::RestartBudget,
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
    /// WebSocket members whose socket dropped, waiting for `resume`.
    pub resumes: Arc<crate::resume::Resumes>,
    /// The HTTPS certificate and counters, when `tls_cert` is set.
    pub https: Option<Arc<crate::tls::Https>>,
    /// Refusals by reason (`sfu_refusals_total`).
    pub refusals: Arc<Refusals>,
    /// WebSocket sessions at once: a session holds a permit for its life.
    pub ws_slots: Arc<Semaphore>,
    /// Join allowances per client address and per token.
    join_rates: std::sync::Mutex<JoinRates>,
    /// Whether the node's essential tasks run (a failed node refuses joins).
    pub health: Arc<crate::health::Health>,
    /// (with `redis_url`) the node's record in the fleet, kept fresh.
    pub fleet: std::sync::OnceLock<crate::fleet::Registry>,
    /// (with `redis_url`) where joins go: the channels' leases.
    pub placer: std::sync::OnceLock<Arc<crate::fleet::Placer>>,
    /// (a fleet with edges) this node's links to the cores of the channels
    /// it serves as an edge.
    pub uplinks: std::sync::OnceLock<Arc<crate::cluster::Uplinks>>,
    /// The hybrid settings in force (the configuration's, then the admin
    /// endpoint's).
    hybrid: std::sync::Mutex<crate::rooms::mode::HybridSettings>,
    /// Configuration reloads on SIGHUP: [applied, refused].
    pub config_reloads: [std::sync::atomic::AtomicU64; 2],
}

/// Why a request is refused.
#[derive(Debug)]
pub struct Denied {
    /// HTTP status.
    pub status: u16,
    /// Protocol code (`unauthorized`, `forbidden`, `rate_limited`, ...).
    pub code: &'static str,
    /// What to tell the client.
    pub message: String,
    /// When to try again (`Retry-After`), for refusals that pass.
    pub retry_after: Option<Duration>,
}

impl Denied {
    /// A refusal without a time to try again.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Denied {
        Denied {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `retry_after` in whole seconds, rounded up (at least 1), as
    /// `Retry-After` wants it.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .map(|s| s.max(1))
    }
}

impl axum::response::IntoResponse for Denied {
    /// The status, the message as text, and `Retry-After` when set.
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::FORBIDDEN);
        let retry_after = self.retry_after_secs();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<AuthError> for Denied {
    fn from(e: AuthError) -> Self {
        Denied::new(e.status(), e.code(), e.to_string())
    }
}

impl From<names::NameError> for Denied {
    fn from(e: names::NameError) -> Self {
        Denied::new(400, "invalid_name", e.to_string())
    }
}

/// What a join needs to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Send voice.
    Publish,
    /// Hear others.
    Subscribe,
    /// Either: the role then follows from the grants (a speaker if the
    /// token may publish).
    Either,
}

/// One client asking to join a channel (or to be authorized for one).
#[derive(Debug, Clone, Copy)]
pub struct JoinAsk<'a> {
    /// The client's address.
    pub remote: SocketAddr,
    /// Its token, if it gave one.
    pub token: Option<&'a str>,
    /// The channel.
    pub channel: &'a str,
    /// The grant the join needs.
    pub need: Need,
    /// The identity it asks for in development mode.
    pub dev_identity: Option<&'a str>,
}

/// Seconds since the Unix epoch (token expiry, TURN credentials).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// The shared state of a node serving `config` with `workers`.
    pub fn new(
        config: Config,
        workers: Workers,
        https: Option<Arc<crate::tls::Https>>,
        health: Arc<crate::health::Health>,
    ) -> AppState {
        let join_rates = JoinRates::new(
            config.joins_per_ip_per_minute,
            config.joins_per_token_per_minute,
        );
        // `Server::start` validated the configuration.
        let hybrid = config.hybrid_settings().unwrap_or_default();
        AppState {
            hybrid: std::sync::Mutex::new(hybrid),
            config_reloads: Default::default(),
            ws_slots: Arc::new(Semaphore::new(config.max_ws_connections)),
            config,
            workers,
            draining: AtomicBool::new(false),
            resources: Mutex::new(HashMap::new()),
            resumes: Arc::default(),
            https,
            refusals: Arc::new(Refusals::default()),
            join_rates: std::sync::Mutex::new(join_rates),
            health,
            fleet: std::sync::OnceLock::new(),
            placer: std::sync::OnceLock::new(),
            uplinks: std::sync::OnceLock::new(),
        }
    }

    /// The hybrid settings in force.
    pub fn hybrid_settings(&self) -> crate::rooms::mode::HybridSettings {
        self.hybrid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// New hybrid settings (checked), applied to every worker.
    pub async fn set_hybrid(&self, settings: crate::rooms::mode::HybridSettings) {
        *self
            .hybrid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings.clone();
        for w in self.workers.all() {
            w.set_hybrid(settings.clone()).await;
        }
    }

    /// The refusal of a join the room layer found over a limit, counted.
    pub fn room_full(&self, full: RoomRefusal) -> Denied {
        let (refusal, code) = match full {
            RoomRefusal::ChannelFull(_) => (Refusal::ChannelFull, "channel_full"),
            RoomRefusal::TooManyChannels(_) => (Refusal::Channels, "too_many_channels"),
        };
        let mut denied = Denied::new(503, code, full.to_string());
        denied.retry_after = Some(Duration::from_secs(RETRY_AFTER_SECS));
        self.refuse(refusal, denied)
    }

    /// Counts `refusal` and hands `denied` back.
    pub fn refuse(&self, refusal: Refusal, denied: Denied) -> Denied {
        self.refusals.count(refusal);
        denied
    }

    /// Checks the page a browser request comes from, and that development
    /// mode is not reached through a proxy (see [`crate::origin`]).
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let dev = self.config.dev_mode();
        match origin::check_headers(headers, dev, &self.config.allowed_origins) {
            Ok(()) => Ok(()),
            Err(OriginRefusal::Proxied) => Err(self.refuse(
                Refusal::Proxied,
                Denied::new(
                    401,
                    "unauthorized",
                    "this server runs in development mode (no auth secret), which admits \
                     loopback clients only, and this request came through a proxy \
                     (Forwarded/X-Forwarded-For): set auth_secret to serve through a proxy",
                ),
            )),
            Err(OriginRefusal::NotAllowed) => Err(self.refuse(
                Refusal::Origin,
                Denied::new(
                    403,
                    "forbidden_origin",
                    if dev {
                        "pages of this origin may not use a development-mode server: \
                         open it from a loopback address or list the origin in allowed_origins"
                    } else {
                        "pages of this origin may not use this server (allowed_origins)"
                    },
                ),
            )),
        }
    }

    /// Checks a join: the channel name (and a development-mode identity)
    /// well-formed; a valid token for `channel` with the grant `need`; in
    /// development mode (no secret) any loopback client, no token needed,
    /// moderation only with `dev_moderation`. Refusals are counted.
    pub fn authorize(&self, ask: &JoinAsk<'_>) -> Result<Grants, Denied> {
        let checked = names::check_channel(ask.channel)
            .and_then(|()| ask.dev_identity.map_or(Ok(()), names::check_identity));
        if let Err(e) = checked {
            return Err(self.refuse(Refusal::BadName, e.into()));
        }
        self.grants(ask).map_err(|d| {
            let reason = if d.status == 403 {
                Refusal::Forbidden
            } else {
                Refusal::Unauthorized
            };
            self.refuse(reason, d)
        })
    }

    /// [`authorize`](AppState::authorize) without the counting.
    fn grants(&self, ask: &JoinAsk<'_>) -> Result<Grants, Denied> {
        let JoinAsk {
            remote,
            token,
            channel,
            need,
            dev_identity,
        } = *ask;
        let grants = match &self.config.auth_secret {
            None => {
                if !remote.ip().is_loopback() {
                    return Err(Denied::new(
                        401,
                        "unauthorized",
                        "this server has no auth secret configured and admits loopback clients only",
                    ));
                }
                let fallback = format!("guest-{}", remote.port());
                Grants::dev(
                    dev_identity.unwrap_or(&fallback),
                    self.config.dev_moderation,
                )
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
            Need::Either if !grants.can_publish && !grants.can_subscribe => {
                Err(AuthError::NotAllowed("the token allows neither speaking nor listening").into())
            }
            _ => Ok(grants),
        }
    }

    /// [`authorize`](AppState::authorize) within the join rates: the
    /// attempt counts against the client address first (refused ones too,
    /// so that guessing costs allowance), then, once the token verified,
    /// against the token (a token copied to many clients joins at one
    /// client's rate).
    pub fn admit(&self, ask: &JoinAsk<'_>) -> Result<Grants, Denied> {
        let now = Instant::now();
        self.take_rate(|r| r.take_address(ask.remote.ip(), now))?;
        let grants = self.authorize(ask)?;
        if let (Some(token), Some(_)) = (ask.token, &self.config.auth_secret) {
            let key = TokenKey::of(token, grants.jti.as_deref());
            self.take_rate(|r| r.take_token(key, now))?;
        }
        Ok(grants)
    }

    fn take_rate(
        &self,
        take: impl FnOnce(&mut JoinRates) -> Result<(), RateRefusal>,
    ) -> Result<(), Denied> {
        let taken = {
            let mut rates = self.join_rates.lock().unwrap_or_else(|p| p.into_inner());
            take(&mut rates)
        };
        let (refusal, status, message, wait) = match taken {
            Ok(()) => return Ok(()),
            Err(RateRefusal::Address(wait)) => (
                Refusal::RateAddress,
                429,
                "too many joins from this address; try again later",
                Some(wait),
            ),
            Err(RateRefusal::Token(wait)) => (
                Refusal::RateToken,
                429,
                "too many joins with this token; try again later",
                Some(wait),
            ),
            Err(RateRefusal::TableFull) => (
                Refusal::RateTableFull,
                503,
                "the server is receiving too many joins; try again later",
                Some(Duration::from_secs(RETRY_AFTER_SECS)),
            ),
        };
        let code = if status == 429 {
            "rate_limited"
        } else {
            "busy"
        };
        let mut denied = Denied::new(status, code, message);
        denied.retry_after = wait;
        Err(self.refuse(refusal, denied))
    }

    /// How long a WebSocket session may stay outside a channel.
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.config.ws_join_timeout_secs)
    }

    /// In a fleet whose Redis cannot be reached right now: the node goes on
    /// serving what it has.
    pub fn fleet_degraded(&self) -> bool {
        self.fleet
            .get()
            .is_some_and(crate::fleet::Registry::is_degraded)
    }

    /// The region of a client whose request carried `headers`: the
    /// `region_header` a trusted load balancer sets, when configured and
    /// present and a plain name, else this node's region.
    pub fn client_region(&self, headers: &axum::http::HeaderMap) -> String {
        self.config
            .region_header
            .as_deref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .filter(|r| crate::config::is_region(r))
            .unwrap_or(&self.config.region)
            .to_owned()
    }

    /// Where a join for `channel` from `region` goes: here without a
    /// fleet; in a fleet, where the channel's lease says. A join served
    /// here as an edge gets the link to the channel's core (the join opens
    /// the channel as its relay). A join that goes elsewhere gets `Err`
    /// with the redirect, or a refusal while the channel's core is moving.
    pub async fn place_join(
        &self,
        channel: &str,
        region: &str,
    ) -> Result<Option<media_core::LinkId>, Result<(u16, String), Denied>> {
        let Some(placer) = self.placer.get() else {
            return Ok(None);
        };
        match placer.place(channel, region).await {
            crate::fleet::Placed::Here => Ok(None),
            crate::fleet::Placed::Edge { core, cluster, url } => {
                let link = self
                    .uplinks
                    .get()
                    .map(|u| u.link_to(core, cluster))
                    .transpose();
                match link {
                    Ok(Some(link)) => Ok(Some(link)),
                    // Not an edge after all (no links here), or the link
                    // could not be set up: the core serves the member.
                    _ => Err(Ok((core, url))),
                }
            }
            crate::fleet::Placed::Elsewhere { node, url } => Err(Ok((node, url))),
            crate::fleet::Placed::Moving => {
                let mut denied = Denied::new(
                    503,
                    "channel_moving",
                    "the channel's node is gone; its successor takes over in a moment",
                );
                denied.retry_after = Some(Duration::from_secs(1));
                Err(Err(self.refuse(Refusal::ChannelMoving, denied)))
            }
        }
    }

    /// A member joined `channel`, which has `members` here now: in a fleet
    /// with edges, a channel this node is the core of that just grew past
    /// `edge_after` is marked big at once (not at the next lease check), so
    /// that the joiners of other regions who follow go to their edges.
    pub fn joined(&self, channel: &str, members: usize) {
        let Some(placer) = self.placer.get() else {
            return;
        };
        if !self.config.fleet_edges() || members <= self.config.edge_after {
            return;
        }
        if placer.lease_of(channel).is_none() || placer.is_big(channel) {
            return;
        }
        let (placer, channel) = (placer.clone(), channel.to_owned());
        tokio::spawn(async move { placer.mark_big(channel).await });
    }

    /// Refuses joins from now on (shutting down, or failed).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.health.failure().is_some()
    }

    /// Counters of all workers, summed.
    pub async fn snapshot(&self) -> Snapshot {
        metrics::sum(&self.worker_snapshots().await)
    }

    /// Counters of each worker, by index.
    pub async fn worker_snapshots(&self) -> Vec<Snapshot> {
        let mut all = Vec::with_capacity(self.workers.all().len());
        for w in self.workers.all() {
            all.push(w.snapshot().await);
        }
        all
    }
}
