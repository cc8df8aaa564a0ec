//! Who gets what: TURN credentials only to token holders, development mode
//! only to loopback pages and never through a proxy, moderation without
//! reach beyond the moderator's own grants, names checked before they are
//! logged, weak secrets refused, a session no longer than its token.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sfu_server::auth::{mint, Grants};
use sfu_server::state::unix_now;
use sfu_server::{Config, Server};
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "access-test-secret-access-test-secret";
const TURN_SECRET: &str = "turn-test-secret-turn-test-secret";

/// What the tests' servers log, for the checks that a refused name never
/// reaches the log. Installed before any server starts (the common
/// helper's own subscriber then stays out).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn start(config: Config) -> Server {
    captured_logs();
    server(config).await
}

fn token(sub: &str, channel: &str, publish: bool, moderate: bool, exp: u64) -> String {
    mint(
        SECRET.as_bytes(),
        &Grants {
            sub: sub.into(),
            channel: channel.into(),
            can_publish: publish,
            can_subscribe: true,
            can_moderate: moderate,
            exp,
            jti: None,
            region: None,
            p2p: None,
        },
    )
}

fn with_secret() -> Config {
    Config {
        auth_secret: Some(SECRET.into()),
        ..config()
    }
}

fn with_turn() -> Config {
    Config {
        stun_urls: vec!["stun:127.0.0.1:3478".into()],
        turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        turn_secret: Some(TURN_SECRET.into()),
        ..with_secret()
    }
}

/// Whether any ICE server in `v` (a list) carries a credential.
fn has_credentials(v: &Value) -> bool {
    v.as_array().unwrap().iter().any(|s| {
        s.get("credential").is_some()
            || s["urls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u.as_str().unwrap().starts_with("turn"))
    })
}

/// A loop of connections gets no TURN credentials: `hello` carries STUN
/// only, and `authorize` without a valid token is refused. With one, the
/// credentials name the token's identity and live `turn_ttl_secs`; the
/// join that follows needs no token again. WHIP/WHEP hand out `Link`
/// headers only with a 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_go_to_token_holders_only() {
    let server = start(with_turn()).await;
    let base = format!("http://{}", server.http_addr());
    for _ in 0..10 {
        let ws = Ws::connect(&server).await;
        let hello = &ws.seen[0]["ice_servers"];
        assert!(!has_credentials(hello), "{hello}");
        assert_eq!(hello[0]["urls"][0], "stun:127.0.0.1:3478");
    }
    let mut ws = Ws::connect(&server).await;
    ws.send(json!({"type": "authorize", "channel": "c"})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(!refused.to_string().contains("credential"));

    let before = unix_now();
    let t = token("alice", "c", true, false, before + 3600);
    ws.send(json!({"type": "authorize", "channel": "c", "token": t, "role": "speaker"}))
        .await;
    let ok = ws.recv().await;
    assert_eq!(ok["type"], "authorized", "{ok}");
    assert_eq!(ok["identity"], "alice");
    assert_eq!(ok["expires"], before + 3600);
    let turn = &ok["ice_servers"][1];
    let username = turn["username"].as_str().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    let ttl = Config::default().turn_ttl_secs;
    assert_eq!(ttl, 600);
    assert!(
        (before + ttl..=unix_now() + ttl).contains(&expiry),
        "{username}"
    );
    assert!(turn["credential"].as_str().is_some_and(|c| !c.is_empty()));
    // The join refers to the authorization: no token needed again.
    let (mut peer, offer) = UdpPeer::new("alice", &ClientSpec::speaker(0)).unwrap();
    ws.send(json!({"type": "join", "channel": "c", "offer": offer, "role": "speaker"}))
        .await;
    let joined = ws.recv_type("joined").await;
    peer.start(joined["answer"].as_str().unwrap());

    let (_p, offer) = UdpPeer::new("w", &ClientSpec::speaker(1)).unwrap();
    let post = |auth: Option<String>| {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/whip/c"))
            .header("content-type", "application/sdp")
            .body(offer.clone());
        if let Some(t) = auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    let refused = post(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get_all("link").iter().next().is_none());
    let ok = post(Some(token("bob", "c", true, false, before + 60)))
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let links: Vec<&str> = ok
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        links
            .iter()
            .any(|l| l.contains("turn:") && l.contains(":bob\"") && l.contains("credential=")),
        "{links:?}"
    );
}

/// A WebSocket handshake to `server` with extra headers.
async fn ws_with(
    server: &Server,
    headers: &[(&str, &str)],
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}/ws", server.http_addr())
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes());
        req.headers_mut()
            .insert(name.unwrap(), v.parse().expect("header value"));
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await?;
    let hello = tokio::time::timeout(LIMIT, socket.next())
        .await
        .unwrap()
        .unwrap()?;
    assert!(hello.to_text().unwrap().contains("hello"));
    Ok(())
}

