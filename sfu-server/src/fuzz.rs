//! Fuzz bodies for the targets in `fuzz/` (feature `_internal_fuzz`): the
//! inputs a client controls before it is anyone: its WebSocket messages,
//! its token, its WHIP/WHEP request; and what a fleet node reads from Redis
//! (node records, leases). Each body panics only when an
//! invariant breaks; any input must otherwise be answered.

use crate::auth::{self, AuthError, Grants, MAX_TOKEN_LEN};
use crate::client_request::{ClientRequest, ERROR_CODES};
use crate::rooms::Moderation;
use crate::{ice_restart, media_request, names, origin};

/// The key the JWT body signs with.
const KEY: &[u8] = b"fuzz-key-fuzz-key-fuzz-key-fuzz-";
/// The body's "now" (2023-11-14).
const NOW: u64 = 1_700_000_000;

/// One WebSocket text message (as the socket would deliver it: UTF-8),
/// decoded and checked.
pub fn ws_client_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ClientRequest::parse(&text, 65_536) {
        Ok(ClientRequest::Authorize(ask) | ClientRequest::Join { ask, .. }) => {
            assert!(names::check_channel(&ask.channel).is_ok(), "{ask:?}");
            if let Some(identity) = &ask.identity {
                assert!(names::check_identity(identity).is_ok(), "{ask:?}");
            }
            assert!(ask.token.as_ref().is_none_or(|t| t.len() <= MAX_TOKEN_LEN));
        }
        Ok(ClientRequest::Moderate {
            action: Moderation::Kick {
                reason: Some(reason),
            },
            ..
        }) => {
            assert!(
                names::check(names::NameKind::Reason, &reason).is_ok(),
                "{reason:?}"
            );
        }
        Ok(ClientRequest::Resume { token }) => {
            assert_eq!(token.len(), crate::client_request::RESUME_TOKEN_LEN);
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        Ok(ClientRequest::Restart { offer }) => assert!(!offer.is_empty()),
        Ok(_) => {}
        Err(e) => {
            assert!(ERROR_CODES.contains(&e.code), "{e:?}");
            let reply = crate::protocol::ServerMsg::error(e.code, e.message, e.request);
            let json = serde_json::to_string(&reply).expect("an error serialises");
            let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
            assert_eq!(back["code"], e.code);
        }
    }
}

/// A JWT: the first byte picks how the rest is used: as a whole token
/// (a forged one must never verify); as the claims of a correctly signed
/// HS256 token (so the claims' parser and checks are reached); or as a
/// header and claims split at the first `0xff`, signed.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            if let Ok(g) = auth::verify(KEY, &token, NOW) {
                check_grants(&g);
            }
        }
        1 => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest, true),
        _ => {
            let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            signed(header, claims, false);
        }
    }
}

/// Signs `header`.`claims` with [`KEY`] and verifies it.
fn signed(header: &[u8], claims: &[u8], header_is_hs256: bool) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let signing = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, KEY);
    let tag = aws_lc_rs::hmac::sign(&key, signing.as_bytes());
    let token = format!("{signing}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    match auth::verify(KEY, &token, NOW) {
        Ok(g) => {
            check_grants(&g);
            // What verifies survives a round trip through mint.
            let again = auth::mint(KEY, &g);
            assert_eq!(auth::verify(KEY, &again, NOW), Ok(g));
        }
        Err(AuthError::Malformed(_) | AuthError::Expired) => {}
        Err(AuthError::UnsupportedAlgorithm) if !header_is_hs256 => {}
        Err(e) => panic!("a correctly signed token refused as {e:?}"),
    }
}

/// What every verified token's grants satisfy.
fn check_grants(g: &Grants) {
    assert!(names::check_identity(&g.sub).is_ok(), "{g:?}");
    assert!(names::check_channel(&g.channel).is_ok(), "{g:?}");
    assert!(g.exp > NOW, "{g:?}");
}

/// A WHIP/WHEP request: the input split at `0x00` bytes into the channel
/// of the path, `Content-Type`, `Authorization`, `Origin` (a missing part
/// is an absent header) and the body.
pub fn whip_request(data: &[u8]) {
    let mut parts = data.splitn(5, |&b| b == 0);
    let channel = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let content_type = parts.next();
    let authorization = parts.next();
    let origin = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    match media_request::parse(&channel, content_type, authorization, body, 4096) {
        Ok(r) => {
            assert!(names::check_channel(&r.channel).is_ok());
            assert!(r.offer.starts_with("v=0") && r.offer.len() <= 4096);
            if let Some(t) = &r.token {
                assert!(!t.is_empty() && t.len() <= MAX_TOKEN_LEN);
                assert!(t.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 401 | 413 | 415), "{e:?}");
            assert!(!e.bad_name || names::check_channel(&channel).is_err());
        }
    }
    // The same body as a PATCH's SDP fragment, and as the session's offer
    // and the engine's answer an ICE restart rewrites.
    patch_body(body);
    let allowed = ["https://app.example.org".to_owned()];
    for (dev, proxied) in [(true, false), (true, true), (false, false)] {
        let decision = origin::check(origin.as_deref(), proxied, dev, &allowed);
        if let (Ok(()), Some(o)) = (decision, origin.as_deref()) {
            let listed = o.eq_ignore_ascii_case(&allowed[0]);
            assert!(listed || (dev && origin::is_loopback_origin(o)), "{o:?}");
        }
        assert!(!(dev && proxied) || decision.is_err());
    }
}

