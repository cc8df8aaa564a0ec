//! The QUIC transport between nodes (tokio + quinn).
//!
//! A [`Link`] is one QUIC connection between two nodes:
//!
//! - **media** ([`media_core::RelayMsg::Media`]) travels in QUIC DATAGRAM frames
//!   (RFC 9221), encoded by [`crate::wire::encode_datagram`]. Sending never
//!   blocks: a datagram that is too large, or that finds the link closed, is
//!   dropped and counted, and when the (small, [`LinkConfig::datagram_send_buffer`])
//!   send queue is full the *oldest* queued datagrams are dropped to make room,
//!   so stale audio is dropped rather than queued;
//! - **control** (everything else) travels in order on one reliable
//!   bidirectional stream, framed by [`crate::wire::encode_frame`].
//!
//! [`Listener`] accepts links, [`Link::dial`] makes one, and [`Dialer`]
//! keeps a link to the first reachable of a list of nodes, reconnecting with
//! exponential backoff.
//!
//! # Authentication
//!
//! Every node generates a throw-away self-signed certificate at start (rcgen);
//! certificates authenticate nobody. Nodes authenticate each other with the
//! cluster secret, bound to the TLS session:
//!
//! ```text
//! exporter = TLS-Exporter(label "voice-sfu-cascade", context "", 32 bytes)
//! proof(role, node) = HMAC-SHA256(cluster_secret,
//!                     "voice-sfu cascade v2 " || role || node || exporter)
//! hello(role, node) = "VSFUCAS2" || node || proof(role, node)
//! ```
//!
//! with role `"client"` for the dialer and `"server"` for the listener, and
//! `node` the sender's [`LinkConfig::node_id`] (big-endian u16). The dialer
//! opens the control stream and sends `hello("client", its node)` first; the
//! listener verifies the proof in constant time, then checks the node id: it
//! refuses (closes with [`CLOSE_NODE_ID_IN_USE`] and a reason) a node id
//! equal to its own or to that of another link it holds open, because node
//! ids number the voices of a cluster and two nodes with one id would number
//! them alike. Only then does it answer with `hello("server", its node)`,
//! which the dialer verifies. A failed proof closes the connection with
//! [`CLOSE_AUTH_FAILED`]. Both sides learn the other's node id
//! ([`Link::peer_node_id`]).
//!
//! The listener answers every connection attempt from an address that has
//! not proved it receives there with a QUIC Retry (RFC 9000 §8.1.2): an
//! Initial with a forged source address costs it one stateless packet and
//! holds none of its handshake slots ([`ListenerStats::retried`]).
//!
//! Until both proofs are verified nothing from the connection reaches the
//! application: [`Listener::accept`] and [`Link::dial`] only ever return
//! authenticated links, the listener allows its peer exactly one stream (the
//! control stream) and no unidirectional ones, and a DATAGRAM that reaches the
//! listener before the dialer's proof is a protocol violation
//! ([`CLOSE_PROTOCOL`]): an honest dialer sends none before it has verified
//! the listener's proof, which the listener sends only after verifying the
//! dialer's. (Datagrams that reach the *dialer* before it has read the
//! listener's proof are kept and delivered after the proof verifies: the
//! listener sends them only once authenticated, and they may overtake the
//! proof on the stream.)
//!
//! The exporter is unique to one TLS session, so a proof cannot be replayed
//! on another connection, and a man in the middle, which necessarily runs two
//! TLS sessions with its own keys, cannot relay a proof from one to the other;
//! the role in the proof stops a listener's proof from being reflected back as
//! a dialer's. This is why the dialer can accept any server certificate (see
//! the verifier in `tls.rs`): the certificate only carries the key of a TLS
//! 1.3 handshake whose signature is still verified, and the HMAC over the
//! session's exporter is what proves that the other end of *this* session
//! holds the cluster secret.
//!
//! # Failure detection
//!
//! Both sides send QUIC keep-alives every [`LinkConfig::keep_alive`] (300 ms)
//! and consider the peer gone after [`LinkConfig::idle_timeout`] (1.5 s) of
//! silence; the link then reports [`LinkEvent::Closed`] with
//! [`CloseReason::TimedOut`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::WireError;

