//! Every queue fed by what clients and other nodes send is bounded, and
//! overflowing it has a counted consequence for whoever overflowed it, not
//! for the others: a member that never reads its WebSocket is dropped; a
//! link that never reads is closed while the other edges keep hearing.

mod common;

use std::time::{Duration, Instant};

use cascade::link::{Link, LinkConfig};
use common::*;
use futures_util::StreamExt;
use media_core::RelayMsg;
use serde_json::{json, Value};
use sfu_server::auth::{mint, Grants};
use sfu_server::state::unix_now;
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// An identity near the longest allowed (128 bytes), so that each
/// `member_updated` about it is a few hundred bytes: the socket buffers fill
/// with fewer messages.
fn long_name(who: &str) -> String {
    format!("{who}-{}", "x".repeat(120))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_dropped_and_counted() {
    let secret = "queues-secret-queues-secret-queues";
    let mut cfg = config();
    cfg.auth_secret = Some(secret.into());
    let server = server(cfg).await;
    let base = format!("http://{}", server.http_addr());
    let token = |who: &str, moderate: bool| {
        mint(
            secret.as_bytes(),
            &Grants {
                sub: who.into(),
                channel: "q".into(),
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
    let (mut moderator, _m, _) = ws_member(
        &server,
        "q",
        "mod",
        ClientSpec::speaker(0),
        json!({"token": token("mod", true)}),
    )
    .await;

    // The slow member: a small receive buffer, so that the server's writes
    // block soon once it stops reading.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(server.http_addr()).await.unwrap();
    let url = format!("ws://{}/ws", server.http_addr());
    let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut slow = Ws {
        socket,
        seen: Vec::new(),
    };
    assert_eq!(slow.recv().await["type"], "hello");
    let name = long_name("slow");
    let (mut slow_peer, offer) = UdpPeer::new(&name, &ClientSpec::listener()).unwrap();
    slow.send(
        json!({"type": "join", "channel": "q", "offer": offer, "role": "listener",
                     "token": token(&name, false)}),
    )
    .await;
    let joined = slow.recv_type("joined").await;
    slow_peer.start(joined["answer"].as_str().unwrap());
    let target = joined["peer"].clone();

    // From now on the slow member reads nothing. Each moderation of it is
    // news for both members; the moderator reads its copies.
    let mut sent = 0usize;
    let mut dropped = false;
    while !dropped {
        assert!(sent < 200_000, "the slow member was never dropped");
        let batch = 100;
        for i in 0..batch {
            let action = if (sent + i).is_multiple_of(2) {
                "mute"
            } else {
                "unmute"
            };
            moderator
                .send(json!({"type": "moderate", "action": action, "peer": target}))
                .await;
        }
        sent += batch;
        // Each moderation is answered by a `member_updated`, or once the
        // member is gone by a `not_found`.
        let mut answers = 0;
        while answers < batch {
            let v: Value = moderator.recv().await;
            match v["type"].as_str() {
                Some("member_updated") | Some("error") => answers += 1,
                Some("member_left") if v["peer"] == target => dropped = true,
                _ => {}
            }
        }
    }
    let m = scrape(&base).await;
    assert_eq!(
        value(
            &m,
            "sfu_members_dropped_total",
            Some(("reason", "too_slow"))
        ),
        1.0
    );
    assert_eq!(value(&m, "sfu_members", Some(("role", "listener"))), 0.0);
    // The moderator, who read, is still there.
    moderator.send(json!({"type": "ping"})).await;
    moderator.recv_type("pong").await;

    // Reading now: what the socket buffers held, then why, then the end.
    // Far fewer than the updates made: the server did not keep them.
    let mut received = 0usize;
    let mut last = Value::Null;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(LIMIT, slow.socket.next()).await {
        if let Message::Text(t) = msg {
            received += 1;
            last = serde_json::from_str(t.as_str()).unwrap();
        }
    }
    eprintln!("slow member: {sent} updates made, {received} messages received before the end");
    assert_eq!(last["code"], "too_slow", "{last}");
    assert!(received < sent, "{received} of {sent}");
    slow_peer.stop();
}

/// A link that stops reading while the core has things to tell it: its
/// queue fills and it is closed, and the edge that does read keeps hearing
/// the core's speaker throughout. The attacker paces what it sends by what
/// the core has handled, so that only its reading (not the core's input
/// queue) is at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_closed_and_other_edges_keep_hearing() {
    let (core, edge) = core_and_edge().await;
    let core_base = format!("http://{}", core.http_addr());
    // Three speakers with long names on the core: every `Subscribe` is
    // answered with their names and the selection.
    let (_w0, alice, _) = ws_member(
        &core,
        "town",
        &long_name("alice"),
        ClientSpec::speaker(0),
        json!({}),
    )
    .await;
    let mut others = Vec::new();
    for (i, who) in ["bob", "carol"].iter().enumerate() {
        let name = long_name(who);
        others.push(ws_member(&core, "town", &name, ClientSpec::speaker(i + 1), json!({})).await);
    }
    let (_wl, listener, _) = ws_member(
        &edge,
        "town",
        "lena",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    alice.set_talking(true);
    assert!(
        hears(&listener, &[0], 25),
        "the edge hears the core's speaker"
    );

    let config = LinkConfig::new(CLUSTER_SECRET.as_bytes().to_vec()).unwrap();
    let stalled = Link::dial(core.cluster_addr().unwrap(), config)
        .await
        .expect("an authenticated link");
    let attack_started = Instant::now();
    let subscribe = RelayMsg::Subscribe {
        channel: "town".into(),
    };
    let mut sent = 0u64;
    let overflowed = loop {
        let m = scrape(&core_base).await;
        if value(&m, "sfu_relay_overflows_total", Some(("direction", "out"))) >= 1.0 {
            break true;
        }
        if sent >= 100_000 || stalled.close_reason().is_some() {
            break false;
        }
        let handled_before = core.state().snapshot().await.stats.relay_in;
        for _ in 0..500 {
            if stalled.send_control(&subscribe).await.is_err() {
                break;
            }
            sent += 1;
        }
        // Wait for the core to take them (it also counts the edge's
        // messages, so this may end early; never late).
        let deadline = Instant::now() + LIMIT;
        while core.state().snapshot().await.stats.relay_in < handled_before + 500
            && Instant::now() < deadline
        {
            tokio::task::yield_now().await;
        }
    };
    assert!(
        overflowed,
        "the stalled link's queue overflowed ({sent} subscribes)"
    );
    let closed = until(|| async { stalled.close_reason().is_some() });
    assert!(closed.await, "the stalled link is closed");
    let m = scrape(&core_base).await;
    assert_eq!(
        value(&m, "sfu_relay_overflows_total", Some(("direction", "in"))),
        0.0
    );
    assert_eq!(value(&m, "sfu_cascade_links", None), 1.0);
    eprintln!(
        "stalled link: closed after {sent} subscribes, {:?}",
        attack_started.elapsed()
    );

    // The good edge heard the speaker all along: no gap over a second from
    // the attack to a second after the link closed (a blocked send would
    // have silenced it for good).
    let until_then = Instant::now() + Duration::from_secs(1);
    assert!(
        listener.wait_until(until_then + LIMIT, |c| c
            .first_heard(0, until_then)
            .is_some()),
        "still heard after"
    );
    let c = listener.lock();
    let mut arrivals: Vec<Instant> = c
        .streams
        .values()
        .flat_map(|log| log.packets.iter().map(|p| p.at))
        .filter(|at| *at >= attack_started)
        .collect();
    arrivals.sort();
    let gap = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(arrivals.len() > 25, "{} packets", arrivals.len());
    assert!(gap < Duration::from_secs(1), "a gap of {gap:?}");
}
