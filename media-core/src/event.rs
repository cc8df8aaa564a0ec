//! What the engine tells its embedder.

use std::sync::Arc;

use crate::{PeerId, SourceId};

/// Something the embedder should know about, taken from
/// [`Engine::poll_output`](crate::Engine::poll_output).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The SDP answer to a join: hand it to the client.
    Answer {
        /// The joining peer.
        peer: PeerId,
        /// The voice this peer sends (the CSRC others see), whatever its role.
        source: SourceId,
        /// The number of receive slots the peer got.
        slots: usize,
        /// SDP answer text.
        sdp: String,
    },
    /// The SDP answer to a [`Command::Restart`](crate::Command::Restart):
    /// hand it to the client.
    Restarted {
        /// The peer.
        peer: PeerId,
        /// SDP answer text.
        sdp: String,
    },
    /// ICE and DTLS completed: media flows.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// The peer is gone; its slots and speaker state were released.
    PeerLeft {
        /// The peer.
        peer: PeerId,
        /// Why it left.
        reason: LeaveReason,
    },
    /// Which voice a listener's slot now carries (`None`: the slot is idle).
    SlotChanged {
        /// The listener.
        peer: PeerId,
        /// Slot index (the order of the peer's receive m-lines).
        slot: usize,
        /// The SDP `mid` of the slot's m-line.
        mid: String,
        /// The voice now forwarded in it.
        source: Option<SourceId>,
    },
    /// The voices of a channel that are speaking now, loudest first. Emitted
    /// only when the list changes.
    ActiveSpeakers {
        /// Channel name.
        channel: Arc<str>,
        /// Speaking voices, loudest first.
        speakers: Vec<SourceId>,
    },
    /// The dominant speaker of a channel changed (Volfin & Cohen).
    DominantSpeaker {
        /// Channel name.
        channel: Arc<str>,
        /// The new dominant speaker, `None` when it left or was muted.
        speaker: Option<SourceId>,
    },
    /// A voice of another node (or worker) announced who it belongs to; an
    /// empty identity means it left.
    RemoteSource {
        /// Channel name.
        channel: Arc<str>,
        /// The voice.
        source: SourceId,
        /// Its member's identity.
        identity: Arc<str>,
    },
}

/// Why a peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// The embedder asked ([`Command::Leave`](crate::Command::Leave)).
    Left,
    /// ICE connectivity was lost (no consent from the client).
    Disconnected,
    /// The peer did not finish ICE and DTLS within the connect timeout.
    ConnectTimeout,
    /// str0m reported an unrecoverable error for this peer (for example a
    /// failed DTLS handshake).
    Failed,
}
