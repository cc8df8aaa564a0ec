//! A flood of garbage and bogus STUN at the media port, from a thread that
//! sends as fast as it can: members still connect, and what runs on the
//! engine's timers (the dominant speaker's 300 ms tick among them) still
//! runs. With the socket always readable, a loop that waits for its timer
//! only when nothing else is ready would never get to it. The STUN requests
//! name the server's real ICE ufrag, so that each costs the server an
//! integrity check.

mod common;

use common::*;
use serde_json::json;
use testkit::client::ClientSpec;
use testkit::flood::{Flood, GarbageMaker, EVERY_KIND};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_connect_and_speaker_events_come_under_a_datagram_flood() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    let (mut ws_a, a, joined_a) =
        ws_member(&server, "f", "alice", ClientSpec::speaker(0), json!({})).await;
    let answer = joined_a["answer"].as_str().unwrap();
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("the answer has an ICE ufrag")
        .trim()
        .to_string();
    let maker = GarbageMaker::new(1, Some(ufrag));
    let mut flood = Flood::start(server.udp_addr(), &EVERY_KIND, maker, None);

    let flooding = until(|| async {
        let m = scrape(&base).await;
        value(&m, "sfu_datagrams_total", Some(("direction", "in"))) > 10_000.0
    });
    assert!(flooding.await, "the flood reaches the server");

    // A member joins under the flood.
    let (mut ws_l, l, _) = ws_member(
        &server,
        "f",
        "lena",
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await;
    ws_a.recv_type("connected").await;
    ws_l.recv_type("connected").await;
    a.set_talking(true);
    assert!(hears(&l, &[0], 25), "the listener hears alice");
    // Dominant speaker detection runs on a timer only.
    let alice = joined_a["peer"].clone();
    while ws_l.recv_type("dominant_speaker").await["peer"] != alice {}

    let sent = flood.stop();
    let m = scrape(&base).await;
    let dropped: f64 = ["unknown_source", "malformed", "rejected"]
        .iter()
        .map(|r| value(&m, "sfu_dropped_total", Some(("reason", r))))
        .sum();
    eprintln!("flood: {sent} datagrams sent, {dropped} dropped by the engine");
    assert!(dropped > 10_000.0, "{dropped} of {sent}");
}
