//! A member: a person in a channel, and what the server knows of their
//! session.

use media_core::{PeerId, Role, SourceId};

use super::mode::Capability;
use crate::protocol::MemberInfo;

/// A person in a channel. A member is addressed by the [`PeerId`] of its
/// engine connection: that is the `peer` of the protocol's messages, and the
/// recipient of the messages the room layer sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The channel it is in.
    pub channel: String,
    /// Identity from the token (or the development-mode name).
    pub identity: String,
    /// Speaker or listener.
    pub role: Role,
    /// Server-muted by a moderator.
    pub muted: bool,
    /// What the member's token allows beyond joining.
    pub rights: Rights,
    /// Its voice, once the engine answered the join.
    pub source: Option<SourceId>,
    /// The others were told about this member (`member_joined`), so they
    /// are told when it changes or leaves.
    pub listed: bool,
    /// A moderator removed it, with these words: its departure is announced
    /// as `kicked`, and the words told to it.
    pub kicked: Option<String>,
    /// (hybrid) Whether it can take part in a peer-to-peer mesh.
    pub capability: Capability,
    /// Its join was answered (by the engine, or at once in a P2P channel):
    /// it is a member as the others see it.
    pub answered: bool,
    /// It has an SFU session (an engine peer under its id); a member of a
    /// P2P channel has none.
    pub in_engine: bool,
}

/// The grants of a member's token that room rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// `can_publish`: may speak.
    pub can_publish: bool,
    /// `can_moderate`: may mute others and change their role.
    pub can_moderate: bool,
}

impl Member {
    /// The member as clients see it.
    pub fn info(&self, peer: PeerId) -> MemberInfo {
        MemberInfo {
            peer: peer.0,
            identity: self.identity.clone(),
            role: role_name(self.role).to_string(),
            muted: self.muted,
            source: self.source.map_or(0, |s| s.0),
        }
    }
}

/// `"speaker"` / `"listener"`, as the protocol writes a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Speaker => "speaker",
        Role::Listener => "listener",
    }
}
