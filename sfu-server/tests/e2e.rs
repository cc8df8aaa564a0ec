//! End to end over real UDP and TCP on 127.0.0.1: the server in-process,
//! str0m clients joining through the WebSocket protocol and through
//! WHIP/WHEP, real Opus tones; listeners decode the right speakers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_members_hear_the_talking_speakers() {
    let server = server(config()).await;
    let (mut ws_a, a, joined_a) =
        ws_member(&server, "hall", "alice", ClientSpec::speaker(0), json!({})).await;
    let (_ws_b, b, _) = ws_member(&server, "hall", "bob", ClientSpec::speaker(1), json!({})).await;
    let (_ws_q, _q, _) =
        ws_member(&server, "hall", "quiet", ClientSpec::speaker(2), json!({})).await;
    let (mut ws_l, l, joined_l) = ws_member(
        &server,
        "hall",
        "lena",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    assert_eq!(joined_a["slots"], 3);
    assert_eq!(joined_l["members"].as_array().unwrap().len(), 4);
    assert_eq!(joined_l["members"][3]["role"], "listener");

    // Alice learns who joined after her.
    let m = ws_a.recv_type("member_joined").await;
    assert_eq!(m["member"]["identity"], "bob");

    a.set_talking(true);
    b.set_talking(true);
    assert!(hears(&l, &[0, 1], 25), "the listener hears alice and bob");
    assert!(hears(&a, &[1], 25), "alice hears bob, not herself");

    // The listener was told which voice plays in its slots, by peer id.
    let alice = joined_a["peer"].as_u64().unwrap();
    let mut slot_peers = Vec::new();
    while slot_peers.len() < 2 {
        let s = ws_l.recv_type("slot").await;
        if let Some(p) = s["peer"].as_u64() {
            slot_peers.push(p);
        }
    }
    assert!(slot_peers.contains(&alice));
    let speakers = loop {
        let v = ws_l.recv_type("active_speakers").await;
        if v["speakers"].as_array().unwrap().len() == 2 {
            break v;
        }
    };
    assert!(speakers["speakers"]
        .as_array()
        .unwrap()
        .contains(&json!(alice)));
    assert_eq!(l.lock().decode_errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_is_heard_by_whep_player() {
    let mut cfg = config();
    cfg.stun_urls = vec!["stun:127.0.0.1:3478".into()];
    let server = server(cfg).await;
    let base = format!("http://{}", server.http_addr());
    let sdp = [("content-type", "application/sdp")];

    // WebSocket clients get the same ICE servers in their `hello`.
    let ws = Ws::connect(&server).await;
    assert_eq!(
        ws.seen[0]["ice_servers"][0]["urls"][0], "stun:127.0.0.1:3478",
        "{}",
        ws.seen[0]
    );
    drop(ws);

    let (mut publisher, offer) = UdpPeer::new("obs", &ClientSpec::speaker(3)).unwrap();
    let r = http(
        reqwest::Method::POST,
        format!("{base}/whip/stage"),
        &sdp,
        offer,
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/sdp");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/resources/") && location.len() > 30,
        "{location}"
    );
    let links: Vec<_> = r.headers().get_all("link").iter().collect();
    assert_eq!(links.len(), 1);
    assert!(links[0].to_str().unwrap().contains("rel=\"ice-server\""));
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    publisher.start(&r.text().await.unwrap());

    // A WHEP player offering two slots.
    let spec = ClientSpec {
        slots: 2,
        ..ClientSpec::listener()
    };
    let (mut player, offer) = UdpPeer::new("player", &spec).unwrap();
    let r = http(
        reqwest::Method::POST,
        format!("{base}/whep/stage"),
        &sdp,
        offer,
    )
    .await;
    assert_eq!(r.status(), 201);
    let player_location = r.headers()["location"].to_str().unwrap().to_string();
    player.start(&r.text().await.unwrap());

    publisher.set_talking(true);
    assert!(
        hears(&player, &[3], 25),
        "the WHEP player hears the WHIP publisher"
    );

    // PATCH takes SDP fragments only (tests/network.rs has the rest).
    let r = http(
        reqwest::Method::PATCH,
        format!("{base}{location}"),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(r.status(), 415);

    // DELETE ends the session; a second DELETE finds nothing.
    let r = http(
        reqwest::Method::DELETE,
        format!("{base}{location}"),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = http(
        reqwest::Method::DELETE,
        format!("{base}{location}"),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(r.status(), 404);
    // The player no longer hears anything new once the publisher is gone.
    let t = Instant::now() + Duration::from_millis(300);
    assert!(
        player.wait_until(Instant::now() + LIMIT, |c| Instant::now() > t
            && c.tones_heard(t, Instant::now() + LIMIT, 1).is_empty())
    );
    let r = http(
        reqwest::Method::DELETE,
        format!("{base}{player_location}"),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(r.status(), 200);
    publisher.stop();

    // CORS preflight.
    let r = http(
        reqwest::Method::OPTIONS,
        format!("{base}/whip/stage"),
        &[
            ("origin", "https://player.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        String::new(),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    let allow = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(
        allow.contains("POST") && allow.contains("DELETE"),
        "{allow}"
    );
}

/// The room layer's messages reach WebSocket members through the worker:
/// a join is announced and counted, a departure announced and counted. (The
/// rules themselves, listing past `LISTED_LISTENERS_UP_TO` among them, are
/// unit-tested in `sfu_server::rooms` without sockets.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_reach_websocket_members() {
    let server = server(config()).await;
    let (mut host, _host_peer, joined_host) =
        ws_member(&server, "hall", "host", ClientSpec::speaker(0), json!({})).await;
    assert_eq!(joined_host["member_count"], 1);
    let listener = ClientSpec {
        decode: false,
        ..ClientSpec::listener()
    };
    let (mut ws_l, _l, joined_l) =
        ws_member(&server, "hall", "l0", listener, json!({"role": "listener"})).await;
    assert_eq!(joined_l["member_count"], 2);
    assert_eq!(joined_l["members"].as_array().unwrap().len(), 2);

    let m = host.recv_type("member_joined").await;
    assert_eq!(m["member"]["identity"], "l0");
    assert_eq!(m["member"]["role"], "listener");
    while host.recv_type("member_count").await["count"] != 2 {}

    ws_l.send(json!({"type": "leave"})).await;
    let m = host.recv_type("member_left").await;
    assert_eq!(m["peer"], joined_l["peer"]);
    assert_eq!(m["reason"], "left");
    while host.recv_type("member_count").await["count"] != 1 {}
}

/// The UDP ports of the host candidates in an SDP answer.
fn candidate_ports(answer: &str) -> Vec<u16> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

/// A node with two workers: two channels land on different workers (each
/// its own port) and each listener decodes its own channel's speaker only;
/// the first members of a third channel, joining at once, all land on one
/// worker and hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_different_workers_are_independent() {
    let server = server(sfu_server::Config {
        workers: 2,
        ..config()
    })
    .await;
    let ports: Vec<u16> = server.udp_addrs().iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);
    // Each worker is a thread of its own (not a task of the test's runtime).
    // A new thread names itself once it runs: looked for until it has.
    #[cfg(target_os = "linux")]
    {
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .filter(|n| n.starts_with("sfu-worker-"))
                .collect()
        };
        let until = Instant::now() + LIMIT;
        for w in ["sfu-worker-0", "sfu-worker-1"] {
            while !names().iter().any(|n| n == w) {
                assert!(Instant::now() < until, "{w} not among {:?}", names());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    let (_ws_r, red, joined_red) =
        ws_member(&server, "red", "rita", ClientSpec::speaker(0), json!({})).await;
    let (_ws_b, blue, joined_blue) =
        ws_member(&server, "blue", "ben", ClientSpec::speaker(1), json!({})).await;
    let (_ws_rl, red_ear, _) = ws_member(
        &server,
        "red",
        "rolf",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    let (_ws_bl, blue_ear, joined_blue_ear) = ws_member(
        &server,
        "blue",
        "bea",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    let port_of = |joined: &serde_json::Value| {
        let p = candidate_ports(joined["answer"].as_str().unwrap());
        assert!(!p.is_empty(), "no candidate in {joined}");
        p[0]
    };
    assert_eq!(
        port_of(&joined_red),
        ports[0],
        "the first channel: worker 0"
    );
    assert_eq!(
        port_of(&joined_blue),
        ports[1],
        "the second: the idle worker"
    );
    assert_eq!(
        port_of(&joined_blue_ear),
        ports[1],
        "a channel stays on its worker"
    );
    assert_eq!(server.state().workers.placement().load(), [2, 2]);

    red.set_talking(true);
    blue.set_talking(true);
    assert!(hears(&red_ear, &[0], 25), "red's listener hears red only");
    assert!(
        hears(&blue_ear, &[1], 25),
        "blue's listener hears blue only"
    );

    // Four first members of "green" at once.
    let base = format!("http://{}", server.http_addr());
    let joins = (0..4).map(|i| {
        let spec = if i < 2 {
            ClientSpec::speaker(2 + i)
        } else {
            ClientSpec::listener()
        };
        let base = base.clone();
        async move { ws_member_at(&base, "green", &format!("g{i}"), spec, json!({})).await }
    });
    let green = futures_util::future::join_all(joins).await;
    let green_ports: Vec<u16> = green.iter().map(|(_, _, j)| port_of(j)).collect();
    assert!(
        green_ports.iter().all(|p| *p == green_ports[0]),
        "green split across workers: {green_ports:?}"
    );
    green[0].1.set_talking(true);
    green[1].1.set_talking(true);
    for (_, ear, _) in &green[2..] {
        assert!(
            hears(ear, &[2, 3], 25),
            "green's listeners hear both green speakers"
        );
    }
    assert!(hears(&red_ear, &[0], 25), "red still hears red only");
    drop(green);
    let _ = (red, blue);
}

/// Hall mode (`hall_mode`): a member who joins as a listener receives the
/// speaker in 40 ms packets and decodes them; a speaker receives 20 ms
/// packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hall_mode_sends_listeners_40_ms_packets() {
    let server = server(sfu_server::Config {
        hall_mode: true,
        ..config()
    })
    .await;
    let (_ws_a, a, _) =
        ws_member(&server, "hall", "alice", ClientSpec::speaker(0), json!({})).await;
    let (_ws_b, b, _) = ws_member(&server, "hall", "bob", ClientSpec::speaker(1), json!({})).await;
    let (_ws_l, l, _) = ws_member(
        &server,
        "hall",
        "lena",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    a.set_talking(true);
    // 50 frames: 25 packets of 40 ms.
    assert!(hears(&l, &[0], 50), "the listener decodes alice");
    assert!(hears(&b, &[0], 25), "bob decodes alice");
    // The RTP timestamp steps of what each received of alice.
    let steps = |peer: &UdpPeer| -> Vec<u32> {
        let client = peer.lock();
        let mut steps = Vec::new();
        for s in client.streams.values() {
            let heard: Vec<_> = s.packets.iter().filter(|p| p.tone == Some(0)).collect();
            steps.extend(
                heard
                    .windows(2)
                    .filter(|w| w[1].seq == w[0].seq + 1)
                    .map(|w| w[1].ts.wrapping_sub(w[0].ts)),
            );
        }
        steps
    };
    let (hall, speaker) = (steps(&l), steps(&b));
    assert!(
        hall.len() >= 20 && hall.iter().all(|&s| s == 1920),
        "{hall:?}"
    );
    assert!(
        speaker.len() >= 20 && speaker.iter().all(|&s| s == 960),
        "{speaker:?}"
    );
    assert_eq!(l.lock().decode_errors(), 0);
}

/// A channel bigger than `spread_after` spreads over the workers: its first
/// two members are on worker 0 (the origin, which selects), the next ones
/// on the less loaded worker 1, linked in process. Everyone hears the
/// talking speakers wherever they are (a voice on worker 1 goes up to the
/// origin and back), worker 1's members learn the dominant speaker, a
/// member who leaves is no longer heard, and when the origin's members have
/// all left, worker 1's members still hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_channel_spreads_over_the_workers() {
    let server = server(sfu_server::Config {
        workers: 2,
        spread_after: Some(2),
        ..config()
    })
    .await;
    let ports: Vec<u16> = server.udp_addrs().iter().map(|a| a.port()).collect();
    let port_of =
        |joined: &serde_json::Value| candidate_ports(joined["answer"].as_str().unwrap())[0];
    let (mut ws_a, a, joined_a) =
        ws_member(&server, "hall", "ann", ClientSpec::speaker(0), json!({})).await;
    let (mut ws_b, b, joined_b) =
        ws_member(&server, "hall", "bo", ClientSpec::speaker(1), json!({})).await;
    let listener = json!({"role": "listener"});
    let (mut ws_c, c, joined_c) =
        ws_member(&server, "hall", "cy", ClientSpec::listener(), listener).await;
    let (_ws_d, d, joined_d) =
        ws_member(&server, "hall", "di", ClientSpec::speaker(2), json!({})).await;
    let on: Vec<u16> = [&joined_a, &joined_b, &joined_c, &joined_d]
        .iter()
        .map(|j| port_of(j))
        .collect();
    assert_eq!(
        on,
        [ports[0], ports[0], ports[1], ports[1]],
        "two on each worker"
    );
    // Peer ids carry the worker's engine number (bit 40 up): members of
    // one channel on two workers never share one.
    let peers: Vec<u64> = [&joined_a, &joined_b, &joined_c, &joined_d]
        .iter()
        .map(|j| j["peer"].as_u64().unwrap())
        .collect();
    assert_eq!(
        peers.iter().map(|p| p >> 40).collect::<Vec<_>>(),
        [0, 0, 1, 1]
    );
    assert!(peers.windows(2).all(|w| w[0] != w[1]), "{peers:?}");
    // One room across the workers: di (worker 1) is told of everyone, the
    // speakers of worker 0 as members (not as voices of another node).
    let listed: Vec<u64> = joined_d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer"].as_u64().unwrap())
        .collect();
    for p in &peers {
        assert!(listed.contains(p), "{p} in {listed:?}");
    }
    assert_eq!(joined_d["member_count"], 4);
    assert_eq!(joined_d["voices"], json!([]));
    let placement = server.state().workers.placement();
    assert_eq!(placement.spread_of("hall"), [2, 2]);
    assert_eq!(placement.worker_of("hall"), Some(0), "worker 0 selects");

    a.set_talking(true);
    d.set_talking(true);
    assert!(
        hears(&c, &[0, 2], 25),
        "worker 1: ann (worker 0) and di (here)"
    );
    assert!(hears(&a, &[2], 25), "worker 0: di's voice came up the link");
    assert!(hears(&b, &[0, 2], 25), "worker 0: both");
    let dominant = ws_c.recv_type("dominant_speaker").await;
    let talkers = [&joined_a["source"], &joined_d["source"]];
    assert!(talkers.contains(&&dominant["source"]), "{dominant}");

    // Ann leaves: worker 1 stops hearing her and goes on hearing di.
    ws_a.send(json!({"type": "leave"})).await;
    let asked = Instant::now();
    let recent = |cl: &testkit::client::Client, frames| {
        let now = Instant::now();
        cl.tones_heard(now - Duration::from_millis(500), now, frames)
    };
    assert!(
        c.wait_until(asked + LIMIT, |cl| asked.elapsed()
            > Duration::from_millis(600)
            && !recent(cl, 1).contains(&0)
            && recent(cl, 10).contains(&2)),
        "ann left: not heard on worker 1 any more"
    );
    // Bo leaves too: worker 0 has no member of the channel left; it still
    // selects for worker 1, whose members go on hearing each other.
    ws_b.send(json!({"type": "leave"})).await;
    let until = Instant::now() + LIMIT;
    while placement.spread_of("hall") != [0, 2] {
        assert!(Instant::now() < until, "{:?}", placement.spread_of("hall"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let since = Instant::now();
    assert!(
        c.wait_until(since + LIMIT, |cl| cl
            .tones_heard(since, Instant::now(), 25)
            .contains(&2)),
        "cy hears di with the origin's members gone"
    );
    // A newcomer goes to the origin again (it carries fewer than
    // spread_after) and hears di through the link.
    let (_ws_e, e, joined_e) = ws_member(
        &server,
        "hall",
        "ed",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    assert_eq!(port_of(&joined_e), ports[0]);
    assert!(hears(&e, &[2], 25), "ed (worker 0) hears di (worker 1)");
    drop((ws_c, joined_b));
}
