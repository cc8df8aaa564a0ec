//! Messages of the WebSocket room protocol (docs/PROTOCOL.md).

use serde::{Deserialize, Serialize};

/// A member as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
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

/// A voice of another node (in a cluster), named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voice {
    /// CSRC of the voice.
    pub source: u32,
    /// Its member's identity.
    pub identity: String,
}

/// Who asks for which channel, how: the fields `authorize` and `join`
/// share.
#[derive(Debug, Clone, Deserialize)]
pub struct AskFields {
    /// Channel name.
    pub channel: String,
    /// JWT (optional in development mode, and in a `join` after
    /// `authorize`).
    #[serde(default)]
    pub token: Option<String>,
    /// `"speaker"` or `"listener"`.
    #[serde(default)]
    pub role: Option<String>,
    /// Identity to use in development mode (ignored with a token).
    #[serde(default)]
    pub identity: Option<String>,
}

/// Client → server, as JSON says it; `client_request` checks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Check a token for a channel before making the offer: the answer
    /// (`authorized`) carries the ICE servers with TURN credentials, and
    /// the `join` that follows may leave the token out.
    Authorize(AskFields),
    /// Join a channel with an SDP offer.
    Join {
        /// Channel, token, role, identity.
        #[serde(flatten)]
        ask: AskFields,
        /// SDP offer.
        offer: String,
        /// (hybrid) The client can take part in a peer-to-peer mesh
        /// (docs/HYBRID.md); default false.
        #[serde(default)]
        p2p: bool,
    },
    /// (hybrid) Join the SFU during a switch to it: this member's SFU
    /// session, under its member id.
    SfuJoin {
        /// SDP offer.
        offer: String,
        /// The switch's epoch.
        epoch: u64,
    },
    /// (hybrid) Signaling for another member of a peer-to-peer channel.
    Signal {
        /// The member it is for.
        to: u64,
        /// The channel's epoch the sender is in.
        epoch: u64,
        /// Offer, answer or candidate.
        data: SignalData,
    },
    /// (hybrid) The mesh link with `peer` failed.
    P2pFailed {
        /// The other end of the link.
        peer: u64,
        /// `timeout`, `ice_failed`, `disconnected` (others count as `other`).
        reason: String,
        /// The channel's epoch the link belongs to.
        epoch: u64,
    },
    /// (hybrid) This member swapped its playback to `mode` for `epoch`.
    Switched {
        /// `"p2p"` or `"sfu"`.
        mode: String,
        /// The switch's epoch.
        epoch: u64,
    },
    /// Leave the channel.
    Leave,
    /// Moderate another member.
    Moderate {
        /// `"mute"`, `"unmute"`, `"set_role"`, `"promote"`, `"demote"` or
        /// `"kick"`.
        action: String,
        /// Target peer.
        peer: u64,
        /// New role for `set_role`.
        #[serde(default)]
        role: Option<String>,
        /// Why, for `kick` (told to the member removed).
        #[serde(default)]
        reason: Option<String>,
    },
    /// Ask to speak: raise this member's hand.
    RaiseHand,
    /// Withdraw the request to speak.
    LowerHand,
    /// An ICE restart: the member's network changed; a new offer with new
    /// ICE credentials for the same session (same m-lines).
    Restart {
        /// SDP offer (`createOffer({iceRestart: true})`).
        offer: String,
    },
    /// Take over a member whose WebSocket dropped, within the grace period
    /// (instead of `join`, on a fresh socket).
    Resume {
        /// The `resume_token` of `joined` or of the last `resumed`.
        token: String,
    },
    /// Keep-alive.
    Ping,
}

