//! Surviving the network, end to end over real UDP and TCP on 127.0.0.1:
//! a client whose network changes (its socket closed, a new port) restarts
//! ICE — over the WebSocket (`restart`) or WHIP/WHEP (`PATCH` with an SDP
//! fragment) — and is heard again within a second; a member whose
//! WebSocket drops resumes on a new one and nobody sees it leave.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;

/// The longest a moved client may go unheard once its restart is sent.
const HEARD_AGAIN_WITHIN: Duration = Duration::from_secs(1);

/// Joins `channel` over WebSocket as a listener named `name`.
async fn listener(server: &sfu_server::Server, channel: &str, name: &str) -> (Ws, UdpPeer, Value) {
    ws_member(
        server,
        channel,
        name,
        ClientSpec::listener(),
        json!({"role": "listener"}),
    )
    .await
}

/// Waits until `listener` has heard nothing of `tone` for 200 ms: the old
/// path is dead, and what is heard after this came over the new one.
fn silent(listener: &UdpPeer, tone: usize) -> bool {
    listener.wait_until(Instant::now() + LIMIT, |c| {
        let now = Instant::now();
        !c.tones_heard(now - Duration::from_millis(200), now, 1)
            .contains(&tone)
    })
}

/// How long after `from` `listener` first heard `tone` (waiting for it at
/// most [`LIMIT`]).
fn heard_after(listener: &UdpPeer, tone: usize, from: Instant) -> Option<Duration> {
    listener.wait_until(Instant::now() + LIMIT, |c| {
        c.first_heard(tone, from).is_some()
    });
    Some(listener.lock().first_heard(tone, from)? - from)
}

/// The `member_left` messages about `peer` a socket has received so far.
fn left_messages(ws: &Ws, peer: u64) -> Vec<&Value> {
    ws.seen
        .iter()
        .filter(|m| m["type"] == "member_left" && m["peer"] == peer)
        .collect()
}