mod auth;
mod conn;
mod dialer;
mod listener;
mod tls;

pub use conn::{Link, LinkEvent, LinkHandle, LinkStats};
pub use dialer::{Dialer, DialerEvent};
pub use listener::{Listener, ListenerStats};

/// QUIC application close code: an orderly close (or a dropped [`Link`]).
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application close code: the peer's authentication proof did not
/// verify (it does not hold the cluster secret, or the session is
/// intercepted).
pub const CLOSE_AUTH_FAILED: u32 = 1;
/// QUIC application close code: the peer broke the link protocol (no proof in
/// time, a datagram before authentication, a bad magic, a control stream that
/// ended or can no longer be framed).
pub const CLOSE_PROTOCOL: u32 = 2;
/// QUIC application close code: the listener refused the dialer's node id
/// (its own, or that of another open link); the reason text says which.
pub const CLOSE_NODE_ID_IN_USE: u32 = 3;

/// Settings of a link, a listener or a dialer.
///
/// [`Default`] leaves `cluster_secret` empty, which every constructor
/// ([`Listener::bind`], [`Link::dial`], [`Dialer::spawn`]) refuses: set it, or
/// use [`LinkConfig::new`].
#[derive(Clone)]
pub struct LinkConfig {
    /// The secret every node of the cluster shares. Must not be empty; use at
    /// least 32 random bytes.
    pub cluster_secret: Vec<u8>,
    /// This node's id, distinct for every node of the cluster (default 0),
    /// sent in the hello. A listener refuses a dialer with its own id or the
    /// id of another link it holds open.
    pub node_id: u16,
    /// How often QUIC sends a keep-alive when nothing else is sent
    /// (default 300 ms). Must be shorter than `idle_timeout`.
    pub keep_alive: Duration,
    /// How long without hearing from the peer before the link is considered
    /// dead (default 1.5 s: five keep-alives in a row lost). The smaller of both sides' values applies. Also
    /// bounds the QUIC handshake plus authentication of an accepted link.
    pub idle_timeout: Duration,
    /// How long one dial attempt (QUIC handshake plus authentication) may
    /// take (default 1 s). A dead address never answers (QUIC ignores ICMP
    /// port unreachable), so this is what a failover spends on each one.
    pub connect_timeout: Duration,
    /// Bytes of outgoing DATAGRAMs QUIC may queue (default 32 KiB; quinn's own
    /// default is 1 MiB). When full, the oldest queued datagrams are dropped.
    pub datagram_send_buffer: usize,
    /// The first (and smallest) delay between reconnect attempts of a
    /// [`Dialer`] (default 100 ms).
    pub reconnect_min: Duration,
    /// The largest delay between reconnect attempts of a [`Dialer`]
    /// (default 2 s).
    pub reconnect_max: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            cluster_secret: Vec::new(),
            node_id: 0,
            keep_alive: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(1),
            datagram_send_buffer: 32 * 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field(
                "cluster_secret",
                &format_args!("<{} bytes>", self.cluster_secret.len()),
            )
            .field("node_id", &self.node_id)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("datagram_send_buffer", &self.datagram_send_buffer)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

/// The smallest accepted [`LinkConfig::datagram_send_buffer`]: room for one
/// full-size datagram and its bookkeeping.
const MIN_DATAGRAM_SEND_BUFFER: usize = 2048;

impl LinkConfig {
    /// The default settings with `cluster_secret`; an empty secret is
    /// [`LinkError::Config`].
    pub fn new(cluster_secret: impl Into<Vec<u8>>) -> Result<Self, LinkError> {
        let config = Self {
            cluster_secret: cluster_secret.into(),
            ..Self::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings (constructors call this): a non-empty secret,
    /// `0 < keep_alive < idle_timeout`, a send buffer of at least 2 KiB,
    /// `0 < reconnect_min <= reconnect_max`.
    pub fn validate(&self) -> Result<(), LinkError> {
        let fail = |what: &str| Err(LinkError::Config(what.to_owned()));
        if self.cluster_secret.is_empty() {
            return fail("the cluster secret is empty");
        }
        if self.idle_timeout.is_zero() || quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return fail("idle_timeout must be positive and below 2^62 ms");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return fail("keep_alive must be positive and shorter than idle_timeout");
        }
        if self.datagram_send_buffer < MIN_DATAGRAM_SEND_BUFFER {
            return fail("datagram_send_buffer must be at least 2048 bytes");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return fail("reconnect_min must be positive and at most reconnect_max");
        }
        Ok(())
    }
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side closed it ([`Link::close`], a dropped [`Link`], a closed
    /// listener).
    Local,
    /// The peer closed it with an application code ([`CLOSE_NORMAL`],
    /// [`CLOSE_AUTH_FAILED`], [`CLOSE_PROTOCOL`], ...).
    Peer {
        /// The peer's close code.
        code: u64,
        /// The peer's reason text (lossy UTF-8).
        reason: String,
    },
    /// Nothing was heard from the peer within the idle timeout.
    TimedOut,
    /// The peer broke the link protocol; this side closed the link with
    /// [`CLOSE_PROTOCOL`].
    Protocol(String),
    /// Any other QUIC failure (transport error, reset, ...).
    Transport(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Peer { code, reason } => {
                write!(f, "closed by the peer (code {code}: {reason:?})")
            }
            CloseReason::TimedOut => f.write_str("peer timed out"),
            CloseReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            CloseReason::Transport(what) => write!(f, "transport failure: {what}"),
        }
    }
}

impl From<quinn::ConnectionError> for CloseReason {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::LocallyClosed => CloseReason::Local,
            E::ApplicationClosed(close) => CloseReason::Peer {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            E::TimedOut => CloseReason::TimedOut,
            other => CloseReason::Transport(other.to_string()),
        }
    }
}

/// Errors of the link API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Invalid [`LinkConfig`] (an empty cluster secret, ...).
    #[error("invalid link configuration: {0}")]
    Config(String),
    /// A socket could not be bound.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS or QUIC configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A connection could not be started (bad address, ...).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection failed or was closed (before or after
    /// authentication).
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The QUIC handshake and authentication did not complete within
    /// [`LinkConfig::idle_timeout`].
    #[error("handshake and authentication timed out after {0:?}")]
    Timeout(Duration),
    /// The peer's proof did not verify: it does not hold the cluster secret,
    /// or the session is intercepted.
    #[error("authentication failed: the peer's proof does not verify")]
    AuthFailed,
    /// The peer refused our proof (closed with [`CLOSE_AUTH_FAILED`]): the
    /// cluster secrets differ.
    #[error("authentication failed: the peer rejected our proof")]
    AuthRejected,
    /// The peer broke the authentication protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The listener refused the dialer's node id (closed with
    /// [`CLOSE_NODE_ID_IN_USE`]): it is the listener's own, or another open
    /// link's. The text is the listener's reason.
    #[error("node id refused: {0}")]
    NodeIdInUse(String),
    /// The message cannot be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] WireError),
}

impl LinkError {
    /// Whether authentication failed, on either side ([`LinkError::AuthFailed`]
    /// or [`LinkError::AuthRejected`]).
    pub fn is_auth(&self) -> bool {
        matches!(self, LinkError::AuthFailed | LinkError::AuthRejected)
    }
}

/// Shared, immutable per-process state of links built from one config.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) key: Arc<aws_lc_rs::hmac::Key>,
    pub(crate) config: Arc<LinkConfig>,
}

impl Shared {
    pub(crate) fn new(config: LinkConfig) -> Result<Self, LinkError> {
        config.validate()?;
        Ok(Self {
            key: Arc::new(aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                &config.cluster_secret,
            )),
            config: Arc::new(config),
        })
    }
}