/// A `PATCH` body (RFC 9725 §4.3): parsed or refused; credentials taken
/// are ICE characters of allowed lengths, and a restart offer made from any
/// text carries exactly them.
fn patch_body(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    if let Ok(frag) = ice_restart::SdpFrag::parse(body) {
        if let Some((ufrag, pwd)) = frag.restart("") {
            assert!((4..=256).contains(&ufrag.len()) && (22..=256).contains(&pwd.len()));
            let offer = ice_restart::restart_offer(&text, ufrag, pwd);
            let has_credentials = text.lines().any(|l| l.starts_with("a=ice-ufrag:"));
            assert!(!has_credentials || ice_restart::ice_ufrag(&offer) == Some(ufrag));
        }
    }
    let frag = ice_restart::answer_frag(&text);
    assert!(frag.len() <= text.len() + 2 * text.lines().count());
}

/// A value read from the fleet's Redis, as a node record and as a lease:
/// refused or parsed; a record that parses names an http(s) URL without
/// spaces or control characters and a plain region, and writes back to
/// itself; a lease that parses has an epoch of at least 1 and writes back
/// to the same text when the input was canonical.
pub fn fleet_record(data: &[u8]) {
    use crate::fleet::{Lease, NodeRecord};
    if let Ok(r) = NodeRecord::parse(data) {
        assert!(r.url.starts_with("http://") || r.url.starts_with("https://"));
        assert!(!r.url.chars().any(|c| c.is_whitespace() || c.is_control()));
        assert!(crate::config::is_region(&r.region));
        assert_eq!(NodeRecord::parse(r.to_json().as_bytes()).as_ref(), Ok(&r));
    }
    if let Ok(l) = Lease::parse(data) {
        assert!(l.epoch >= 1);
        assert_eq!(Lease::parse(l.to_string().as_bytes()), Ok(l));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies hold on a few inputs of each kind, including the ones
    /// that reach their deepest branches.
    #[test]
    fn bodies_hold_on_seeds() {
        for m in [
            &br#"{"type":"join","channel":"lobby","offer":"v=0","role":"speaker"}"#[..],
            br#"{"type":"authorize","channel":"a\nb"}"#,
            br#"{"type":"moderate","action":"set_role","peer":1}"#,
            br#"{"type":"moderate","action":"kick","peer":1,"reason":"spam"}"#,
            br#"{"type":"moderate","action":"kick","peer":1,"reason":"a\u2028b"}"#,
            br#"{"type":"raise_hand"}"#,
            br#"{"type":"restart","offer":"v=0"}"#,
            br#"{"type":"resume","token":"0123456789abcdef0123456789abcdef"}"#,
            br#"{"type":"resume","token":"../etc"}"#,
            b"\xff\xfe",
            b"",
        ] {
            ws_client_message(m);
        }
        let good = auth::mint(
            KEY,
            &Grants {
                sub: "a".into(),
                channel: "c".into(),
                can_publish: true,
                can_subscribe: false,
                can_moderate: false,
                exp: NOW + 1,
                jti: None,
                region: None,
                p2p: None,
            },
        );
        let mut whole = vec![0u8];
        whole.extend_from_slice(good.as_bytes());
        jwt(&whole);
        jwt(b"\x01{\"sub\":\"a\",\"channel\":\"*\",\"exp\":1700000001,\"jti\":\"x\"}");
        jwt(b"\x01{\"sub\":\"a\\u0007\",\"channel\":\"*\",\"exp\":1700000001}");
        jwt(b"\x02{\"alg\":\"none\"}\xff{}");
        jwt(b"\x02{\"alg\":\"HS256\",\"crit\":[]}\xff{}");
        whip_request(b"stage\0application/sdp\0Bearer a.b.c\0http://localhost:1\0v=0\r\n");
        whip_request(b"st\x01age\0application/sdp");
        whip_request(b"");
        for seed in ["record.json", "edge.json", "lease"] {
            let path = format!(
                "{}/../fuzz/seeds/fleet_record/{seed}",
                env!("CARGO_MANIFEST_DIR")
            );
            fleet_record(&std::fs::read(path).unwrap());
        }
        fleet_record(b"+7:1");
        fleet_record(br#"{"id":1,"region":"x","core":true,"edge":true,"url":"http://a\u0000b","media":[],"cluster":null,"draining":false,"members":0,"channels":0}"#);
    }
}
