//! Every resource a client can create has a limit with a clear refusal,
//! counted in `/metrics`: connections (HTTP and WebSocket), time to send a
//! request head, time to join, message size, joins per token and per
//! address, members per channel, channels per node. Each test attacks one
//! limit the way a client would and checks the refusal and the count.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use sfu_server::auth::{mint, Grants};
use sfu_server::state::unix_now;
use sfu_server::Config;
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "limits-test-secret-limits-test-secret";

/// How often a test polls for a state it waits for (bounded by [`LIMIT`]).
const POLL: Duration = Duration::from_millis(20);

fn listener_token(channel: &str) -> String {
    mint(
        SECRET.as_bytes(),
        &Grants {
            sub: "listener".into(),
            channel: channel.into(),
            can_publish: false,
            can_subscribe: true,
            can_moderate: false,
            exp: unix_now() + 600,
            jti: None,
            region: None,
            p2p: None,
        },
    )
}

/// A development-mode listener's join fields.
fn as_listener() -> serde_json::Value {
    json!({"role": "listener"})
}

/// `sfu_refusals_total{reason}` of the server at `base`.
async fn refusals(base: &str, reason: &str) -> f64 {
    value(
        &scrape(base).await,
        "sfu_refusals_total",
        Some(("reason", reason)),
    )
}

