//! A WHIP or WHEP `POST` (RFC 9725 §4.2) as it arrives, checked before
//! anything acts on it: the body's size and type, the channel in the path,
//! the `Authorization` header's form, the offer's encoding. Pure, so that
//! the fuzz target reaches every branch; the handler in `http` does the
//! origin check, the token's verification and the join.

use crate::auth::MAX_TOKEN_LEN;
use crate::names;

/// A request that may go on to authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRequest {
    /// A well-formed channel name.
    pub channel: String,
    /// The bearer token, when the request has one.
    pub token: Option<String>,
    /// The SDP offer.
    pub offer: String,
}

/// Why a request is refused, as an HTTP status and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRefusal {
    /// 400, 401, 413 or 415.
    pub status: u16,
    /// What is wrong (never repeats a refused name).
    pub message: String,
    /// The channel name was what is wrong (counted as `bad_name`).
    pub bad_name: bool,
}

impl MediaRefusal {
    fn new(status: u16, message: impl Into<String>) -> MediaRefusal {
        MediaRefusal {
            status,
            message: message.into(),
            bad_name: false,
        }
    }
}

/// Checks a WHIP/WHEP `POST`: `channel` from the path, the raw values of
/// `Content-Type` and `Authorization` (if present), the body, and the
/// largest body accepted.
pub fn parse(
    channel: &str,
    content_type: Option<&[u8]>,
    authorization: Option<&[u8]>,
    body: &[u8],
    max_body: usize,
) -> Result<MediaRequest, MediaRefusal> {
    if body.len() > max_body {
        return Err(MediaRefusal::new(
            413,
            format!("the offer is larger than {max_body} bytes"),
        ));
    }
    if !content_type.is_some_and(is_sdp) {
        return Err(MediaRefusal::new(
            415,
            "the offer must be sent as Content-Type: application/sdp",
        ));
    }
    if let Err(e) = names::check_channel(channel) {
        return Err(MediaRefusal {
            bad_name: true,
            ..MediaRefusal::new(400, e.to_string())
        });
    }
    let token = match authorization {
        None => None,
        Some(value) => Some(bearer(value).ok_or_else(|| {
            MediaRefusal::new(
                401,
                format!("Authorization must be \"Bearer <token>\" with a token of at most {MAX_TOKEN_LEN} bytes"),
            )
        })?),
    };
    let offer =
        std::str::from_utf8(body).map_err(|_| MediaRefusal::new(400, "the offer is not UTF-8"))?;
    // RFC 8866 §5: a session description starts with its version line.
    if !offer.starts_with("v=0") {
        return Err(MediaRefusal::new(
            400,
            "the body is not an SDP offer (it must start with v=0)",
        ));
    }
    Ok(MediaRequest {
        channel: channel.to_owned(),
        token,
        offer: offer.to_owned(),
    })
}

/// Whether a `Content-Type` value is `application/sdp` (parameters and
/// case aside).
fn is_sdp(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(';')
        .next()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"))
}

/// The token of `Bearer <token>` (RFC 6750 §2.1: the scheme in any case,
/// one or more spaces), if the value has that form and the token is
/// visible ASCII of a length [`crate::auth::verify`] looks at.
fn bearer(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches(' ');
    let ok = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &[u8] = b"application/sdp";
    const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n";

    fn status(r: Result<MediaRequest, MediaRefusal>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.status)
    }

    #[test]
    fn a_good_request() {
        let r = parse(
            "stage",
            Some(b"Application/SDP; charset=utf-8"),
            Some(b"bearer  a.b.c "),
            OFFER,
            1000,
        )
        .unwrap();
        assert_eq!(r.channel, "stage");
        assert_eq!(r.token.as_deref(), Some("a.b.c"));
        assert!(r.offer.starts_with("v=0"));
        let r = parse("stage", Some(SDP), None, OFFER, 1000).unwrap();
        assert_eq!(r.token, None);
    }

    #[test]
    fn refusals() {
        assert_eq!(status(parse("s", Some(SDP), None, OFFER, 10)), 413);
        assert_eq!(status(parse("s", None, None, OFFER, 1000)), 415);
        assert_eq!(
            status(parse("s", Some(b"text/plain"), None, OFFER, 1000)),
            415
        );
        assert_eq!(status(parse("s", Some(b"\xff"), None, OFFER, 1000)), 415);
        for auth in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer a\tb",
            b"\xffBearer x",
        ] {
            assert_eq!(
                status(parse("s", Some(SDP), Some(auth), OFFER, 1000)),
                401,
                "{auth:?}"
            );
        }
        let long = format!("Bearer {}", "t".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(
            status(parse("s", Some(SDP), Some(long.as_bytes()), OFFER, 100_000)),
            401
        );
        assert_eq!(status(parse("s", Some(SDP), None, b"\xff\xfe", 1000)), 400);
        assert_eq!(status(parse("s", Some(SDP), None, b"hello", 1000)), 400);
        let e = parse("a\r\nFAKE: 1", Some(SDP), None, OFFER, 1000).unwrap_err();
        assert_eq!((e.status, e.bad_name), (400, true));
        assert!(!e.message.contains("FAKE"));
        assert!(
            parse("", Some(SDP), None, OFFER, 1000)
                .unwrap_err()
                .bad_name
        );
    }
}
