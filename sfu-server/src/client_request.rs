//! A client's WebSocket message turned into a request the session can act
//! on, or the protocol error it gets: size, JSON, the message type and its
//! fields, roles and moderation actions by name, channel names and
//! identities ([`crate::names`]). Pure: the session does the rest, and the
//! fuzz target feeds it anything.

use media_core::{PeerId, Role};

use crate::auth::MAX_TOKEN_LEN;
use crate::names;
use crate::protocol::{AskFields, ClientMsg, SignalData};
use crate::rooms::mode::{MeshFailure, Mode};
use crate::rooms::Moderation;

/// Longest SDP a `signal` may carry (an audio offer is about 1 KiB).
pub const MAX_SIGNAL_SDP: usize = 8 * 1024;

/// Longest ICE candidate a `signal` may carry.
pub const MAX_SIGNAL_CANDIDATE: usize = 512;

/// Who asks for which channel, how (`authorize` and `join`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// A well-formed channel name.
    pub channel: String,
    /// The token, if given.
    pub token: Option<String>,
    /// The role asked for (`None`: speaker if the token may publish).
    pub role: Option<Role>,
    /// A well-formed development-mode identity, if given.
    pub identity: Option<String>,
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// Check the token, get the ICE servers.
    Authorize(Ask),
    /// Join with an offer.
    Join {
        /// Who, where.
        ask: Ask,
        /// The SDP offer.
        offer: String,
        /// (hybrid) The client can take part in a mesh.
        p2p: bool,
    },
    /// (hybrid) This member's SFU session during a switch to the SFU.
    SfuJoin {
        /// The SDP offer.
        offer: String,
        /// The switch's epoch.
        epoch: u64,
    },
    /// (hybrid) Signaling for another member (sizes checked).
    Signal {
        /// The addressee.
        to: PeerId,
        /// The sender's epoch.
        epoch: u64,
        /// What it carries.
        data: SignalData,
    },
    /// (hybrid) A mesh link failed.
    P2pFailed {
        /// The other end.
        peer: PeerId,
        /// Why.
        failure: MeshFailure,
        /// The link's epoch.
        epoch: u64,
    },
    /// (hybrid) This member swapped playback.
    Switched {
        /// To this mode.
        mode: Mode,
        /// For this epoch.
        epoch: u64,
    },
    /// Leave the channel.
    Leave,
    /// Moderate another member.
    Moderate {
        /// The member.
        peer: PeerId,
        /// What to do.
        action: Moderation,
    },
    /// Raise (true) or lower this member's hand.
    Hand {
        /// Raised.
        raised: bool,
    },
    /// An ICE restart with a new offer.
    Restart {
        /// The SDP offer.
        offer: String,
    },
    /// Take over a dropped member.
    Resume {
        /// Its resume token (well-formed: [`RESUME_TOKEN_LEN`] lowercase
        /// hex digits).
        token: String,
    },
    /// Keep-alive.
    Ping,
}

/// Length of a resume token: 128 bits as hex.
pub const RESUME_TOKEN_LEN: usize = 32;

/// A message refused before anything acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// Protocol error code: `too_large`, `bad_request` or `invalid_name`.
    pub code: &'static str,
    /// What is wrong (never repeats a refused name).
    pub message: String,
    /// The message type it answers, when known.
    pub request: Option<&'static str>,
}

impl RequestError {
    fn new(code: &'static str, message: impl Into<String>, request: Option<&'static str>) -> Self {
        RequestError {
            code,
            message: message.into(),
            request,
        }
    }
}

/// The codes [`ClientRequest::parse`] answers with.
pub const ERROR_CODES: [&str; 3] = ["too_large", "bad_request", "invalid_name"];