/// Sends `restart` with the peer's offer from a new socket; applies the
/// answer. Returns when the restart was sent.
async fn restart_over_ws(ws: &mut Ws, peer: &mut UdpPeer) -> Instant {
    let offer = peer.move_to_new_socket().expect("a new socket");
    let sent = Instant::now();
    ws.send(json!({"type": "restart", "offer": offer})).await;
    let answer = ws.recv_type("restarted").await;
    peer.start(answer["answer"].as_str().expect("an answer"));
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_on_a_new_socket_restarts_ice_and_is_heard_again_within_a_second() {
    let server = server(config()).await;
    let (mut ws_a, mut a, joined_a) =
        ws_member(&server, "move", "alice", ClientSpec::speaker(0), json!({})).await;
    let alice = joined_a["peer"].as_u64().unwrap();
    let (mut ws_l, mut l, _) = listener(&server, "move", "lena").await;
    a.set_talking(true);
    assert!(hears(&l, &[0], 25), "lena hears alice");
    let old_addr = a.addr;

    // Alice's network changes: her old socket is closed, she restarts from
    // a new port.
    let offer = a.move_to_new_socket().unwrap();
    assert_ne!(a.addr, old_addr);
    assert!(
        silent(&l, 0),
        "nothing of alice reaches lena from the old path"
    );
    let sent = Instant::now();
    ws_a.send(json!({"type": "restart", "offer": offer})).await;
    let answer = ws_a.recv_type("restarted").await;
    a.start(answer["answer"].as_str().unwrap());
    let after = heard_after(&l, 0, sent).expect("lena hears alice again");
    assert!(after < HEARD_AGAIN_WITHIN, "heard again after {after:?}");

    // The listener moves too: it hears alice again as fast.
    let offer = l.move_to_new_socket().unwrap();
    let sent = Instant::now();
    ws_l.send(json!({"type": "restart", "offer": offer})).await;
    let answer = ws_l.recv_type("restarted").await;
    l.start(answer["answer"].as_str().unwrap());
    let after = heard_after(&l, 0, sent).expect("lena hears alice again");
    assert!(after < HEARD_AGAIN_WITHIN, "heard again after {after:?}");

    // The same member all along: nobody was told alice left or joined.
    ws_l.send(json!({"type": "ping"})).await;
    ws_l.recv_type("pong").await;
    assert!(left_messages(&ws_l, alice).is_empty(), "{:?}", ws_l.seen);
    assert!(!ws_l.seen.iter().any(|m| m["type"] == "member_joined"));
    assert_eq!(l.lock().decode_errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_restarts_leave_the_session_as_it_was() {
    let mut cfg = config();
    cfg.ice_restarts_per_minute = 4;
    let server = server(cfg).await;
    let base = format!("http://{}", server.http_addr());

    // Not in a channel: nothing to restart.
    let mut ws = Ws::connect(&server).await;
    ws.send(json!({"type": "restart", "offer": "v=0"})).await;
    let e = ws.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request"].as_str()),
        (Some("not_joined"), Some("restart"))
    );

    let (mut ws_a, mut a, _) = ws_member(
        &server,
        "refuse",
        "alice",
        ClientSpec::speaker(0),
        json!({}),
    )
    .await;
    let (_ws_l, l, _) = listener(&server, "refuse", "lena").await;
    a.set_talking(true);
    assert!(hears(&l, &[0], 10));

    // Offers the session cannot take: refused, the media goes on.
    let (_other, foreign) = UdpPeer::new("other", &ClientSpec::listener()).unwrap();
    for offer in ["not sdp at all", foreign.as_str()] {
        ws_a.send(json!({"type": "restart", "offer": offer})).await;
        let e = ws_a.recv_type("error").await;
        assert_eq!(e["code"], "invalid_offer", "{e}");
    }
    let t = Instant::now();
    assert!(
        l.wait_until(t + LIMIT, |c| c.first_heard(0, t).is_some()),
        "lena still hears alice"
    );

    // Four restarts a minute (the config; the refused ones counted), then
    // rate_limited with a time to wait; the restarts that passed work.
    restart_over_ws(&mut ws_a, &mut a).await;
    restart_over_ws(&mut ws_a, &mut a).await;
    let offer = a.move_to_new_socket().unwrap();
    ws_a.send(json!({"type": "restart", "offer": offer})).await;
    let e = ws_a.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    let wait = e["retry_after_secs"].as_u64().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let s = scrape(&base).await;
    assert_eq!(
        value(
            &s,
            "sfu_refusals_total",
            Some(("reason", "ice_restart_rate"))
        ),
        1.0
    );
}

/// A member's WebSocket drops without a close (the network, not the
/// client): it stays for the grace period, keeps being heard, and a new
/// socket takes it over with its token; the others never see it leave, and
/// it learns what it missed. Its media path changes too (a phone switching
/// networks): a restart on the new socket brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_websocket_resumes_and_nobody_sees_the_member_leave() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    let (ws_a, mut a, joined_a) =
        ws_member(&server, "drop", "alice", ClientSpec::speaker(0), json!({})).await;
    let alice = joined_a["peer"].as_u64().unwrap();
    let token = joined_a["resume_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 32);
    assert_eq!(joined_a["resume_grace_secs"], 30);
    let (mut ws_l, l, _) = listener(&server, "drop", "lena").await;
    a.set_talking(true);
    assert!(hears(&l, &[0], 10));

    // The TCP connection goes without a close frame.
    drop(ws_a);
    let dropped = Instant::now();
    let away = until(|| async { value(&scrape(&base).await, "sfu_members_away", None) == 1.0 });
    assert!(away.await, "the server noticed the drop");
    // Meanwhile someone joins (alice misses it), and alice stays heard.
    let (ws_c, _c, joined_c) = listener(&server, "drop", "carl").await;
    let carl = joined_c["peer"].as_u64().unwrap();
    let listed: Vec<u64> = joined_c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer"].as_u64().unwrap())
        .collect();
    assert!(
        listed.contains(&alice),
        "alice is still a member: {listed:?}"
    );
    // Five seconds away (the scenario, not a wait for something).
    tokio::time::sleep_until((dropped + Duration::from_secs(5)).into()).await;
    let t = Instant::now() - Duration::from_secs(1);
    assert!(l.lock().tones_heard(t, Instant::now(), 10).contains(&0));

    // A new socket takes alice over.
    let mut ws_a = Ws::connect(&server).await;
    ws_a.send(json!({"type": "resume", "token": token})).await;
    let resumed = ws_a.recv().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["peer"], alice);
    assert_eq!(resumed["source"], joined_a["source"]);
    assert_eq!(resumed["channel"], "drop");
    let new_token = resumed["resume_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token, "a token works once");
    // What she missed comes next.
    let m = ws_a.recv_type("member_joined").await;
    assert_eq!(m["member"]["peer"], carl);

    // Her network changed as well: a restart on the new socket.
    let sent = restart_over_ws(&mut ws_a, &mut a).await;
    let after = heard_after(&l, 0, sent).expect("lena hears alice again");
    assert!(after < HEARD_AGAIN_WITHIN, "heard again after {after:?}");

    // Carl leaves: lena's messages up to then hold no departure of alice.
    let mut ws_c = ws_c;
    ws_c.socket.close(None).await.unwrap();
    loop {
        let m = ws_l.recv_type("member_left").await;
        if m["peer"] == carl {
            break;
        }
    }
    assert!(left_messages(&ws_l, alice).is_empty(), "{:?}", ws_l.seen);

    // The old token is spent.
    let mut ws_x = Ws::connect(&server).await;
    ws_x.send(json!({"type": "resume", "token": token})).await;
    let e = ws_x.recv_type("error").await;
    assert_eq!(e["code"], "resume_failed", "{e}");

    // The client comes back before the server noticed its socket died (it
    // is still open here): the new socket takes the member over, the old
    // one is told and closed.
    let mut ws_y = Ws::connect(&server).await;
    ws_y.send(json!({"type": "resume", "token": new_token}))
        .await;
    let resumed = ws_y.recv().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["peer"], alice);
    let e = ws_a.recv_type("error").await;
    assert_eq!(e["code"], "resumed_elsewhere", "{e}");
    ws_l.send(json!({"type": "ping"})).await;
    ws_l.recv_type("pong").await;
    assert!(left_messages(&ws_l, alice).is_empty(), "{:?}", ws_l.seen);
    let t = Instant::now();
    assert!(
        l.wait_until(t + LIMIT, |c| c.first_heard(0, t).is_some()),
        "lena still hears alice"
    );

    let s = scrape(&base).await;
    assert_eq!(
        value(&s, "sfu_resumes_total", Some(("outcome", "resumed"))),
        2.0
    );
    assert_eq!(
        value(&s, "sfu_refusals_total", Some(("reason", "resume"))),
        1.0
    );
    assert_eq!(value(&s, "sfu_members_away", None), 0.0);
}

/// Past the grace period the member leaves, and its token no longer works;
/// a member that closes its socket (a close frame) leaves at once; with
/// resume off there is no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_not_resumed_in_time_leave() {
    let mut cfg = config();
    cfg.resume_grace_secs = 1;
    let server = server(cfg).await;
    let base = format!("http://{}", server.http_addr());
    let (ws_a, _a, joined_a) =
        ws_member(&server, "late", "alice", ClientSpec::speaker(0), json!({})).await;
    let alice = joined_a["peer"].as_u64().unwrap();
    let token = joined_a["resume_token"].as_str().unwrap().to_owned();
    let (mut ws_l, _l, _) = listener(&server, "late", "lena").await;
    drop(ws_a);
    let dropped = Instant::now();
    let m = ws_l.recv_type("member_left").await;
    assert_eq!(m["peer"], alice);
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "left after the grace period"
    );
    let mut ws = Ws::connect(&server).await;
    ws.send(json!({"type": "resume", "token": token})).await;
    assert_eq!(ws.recv_type("error").await["code"], "resume_failed");
    let s = scrape(&base).await;
    assert_eq!(
        value(&s, "sfu_resumes_total", Some(("outcome", "expired"))),
        1.0
    );

    // A close frame is a choice: the member leaves at once.
    let (mut ws_b, _b, joined_b) =
        ws_member(&server, "late", "bob", ClientSpec::speaker(1), json!({})).await;
    let closed = Instant::now();
    ws_b.socket.close(None).await.unwrap();
    loop {
        let m = ws_l.recv_type("member_left").await;
        if m["peer"] == joined_b["peer"] {
            break;
        }
    }
    assert!(closed.elapsed() < Duration::from_millis(900));

    // Resume off: no token, a drop is a leave.
    let mut cfg = config();
    cfg.resume_grace_secs = 0;
    let off = common::server(cfg).await;
    let (_ws, _p, joined) = ws_member(&off, "off", "olga", ClientSpec::listener(), json!({})).await;
    assert!(joined.get("resume_token").is_none(), "{joined}");
    assert_eq!(joined["resume_grace_secs"], 0);
}