/// What one member of a peer-to-peer channel signals another (relayed
/// as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignalData {
    /// An SDP offer (from the lower member id to the higher).
    Offer {
        /// The SDP.
        sdp: String,
    },
    /// The SDP answer (from the higher id to the lower).
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate` attribute's value.
        candidate: String,
        /// Its m-line's mid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        /// Its m-line's index.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u32>,
    },
}

impl SignalData {
    /// `"offer"`, `"answer"` or `"candidate"`.
    pub fn kind(&self) -> &'static str {
        match self {
            SignalData::Offer { .. } => "offer",
            SignalData::Answer { .. } => "answer",
            SignalData::Candidate { .. } => "candidate",
        }
    }
}

/// A raised hand as moderators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandInfo {
    /// The member's peer id.
    pub peer: u64,
    /// Its identity: in a hall past `LISTED_LISTENERS_UP_TO` moderators
    /// were never told of the listener.
    pub identity: String,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message on every socket.
    Hello {
        /// STUN servers for the RTCPeerConnection. TURN servers and their
        /// credentials come only with `authorized`, to holders of a token.
        ice_servers: Vec<crate::turn::IceServer>,
    },
    /// The token admits to the channel: make the offer with these ICE
    /// servers, then `join`.
    Authorized {
        /// The member's identity (the token's `sub`).
        identity: String,
        /// The channel.
        channel: String,
        /// May speak.
        can_publish: bool,
        /// May listen.
        can_subscribe: bool,
        /// May moderate.
        can_moderate: bool,
        /// When the token expires (seconds since the Unix epoch; absent:
        /// never): the member is removed then.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires: Option<u64>,
        /// STUN and TURN servers (TURN credentials for this identity,
        /// valid for `turn_ttl_secs`).
        ice_servers: Vec<crate::turn::IceServer>,
    },
    /// The join succeeded (boxed: the largest message, and every member's
    /// event queue holds its slots at the size of the largest).
    Joined(Box<JoinedMsg>),
    /// (hybrid) A switch of the channel's mode began: build the `mode`
    /// path while the current one plays, swap when it delivers, report
    /// `switched`.
    Mode {
        /// `"p2p"` or `"sfu"`.
        mode: &'static str,
        /// Why (`size`, `p2p_failed`, `small`, ...).
        reason: &'static str,
        /// The switch's epoch.
        epoch: u64,
    },
    /// (hybrid) The switch of `epoch` is over: swap now if not done yet and
    /// release the old path.
    Switched {
        /// The mode now.
        mode: &'static str,
        /// The switch's epoch.
        epoch: u64,
        /// Members that had not swapped when the switch timed out.
        stragglers: Vec<u64>,
    },
    /// (hybrid) Signaling from another member.
    Signal {
        /// Who sends it.
        from: u64,
        /// The epoch it was sent in.
        epoch: u64,
        /// What it carries.
        data: SignalData,
    },
    /// (hybrid) The answer to `sfu_join`.
    SfuJoined {
        /// SDP answer.
        answer: String,
        /// This member's voice (CSRC) on the SFU.
        source: u32,
        /// Receive slots granted.
        slots: usize,
        /// The epoch it joined in.
        epoch: u64,
    },
    /// (fleet) The channel is served by another node: connect to `url` and
    /// send the same request there (the same token works on every node of
    /// the fleet). Also the last message of members whose channel moved.
    Redirect {
        /// The node's signaling URL (`https://…`; the WebSocket is
        /// `/ws` there).
        url: String,
        /// The channel.
        channel: String,
        /// The request this answers (`join`), absent when the channel moved.
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// The answer to an ICE restart (`restart`).
    Restarted {
        /// SDP answer.
        answer: String,
    },
    /// This socket took over the member (`resume`): the messages it missed
    /// while away follow.
    Resumed {
        /// The member's peer id (unchanged).
        peer: u64,
        /// Its voice (unchanged).
        source: u32,
        /// Its channel.
        channel: String,
        /// The token for the next resume (each token works once).
        resume_token: String,
        /// How long after a drop the member waits for `resume`.
        resume_grace_secs: u64,
    },
    /// Someone joined.
    MemberJoined {
        /// The new member.
        member: MemberInfo,
    },
    /// Someone left.
    MemberLeft {
        /// Their peer id.
        peer: u64,
        /// `left`, `disconnected`, `timeout`, `failed` or `kicked`.
        reason: String,
        /// The moderator's words, told to a kicked member alone.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// How many members the channel has on this node (sent at most once a
    /// second per channel, when it changed).
    MemberCount {
        /// Members, listed or not.
        count: usize,
    },
    /// A member's role or mute changed.
    MemberUpdated {
        /// The member now.
        member: MemberInfo,
    },
    /// This member's own hand went up or down (it raised or lowered it,
    /// or it was promoted).
    Hand {
        /// Raised now.
        raised: bool,
    },
    /// The channel's raised hands, in the order they were raised: sent to
    /// moderators when the queue changed (at most every `HANDS_INTERVAL`).
    Hands {
        /// Oldest first.
        queue: Vec<HandInfo>,
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
        /// Peer ids (members of this node).
        speakers: Vec<u64>,
        /// Every speaking voice (CSRCs), this node's and other nodes'.
        sources: Vec<u32>,
    },
    /// The dominant speaker changed.
    DominantSpeaker {
        /// Peer id, when the speaker is a member of this node.
        peer: Option<u64>,
        /// The voice (CSRC), wherever it is.
        source: Option<u32>,
    },
    /// A voice on another node was named (or left: empty identity).
    Voice {
        /// The voice.
        voice: Voice,
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
        /// For refusals that pass (rate limits, a full server): seconds
        /// to wait before trying again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
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

/// The `joined` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JoinedMsg {
    /// This member's peer id.
    pub peer: u64,
    /// This member's voice (CSRC).
    pub source: u32,
    /// Receive slots granted.
    pub slots: usize,
    /// SDP answer.
    pub answer: String,
    /// The listed members of the channel on this node, this member
    /// included: every speaker, and listeners while the channel has at
    /// most `LISTED_LISTENERS_UP_TO` members (docs/PROTOCOL.md).
    pub members: Vec<MemberInfo>,
    /// All members of the channel on this node, listed or not.
    pub member_count: usize,
    /// Voices of members on other nodes of the cluster.
    pub voices: Vec<Voice>,
    /// Who speaks now (peer ids of this node), loudest first.
    pub active_speakers: Vec<u64>,
    /// The dominant speaker now, if on this node.
    pub dominant_speaker: Option<u64>,
    /// The dominant speaker's voice, wherever it is.
    pub dominant_source: Option<u32>,
    /// Takes this member over on a new WebSocket (`resume`) if this one
    /// drops: a secret, for this client alone. Absent when resume is
    /// off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// How long after a drop the member waits for `resume` (0: off).
    pub resume_grace_secs: u64,
    /// (hybrid) `"p2p"`: build mesh links with the other members (the
    /// answer is empty, the source 0); `"sfu"`: play the SFU session.
    pub mode: &'static str,
    /// (hybrid) The channel's epoch (its count of mode changes).
    pub epoch: u64,
    /// (hybrid) How long a mesh link may take to connect before the
    /// member reports it with `p2p_failed`.
    pub mesh_connect_timeout_ms: u64,
}

impl ServerMsg {
    /// An error message.
    pub fn error(code: &str, message: impl Into<String>, request: Option<&str>) -> ServerMsg {
        ServerMsg::Error {
            code: code.to_string(),
            message: message.into(),
            request: request.map(str::to_string),
            retry_after_secs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member's event queue holds its messages in slots of the size
    /// of the largest one (tokio's channel allocates them 32 at a time):
    /// large messages are boxed. It was 216 bytes before `joined` was boxed
    /// (6.8 KiB a member in the first block), 96 after (3 KiB).
    #[test]
    fn server_messages_stay_small() {
        let size = std::mem::size_of::<ServerMsg>();
        assert!(
            size <= 104,
            "ServerMsg is {size} bytes: box the largest variant"
        );
    }
}
