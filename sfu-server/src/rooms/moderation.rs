//! What a moderator may ask, and why it may be refused.

use media_core::Role;

/// A moderation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moderation {
    /// Server-mute (true) or unmute.
    Mute(bool),
    /// Change the role.
    SetRole(Role),
}

/// Why a moderation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModerateError {
    /// The moderator has no `can_moderate` grant or is not joined.
    #[error("not allowed to moderate")]
    Forbidden,
    /// The moderator would give a role its own token does not have (make a
    /// speaker without `can_publish`).
    #[error("your token does not allow publishing, so you may not make others speakers")]
    BeyondOwnGrant,
    /// No such member in the moderator's channel.
    #[error("no such member in this channel")]
    NotFound,
    /// The engine refused.
    #[error("{0}")]
    Refused(String),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}
