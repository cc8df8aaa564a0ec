//! Errors returned to the embedder for misuse or bad requests.
//!
//! Network faults are never errors: a peer that vanishes or sends garbage shows
//! up as an [`Event`](crate::Event) or a counter in [`EngineStats`](crate::EngineStats).

use crate::{EngineId, PeerId};

/// Why a call into the [`Engine`](crate::Engine) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A join used a peer id that is already connected.
    #[error("{0} is already joined")]
    PeerIdInUse(PeerId),
    /// A command named a peer that is not (or no longer) joined.
    #[error("{0} is not joined")]
    UnknownPeer(PeerId),
    /// The SDP offer could not be parsed or negotiated.
    #[error("invalid SDP offer: {0}")]
    InvalidOffer(String),
    /// The offer parsed but has nothing the engine can use.
    #[error("unusable SDP offer: {0}")]
    UnusableOffer(&'static str),
    /// A member that offered no audio to send cannot become a speaker
    /// without a new offer.
    #[error("{0} offered no audio m-line to send on; it must rejoin with one to speak")]
    CannotSpeak(PeerId),
    /// The channel name is empty or too long.
    #[error("invalid channel name: {0}")]
    InvalidChannel(&'static str),
    /// A link was opened to an engine number that is this engine's own or
    /// that of another open link: two engines would number voices alike.
    #[error("{0} is this engine's own number or another open link's")]
    EngineIdInUse(EngineId),
    /// Every source id of this engine is taken (about a million voices).
    #[error("every source id of this engine is in use")]
    SourceIdsExhausted,
}
