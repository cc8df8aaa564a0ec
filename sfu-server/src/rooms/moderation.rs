//! What a moderator may ask, and why it may be refused.

use media_core::Role;

/// A moderation action. `promote` and `demote` on the wire are
/// [`Moderation::SetRole`] to speaker and to listener: one rule serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moderation {
    /// Server-mute (true) or unmute.
    Mute(bool),
    /// Change the role.
    SetRole(Role),
    /// Remove the member from the channel, telling it why.
    Kick {
        /// The moderator's words (checked: a short line of text).
        reason: Option<String>,
    },
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
    /// A kick of a moderator (oneself included): moderators cannot remove
    /// each other, else the first to act would own the channel.
    #[error("moderators cannot be kicked")]
    TargetModerates,
    /// No such member in the moderator's channel.
    #[error("no such member in this channel")]
    NotFound,
    /// Promotion of a member whose offer had no m-line to send on: it has
    /// no voice to route, and must join again with a microphone.
    #[error("this member joined without a microphone line and must join again with one to speak")]
    CannotSpeak,
    /// The engine refused.
    #[error("{0}")]
    Refused(String),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}
