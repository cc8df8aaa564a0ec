//! Join tokens: grants carried as a compact JWT signed with HMAC-SHA256
//! (HS256) under the server's `auth_secret` (see `docs/PROTOCOL.md`).

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The longest token [`verify`] looks at, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The only JOSE header [`mint`] writes.
const HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

/// What a join token allows (JWT claims, see `docs/PROTOCOL.md`).
///
/// Other claims in a token (`iat`, `iss`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grants {
    /// Identity of the member (shown to others).
    pub sub: String,
    /// The one channel the token admits to (`"*"` = any).
    pub channel: String,
    /// May join as speaker / WHIP-publish.
    #[serde(default)]
    pub can_publish: bool,
    /// May hear others / WHEP-listen.
    #[serde(default)]
    pub can_subscribe: bool,
    /// May server-mute others and change their role.
    #[serde(default)]
    pub can_moderate: bool,
    /// Expiry, seconds since the Unix epoch. A member is removed when it
    /// passes, not only refused at the join.
    pub exp: u64,
    /// Token id (`jti`, optional): tokens with the same id share one join
    /// allowance (`joins_per_token_per_minute`); without one the token
    /// itself is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The member's region (`region`, optional): in a fleet, a new
    /// channel's core and a big channel's edge are chosen in it. It wins
    /// over the load balancer's header; a plain name (letters, digits,
    /// `-`, `_`, `.`, at most 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// (hybrid) `p2p: false` keeps the member on the SFU: its channel is
    /// never peer-to-peer while it is in it (an operator who must enforce
    /// moderation on the server, or hide members' addresses from each
    /// other). Absent or true: as the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<bool>,
}

impl Grants {
    /// Whether the grants admit to `channel` (`"*"` admits to any).
    pub fn admits(&self, channel: &str) -> bool {
        self.channel == "*" || self.channel == channel
    }

    /// Development mode's grants for `identity`: any channel, speak and
    /// listen, never expiring; moderation only when `can_moderate` (off by
    /// default: every loopback client would otherwise moderate everyone).
    pub fn dev(identity: &str, can_moderate: bool) -> Grants {
        Grants {
            sub: identity.to_owned(),
            channel: "*".to_owned(),
            can_publish: true,
            can_subscribe: true,
            can_moderate,
            exp: u64::MAX,
            jti: None,
            region: None,
            p2p: None,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// The token is not a well-formed HS256 JWT with the expected claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token's header names an algorithm other than HS256.
    #[error("unsupported token algorithm (only HS256 is accepted)")]
    UnsupportedAlgorithm,
    /// The signature does not match (wrong secret or tampered token).
    #[error("token signature does not verify")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// The token is valid but for another channel.
    #[error("token does not admit to this channel")]
    WrongChannel,
    /// The token is valid but lacks a needed grant (named).
    #[error("token does not allow {0}")]
    NotAllowed(&'static str),
}

impl AuthError {
    /// HTTP status: 401 for `Missing`, `Malformed`, `UnsupportedAlgorithm`,
    /// `BadSignature` and `Expired`; 403 for `WrongChannel` and `NotAllowed`.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::UnsupportedAlgorithm
            | AuthError::BadSignature
            | AuthError::Expired => 401,
            AuthError::WrongChannel | AuthError::NotAllowed(_) => 403,
        }
    }

    /// Short machine code for the WebSocket protocol: `"unauthorized"` or
    /// `"forbidden"`.
    pub fn code(&self) -> &'static str {
        if self.status() == 403 {
            "forbidden"
        } else {
            "unauthorized"
        }
    }
}

/// Signs grants as a compact JWT with HS256 (header
/// `{"alg":"HS256","typ":"JWT"}`).
pub fn mint(secret: &[u8], grants: &Grants) -> String {
    // Serialising a struct of strings, bools and an integer cannot fail.
    let claims = serde_json::to_vec(grants).expect("grants serialise to JSON");
    let mut token = URL_SAFE_NO_PAD.encode(HEADER);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
    token
}

