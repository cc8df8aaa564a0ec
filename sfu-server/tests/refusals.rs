//! Bad input gets a clear refusal and touches nobody else: malformed SDP,
//! missing/expired/wrong-channel tokens, oversized bodies, unknown
//! resources, garbage WebSocket frames.

mod common;

use common::*;
use serde_json::json;
use sfu_server::auth::{mint, Grants};
use sfu_server::state::unix_now;
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-of-some-length-test-secret";

fn token(channel: &str, publish: bool, subscribe: bool, exp_in: i64) -> String {
    let grants = Grants {
        sub: "tester".into(),
        channel: channel.into(),
        can_publish: publish,
        can_subscribe: subscribe,
        can_moderate: false,
        exp: (unix_now() as i64 + exp_in) as u64,
        jti: None,
        region: None,
        p2p: None,
    };
    mint(SECRET.as_bytes(), &grants)
}

async fn post(url: String, headers: &[(&str, String)], body: String) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = tokio::time::timeout(LIMIT, req.send())
        .await
        .unwrap()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_are_clear() {
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.into());
    let server = server(cfg).await;
    let base = format!("http://{}", server.http_addr());
    let (_peer, offer) = UdpPeer::new("x", &ClientSpec::speaker(0)).unwrap();
    let sdp = ("content-type", "application/sdp".to_string());
    let bearer = |t: String| ("authorization", format!("Bearer {t}"));

    // No token, garbage token, expired token: 401.
    let (s, m) = post(
        format!("{base}/whip/room"),
        std::slice::from_ref(&sdp),
        offer.clone(),
    )
    .await;
    assert_eq!(s, 401, "{m}");
    let (s, _) = post(
        format!("{base}/whip/room"),
        &[sdp.clone(), bearer("a.b.c".into())],
        offer.clone(),
    )
    .await;
    assert_eq!(s, 401);
    let expired = token("room", true, true, -10);
    let (s, m) = post(
        format!("{base}/whip/room"),
        &[sdp.clone(), bearer(expired)],
        offer.clone(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(m.to_lowercase().contains("expired"), "{m}");
    // Valid token for another channel, or without the grant: 403.
    let other = token("other", true, true, 600);
    let (s, _) = post(
        format!("{base}/whip/room"),
        &[sdp.clone(), bearer(other)],
        offer.clone(),
    )
    .await;
    assert_eq!(s, 403);
    let listen_only = token("room", false, true, 600);
    let (s, m) = post(
        format!("{base}/whip/room"),
        &[sdp.clone(), bearer(listen_only)],
        offer.clone(),
    )
    .await;
    assert_eq!(s, 403, "{m}");

    let good = token("room", true, true, 600);
    // Malformed SDP: 400 with a message.
    let (s, m) = post(
        format!("{base}/whip/room"),
        &[sdp.clone(), bearer(good.clone())],
        "v=0\r\ngarbage".into(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(m.contains("SDP"), "{m}");
    // Not SDP: 415.
    let (s, _) = post(
        format!("{base}/whip/room"),
        &[("content-type", "text/plain".into()), bearer(good.clone())],
        offer.clone(),
    )
    .await;
    assert_eq!(s, 415);
    // Too large: 413.
    let (s, _) = post(
        format!("{base}/whip/room"),
        &[sdp.clone(), bearer(good.clone())],
        "x".repeat(70_000),
    )
    .await;
    assert_eq!(s, 413);
    // Unknown resource: 404.
    let r = reqwest::Client::new()
        .delete(format!("{base}/resources/0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // And a good one still works after all that.
    let (s, answer) = post(format!("{base}/whip/room"), &[sdp, bearer(good)], offer).await;
    assert_eq!(s, 201, "{answer}");
    assert!(answer.starts_with("v=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_garbage_gets_errors_and_the_socket_stays_usable() {
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.into());
    let server = server(cfg).await;
    // Members that must not be disturbed: a speaker and a listener talking.
    let tk = token("room", true, true, 600);
    let (_ws_s, speaker, _) = ws_member(
        &server,
        "room",
        "s",
        ClientSpec::speaker(4),
        json!({"token": tk}),
    )
    .await;
    let (_ws_l, listener, _) = ws_member(
        &server,
        "room",
        "l",
        ClientSpec::listener(),
        json!({"token": tk, "role": "listener"}),
    )
    .await;
    speaker.set_talking(true);
    assert!(hears(&listener, &[4], 10));
    let mut ws = Ws::connect(&server).await;

    for (frame, code) in [
        ("not json", "bad_request"),
        ("{\"type\":\"dance\"}", "bad_request"),
        ("{\"type\":\"join\"}", "bad_request"),
        ("{\"type\":\"leave\"}", "not_joined"),
        (
            "{\"type\":\"moderate\",\"action\":\"mute\",\"peer\":1}",
            "not_joined",
        ),
    ] {
        ws.send_raw(Message::Text(frame.into())).await;
        let v = ws.recv().await;
        assert_eq!(v["type"], "error", "{frame}: {v}");
        assert_eq!(v["code"], code, "{frame}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    ws.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(ws.recv().await["code"], "bad_request");
    // (A message over the size limit ends the session: tests/limits.rs.)

    // Joins: no token, wrong channel, bad offer.
    let (_p, offer) = UdpPeer::new("x", &ClientSpec::speaker(0)).unwrap();
    ws.send(json!({"type": "join", "channel": "room", "offer": offer}))
        .await;
    assert_eq!(ws.recv().await["code"], "unauthorized");
    let t = token("other", true, true, 600);
    ws.send(json!({"type": "join", "channel": "room", "offer": offer, "token": t}))
        .await;
    assert_eq!(ws.recv().await["code"], "forbidden");
    let t = token("room", true, true, 600);
    ws.send(json!({"type": "join", "channel": "room", "offer": "v=0", "token": t}))
        .await;
    let v = ws.recv().await;
    assert_eq!(v["code"], "invalid_offer", "{v}");

    // Still usable: ping, and a proper join.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    ws.send(json!({"type": "join", "channel": "room", "offer": offer, "token": t}))
        .await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "joined", "{v}");
    ws.send(json!({"type": "join", "channel": "room", "offer": offer, "token": t}))
        .await;
    // Room events now arrive too; pick the error out of them.
    assert_eq!(ws.recv_type("error").await["code"], "already_joined");
    // Moderation without the grant.
    ws.send(json!({"type": "moderate", "action": "mute", "peer": v["peer"]}))
        .await;
    assert_eq!(ws.recv_type("error").await["code"], "forbidden");

    // The bystanders never noticed: the listener still hears the speaker,
    // every packet decodes, nothing was lost.
    let n = listener.lock().packets_received();
    assert!(
        listener.wait_until(std::time::Instant::now() + LIMIT, |c| c.packets_received()
            > n + 25)
    );
    let c = listener.lock();
    assert_eq!(c.decode_errors(), 0);
    assert!(c.streams.values().all(|s| s.lost() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_clients_are_refused_in_dev_mode() {
    let server = server(config()).await;
    let state = server.state();
    let remote: std::net::SocketAddr = "192.0.2.10:5000".parse().unwrap();
    let ask = |remote| sfu_server::state::JoinAsk {
        remote,
        token: None,
        channel: "room",
        need: sfu_server::state::Need::Publish,
        dev_identity: None,
    };
    let denied = state.authorize(&ask(remote)).unwrap_err();
    assert_eq!(denied.status, 401);
    assert!(denied.message.contains("loopback"));
    let local: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
    assert!(state.authorize(&ask(local)).is_ok());
}
