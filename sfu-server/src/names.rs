//! Channel names and identities as clients give them: checked before they
//! go anywhere (logs, other members' screens, the cascade, TURN usernames).
//!
//! Both come from outside: a channel from the join request or the WHIP/WHEP
//! path, an identity from the token's `sub` or, in development mode, the
//! join request. A control character in a log line forges the lines after
//! it; a bidirectional override shows other members a different name than
//! the one logged; a 4 KiB name is nobody's name.

/// Longest channel name, in bytes (the engine takes up to 256).
pub const MAX_CHANNEL_BYTES: usize = 128;

/// Longest identity, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 128;

/// Longest reason a moderator gives for a kick, in bytes: a sentence, shown
/// to the member removed and logged.
pub const MAX_REASON_BYTES: usize = 200;

/// What a name is, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A channel name.
    Channel,
    /// A member's identity.
    Identity,
    /// A moderator's reason for a kick.
    Reason,
}

impl NameKind {
    fn what(self) -> &'static str {
        match self {
            NameKind::Channel => "channel name",
            NameKind::Identity => "identity",
            NameKind::Reason => "reason",
        }
    }

    fn max_bytes(self) -> usize {
        match self {
            NameKind::Channel => MAX_CHANNEL_BYTES,
            NameKind::Identity => MAX_IDENTITY_BYTES,
            NameKind::Reason => MAX_REASON_BYTES,
        }
    }
}

/// Why a name is refused. The message never repeats the name: it may be
/// what the check keeps out of logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("the {} is empty", .0.what())]
    Empty(NameKind),
    /// Too long.
    #[error("the {} is longer than {} bytes", .0.what(), .0.max_bytes())]
    TooLong(NameKind),
    /// A control or invisible formatting character.
    #[error("the {} contains a control or bidirectional formatting character", .0.what())]
    Control(NameKind),
}

/// Whether `c` may not appear in a name: control characters (C0, DEL, C1),
/// the bidirectional marks, embeddings, overrides and isolates (which
/// reorder what a log viewer or another member shows), line and paragraph
/// separators, and the byte order mark.
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}' | '\u{feff}'
        )
}

/// Checks a name of `kind`: 1 to the kind's maximum bytes, no forbidden
/// character.
pub fn check(kind: NameKind, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty(kind));
    }
    if name.len() > kind.max_bytes() {
        return Err(NameError::TooLong(kind));
    }
    if name.chars().any(is_forbidden) {
        return Err(NameError::Control(kind));
    }
    Ok(())
}

/// [`check`] for a channel name.
pub fn check_channel(name: &str) -> Result<(), NameError> {
    check(NameKind::Channel, name)
}

/// [`check`] for an identity.
pub fn check_identity(name: &str) -> Result<(), NameError> {
    check(NameKind::Identity, name)
}

/// `name` as one URL path segment: every byte but unreserved characters
/// (RFC 3986 §2.3) percent-encoded.
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_encode_everything_but_unreserved() {
        assert_eq!(super::path_segment("town-hall_2.b~"), "town-hall_2.b~");
        assert_eq!(super::path_segment("a b/c?d%é"), "a%20b%2Fc%3Fd%25%C3%A9");
    }

    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for ok in [
            "lobby",
            "a",
            "Salle 3 – étage",
            "会议室",
            "x".repeat(128).as_str(),
        ] {
            check_channel(ok).unwrap();
            check_identity(ok).unwrap();
        }
    }

    #[test]
    fn bad_names_are_refused_without_being_repeated() {
        let cases = [
            ("", NameError::Empty(NameKind::Channel)),
            (&*"x".repeat(129), NameError::TooLong(NameKind::Channel)),
            ("a\nfake log line", NameError::Control(NameKind::Channel)),
            ("a\r", NameError::Control(NameKind::Channel)),
            ("\u{1b}[31mred", NameError::Control(NameKind::Channel)),
            ("tab\there", NameError::Control(NameKind::Channel)),
            ("\u{7f}", NameError::Control(NameKind::Channel)),
            ("\u{85}", NameError::Control(NameKind::Channel)),
            ("admin\u{202e}nimda", NameError::Control(NameKind::Channel)),
            ("x\u{2066}y", NameError::Control(NameKind::Channel)),
            ("\u{feff}bom", NameError::Control(NameKind::Channel)),
            ("line\u{2028}sep", NameError::Control(NameKind::Channel)),
        ];
        for (name, err) in cases {
            assert_eq!(check_channel(name), Err(err.clone()), "{name:?}");
            let text = err.to_string();
            assert!(!name.is_empty() && !text.contains(name) || name.is_empty());
        }
        assert_eq!(
            check_identity("a\u{0}b"),
            Err(NameError::Control(NameKind::Identity))
        );
        assert_eq!(
            check_identity(&"é".repeat(65)),
            Err(NameError::TooLong(NameKind::Identity))
        );
        assert_eq!(
            NameError::TooLong(NameKind::Identity).to_string(),
            "the identity is longer than 128 bytes"
        );
    }
}
