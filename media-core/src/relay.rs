//! Relay messages: how a channel spans engines (worker threads of one node,
//! or nodes of a cluster). The same messages travel over an in-process
//! channel or, encoded by `cascade::wire`, over QUIC.
//!
//! A channel in an engine is either the **origin** (it runs speaker
//! selection) or a **relay** (it sends its local members' voiced frames up
//! and fans out what comes down). The origin sends each relay link only the
//! selected voices, once per link, never once per listener.

use std::sync::Arc;

use bytes::Bytes;

use crate::SourceId;

/// A link between this engine and another one, chosen by the embedder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// One message between engines.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMsg {
    /// One Opus frame of one voice. Sent up by a relay for its local voices
    /// that carry speech, and down by the origin for its selected voices.
    Media {
        /// Channel name.
        channel: Arc<str>,
        /// The voice.
        source: SourceId,
        /// Extended sequence number at the sender.
        seq: u64,
        /// RTP timestamp at the sender (48 kHz).
        rtp_ts: u32,
        /// RFC 6464 level: 0 = 0 dBov .. 127 = silence.
        level: u8,
        /// The sender's voice-activity flag, when it sent one.
        vad: Option<bool>,
        /// Opus payload.
        payload: Bytes,
    },
    /// A relay asks the origin for a channel's selected voices.
    Subscribe {
        /// Channel name.
        channel: Arc<str>,
    },
    /// A relay no longer needs a channel.
    Unsubscribe {
        /// Channel name.
        channel: Arc<str>,
    },
    /// The origin's selection, sent to every subscribed relay when it
    /// changes (and right after a subscribe).
    Speakers {
        /// Channel name.
        channel: Arc<str>,
        /// Selected voices (forwarded to listeners), in selection order.
        selected: Vec<SourceId>,
        /// Voices speaking now, loudest first.
        active: Vec<SourceId>,
        /// The dominant speaker.
        dominant: Option<SourceId>,
    },
    /// Who a voice belongs to (so that every node can name speakers).
    SourceInfo {
        /// Channel name.
        channel: Arc<str>,
        /// The voice.
        source: SourceId,
        /// Its member's identity; empty when the voice left.
        identity: Arc<str>,
    },
}

impl RelayMsg {
    /// The channel the message is about.
    pub fn channel(&self) -> &Arc<str> {
        match self {
            RelayMsg::Media { channel, .. }
            | RelayMsg::Subscribe { channel }
            | RelayMsg::Unsubscribe { channel }
            | RelayMsg::Speakers { channel, .. }
            | RelayMsg::SourceInfo { channel, .. } => channel,
        }
    }
}
