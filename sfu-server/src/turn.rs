//! ICE servers handed to clients: STUN URLs as configured, TURN URLs with
//! ephemeral credentials (the coturn REST API convention, `use-auth-secret`),
//! as JSON (`RTCIceServer`) and as RFC 9725 §4.6 `Link` headers.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::Config;

/// An ICE server handed to clients (WebRTC `RTCIceServer` shape).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (`"<expiry>:<identity>"`); absent for STUN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password; absent for STUN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The ICE servers for one client: STUN URLs as they are (one entry); TURN
/// URLs (one entry) with ephemeral credentials per the coturn REST API
/// convention (`use-auth-secret`): username = `"<expiry unix seconds>:<identity>"`
/// with expiry = `now_unix + turn_ttl_secs`, credential =
/// base64(HMAC-SHA1(turn_secret, username)).
///
/// Control characters in `identity` are replaced with `_` so the username
/// can travel in an HTTP header. TURN URLs are left out when no
/// `turn_secret` is configured ([`Config::validate`] refuses that).
///
/// Only for clients whose token was verified: the credentials open the
/// TURN server's relay to whoever holds them.
pub fn ice_servers(config: &Config, identity: &str, now_unix: u64) -> Vec<IceServer> {
    let mut servers = stun_servers(config);
    if let (false, Some(secret)) = (config.turn_urls.is_empty(), &config.turn_secret) {
        let expiry = now_unix.saturating_add(config.turn_ttl_secs);
        let identity: String = identity
            .chars()
            .map(|c| if c.is_control() { '_' } else { c })
            .collect();
        let username = format!("{expiry}:{identity}");
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
        let credential = STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref());
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    servers
}

/// The STUN URLs (one entry, none when none are configured): what a client
/// that has not shown a token may know.
pub fn stun_servers(config: &Config) -> Vec<IceServer> {
    if config.stun_urls.is_empty() {
        return Vec::new();
    }
    vec![IceServer {
        urls: config.stun_urls.clone(),
        username: None,
        credential: None,
    }]
}

/// RFC 9725 §4.6 `Link` header values, one per URL:
/// `<turn:host:3478?transport=udp>; rel="ice-server"; username="..."; credential="..."; credential-type="password"`
/// (`username`, `credential` and `credential-type` only for servers with
/// credentials). Parameter values are quoted strings with `"` and `\`
/// escaped; characters that cannot appear in a header are replaced.
pub fn link_headers(servers: &[IceServer]) -> Vec<String> {
    let mut headers = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut value = format!("<{}>; rel=\"ice-server\"", uri_reference(url));
            if let Some(username) = &server.username {
                value.push_str("; username=");
                push_quoted(&mut value, username);
            }
            if let Some(credential) = &server.credential {
                value.push_str("; credential=");
                push_quoted(&mut value, credential);
                value.push_str("; credential-type=\"password\"");
            }
            headers.push(value);
        }
    }
    headers
}

/// Percent-encodes what may not appear between `<` and `>` in a `Link`
/// header (configuration validation already refuses such URLs).
fn uri_reference(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        if c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"') {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Appends `s` as an HTTP quoted-string (RFC 9110 §5.6.4): `"` and `\`
/// backslash-escaped, control characters (which no header may carry)
/// replaced with `_`.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && c != '\t' => out.push('_'),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            stun_urls: vec!["stun:stun.example.org:3478".into()],
            turn_urls: vec![
                "turn:turn.example.org:3478?transport=udp".into(),
                "turns:turn.example.org:5349?transport=tcp".into(),
            ],
            turn_secret: Some("turn-secret".into()),
            turn_ttl_secs: 86_400,
            ..Config::default()
        }
    }

    /// Expected credential computed independently with Python:
    /// `base64.b64encode(hmac.new(b"turn-secret", b"1700086400:alice", hashlib.sha1).digest())`.
    #[test]
    fn known_answer() {
        let servers = ice_servers(&config(), "alice", 1_700_000_000);
        assert_eq!(
            servers,
            [
                IceServer {
                    urls: vec!["stun:stun.example.org:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: config().turn_urls,
                    username: Some("1700086400:alice".into()),
                    credential: Some("5iY+IeUUagohcNcZFo30lkvz3YM=".into()),
                },
            ]
        );
        let json = serde_json::to_string(&servers).unwrap();
        assert_eq!(
            json,
            r#"[{"urls":["stun:stun.example.org:3478"]},{"urls":["turn:turn.example.org:3478?transport=udp","turns:turn.example.org:5349?transport=tcp"],"username":"1700086400:alice","credential":"5iY+IeUUagohcNcZFo30lkvz3YM="}]"#
        );
    }

    #[test]
    fn stun_alone_carries_no_credentials() {
        assert_eq!(
            stun_servers(&config()),
            [IceServer {
                urls: vec!["stun:stun.example.org:3478".into()],
                username: None,
                credential: None,
            }]
        );
        assert!(stun_servers(&Config::default()).is_empty());
    }

    #[test]
    fn nothing_configured() {
        assert!(ice_servers(&Config::default(), "alice", 0).is_empty());
        let no_secret = Config {
            turn_secret: None,
            ..config()
        };
        assert_eq!(ice_servers(&no_secret, "alice", 0).len(), 1);
        assert!(link_headers(&[]).is_empty());
    }

    #[test]
    fn links() {
        let servers = ice_servers(&config(), "alice", 1_700_000_000);
        assert_eq!(
            link_headers(&servers),
            [
                r#"<stun:stun.example.org:3478>; rel="ice-server""#,
                r#"<turn:turn.example.org:3478?transport=udp>; rel="ice-server"; username="1700086400:alice"; credential="5iY+IeUUagohcNcZFo30lkvz3YM="; credential-type="password""#,
                r#"<turns:turn.example.org:5349?transport=tcp>; rel="ice-server"; username="1700086400:alice"; credential="5iY+IeUUagohcNcZFo30lkvz3YM="; credential-type="password""#,
            ]
        );
    }

    #[test]
    fn links_escape() {
        let servers = ice_servers(&config(), "a\"b\\c\r\nd", 0);
        assert_eq!(servers[1].username.as_deref(), Some("86400:a\"b\\c__d"));
        let links = link_headers(&servers[1..]);
        assert!(
            links[0].contains(r#"username="86400:a\"b\\c__d""#),
            "{}",
            links[0]
        );
        for link in &links {
            assert!(!link.chars().any(|c| c.is_control()), "{link:?}");
        }
        let odd = IceServer {
            urls: vec!["stun:x> y\"".into()],
            username: None,
            credential: None,
        };
        assert_eq!(
            link_headers(&[odd]),
            [r#"<stun:x%3E%20y%22>; rel="ice-server""#]
        );
    }

    #[test]
    fn expiry_saturates() {
        let servers = ice_servers(&config(), "z", u64::MAX - 1);
        assert_eq!(
            servers[1].username.as_deref(),
            Some(&*format!("{}:z", u64::MAX))
        );
    }
}