impl ClientRequest {
    /// Decodes and checks one text message of at most `max_bytes`.
    pub fn parse(text: &str, max_bytes: usize) -> Result<ClientRequest, RequestError> {
        if text.len() > max_bytes {
            return Err(RequestError::new(
                "too_large",
                format!("messages are limited to {max_bytes} bytes"),
                None,
            ));
        }
        let msg: ClientMsg = serde_json::from_str(text).map_err(|e| {
            RequestError::new("bad_request", format!("not a protocol message: {e}"), None)
        })?;
        Ok(match msg {
            ClientMsg::Ping => ClientRequest::Ping,
            ClientMsg::Leave => ClientRequest::Leave,
            ClientMsg::Authorize(fields) => ClientRequest::Authorize(ask("authorize", fields)?),
            ClientMsg::Join {
                ask: fields,
                offer,
                p2p,
            } => ClientRequest::Join {
                ask: ask("join", fields)?,
                offer,
                p2p,
            },
            ClientMsg::SfuJoin { offer, epoch } => {
                if offer.is_empty() {
                    return Err(RequestError::new(
                        "bad_request",
                        "sfu_join needs an offer",
                        Some("sfu_join"),
                    ));
                }
                ClientRequest::SfuJoin { offer, epoch }
            }
            ClientMsg::Signal { to, epoch, data } => {
                let (len, max) = match &data {
                    SignalData::Offer { sdp } | SignalData::Answer { sdp } => {
                        (sdp.len(), MAX_SIGNAL_SDP)
                    }
                    SignalData::Candidate {
                        candidate, sdp_mid, ..
                    } => (
                        candidate.len() + sdp_mid.as_ref().map_or(0, String::len),
                        MAX_SIGNAL_CANDIDATE,
                    ),
                };
                if len > max {
                    return Err(RequestError::new(
                        "too_large",
                        format!("a signal's {} is limited to {max} bytes", data.kind()),
                        Some("signal"),
                    ));
                }
                ClientRequest::Signal {
                    to: PeerId(to),
                    epoch,
                    data,
                }
            }
            ClientMsg::P2pFailed {
                peer,
                reason,
                epoch,
            } => ClientRequest::P2pFailed {
                peer: PeerId(peer),
                failure: MeshFailure::parse(&reason),
                epoch,
            },
            ClientMsg::Switched { mode, epoch } => {
                let mode = match mode.as_str() {
                    "p2p" => Mode::P2p,
                    "sfu" => Mode::Sfu,
                    _ => {
                        return Err(RequestError::new(
                            "bad_request",
                            "mode must be \"p2p\" or \"sfu\"",
                            Some("switched"),
                        ))
                    }
                };
                ClientRequest::Switched { mode, epoch }
            }
            ClientMsg::Moderate {
                action,
                peer,
                role,
                reason,
            } => ClientRequest::Moderate {
                peer: PeerId(peer),
                action: moderation(&action, role.as_deref(), reason)?,
            },
            ClientMsg::RaiseHand => ClientRequest::Hand { raised: true },
            ClientMsg::LowerHand => ClientRequest::Hand { raised: false },
            ClientMsg::Restart { offer } => {
                if offer.is_empty() {
                    return Err(RequestError::new(
                        "bad_request",
                        "restart needs an offer",
                        Some("restart"),
                    ));
                }
                ClientRequest::Restart { offer }
            }
            ClientMsg::Resume { token } => {
                let well_formed = token.len() == RESUME_TOKEN_LEN
                    && token
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if !well_formed {
                    return Err(RequestError::new(
                        "bad_request",
                        format!("a resume token is {RESUME_TOKEN_LEN} lowercase hex digits"),
                        Some("resume"),
                    ));
                }
                ClientRequest::Resume { token }
            }
        })
    }

    /// The message type, as errors name it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::Authorize(_) => "authorize",
            ClientRequest::Join { .. } => "join",
            ClientRequest::Leave => "leave",
            ClientRequest::Moderate { .. } => "moderate",
            ClientRequest::Hand { raised: true } => "raise_hand",
            ClientRequest::Hand { raised: false } => "lower_hand",
            ClientRequest::Restart { .. } => "restart",
            ClientRequest::SfuJoin { .. } => "sfu_join",
            ClientRequest::Signal { .. } => "signal",
            ClientRequest::P2pFailed { .. } => "p2p_failed",
            ClientRequest::Switched { .. } => "switched",
            ClientRequest::Resume { .. } => "resume",
            ClientRequest::Ping => "ping",
        }
    }
}

