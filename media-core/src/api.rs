//! The engine's input and output: what an embedder feeds to
//! [`Engine::handle_input`](crate::Engine::handle_input) and takes from
//! [`Engine::poll_output`](crate::Engine::poll_output). A leaf module: the
//! engine and its peers both produce these, neither owns them.

use std::net::SocketAddr;
use std::time::Instant;

use crate::{EngineId, Event, LinkId, PeerId, RelayMsg, Role};

/// Something that happened outside the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// A UDP datagram arrived at the engine's socket.
    Receive {
        /// When it arrived.
        now: Instant,
        /// The client address it came from.
        source: SocketAddr,
        /// The engine address it was sent to (one of the host candidates).
        destination: SocketAddr,
        /// Its bytes.
        datagram: &'a [u8],
    },
    /// The embedder asks for something.
    Command {
        /// The current time.
        now: Instant,
        /// What to do.
        command: Command,
    },
    /// A message from another engine (worker or node) over a relay link.
    Relay {
        /// When it arrived.
        now: Instant,
        /// The link it came over.
        link: LinkId,
        /// The message.
        msg: RelayMsg,
    },
    /// The time the engine last asked for (or any later time) has come.
    Timeout(Instant),
}

/// A request from the embedder.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    /// A member joins a channel with an SDP offer. The answer comes as
    /// [`Event::Answer`]. The channel is created on its first join and removed
    /// when its last member leaves.
    Join {
        /// Chosen by the embedder, unique among joined peers.
        peer: PeerId,
        /// Channel name (1 to 256 bytes).
        channel: String,
        /// Who the member is (for the embedder's events and logs).
        identity: String,
        /// Speaker or listener.
        role: Role,
        /// The client's SDP offer: one audio m-line it sends on (its voice),
        /// and one receive-only audio m-line per slot it wants to hear.
        offer: String,
    },
    /// The member's new offer for its session, after its network changed
    /// (an ICE restart: new ICE credentials, new candidates). The answer
    /// comes as [`Event::Restarted`]; the member keeps its id, role, voice,
    /// slots and place in speaker selection, and media resumes over the new
    /// path once the client's checks reach the engine. Refused
    /// ([`Error::UnknownPeer`](crate::Error::UnknownPeer),
    /// [`Error::InvalidOffer`](crate::Error::InvalidOffer),
    /// [`Error::UnusableOffer`](crate::Error::UnusableOffer)) for an unknown
    /// peer, an offer that does not parse, or one whose m-lines (mids,
    /// kinds, directions) differ from the session's; the session then goes
    /// on as it was.
    Restart {
        /// The peer.
        peer: PeerId,
        /// The client's new SDP offer.
        offer: String,
    },
    /// The member leaves; its slots and speaker state are released.
    Leave {
        /// The peer.
        peer: PeerId,
    },
    /// Server-side mute: a muted member's voice is never routed.
    SetMuted {
        /// The peer.
        peer: PeerId,
        /// Muted or not.
        muted: bool,
    },
    /// Promote a listener to speaker or demote a speaker. No renegotiation:
    /// the member must have offered an audio m-line to send on.
    SetRole {
        /// The peer.
        peer: PeerId,
        /// The new role.
        role: Role,
    },
    /// Make a channel a relay of the origin reachable over `link` (an edge
    /// of a core), or the origin itself (`None`). The engine subscribes over
    /// the link (again, when it is the same link rebuilt after a failure).
    /// Moving to another link (failover) keeps every listener's slots:
    /// audio resumes in them without renegotiation.
    SetUpstream {
        /// Channel name (created if absent).
        channel: String,
        /// The origin's link, or `None` to select locally.
        link: Option<LinkId>,
    },
    /// A relay link is up, to the engine numbered `engine`. Relay messages
    /// over a link that is not open are dropped. As origin, the engine
    /// accepts over this link only voices that engine numbered (their
    /// [`SourceId::engine`](crate::SourceId::engine)), so no link can speak
    /// for this engine's members or another link's. Refused
    /// ([`Error::EngineIdInUse`](crate::Error::EngineIdInUse)) when `engine`
    /// is this engine's own number or another open link's. Opening an open
    /// link again to another engine closes it first.
    LinkOpened {
        /// The link.
        link: LinkId,
        /// The engine at its other end.
        engine: EngineId,
    },
    /// A relay link is gone (connection lost). Subscribers on it are
    /// forgotten and the voices that came over it released; channels following an origin
    /// over it keep their listeners and slots until `SetUpstream` names the
    /// next link.
    LinkClosed {
        /// The link.
        link: LinkId,
    },
}

/// A UDP datagram to send.
///
/// Non-exhaustive: fields for batching and marking (GSO segment size, ECN)
/// will come; build one with [`Transmit::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    /// The engine address to send from (one of the host candidates).
    pub source: SocketAddr,
    /// The client address to send to.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: Vec<u8>,
}

impl Transmit {
    /// A datagram from `source` (an engine address) to `destination`.
    pub fn new(source: SocketAddr, destination: SocketAddr, contents: Vec<u8>) -> Self {
        Transmit {
            source,
            destination,
            contents,
        }
    }
}

/// What the engine asks of its embedder.
///
/// Deliberately exhaustive: when a kind of output is added (relay messages
/// for the cascade), every embedder's run loop must be told by the compiler.
#[derive(Debug)]
pub enum Output {
    /// Send a datagram.
    Transmit(Transmit),
    /// Send a message to another engine over a relay link.
    Relay {
        /// The link.
        link: LinkId,
        /// The message.
        msg: RelayMsg,
    },
    /// Something happened.
    Event(Event),
    /// Nothing more to do until this time (or until the next input): call
    /// [`Engine::handle_input`](crate::Engine::handle_input) with
    /// [`Input::Timeout`] then.
    Timeout(Instant),
}