/// Reads what the server sends on `tcp` until it closes the connection
/// (or resets it); `None` if it is still open after [`LIMIT`].
async fn read_until_closed(tcp: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(LIMIT, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Slowloris: a connection that sends half a request line and then
/// nothing is closed once the header-read timeout passed; a complete
/// request on another connection meanwhile is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off() {
    let server = server(Config {
        http_header_timeout_secs: 1,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    // Before the connection exists: the server's clock for it starts later.
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(server.http_addr()).await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer = read_until_closed(&mut slow)
        .await
        .expect("the server closes a connection that never finishes its request head");
    assert!(
        started.elapsed() >= Duration::from_millis(990),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // hyper answers 408 or closes silently; it never serves the request.
    assert!(!answer.contains("200 OK"), "{answer}");
    // A connection that sends nothing at all is cut off too.
    let mut idle = TcpStream::connect(server.http_addr()).await.unwrap();
    read_until_closed(&mut idle)
        .await
        .expect("an idle connection is closed");
    assert_eq!(refusals(&base, "header_timeout").await, 2.0);
}

/// A request head past 32 KiB is refused (431) instead of being buffered
/// as far as the client likes; an ordinary one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    for (padding, status) in [(40_000, 431), (8_000, 200)] {
        let r = reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .header("x-padding", "h".repeat(padding))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{padding} bytes of header");
    }
}

/// Connections past `max_http_connections` are answered 503 with
/// `Retry-After`, and a freed slot serves again. The held connections are
/// idle TCP connections, as a flood would hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_with_retry_after() {
    let server = server(Config {
        max_http_connections: 3,
        ..config()
    })
    .await;
    let addr = server.http_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The server accepts in its own time: the fourth connection is refused
    // once it has taken the three.
    let mut answer = String::new();
    let deadline = std::time::Instant::now() + LIMIT;
    while std::time::Instant::now() < deadline {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        answer = read_until_closed(&mut extra).await.expect("answered");
        if answer.starts_with("HTTP/1.1 503") {
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 5"), "{answer}");
    // Closing the held connections frees their slots.
    drop(held);
    let base = format!("http://{addr}");
    let until_served = async {
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(LIMIT, until_served).await.unwrap();
    assert!(refusals(&base, "http_connections").await >= 1.0);
}

/// A WebSocket past `max_ws_connections` is refused before the upgrade
/// with 503 and `Retry-After`; the session in place is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_the_limit_get_503() {
    let server = server(Config {
        max_ws_connections: 1,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let mut first = Ws::connect(&server).await;
    let url = format!("ws://{}/ws", server.http_addr());
    let err = tokio_tungstenite::connect_async(url.clone())
        .await
        .expect_err("a second session is refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("not an HTTP refusal: {err}");
    };
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    first.send(json!({"type": "ping"})).await;
    assert_eq!(first.recv().await["type"], "pong");
    assert_eq!(refusals(&base, "ws_connections").await, 1.0);
    // The slot is freed when the session ends.
    drop(first);
    let reconnect = async {
        loop {
            if tokio_tungstenite::connect_async(url.clone()).await.is_ok() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(LIMIT, reconnect).await.unwrap();
}

/// A session that never joins is told and closed after
/// `ws_join_timeout_secs`; a member in a channel is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_joins_is_closed() {
    let server = server(Config {
        ws_join_timeout_secs: 1,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let (mut member, _peer, _) =
        ws_member(&server, "c", "m", ClientSpec::listener(), as_listener()).await;
    let started = std::time::Instant::now();
    let mut idle = Ws::connect(&server).await;
    let told = idle.recv().await;
    assert_eq!(told["type"], "error", "{told}");
    assert_eq!(told["code"], "join_timeout", "{told}");
    assert!(started.elapsed() >= Duration::from_millis(990));
    let close = tokio::time::timeout(LIMIT, idle.socket.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(&close, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Policy),
        "{close:?}"
    );
    // The member, connected for longer than the timeout, is still served.
    member.send(json!({"type": "ping"})).await;
    assert_eq!(member.recv_type("pong").await["type"], "pong");
    assert_eq!(refusals(&base, "ws_join_timeout").await, 1.0);
}

/// A frame over `ws_max_message_bytes` is not buffered and not answered
/// as if it were a message: the session is told `too_large` and closed
/// with 1009. One just under the limit is an ordinary (bad) message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_ends_the_session() {
    let server = server(Config {
        ws_max_message_bytes: 4096,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let mut ws = Ws::connect(&server).await;
    ws.send_raw(Message::Text("x".repeat(4000).into())).await;
    assert_eq!(ws.recv().await["code"], "bad_request");
    ws.send_raw(Message::Text("x".repeat(100_000).into())).await;
    let told = ws.recv().await;
    assert_eq!(told["code"], "too_large", "{told}");
    let close = tokio::time::timeout(LIMIT, ws.socket.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(&close, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Size),
        "{close:?}"
    );
    assert_eq!(refusals(&base, "ws_too_large").await, 1.0);
}

/// A listener token copied to many clients joins at one client's rate:
/// over WebSocket the join past `joins_per_token_per_minute` is refused
/// with `rate_limited` and a time to wait, over WHEP with 429 and
/// `Retry-After`. Nothing else was created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_listener_token_is_refused_past_its_rate() {
    let server = server(Config {
        auth_secret: Some(SECRET.into()),
        joins_per_token_per_minute: 3,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let token = listener_token("hall");
    let mut members = Vec::new();
    for i in 0..3 {
        let extra = json!({"token": token, "role": "listener"});
        let name = format!("l{i}");
        members.push(ws_member(&server, "hall", &name, ClientSpec::listener(), extra).await);
    }
    let mut ws = Ws::connect(&server).await;
    let (_p, offer) = UdpPeer::new("l3", &ClientSpec::listener()).unwrap();
    ws.send(json!({"type": "join", "channel": "hall", "offer": offer, "token": token, "role": "listener"}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["retry_after_secs"].as_u64().unwrap() >= 1,
        "{refused}"
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/whep/hall"))
        .header("content-type", "application/sdp")
        .header("authorization", format!("Bearer {token}"))
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let m = scrape(&base).await;
    assert_eq!(value(&m, "sfu_members", Some(("role", "listener"))), 3.0);
    assert_eq!(
        value(&m, "sfu_refusals_total", Some(("reason", "rate_token"))),
        2.0
    );
}

/// Join attempts from one address past `joins_per_ip_per_minute` are
/// refused, refused attempts (a bad token) included: guessing costs
/// allowance too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_attempts_per_address_are_limited() {
    let server = server(Config {
        auth_secret: Some(SECRET.into()),
        joins_per_ip_per_minute: 2,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let mut ws = Ws::connect(&server).await;
    for _ in 0..2 {
        ws.send(json!({"type": "authorize", "channel": "c", "token": "not.a.token"}))
            .await;
        assert_eq!(ws.recv().await["code"], "unauthorized");
    }
    ws.send(json!({"type": "authorize", "channel": "c", "token": listener_token("c")}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refusals(&base, "rate_address").await, 1.0);
}

/// A channel at `max_members_per_channel` refuses the next member
/// (`channel_full`; WHIP: 503 with `Retry-After`); a node at
/// `max_channels` refuses a new channel (`too_many_channels`) while its
/// channels still take members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_per_channel_and_channels_per_node_are_limited() {
    let server = server(Config {
        max_members_per_channel: 2,
        max_channels: 2,
        ..config()
    })
    .await;
    let base = format!("http://{}", server.http_addr());
    let _a1 = ws_member(&server, "a", "a1", ClientSpec::listener(), as_listener()).await;
    let _a2 = ws_member(&server, "a", "a2", ClientSpec::listener(), as_listener()).await;
    let join = |channel: &str, offer: &str| json!({"type": "join", "channel": channel, "offer": offer, "role": "listener"});
    let mut ws = Ws::connect(&server).await;
    let (_p, offer) = UdpPeer::new("x", &ClientSpec::listener()).unwrap();
    ws.send(join("a", &offer)).await;
    let full = ws.recv().await;
    assert_eq!(full["code"], "channel_full", "{full}");
    assert_eq!(full["retry_after_secs"], 5, "{full}");
    let r = reqwest::Client::new()
        .post(format!("{base}/whep/a"))
        .header("content-type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");

    let _b = ws_member(&server, "b", "b1", ClientSpec::listener(), as_listener()).await;
    ws.send(join("c", &offer)).await;
    assert_eq!(ws.recv().await["code"], "too_many_channels");
    let _b2 = ws_member(&server, "b", "b2", ClientSpec::listener(), as_listener()).await;
    let m = scrape(&base).await;
    assert_eq!(value(&m, "sfu_channels", None), 2.0);
    assert_eq!(value(&m, "sfu_members", Some(("role", "listener"))), 4.0);
    assert_eq!(
        value(&m, "sfu_refusals_total", Some(("reason", "channel_full"))),
        2.0
    );
    assert_eq!(
        value(&m, "sfu_refusals_total", Some(("reason", "max_channels"))),
        1.0
    );
}

/// The server's frames are at most `FRAGMENT_BYTES` (its write buffer
/// stays that small): a client that refuses any larger frame still gets a
/// `joined` several times that size, whole. Requests that are not a
/// WebSocket handshake get the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_come_in_small_frames_and_a_bad_handshake_is_refused() {
    use sfu_server::ws::FRAGMENT_BYTES;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let server = server(config()).await;
    let url = format!("ws://{}/ws", server.http_addr());
    let strict = WebSocketConfig::default().max_frame_size(Some(FRAGMENT_BYTES));
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(strict), false)
        .await
        .expect("ws");
    let mut ws = Ws {
        socket,
        seen: Vec::new(),
    };
    assert_eq!(ws.recv().await["type"], "hello");
    let (_peer, offer) = UdpPeer::new("a", &ClientSpec::speaker(0)).unwrap();
    ws.send(json!({"type": "join", "channel": "frames", "offer": offer}))
        .await;
    let joined = ws.recv_type("joined").await;
    let size = joined.to_string().len();
    assert!(size > 2 * FRAGMENT_BYTES, "joined is {size} bytes");
    assert!(joined["answer"].as_str().unwrap().contains("a=fingerprint"));

    // Not handshakes: a plain GET, a POST, an old version.
    let http = format!("http://{}/ws", server.http_addr());
    let client = reqwest::Client::new();
    let plain = client.get(&http).send().await.unwrap();
    assert_eq!(plain.status(), 426);
    assert_eq!(plain.headers()["upgrade"], "websocket");
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut post = client.post(&http);
    let mut old = client.get(&http).header("sec-websocket-version", "8");
    for (k, v) in upgrade {
        post = post.header(k, v);
        old = old.header(k, v);
    }
    let post = post
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let old = old.send().await.unwrap();
    assert_eq!(old.status(), 400);
    assert!(old.text().await.unwrap().contains("Version must be 13"));
}