fn status(r: Result<(), tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Ok(()) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// Development mode admits no token, so the page a request comes from
/// matters: a foreign page (or a rebinding name for 127.0.0.1) may not use
/// it, loopback pages and programs may; a request through a proxy is
/// refused whatever it claims. `allowed_origins` adds named pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_admits_loopback_pages_only() {
    let server = start(Config {
        allowed_origins: vec!["https://sfu.test:8443".into()],
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let own = format!("http://{}", server.http_addr());
    assert_eq!(status(ws_with(&server, &[]).await), 101);
    assert_eq!(status(ws_with(&server, &[("origin", &own)]).await), 101);
    assert_eq!(
        status(ws_with(&server, &[("origin", "http://localhost:3000")]).await),
        101
    );
    assert_eq!(
        status(ws_with(&server, &[("origin", "https://sfu.test:8443")]).await),
        101
    );
    for evil in [
        "https://evil.example",
        "http://rebind.evil.example:8080",
        "null",
    ] {
        assert_eq!(
            status(ws_with(&server, &[("origin", evil)]).await),
            403,
            "{evil}"
        );
    }
    assert_eq!(
        status(ws_with(&server, &[("x-forwarded-for", "203.0.113.7")]).await),
        401
    );
    assert_eq!(
        status(ws_with(&server, &[("forwarded", "for=203.0.113.7")]).await),
        401
    );
    // WHIP/WHEP too: a foreign page's fetch() is refused before the offer.
    let (_p, offer) = UdpPeer::new("w", &ClientSpec::speaker(0)).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/whip/c"))
        .header("content-type", "application/sdp")
        .header("origin", "https://evil.example")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let m = scrape(&base).await;
    assert_eq!(
        value(&m, "sfu_refusals_total", Some(("reason", "origin"))),
        4.0
    );
    assert_eq!(
        value(&m, "sfu_refusals_total", Some(("reason", "proxied"))),
        2.0
    );
    assert_eq!(value(&m, "sfu_members", Some(("role", "speaker"))), 0.0);
}

/// With a secret set, any page may use the server (tokens admit, not
/// cookies) unless `allowed_origins` says otherwise; proxies are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_checks_origins_only_when_listed() {
    let open = start(with_secret()).await;
    assert_eq!(
        status(
            ws_with(
                &open,
                &[
                    ("origin", "https://any.example"),
                    ("x-forwarded-for", "203.0.113.7")
                ]
            )
            .await
        ),
        101
    );
    let listed = start(Config {
        allowed_origins: vec!["https://app.example.org".into()],
        ..with_secret()
    })
    .await;
    assert_eq!(
        status(ws_with(&listed, &[("origin", "https://app.example.org")]).await),
        101
    );
    assert_eq!(
        status(ws_with(&listed, &[("origin", "https://any.example")]).await),
        403
    );
}

/// `member`'s moderation of `target`: the error code, or `None` when the
/// change was announced.
async fn moderate(member: &mut Ws, target: &Value, action: Value) -> Option<String> {
    let mut msg = json!({"type": "moderate", "peer": target});
    for (k, v) in action.as_object().unwrap() {
        msg[k] = v.clone();
    }
    member.send(msg).await;
    loop {
        let v = member.recv().await;
        match v["type"].as_str() {
            Some("error") => return Some(v["code"].as_str().unwrap().to_owned()),
            Some("member_updated") if v["member"]["peer"] == *target => return None,
            _ => {}
        }
    }
}

/// Development mode gives every loopback client the microphone, not the
/// power to mute everyone: moderation needs `dev_moderation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_grants_do_not_moderate_by_default() {
    for (dev_moderation, expected) in [(false, Some("forbidden".to_owned())), (true, None)] {
        let server = start(Config {
            dev_moderation,
            ..config()
        })
        .await;
        let (_wa, _a, joined_a) =
            ws_member(&server, "d", "a", ClientSpec::speaker(0), json!({})).await;
        let (mut wb, _b, _) = ws_member(&server, "d", "b", ClientSpec::speaker(1), json!({})).await;
        let mute = json!({"action": "mute"});
        assert_eq!(moderate(&mut wb, &joined_a["peer"], mute).await, expected);
    }
}

/// A moderator hands on only what its own token grants: one that may not
/// publish cannot make a listener a speaker (and so cannot open the stage
/// to a listener-only token); one that may publish can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_cannot_grant_publishing_they_lack() {
    let server = start(with_secret()).await;
    let exp = unix_now() + 600;
    let listener = json!({"token": token("l", "s", false, false, exp), "role": "listener"});
    let (_wl, _l, joined_l) = ws_member(&server, "s", "l", ClientSpec::listener(), listener).await;
    let listening_mod = json!({"token": token("lm", "s", false, true, exp), "role": "listener"});
    let (mut wm, _m, _) =
        ws_member(&server, "s", "lm", ClientSpec::listener(), listening_mod).await;
    let host = json!({"token": token("host", "s", true, true, exp)});
    let (mut wh, _h, _) = ws_member(&server, "s", "host", ClientSpec::speaker(0), host).await;
    let promote = json!({"action": "set_role", "role": "speaker"});
    let target = &joined_l["peer"];
    assert_eq!(
        moderate(&mut wm, target, promote.clone()).await.as_deref(),
        Some("forbidden")
    );
    // Muting stays open to it.
    assert_eq!(
        moderate(&mut wm, target, json!({"action": "mute"})).await,
        None
    );
    assert_eq!(moderate(&mut wh, target, promote).await, None);
}