/// `PATCH url` with `headers` and `body`.
async fn patch(url: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    http(
        reqwest::Method::PATCH,
        url.to_owned(),
        headers,
        body.to_owned(),
    )
    .await
}

/// The fragment of an SDP a WHIP/WHEP client sends to restart ICE
/// (RFC 9725 §4.3.2): its new credentials and candidates.
fn restart_fragment(offer: &str) -> String {
    let mut frag = String::new();
    let mut mid_done = false;
    for line in offer.lines() {
        let keep = line.starts_with("a=ice-ufrag:")
            || line.starts_with("a=ice-pwd:")
            || line.starts_with("a=candidate:");
        if keep && !frag.contains(line) {
            frag.push_str(line);
            frag.push_str("\r\n");
        }
        if line.starts_with("a=mid:") && !mid_done {
            frag.push_str(line);
            frag.push_str("\r\n");
            mid_done = true;
        }
    }
    frag
}

/// `answer` with the ICE credentials and candidates of the server's restart
/// fragment: the whole answer a WHIP client applies after its restart (the
/// old candidates name the old ufrag).
fn merged_answer(answer: &str, frag: &str) -> String {
    let get = |key: &str| {
        frag.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {frag}"))
            .to_owned()
    };
    let (ufrag, pwd) = (get("a=ice-ufrag:"), get("a=ice-pwd:"));
    let candidates: String = frag
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let mut out = String::new();
    let mut first = true;
    for l in answer.lines() {
        if l.starts_with("a=candidate:") {
            continue;
        } else if l.starts_with("a=ice-ufrag:") {
            out.push_str(&format!("a=ice-ufrag:{ufrag}\r\n"));
        } else if l.starts_with("a=ice-pwd:") {
            out.push_str(&format!("a=ice-pwd:{pwd}\r\n"));
            if std::mem::take(&mut first) {
                out.push_str(&candidates);
            }
        } else {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_restarts_ice_with_patch_and_is_heard_again() {
    let mut cfg = config();
    cfg.ice_restarts_per_minute = 2;
    let server = server(cfg).await;
    let base = format!("http://{}", server.http_addr());
    let sdp = [("content-type", "application/sdp")];
    let (mut publisher, offer) = UdpPeer::new("obs", &ClientSpec::speaker(3)).unwrap();
    let r = http(
        reqwest::Method::POST,
        format!("{base}/whip/stage"),
        &sdp,
        offer,
    )
    .await;
    assert_eq!(r.status(), 201);
    let location = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let answer = r.text().await.unwrap();
    publisher.start(&answer);
    let (mut player, offer) = UdpPeer::new("player", &ClientSpec::listener()).unwrap();
    let r = http(
        reqwest::Method::POST,
        format!("{base}/whep/stage"),
        &sdp,
        offer,
    )
    .await;
    assert_eq!(r.status(), 201);
    player.start(&r.text().await.unwrap());
    publisher.set_talking(true);
    assert!(hears(&player, &[3], 10));

    let frag_type = [("content-type", "application/trickle-ice-sdpfrag")];
    // A trickled candidate for the session as it is: taken (204).
    let trickle = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let with_tag = [frag_type[0], ("if-match", etag.as_str())];
    let r = patch(&location, &with_tag, trickle).await;
    assert_eq!(r.status(), 204);
    // A stale tag, a wrong type, a broken fragment: refused.
    let stale = [frag_type[0], ("if-match", "\"stale\"")];
    let r = patch(&location, &stale, trickle).await;
    assert_eq!(r.status(), 412);
    let r = patch(&location, &sdp, trickle).await;
    assert_eq!(r.status(), 415);
    let r = patch(&location, &frag_type, "a=ice-ufrag:x\r\n").await;
    assert_eq!(r.status(), 400);
    let r = patch(
        &format!("{base}/resources/00000000000000000000000000000000"),
        &frag_type,
        trickle,
    )
    .await;
    assert_eq!(r.status(), 404);

    // The publisher's network changes: an ICE restart by PATCH.
    let offer = publisher.move_to_new_socket().unwrap();
    assert!(silent(&player, 3));
    let restart = [frag_type[0], ("if-match", "*")];
    let sent = Instant::now();
    let r = patch(&location, &restart, &restart_fragment(&offer)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/trickle-ice-sdpfrag"
    );
    let new_etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let frag = r.text().await.unwrap();
    assert!(frag.contains("a=candidate:"), "{frag}");
    publisher.start(&merged_answer(&answer, &frag));
    let after = heard_after(&player, 3, sent).expect("the player hears the publisher again");
    assert!(after < HEARD_AGAIN_WITHIN, "heard again after {after:?}");

    // The old tag is stale now; two restarts a minute, then 429.
    let r = patch(&location, &with_tag, trickle).await;
    assert_eq!(r.status(), 412);
    let offer = publisher.move_to_new_socket().unwrap();
    let r = patch(&location, &restart, &restart_fragment(&offer)).await;
    assert_eq!(r.status(), 200);
    let offer2 = restart_fragment(&offer).replace("a=ice-ufrag:", "a=ice-ufrag:z");
    let r = http(reqwest::Method::PATCH, location.clone(), &restart, offer2).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}
