//! Identifiers the engine and its embedder share.

use std::fmt;

/// A member's connection to the engine, chosen by the embedder when it joins
/// (for example a database id or a counter). Unique within one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer-{}", self.0)
    }
}

/// One voice in a channel: the audio a member sends, wherever the member is
/// connected (this engine, another worker, another node).
///
/// Listeners see it as the CSRC of every packet forwarded from that voice, so a
/// browser's `getContributingSources()` names who is speaking in each slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source-{}", self.0)
    }
}

/// The role of a member in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May send voice; is routed when selected as an active speaker.
    Speaker,
    /// Only listens; whatever it sends is dropped (and counted).
    Listener,
}