fn ask(request: &'static str, fields: AskFields) -> Result<Ask, RequestError> {
    let AskFields {
        channel,
        token,
        role,
        identity,
    } = fields;
    let invalid =
        |e: names::NameError| RequestError::new("invalid_name", e.to_string(), Some(request));
    names::check_channel(&channel).map_err(invalid)?;
    if let Some(identity) = &identity {
        names::check_identity(identity).map_err(invalid)?;
    }
    if token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_LEN) {
        return Err(RequestError::new(
            "bad_request",
            format!("tokens are at most {MAX_TOKEN_LEN} bytes"),
            Some(request),
        ));
    }
    let role = match role.as_deref() {
        None => None,
        Some("speaker") => Some(Role::Speaker),
        Some("listener") => Some(Role::Listener),
        Some(_) => {
            return Err(RequestError::new(
                "bad_request",
                "role must be \"speaker\" or \"listener\"",
                Some(request),
            ))
        }
    };
    Ok(Ask {
        channel,
        token,
        role,
        identity,
    })
}

/// A moderation by name. `promote` and `demote` are `set_role` to speaker
/// and to listener; a kick's reason is checked as names are (a line of at
/// most [`names::MAX_REASON_BYTES`]: it is logged and shown).
fn moderation(
    action: &str,
    role: Option<&str>,
    reason: Option<String>,
) -> Result<Moderation, RequestError> {
    let req = Some("moderate");
    match (action, role) {
        ("mute", _) => Ok(Moderation::Mute(true)),
        ("unmute", _) => Ok(Moderation::Mute(false)),
        ("set_role", Some("speaker")) | ("promote", _) => Ok(Moderation::SetRole(Role::Speaker)),
        ("set_role", Some("listener")) | ("demote", _) => Ok(Moderation::SetRole(Role::Listener)),
        ("set_role", _) => Err(RequestError::new(
            "bad_request",
            "set_role needs role \"speaker\" or \"listener\"",
            req,
        )),
        ("kick", _) => {
            if let Some(r) = &reason {
                names::check(names::NameKind::Reason, r)
                    .map_err(|e| RequestError::new("bad_request", e.to_string(), req))?;
            }
            Ok(Moderation::Kick { reason })
        }
        _ => Err(RequestError::new(
            "bad_request",
            "unknown action: mute, unmute, set_role, promote, demote or kick",
            req,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 65_536;

    fn code(text: &str) -> &'static str {
        ClientRequest::parse(text, MAX).unwrap_err().code
    }

    #[test]
    fn requests() {
        assert_eq!(
            ClientRequest::parse(r#"{"type":"ping"}"#, MAX),
            Ok(ClientRequest::Ping)
        );
        assert_eq!(
            ClientRequest::parse(
                r#"{"type":"join","channel":"lobby","offer":"v=0","role":"listener","token":"t"}"#,
                MAX
            ),
            Ok(ClientRequest::Join {
                ask: Ask {
                    channel: "lobby".into(),
                    token: Some("t".into()),
                    role: Some(Role::Listener),
                    identity: None,
                },
                offer: "v=0".into(),
                p2p: false,
            })
        );
        assert_eq!(
            ClientRequest::parse(
                r#"{"type":"authorize","channel":"lobby","identity":"ann"}"#,
                MAX
            ),
            Ok(ClientRequest::Authorize(Ask {
                channel: "lobby".into(),
                token: None,
                role: None,
                identity: Some("ann".into()),
            }))
        );
        assert_eq!(
            ClientRequest::parse(
                r#"{"type":"moderate","action":"set_role","peer":4,"role":"speaker"}"#,
                MAX
            ),
            Ok(ClientRequest::Moderate {
                peer: PeerId(4),
                action: Moderation::SetRole(Role::Speaker)
            })
        );
        // promote and demote are set_role by another name.
        for (action, role) in [("promote", Role::Speaker), ("demote", Role::Listener)] {
            let text = format!(r#"{{"type":"moderate","action":"{action}","peer":4}}"#);
            assert_eq!(
                ClientRequest::parse(&text, MAX),
                Ok(ClientRequest::Moderate {
                    peer: PeerId(4),
                    action: Moderation::SetRole(role)
                })
            );
        }
        assert_eq!(
            ClientRequest::parse(
                r#"{"type":"moderate","action":"kick","peer":4,"reason":"off topic"}"#,
                MAX
            ),
            Ok(ClientRequest::Moderate {
                peer: PeerId(4),
                action: Moderation::Kick {
                    reason: Some("off topic".into())
                }
            })
        );
        assert_eq!(
            ClientRequest::parse(r#"{"type":"raise_hand"}"#, MAX),
            Ok(ClientRequest::Hand { raised: true })
        );
        assert_eq!(
            ClientRequest::parse(r#"{"type":"lower_hand"}"#, MAX),
            Ok(ClientRequest::Hand { raised: false })
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(code("not json"), "bad_request");
        assert_eq!(code(r#"{"type":"dance"}"#), "bad_request");
        assert_eq!(code(r#"{"type":"join"}"#), "bad_request");
        assert_eq!(
            code(r#"{"type":"join","channel":"a","offer":"","role":"boss"}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"moderate","action":"ban","peer":1}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"moderate","action":"set_role","peer":1}"#),
            "bad_request"
        );
        // A kick's reason is a short line: no forged log lines, no essays.
        for reason in [r"a\nFAKE", r"\u202e", ""] {
            let text =
                format!(r#"{{"type":"moderate","action":"kick","peer":1,"reason":"{reason}"}}"#);
            assert_eq!(code(&text), "bad_request", "{reason:?}");
        }
        let essay = format!(
            r#"{{"type":"moderate","action":"kick","peer":1,"reason":"{}"}}"#,
            "x".repeat(names::MAX_REASON_BYTES + 1)
        );
        assert_eq!(code(&essay), "bad_request");
        assert_eq!(code(&"x".repeat(MAX + 1)), "too_large");
        // A restart needs an offer; a resume token is 32 lowercase hex
        // digits (nothing else reaches the lookup).
        assert_eq!(code(r#"{"type":"restart","offer":""}"#), "bad_request");
        assert_eq!(code(r#"{"type":"restart"}"#), "bad_request");
        for token in [
            "",
            "0123",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
        ] {
            let text = format!(r#"{{"type":"resume","token":"{token}"}}"#);
            assert_eq!(code(&text), "bad_request", "{token:?}");
        }
        assert_eq!(
            ClientRequest::parse(r#"{"type":"restart","offer":"v=0"}"#, MAX),
            Ok(ClientRequest::Restart {
                offer: "v=0".into()
            })
        );
        let token = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            ClientRequest::parse(&format!(r#"{{"type":"resume","token":"{token}"}}"#), MAX),
            Ok(ClientRequest::Resume {
                token: token.into()
            })
        );
        let long_token = format!(
            r#"{{"type":"join","channel":"a","offer":"","token":"{}"}}"#,
            "t".repeat(MAX_TOKEN_LEN + 1)
        );
        assert_eq!(code(&long_token), "bad_request");
        // Names that would forge log lines never get past here, and the
        // error does not repeat them.
        for bad in [
            r#"{"type":"join","channel":"a\nFAKE","offer":""}"#,
            r#"{"type":"authorize","channel":""}"#,
            r#"{"type":"join","channel":"a","offer":"","identity":"x\u001b[1m"}"#,
            r#"{"type":"authorize","channel":"a","identity":"\u202e"}"#,
        ] {
            let e = ClientRequest::parse(bad, MAX).unwrap_err();
            assert_eq!(e.code, "invalid_name", "{bad}");
            assert!(!e.message.contains("FAKE") && !e.message.contains('\u{1b}'));
            assert!(e.request.is_some());
        }
        let long = format!(
            r#"{{"type":"authorize","channel":"{}"}}"#,
            "c".repeat(names::MAX_CHANNEL_BYTES + 1)
        );
        assert_eq!(code(&long), "invalid_name");
    }
}
