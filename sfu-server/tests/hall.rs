//! The lecture hall end to end, over real UDP and WebSocket on 127.0.0.1:
//! a listener raises its hand, a moderator sees it and promotes it, another
//! member decodes its voice; demoted, its voice stops reaching others; a
//! kicked member is told why and removed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sfu_server::auth::{mint, Grants};
use sfu_server::state::unix_now;
use sfu_server::Config;
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;

const SECRET: &str = "hall-test-secret-hall-test-secret-hall";

/// A token for `sub` in channel `hall`.
fn token(sub: &str, publish: bool, moderate: bool) -> String {
    mint(
        SECRET.as_bytes(),
        &Grants {
            sub: sub.into(),
            channel: "hall".into(),
            can_publish: publish,
            can_subscribe: true,
            can_moderate: moderate,
            exp: unix_now() + 600,
            jti: None,
            region: None,
            p2p: None,
        },
    )
}

/// Receives `hands` messages until one with exactly `want` (peer ids).
async fn hands_until(ws: &mut Ws, want: &[u64]) {
    loop {
        let m = ws.recv_type("hands").await;
        let queue: Vec<u64> = m["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["peer"].as_u64().unwrap())
            .collect();
        if queue == want {
            return;
        }
    }
}

/// Receives until the `member_updated` of `peer` with `role`.
async fn role_until(ws: &mut Ws, peer: u64, role: &str) -> Value {
    loop {
        let m = ws.recv_type("member_updated").await;
        if m["member"]["peer"] == peer && m["member"]["role"] == role {
            return m;
        }
    }
}

/// Receives until the `member_updated` of `peer` with `muted`.
async fn muted_until(ws: &mut Ws, peer: u64, muted: bool) {
    loop {
        let m = ws.recv_type("member_updated").await;
        if m["member"]["peer"] == peer && m["member"]["muted"] == muted {
            return;
        }
    }
}

/// Sends `msg` and returns the next `error`'s code.
async fn refused(ws: &mut Ws, msg: Value) -> String {
    ws.send(msg).await;
    ws.recv_type("error").await["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until `peer` decoded `frames` frames of `tone` that arrived after
/// `from`; returns the tones it decoded in at least one frame since then.
fn heard_after(peer: &UdpPeer, from: Instant, tone: usize, frames: usize) -> Vec<usize> {
    let end = Instant::now() + LIMIT;
    let ok = peer.wait_until(end, |c| c.tones_heard(from, end, frames).contains(&tone));
    assert!(ok, "tone {tone} heard for {frames} frames after {from:?}");
    let tones = peer.lock().tones_heard(from, Instant::now(), 1);
    tones.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_hand_is_promoted_heard_demoted_and_a_member_kicked() {
    let server = server(Config {
        auth_secret: Some(SECRET.into()),
        workers: 1,
        ..config()
    })
    .await;
    hall_scenario(&server, [0, 0, 0]).await;
}

/// The same hall spread over two workers (`spread_after` 1): the host on
/// worker 0 (the origin), Ann on worker 1, Bob on worker 0 again (the
/// less loaded, ties to the lower). The room is one: the host sees Ann's
/// hand, promotes, demotes and kicks her across the workers, Bob sees her
/// come and go, everyone counts three members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hall_behaves_the_same_spread_over_two_workers() {
    let server = server(Config {
        auth_secret: Some(SECRET.into()),
        workers: 2,
        spread_after: Some(1),
        ..config()
    })
    .await;
    hall_scenario(&server, [0, 1, 0]).await;
}

/// And over four workers (`spread_after` 1): the host, Ann and Bob each on
/// a worker of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hall_behaves_the_same_spread_over_four_workers() {
    let server = server(Config {
        auth_secret: Some(SECRET.into()),
        workers: 4,
        spread_after: Some(1),
        ..config()
    })
    .await;
    hall_scenario(&server, [0, 1, 2]).await;
}

/// Receives `member_joined` messages until every one of `peers` was named.
async fn joined_until(ws: &mut Ws, peers: &[u64]) {
    let mut missing: Vec<u64> = peers.to_vec();
    while !missing.is_empty() {
        let m = ws.recv_type("member_joined").await;
        missing.retain(|p| m["member"]["peer"] != *p);
    }
}

/// The lecture hall's story on `server`, whose host, Ann and Bob land on
/// the workers `on` names.
async fn hall_scenario(server: &sfu_server::Server, on: [u64; 3]) {
    let host_grants = json!({"token": token("host", true, true)});
    let (mut ws_host, host, joined_host) =
        ws_member(server, "hall", "host", ClientSpec::speaker(0), host_grants).await;
    // Ann listens, with a microphone line offered so that she can be
    // promoted; her token does not let her publish on her own.
    let ann_grants = json!({"token": token("ann", false, false), "role": "listener"});
    let (mut ws_ann, ann, joined_ann) =
        ws_member(server, "hall", "ann", ClientSpec::speaker(1), ann_grants).await;
    let bob_grants = json!({"token": token("bob", false, false), "role": "listener"});
    let (mut ws_bob, bob, joined_bob) =
        ws_member(server, "hall", "bob", ClientSpec::listener(), bob_grants).await;
    let ann_peer = joined_ann["peer"].as_u64().unwrap();
    let bob_peer = joined_bob["peer"].as_u64().unwrap();
    let host_peer = joined_host["peer"].as_u64().unwrap();
    // Peer ids carry their worker's engine number from bit 40 up.
    assert_eq!([host_peer >> 40, ann_peer >> 40, bob_peer >> 40], on);
    // Bob joined last: the whole channel is in his member list and count.
    let mut listed: Vec<u64> = joined_bob["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer"].as_u64().unwrap())
        .collect();
    listed.sort_unstable();
    let mut all = vec![host_peer, ann_peer, bob_peer];
    all.sort_unstable();
    assert_eq!(listed, all, "{}", joined_bob["members"]);
    assert_eq!(joined_bob["member_count"], 3);
    // The host is told of both; Ann of Bob.
    joined_until(&mut ws_host, &[ann_peer, bob_peer]).await;
    joined_until(&mut ws_ann, &[bob_peer]).await;

    // Both talk; only the host's voice is routed while Ann listens.
    host.set_talking(true);
    ann.set_talking(true);
    assert!(hears(&bob, &[0], 25), "bob hears the host, not ann");

    ws_ann.send(json!({"type": "raise_hand"})).await;
    assert_eq!(ws_ann.recv_type("hand").await["raised"], true);
    hands_until(&mut ws_host, &[ann_peer]).await;
    // A listener is not a moderator.
    let promote_ann = json!({"type": "moderate", "action": "promote", "peer": ann_peer});
    assert_eq!(refused(&mut ws_bob, promote_ann.clone()).await, "forbidden");

    ws_host.send(promote_ann).await;
    role_until(&mut ws_host, ann_peer, "speaker").await;
    let promoted = Instant::now();
    assert_eq!(ws_ann.recv_type("hand").await["raised"], false);
    hands_until(&mut ws_host, &[]).await;
    let heard = heard_after(&bob, promoted, 1, 25);
    assert!(heard.contains(&0) && heard.contains(&1), "{heard:?}");

    // Muted by the moderator, her voice stops reaching Bob; unmuted, it
    // comes back.
    let mute = |muted: bool| json!({"type": "moderate", "action": if muted { "mute" } else { "unmute" }, "peer": ann_peer});
    ws_host.send(mute(true)).await;
    muted_until(&mut ws_host, ann_peer, true).await;
    let settled = Instant::now() + Duration::from_millis(200);
    let heard = heard_after(&bob, settled, 0, 25);
    assert_eq!(heard, [0], "muted, ann is not heard");
    ws_host.send(mute(false)).await;
    muted_until(&mut ws_host, ann_peer, false).await;
    let unmuted = Instant::now();
    let heard = heard_after(&bob, unmuted, 1, 25);
    assert!(heard.contains(&1), "unmuted, ann is heard again: {heard:?}");

    // A member whose offer had no microphone line cannot be promoted.
    let promote_bob = json!({"type": "moderate", "action": "promote", "peer": bob_peer});
    assert_eq!(refused(&mut ws_host, promote_bob).await, "cannot_speak");

    ws_host
        .send(json!({"type": "moderate", "action": "demote", "peer": ann_peer}))
        .await;
    role_until(&mut ws_host, ann_peer, "listener").await;
    // Packets already on their way when the demotion applied may still land.
    let settled = Instant::now() + Duration::from_millis(200);
    let heard = heard_after(&bob, settled, 0, 25);
    assert_eq!(heard, [0], "after the demotion bob hears the host alone");

    // Moderators are not kicked; members are, and are told why.
    let kick_host = json!({"type": "moderate", "action": "kick", "peer": joined_host["peer"]});
    assert_eq!(refused(&mut ws_host, kick_host).await, "forbidden");
    ws_host
        .send(json!({"type": "moderate", "action": "kick", "peer": ann_peer, "reason": "heckling"}))
        .await;
    let own = ws_ann.recv_type("member_left").await;
    assert_eq!(
        (&own["peer"], &own["reason"], &own["message"]),
        (&json!(ann_peer), &json!("kicked"), &json!("heckling"))
    );
    let seen = ws_bob.recv_type("member_left").await;
    assert_eq!(
        (&seen["peer"], &seen["reason"]),
        (&json!(ann_peer), &json!("kicked"))
    );
    assert!(seen.get("message").is_none(), "the words are for ann alone");
    assert_eq!(
        refused(&mut ws_ann, json!({"type": "raise_hand"})).await,
        "not_joined"
    );
    let count = loop {
        let c = ws_bob.recv_type("member_count").await;
        if c["count"] == 2 {
            break c;
        }
    };
    assert_eq!(count["count"], 2, "two left in the hall");
    drop((ws_bob, ann, joined_host));
}
