//! Messages of the WebSocket room protocol (docs/PROTOCOL.md).

use serde::{Deserialize, Serialize};

/// A member as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Peer id (also the WHIP/WHEP resource id).
    pub peer: u64,
    /// Identity from the token.
    pub identity: String,
    /// `"speaker"` or `"listener"`.
    pub role: String,
    /// Server-muted.
    pub muted: bool,
    /// CSRC of this member's voice in forwarded RTP.
    pub source: u32,
}

/// Client → server.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Join a channel with an SDP offer.
    Join {
        /// Channel name.
        channel: String,
        /// SDP offer.
        offer: String,
        /// JWT (optional in development mode).
        #[serde(default)]
        token: Option<String>,
        /// `"speaker"` or `"listener"`.
        #[serde(default)]
        role: Option<String>,
        /// Identity to use in development mode (ignored with a token).
        #[serde(default)]
        identity: Option<String>,
    },
    /// Leave the channel.
    Leave,
    /// Moderate another member.
    Moderate {
        /// `"mute"`, `"unmute"` or `"set_role"`.
        action: String,
        /// Target peer.
        peer: u64,
        /// New role for `set_role`.
        #[serde(default)]
        role: Option<String>,
    },
    /// Keep-alive.
    Ping,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message on every socket: what the client needs before it
    /// makes its offer.
    Hello {
        /// STUN/TURN servers for the RTCPeerConnection (TURN with
        /// ephemeral credentials).
        ice_servers: Vec<crate::turn::IceServer>,
    },
    /// The join succeeded.
    Joined {
        /// This member's peer id.
        peer: u64,
        /// This member's voice (CSRC).
        source: u32,
        /// Receive slots granted.
        slots: usize,
        /// SDP answer.
        answer: String,
        /// Everyone in the channel, this member included.
        members: Vec<Member>,
    },
    /// Someone joined.
    MemberJoined {
        /// The new member.
        member: Member,
    },
    /// Someone left.
    MemberLeft {
        /// Their peer id.
        peer: u64,
        /// `left`, `disconnected`, `timeout` or `failed`.
        reason: String,
    },
    /// A member's role or mute changed.
    MemberUpdated {
        /// The member now.
        member: Member,
    },
    /// This member's media is connected.
    Connected,
    /// Which voice plays in one of this member's slots.
    Slot {
        /// Slot index.
        slot: usize,
        /// The slot's m-line.
        mid: String,
        /// Whose voice (None: idle).
        peer: Option<u64>,
        /// The voice's CSRC.
        source: Option<u32>,
    },
    /// Who speaks now, loudest first.
    ActiveSpeakers {
        /// Peer ids.
        speakers: Vec<u64>,
    },
    /// The dominant speaker changed.
    DominantSpeaker {
        /// Peer id or None.
        peer: Option<u64>,
    },
    /// A refusal.
    Error {
        /// Machine-readable code.
        code: String,
        /// Human-readable message.
        message: String,
        /// The request type it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// The server drains.
    Shutdown {
        /// Why.
        reason: String,
        /// Milliseconds until the server exits.
        deadline_ms: u64,
    },
    /// Answer to ping.
    Pong,
}

impl ServerMsg {
    /// An error message.
    pub fn error(code: &str, message: impl Into<String>, request: Option<&str>) -> ServerMsg {
        ServerMsg::Error {
            code: code.to_string(),
            message: message.into(),
            request: request.map(str::to_string),
        }
    }
}