/// The JOSE header fields [`verify`] looks at.
#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    /// Critical extensions: none are understood, so any is refused.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies a compact JWT and returns its grants.
///
/// The token must be at most [`MAX_TOKEN_LEN`] bytes of exactly three
/// base64url (no padding) parts; the header's `alg` must be `HS256` (`none`
/// and everything else are refused); the signature is checked in constant
/// time; `exp` must be later than `now_unix`; `sub` and `channel` must be
/// well-formed names ([`crate::names`]: not empty, not too long, no control
/// characters). Channel and grant checks are left to the caller
/// ([`Grants::admits`]).
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Grants, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Malformed("empty token"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("expected three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    let claims = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| AuthError::Malformed("claims are not base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| AuthError::Malformed("signature is not base64url"))?;

    let header: Header = serde_json::from_slice(&header)
        .map_err(|_| AuthError::Malformed("header is not a JSON object with alg"))?;
    if header.alg != "HS256" {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    if header.crit.is_some() {
        return Err(AuthError::Malformed(
            "unsupported critical header extension",
        ));
    }

    let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, signed.as_bytes(), &signature).map_err(|_| AuthError::BadSignature)?;

    let grants: Grants = serde_json::from_slice(&claims)
        .map_err(|_| AuthError::Malformed("claims are not JSON with sub, channel and exp"))?;
    if crate::names::check_identity(&grants.sub).is_err() {
        return Err(AuthError::Malformed(
            "sub is not an identity (1 to 128 bytes, no control characters)",
        ));
    }
    if crate::names::check_channel(&grants.channel).is_err() {
        return Err(AuthError::Malformed(
            "channel is not a channel name (1 to 128 bytes, no control characters)",
        ));
    }
    if grants.jti.as_ref().is_some_and(|id| id.len() > 256) {
        return Err(AuthError::Malformed("jti is longer than 256 bytes"));
    }
    if grants
        .region
        .as_ref()
        .is_some_and(|r| !crate::config::is_region(r))
    {
        return Err(AuthError::Malformed(
            "region is not a region name (1 to 64 letters, digits, '-', '_' or '.')",
        ));
    }
    if grants.exp <= now_unix {
        return Err(AuthError::Expired);
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn grants() -> Grants {
        Grants {
            sub: "alice".into(),
            channel: "lobby".into(),
            can_publish: true,
            can_subscribe: true,
            can_moderate: false,
            exp: 2_000_000_000,
            jti: None,
            region: None,
            p2p: None,
        }
    }

    /// Builds a token from raw header and claims JSON, signed with HS256.
    fn raw_token(secret: &[u8], header: &[u8], claims: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            signed.as_bytes(),
        );
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    #[test]
    fn roundtrip() {
        let token = mint(b"k", &grants());
        assert_eq!(verify(b"k", &token, NOW), Ok(grants()));
        assert_eq!(verify(b"other", &token, NOW), Err(AuthError::BadSignature));
    }

    /// Computed independently with Python's `hmac`, `hashlib` and `base64`.
    #[test]
    fn known_answer() {
        const EXPECTED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
            eyJzdWIiOiJhbGljZSIsImNoYW5uZWwiOiJsb2JieSIsImNhbl9wdWJsaXNoIjp0cnVlLCJjYW5fc3Vic2NyaWJlIjp0cnVlLCJjYW5fbW9kZXJhdGUiOmZhbHNlLCJleHAiOjIwMDAwMDAwMDB9.\
            4iNAezSfd6YFQhFZHBgXuK_J4pp7Arv1bKmQvHJ1bn0";
        assert_eq!(mint(b"test-secret", &grants()), EXPECTED);
        assert_eq!(verify(b"test-secret", EXPECTED, NOW), Ok(grants()));

        // Another encoder's spacing and key order, an extra claim, missing
        // grants defaulting to false.
        const FOREIGN: &str = "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJIUzI1NiJ9.\
            eyJleHAiOiAxNzAwMDAwMDAwLCAic3ViIjogImJvYiIsICJjaGFubmVsIjogIioiLCAiY2FuX3N1YnNjcmliZSI6IHRydWUsICJpYXQiOiAxNjk5OTkwMDAwfQ.\
            3QfaRETyVAPOkbCs_L1SGiq--mPzPAUK7tNktv-YPNU";
        let g = verify(b"other", FOREIGN, NOW - 1).unwrap();
        assert_eq!(
            g,
            Grants {
                sub: "bob".into(),
                channel: "*".into(),
                can_publish: false,
                can_subscribe: true,
                can_moderate: false,
                exp: NOW,
                jti: None,
                region: None,
                p2p: None,
            }
        );
        assert!(g.admits("anything"));
        assert_eq!(verify(b"other", FOREIGN, NOW), Err(AuthError::Expired));
    }

    #[test]
    fn tampering_is_detected() {
        let token = mint(b"k", &grants());
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = grants();
        evil.can_moderate = true;
        let evil_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
        let forged = format!("{}.{}.{}", parts[0], evil_claims, parts[2]);
        assert_eq!(verify(b"k", &forged, NOW), Err(AuthError::BadSignature));

        // Flip a bit in the signature (keeping it valid base64url).
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(verify(b"k", &forged, NOW), Err(AuthError::BadSignature));

        // Truncated and empty signatures.
        let forged = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]);
        assert!(verify(b"k", &forged, NOW).is_err());
        let forged = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(verify(b"k", &forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = serde_json::to_vec(&grants()).unwrap();
        for header in [
            &br#"{"alg":"none","typ":"JWT"}"#[..],
            br#"{"alg":"HS512","typ":"JWT"}"#,
            br#"{"alg":"RS256"}"#,
            br#"{"alg":"hs256"}"#,
        ] {
            let token = raw_token(b"k", header, &claims);
            assert_eq!(
                verify(b"k", &token, NOW),
                Err(AuthError::UnsupportedAlgorithm)
            );
        }
        // The classic "alg: none" token with an empty signature.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        assert_eq!(
            verify(b"k", &unsigned, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
        let token = raw_token(b"k", br#"{"alg":"HS256","crit":["b64"]}"#, &claims);
        assert!(matches!(
            verify(b"k", &token, NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn token_ids_are_kept() {
        let claims = br#"{"sub":"a","channel":"c","exp":2000000000,"jti":"id-7"}"#;
        let g = verify(b"k", &raw_token(b"k", br#"{"alg":"HS256"}"#, claims), NOW).unwrap();
        assert_eq!(g.jti.as_deref(), Some("id-7"));
        let long = format!(
            r#"{{"sub":"a","channel":"c","exp":2000000000,"jti":"{}"}}"#,
            "i".repeat(257)
        );
        assert!(matches!(
            verify(
                b"k",
                &raw_token(b"k", br#"{"alg":"HS256"}"#, long.as_bytes()),
                NOW
            ),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn expiry() {
        let mut g = grants();
        g.exp = NOW;
        let token = mint(b"k", &g);
        assert_eq!(verify(b"k", &token, NOW), Err(AuthError::Expired));
        assert_eq!(verify(b"k", &token, NOW + 1), Err(AuthError::Expired));
        assert_eq!(verify(b"k", &token, NOW - 1), Ok(g));
    }

    #[test]
    fn garbage_is_malformed() {
        let malformed = |t: &str| {
            let r = verify(b"k", t, NOW);
            assert!(matches!(r, Err(AuthError::Malformed(_))), "{t:?}: {r:?}");
        };
        let good = mint(b"k", &grants());
        malformed("");
        malformed("abc");
        malformed("a.b");
        malformed("a.b.c.d");
        malformed(&format!("{good}.x"));
        malformed("....");
        malformed("!!!.###.$$$");
        malformed("eyJhbGciOiJIUzI1NiJ9=.e30.AAAA"); // padding
        malformed("bm90IGpzb24.e30.AAAA"); // header "not json"
        malformed("W10.e30.AAAA"); // header []
        malformed(&"a".repeat(MAX_TOKEN_LEN + 1));
        malformed(&format!("{good}{}", "A".repeat(MAX_TOKEN_LEN)));
        malformed("é.ü.ß");

        // Correctly signed but unusable claims.
        for claims in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"sub":"a","channel":"c"}"#,
            br#"{"sub":"a","channel":"c","exp":-1}"#,
            br#"{"sub":"a","channel":"c","exp":1.5e9}"#,
            br#"{"sub":"a","channel":"c","exp":"2000000000"}"#,
            br#"{"sub":"","channel":"c","exp":2000000000}"#,
            br#"{"sub":"a","channel":"","exp":2000000000}"#,
            br#"{"sub":"a","channel":"c","exp":2000000000,"can_publish":"yes"}"#,
            // Names that would forge log lines or are nobody's name.
            br#"{"sub":"a\nfake: log line","channel":"c","exp":2000000000}"#,
            br#"{"sub":"a","channel":"c\u001b[2J","exp":2000000000}"#,
            br#"{"sub":"adm\u202enimda","channel":"c","exp":2000000000}"#,
            &format!(
                r#"{{"sub":"{}","channel":"c","exp":2000000000}}"#,
                "x".repeat(129)
            )
            .into_bytes(),
            br#"{"sub":"a","channel":"c","exp":2000000000,"jti":7}"#,
        ] {
            malformed(&raw_token(b"k", br#"{"alg":"HS256"}"#, claims));
        }
    }

    #[test]
    fn random_strings_never_panic() {
        // splitmix64 with a fixed seed.
        let mut state: u64 = 0x5eed_1234_abcd_0001;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_....=+/ {}\"";
        let good = mint(b"k", &grants());
        for i in 0..5000 {
            let len = (next() % 300) as usize;
            let s: String = if i % 5 == 0 {
                // Mutate a valid token: a random byte replaced.
                let mut b = good.clone().into_bytes();
                let at = (next() as usize) % b.len();
                b[at] = ALPHABET[(next() as usize) % ALPHABET.len()];
                String::from_utf8(b).unwrap()
            } else {
                (0..len)
                    .map(|_| ALPHABET[(next() as usize) % ALPHABET.len()] as char)
                    .collect()
            };
            match verify(b"k", &s, NOW) {
                Ok(g) => assert_eq!(s, good, "only the unmodified token verifies: {g:?}"),
                Err(AuthError::Malformed(_)) => {}
                Err(AuthError::BadSignature | AuthError::UnsupportedAlgorithm) if i % 5 == 0 => {}
                Err(e) => panic!("{s:?}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn admits_and_codes() {
        let g = grants();
        assert!(g.admits("lobby"));
        assert!(!g.admits("other"));
        assert!(!g.admits("*"));
        let dev = Grants::dev("bob", false);
        assert!(dev.admits("anything") && dev.can_publish && !dev.can_moderate);
        assert_eq!(dev.sub, "bob");
        assert!(Grants::dev("bob", true).can_moderate);

        for e in [
            AuthError::Missing,
            AuthError::Malformed("x"),
            AuthError::UnsupportedAlgorithm,
            AuthError::BadSignature,
            AuthError::Expired,
        ] {
            assert_eq!((e.status(), e.code()), (401, "unauthorized"), "{e}");
        }
        for e in [AuthError::WrongChannel, AuthError::NotAllowed("publishing")] {
            assert_eq!((e.status(), e.code()), (403, "forbidden"), "{e}");
        }
        assert_eq!(
            AuthError::NotAllowed("publishing").to_string(),
            "token does not allow publishing"
        );
    }
}
