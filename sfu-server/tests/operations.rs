//! What an operator sees: metrics that parse and move with traffic, health,
//! moderation, and the drain on shutdown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sfu_server::auth::{mint, Grants};
use sfu_server::state::unix_now;
use testkit::client::ClientSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    let before = scrape(&base).await;
    assert_eq!(value(&before, "sfu_channels", None), 0.0);
    assert_eq!(value(&before, "sfu_rtp_forwarded_total", None), 0.0);

    let (_ws_a, a, _) = ws_member(&server, "m", "a", ClientSpec::speaker(0), json!({})).await;
    let (_ws_l, l, _) = ws_member(
        &server,
        "m",
        "l",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    a.set_talking(true);
    assert!(hears(&l, &[0], 20));

    let after = scrape(&base).await;
    assert_eq!(value(&after, "sfu_channels", None), 1.0);
    assert_eq!(value(&after, "sfu_members", Some(("role", "speaker"))), 1.0);
    assert_eq!(
        value(&after, "sfu_members", Some(("role", "listener"))),
        1.0
    );
    assert_eq!(
        value(&after, "sfu_joins_total", Some(("outcome", "ok"))),
        2.0
    );
    assert!(value(&after, "sfu_rtp_forwarded_total", None) >= 20.0);
    assert!(value(&after, "sfu_datagrams_total", Some(("direction", "in"))) > 20.0);
    assert!(value(&after, "sfu_bytes_total", Some(("direction", "out"))) > 1000.0);
    // The latency histograms counted the forwarded datagrams (to their
    // last copy) and their copies (one listener: one copy each).
    let count = |name: &str| {
        let hist = after
            .samples
            .iter()
            .find(|x| x.metric == name)
            .expect("histogram");
        match &hist.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().unwrap().count,
            other => panic!("{name}: not a histogram: {other:?}"),
        }
    };
    let (packets, copies) = (
        count("sfu_forward_latency_seconds"),
        count("sfu_forward_copy_latency_seconds"),
    );
    assert!(packets >= 20.0, "{packets}");
    assert_eq!(copies, packets);
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderator_mutes_a_speaker() {
    let secret = "moderation-secret-moderation-secret";
    let mut cfg = config();
    cfg.auth_secret = Some(secret.into());
    let server = server(cfg).await;
    let t = |who: &str, moderate: bool| {
        mint(
            secret.as_bytes(),
            &Grants {
                sub: who.into(),
                channel: "town".into(),
                can_publish: true,
                can_subscribe: true,
                can_moderate: moderate,
                exp: unix_now() + 600,
                jti: None,
                region: None,
                p2p: None,
            },
        )
    };
    let (_ws_s, s, joined_s) = ws_member(
        &server,
        "town",
        "s",
        ClientSpec::speaker(0),
        json!({"token": t("s", false)}),
    )
    .await;
    let (mut ws_m, m, _) = ws_member(
        &server,
        "town",
        "mod",
        ClientSpec::speaker(1),
        json!({"token": t("mod", true)}),
    )
    .await;
    s.set_talking(true);
    assert!(hears(&m, &[0], 10));
    let target = joined_s["peer"].clone();
    ws_m.send(json!({"type": "moderate", "action": "mute", "peer": target}))
        .await;
    let u = ws_m.recv_type("member_updated").await;
    assert_eq!(u["member"]["muted"], true);
    assert_eq!(u["member"]["peer"], target);
    // The moderator no longer hears the muted speaker.
    let t0 = std::time::Instant::now() + Duration::from_millis(200);
    assert!(m.wait_until(t0 + LIMIT, |c| {
        std::time::Instant::now() > t0 + Duration::from_millis(500)
            && c.tones_heard(t0, t0 + LIMIT, 1).is_empty()
    }));
    ws_m.send(json!({"type": "moderate", "action": "mute", "peer": 999_999}))
        .await;
    assert_eq!(ws_m.recv_type("error").await["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_members_and_refuses_joins() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    let (mut ws, _peer, _) = ws_member(&server, "d", "a", ClientSpec::speaker(0), json!({})).await;
    let state = server.state().clone();
    let drain = tokio::spawn(server.drain(Duration::from_secs(5)));
    let msg = ws.recv_type("shutdown").await;
    assert_eq!(msg["deadline_ms"], 5000);
    assert!(state.is_draining());
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    // A new join is refused.
    let mut ws2 = Ws::connect_addr(&base).await;
    ws2.send(json!({"type": "join", "channel": "d", "offer": "v=0"}))
        .await;
    assert_eq!(ws2.recv().await["code"], "shutting_down");
    // The member leaves as told; the drain completes before its deadline.
    ws.send(json!({"type": "leave"})).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(LIMIT, drain).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// WHIP and WHEP members cannot be told to move: the drain does not wait
/// for them, and ends their sessions when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_does_not_wait_for_whip_members_and_ends_their_sessions() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    let (mut ws, _peer, _) = ws_member(&server, "d", "a", ClientSpec::speaker(0), json!({})).await;
    let (mut publisher, offer) =
        testkit::udp::UdpPeer::new("obs", &ClientSpec::speaker(1)).unwrap();
    let r = post_sdp(&base, "/whip/d", offer).await;
    assert_eq!(r.status(), 201);
    publisher.start(&r.text().await.unwrap());
    let state = server.state().clone();
    assert_eq!(state.snapshot().await.members, 2);

    let deadline = Duration::from_secs(10);
    let drain = tokio::spawn(server.drain(deadline));
    ws.recv_type("shutdown").await;
    ws.send(json!({"type": "leave"})).await;
    // Done once the WebSocket member left, the WHIP member still there.
    let started = std::time::Instant::now();
    tokio::time::timeout(LIMIT, drain).await.unwrap().unwrap();
    assert!(started.elapsed() < deadline / 2, "{:?}", started.elapsed());
    // And its session was ended: no member left, its resource forgotten.
    assert_eq!(state.snapshot().await.members, 0);
    let forgotten = until(|| async { state.resources.lock().await.is_empty() });
    assert!(forgotten.await, "the WHIP resource is forgotten");
    publisher.stop();
}
