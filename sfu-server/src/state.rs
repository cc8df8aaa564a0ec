//! What the HTTP and WebSocket handlers share: the configuration, the
//! workers, the drain flag, WHIP/WHEP resources, and the admission check
//! ([`AppState::authorize`]). A leaf: it imports no handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use media_core::PeerId;
use tokio::sync::Mutex;

use crate::auth::{self, AuthError, Grants};
use crate::config::Config;
use crate::metrics::{self, Snapshot};
use crate::worker::Workers;

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
    /// Whether the node's essential tasks run (a failed node refuses joins).
    pub health: Arc<crate::health::Health>,
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

    /// Refuses joins from now on (shutting down, or failed).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.health.failure().is_some()
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