/// Channel names and identities with control characters (a forged log
/// line, a terminal escape, a bidirectional override) or beyond 128 bytes
/// are refused with `invalid_name` / 400 before anything logs them; a
/// token whose `sub` is such a name is malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_before_they_are_logged() {
    let logs = captured_logs();
    let server = start(config()).await;
    let base = format!("http://{}", server.http_addr());
    let mut ws = Ws::connect(&server).await;
    let (_p, offer) = UdpPeer::new("x", &ClientSpec::speaker(0)).unwrap();
    let long = "L".repeat(129);
    for (channel, identity) in [
        ("lobby\nFORGED-LINE-1 member joined", "x"),
        ("lobby", "FORGED-NAME-2\u{1b}[2J"),
        ("lobby", "FORGED\u{202e}3"),
        (long.as_str(), "x"),
    ] {
        ws.send(json!({"type": "join", "channel": channel, "offer": offer, "identity": identity}))
            .await;
        let v = ws.recv().await;
        assert_eq!(v["code"], "invalid_name", "{v}");
        assert!(!v["message"].as_str().unwrap().contains("FORGED"));
    }
    let r = reqwest::Client::new()
        .post(format!("{base}/whip/lobby%0AFORGED-LINE-4"))
        .header("content-type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A good join is logged, with its names: the log is being captured.
    ws.send(json!({"type": "join", "channel": "lobby", "offer": offer, "identity": "GOOD-NAME-5"}))
        .await;
    assert_eq!(ws.recv().await["type"], "joined");
    let m = scrape(&base).await;
    assert_eq!(
        value(&m, "sfu_refusals_total", Some(("reason", "bad_name"))),
        5.0
    );
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("GOOD-NAME-5"),
        "the log is not captured: {text}"
    );
    assert!(!text.contains("FORGED"), "{text}");
    assert!(!text.contains(&long));

    let signed = start(with_secret()).await;
    let t = token("bad\nsub", "c", true, false, unix_now() + 60);
    let mut ws = Ws::connect(&signed).await;
    ws.send(json!({"type": "authorize", "channel": "c", "token": t}))
        .await;
    let v = ws.recv().await;
    assert_eq!(v["code"], "unauthorized", "{v}");
}

/// A member whose token expires is told (`session_expired`) and removed:
/// the others see it leave and its socket closes. A WHEP session of an
/// expiring token ends too (its resource is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_removed_when_its_token_expires() {
    let server = start(with_secret()).await;
    let base = format!("http://{}", server.http_addr());
    let lasting = json!({"token": token("w", "e", true, false, unix_now() + 600)});
    let (mut watcher, _w, _) = ws_member(&server, "e", "w", ClientSpec::speaker(0), lasting).await;
    let short = token("s", "e", true, false, unix_now() + 2);
    let (mut ws, _peer, joined) = ws_member(
        &server,
        "e",
        "s",
        ClientSpec::speaker(1),
        json!({"token": short}),
    )
    .await;
    let (_wp, offer) = UdpPeer::new("whep", &ClientSpec::listener()).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/whep/e"))
        .header("content-type", "application/sdp")
        .header("authorization", format!("Bearer {short}"))
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let resource = format!("{base}{}", r.headers()["location"].to_str().unwrap());

    let told = ws.recv_type("error").await;
    assert_eq!(told["code"], "session_expired", "{told}");
    let closed = async {
        loop {
            match ws.socket.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(LIMIT, closed).await.expect("closed");
    let left = watcher.recv_type("member_left").await;
    assert_eq!(left["peer"], joined["peer"]);
    // The WHEP session's resource is forgotten once its token expired.
    let gone = async {
        loop {
            let r = reqwest::Client::new()
                .patch(&resource)
                .send()
                .await
                .unwrap();
            if r.status() == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(LIMIT, gone)
        .await
        .expect("the WHEP session ended");
    let m = scrape(&base).await;
    assert_eq!(
        value(
            &m,
            "sfu_refusals_total",
            Some(("reason", "session_expired"))
        ),
        2.0
    );
    assert_eq!(value(&m, "sfu_members", Some(("role", "speaker"))), 1.0);
}

/// Secrets an offline guess could find stop the server at start-up, with
/// how to make a good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_secrets_are_refused_at_start() {
    for config in [
        Config {
            auth_secret: Some("short-secret".into()),
            ..config()
        },
        Config {
            turn_secret: Some("short-secret".into()),
            turn_urls: vec!["turn:127.0.0.1:3478".into()],
            ..config()
        },
    ] {
        let err = Server::start(config).await.expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("head -c 32 /dev/urandom | base64"),
            "{err}"
        );
    }
}
