//! Hybrid channels end to end (docs/HYBRID.md): members are real WebRTC
//! clients on 127.0.0.1 (str0m with ICE, DTLS, SRTP and Opus between the
//! members themselves in P2P, and with the server on the SFU); the server
//! relays their signaling over its WebSocket. What each member plays is
//! judged at its decoders: which tones, the longest gap of each tone
//! across a switch, and whether a tone was heard twice.

mod binary;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sfu_server::{Config, Server};
use testkit::client::ClientSpec;
use testkit::mesh::{MeshMember, Signal, SignalData};
use testkit::playback::Path;
use testkit::udp::UdpPeer;

/// Each member hears every other on the SFU: the server selects this many
/// voices of a channel, every one of the eight talkers here.
const SLOTS: usize = 8;

/// How long a member's mesh link may take to connect before it reports it.
const MESH_TIMEOUT: Duration = Duration::from_secs(2);

/// The tests of this file judge audio timing at the decoders of dozens of
/// real clients: they run one at a time, so that one's clients do not
/// starve another's of CPU on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hybrid_config() -> Config {
    let mut c = config();
    c.hybrid = true;
    c.slots = SLOTS;
    c.p2p_max = 7;
    c.p2p_return_at = 5;
    c.p2p_return_after_secs = 1;
    c.workers = 1;
    c
}

/// A member of a hybrid channel: its WebSocket, its mesh links and SFU
/// session ([`MeshMember`]), and what the server told it.
struct Member {
    ws: Ws,
    mesh: MeshMember,
    id: u64,
    tone: usize,
    /// The channel's epoch as last told.
    epoch: u64,
    /// The mode the channel is in or switching to.
    target: Path,
    /// The path this member plays.
    playing: Path,
    /// The others, by id.
    others: BTreeSet<u64>,
    /// Its SFU session between `sfu_join` and `sfu_joined`.
    joining: Option<UdpPeer>,
    /// When the switch it takes part in began (it swaps when the new path
    /// delivers the others' tones from then on).
    switch_since: Option<Instant>,
    /// When it swapped last.
    swapped_at: Option<Instant>,
    /// `switched` messages from the server, by epoch.
    completed: BTreeMap<u64, Value>,
    /// `mode` messages from the server.
    modes: Vec<Value>,
    /// Links reported as failed.
    reported: BTreeSet<u64>,
    /// Drop every datagram of its mesh links (a pair that cannot connect).
    blackhole: bool,
    /// Error messages from the server.
    errors: Vec<Value>,
}

fn path(mode: &str) -> Path {
    match mode {
        "p2p" => Path::Mesh,
        "sfu" => Path::Sfu,
        other => panic!("unknown mode {other}"),
    }
}

fn mode_name(p: Path) -> &'static str {
    match p {
        Path::Mesh => "p2p",
        Path::Sfu => "sfu",
    }
}

fn sfu_spec(tone: usize) -> ClientSpec {
    ClientSpec {
        slots: SLOTS,
        ..ClientSpec::speaker(tone)
    }
}

impl Member {
    /// Joins `channel` as a P2P-capable client talking tone `tone`.
    async fn join(server: &Server, channel: &str, tone: usize) -> Member {
        Member::join_with(server, channel, tone, None).await
    }

    /// [`Member::join`] with `token`, if given.
    async fn join_with(server: &Server, channel: &str, tone: usize, token: Option<&str>) -> Member {
        let mut ws = Ws::connect(server).await;
        let name = format!("m{tone}");
        let (mut session, offer) = UdpPeer::new(&name, &sfu_spec(tone)).expect("peer");
        let mut join = json!({"type": "join", "channel": channel, "identity": name, "offer": offer, "p2p": true});
        if let Some(t) = token {
            join["token"] = json!(t);
        }
        ws.send(join).await;
        let joined = ws.recv().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        let id = joined["peer"].as_u64().unwrap();
        let mode = path(joined["mode"].as_str().unwrap());
        let mut mesh = MeshMember::new(id, Some(tone));
        mesh.set_talking(true);
        let others: BTreeSet<u64> = joined["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["peer"].as_u64().unwrap())
            .filter(|p| *p != id)
            .collect();
        if mode == Path::Sfu {
            session.start(joined["answer"].as_str().unwrap());
            mesh.attach_sfu(session);
            mesh.switch_playback(Path::Sfu);
        } else {
            assert_eq!(joined["answer"], "", "no SFU answer in P2P");
            assert_eq!(joined["source"], 0);
            mesh.connect_all(others.iter().copied()).unwrap();
        }
        Member {
            ws,
            mesh,
            id,
            tone,
            epoch: joined["epoch"].as_u64().unwrap(),
            target: mode,
            playing: mode,
            others,
            joining: None,
            switch_since: None,
            swapped_at: None,
            completed: BTreeMap::new(),
            modes: Vec::new(),
            reported: BTreeSet::new(),
            blackhole: false,
            errors: Vec::new(),
        }
    }

    /// Moves signals both ways, handles the server's messages, swaps
    /// playback when the new path delivers, reports failed links.
    async fn pump(&mut self, tones: &BTreeMap<u64, usize>) {
        // Signals of links still connecting after a switch up are moot.
        let signals = self.mesh.take_signals();
        for s in signals.into_iter().filter(|_| self.target == Path::Mesh) {
            let data = match &s.data {
                SignalData::Offer(sdp) => json!({"kind": "offer", "sdp": sdp}),
                SignalData::Answer(sdp) => json!({"kind": "answer", "sdp": sdp}),
                SignalData::Candidate(c) => json!({"kind": "candidate", "candidate": c}),
            };
            self.ws
                .send(json!({"type": "signal", "to": s.to, "epoch": self.epoch, "data": data}))
                .await;
        }
        let (msgs, open) = self.ws.pending(Duration::from_millis(1)).await;
        assert!(open, "member {} lost its socket", self.id);
        for m in msgs {
            self.handle(m).await;
        }
        if self.blackhole {
            for o in self.mesh.links().collect::<Vec<_>>() {
                self.mesh.set_link_blackhole(o, true);
            }
        }
        if self.target == Path::Mesh {
            let failed = self.mesh.failed_links(MESH_TIMEOUT, Instant::now());
            for peer in failed {
                if self.reported.insert(peer) {
                    self.ws
                        .send(json!({"type": "p2p_failed", "peer": peer, "reason": "timeout", "epoch": self.epoch}))
                        .await;
                }
            }
        }
        // Make before break: swap when the new path delivers every other
        // member's tone.
        if let Some(since) = self.switch_since {
            let want: Vec<usize> = self
                .others
                .iter()
                .filter_map(|o| tones.get(o).copied())
                .collect();
            if self.playing != self.target && self.mesh.delivers(self.target, &want, since) {
                self.swapped_at = Some(self.mesh.switch_playback(self.target));
                self.playing = self.target;
                self.switch_since = None;
                let mode = mode_name(self.target);
                self.ws
                    .send(json!({"type": "switched", "mode": mode, "epoch": self.epoch}))
                    .await;
            }
        }
    }

    async fn handle(&mut self, m: Value) {
        let peer = |m: &Value, k: &str| m[k].as_u64().unwrap();
        match m["type"].as_str().unwrap() {
            "signal" => {
                let d = &m["data"];
                let data = match d["kind"].as_str().unwrap() {
                    "offer" => SignalData::Offer(d["sdp"].as_str().unwrap().into()),
                    "answer" => SignalData::Answer(d["sdp"].as_str().unwrap().into()),
                    _ => SignalData::Candidate(d["candidate"].as_str().unwrap().into()),
                };
                let signal = Signal {
                    from: peer(&m, "from"),
                    to: self.id,
                    data,
                };
                self.mesh.handle_signal(signal).expect("a good signal");
            }
            "member_joined" => {
                let p = peer(&m["member"], "peer");
                self.others.insert(p);
                if self.target == Path::Mesh {
                    self.mesh.connect(p).unwrap();
                }
            }
            "member_left" => {
                let p = peer(&m, "peer");
                self.others.remove(&p);
                self.mesh.disconnect(p);
            }
            "mode" => {
                self.epoch = m["epoch"].as_u64().unwrap();
                self.target = path(m["mode"].as_str().unwrap());
                self.modes.push(m.clone());
                self.reported.clear();
                self.switch_since = Some(Instant::now());
                if self.target == Path::Sfu && self.mesh.sfu().is_none() {
                    let name = format!("m{}-sfu", self.tone);
                    let (session, offer) = UdpPeer::new(&name, &sfu_spec(self.tone)).unwrap();
                    self.joining = Some(session);
                    self.ws
                        .send(json!({"type": "sfu_join", "offer": offer, "epoch": self.epoch}))
                        .await;
                } else if self.target == Path::Mesh {
                    self.mesh.connect_all(self.others.iter().copied()).unwrap();
                }
            }
            "sfu_joined" => {
                let mut session = self.joining.take().expect("an sfu_join waits");
                session.start(m["answer"].as_str().unwrap());
                self.mesh.attach_sfu(session);
            }
            "switched" => {
                let mode = path(m["mode"].as_str().unwrap());
                if self.playing != mode {
                    self.swapped_at = Some(self.mesh.switch_playback(mode));
                    self.playing = mode;
                }
                self.switch_since = None;
                match mode {
                    Path::Sfu => self.mesh.close_mesh(),
                    Path::Mesh => self.mesh.detach_sfu(),
                }
                self.completed.insert(m["epoch"].as_u64().unwrap(), m);
            }
            "error" => self.errors.push(m),
            _ => {}
        }
    }
}

/// Pumps every member until `cond` holds (true) or `limit` passed.
async fn pump_until(
    members: &mut [Member],
    limit: Duration,
    mut cond: impl FnMut(&[Member]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let tones: BTreeMap<u64, usize> = members.iter().map(|m| (m.id, m.tone)).collect();
        for m in members.iter_mut() {
            m.pump(&tones).await;
        }
        if cond(members) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Pumps every member until each was told that a switch to `mode` is
/// complete (`switched`); false past `LIMIT`.
async fn until_switched(members: &mut [Member], mode: &str) -> bool {
    pump_until(members, LIMIT, |ms| {
        ms.iter()
            .all(|m| m.completed.values().any(|c| c["mode"] == mode))
    })
    .await
}

/// Pumps every member for `d`.
async fn pump_for(members: &mut [Member], d: Duration) {
    pump_until(members, d, |_| false).await;
}

/// Whether every member plays every other's tone in at least 10 frames of
/// the last 0.5 s.
fn all_hear_all(members: &[Member]) -> bool {
    let now = Instant::now();
    let from = now - Duration::from_millis(500);
    members.iter().all(|m| {
        let heard = m.mesh.tones_played(from, now, 10);
        members
            .iter()
            .filter(|o| o.id != m.id)
            .all(|o| heard.contains(&o.tone))
    })
}

async fn metric(server: &Server, name: &str, label: Option<(&str, &str)>) -> f64 {
    let base = format!("http://{}", server.http_addr());
    value(&scrape(&base).await, name, label)
}

/// The switch's measures for every member that was there before it: the
/// longest gap of each other member's tone in `[from, to]`, and the 20 ms
/// windows in which a tone was heard twice since its swap.
fn judge(members: &[Member], from: Instant, to: Instant) -> (Duration, usize) {
    let mut worst = Duration::ZERO;
    let mut twice = 0;
    for m in members {
        for o in members.iter().filter(|o| o.id != m.id) {
            let gap = m.mesh.longest_gap(o.tone, from, to);
            if gap > worst {
                eprintln!("member {} tone {}: gap {gap:?}", m.id, o.tone);
                worst = gap;
            }
            let swap = m.swapped_at.unwrap_or(from);
            twice += m.mesh.heard_twice(o.tone, swap, to);
        }
    }
    (worst, twice)
}

/// Seven members talk peer-to-peer: the server carries none of their
/// media. The eighth joins: every member joins the SFU, swaps when it
/// delivers, and nobody's audio stops for 100 ms or doubles. Three leave:
/// a second later the five are peer-to-peer again, as seamlessly, and the
/// engine has no session left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_talk_p2p_the_eighth_moves_them_to_the_sfu_and_five_return() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = server(hybrid_config()).await;
    let mut members = Vec::new();
    for tone in 0..7 {
        let m = Member::join(&server, "huddle", tone).await;
        assert_eq!(m.target, Path::Mesh, "member {tone} starts in P2P");
        members.push(m);
    }
    assert!(
        pump_until(&mut members, LIMIT, all_hear_all).await,
        "the seven hear each other over their mesh"
    );
    // The server carried none of it.
    assert_eq!(metric(&server, "sfu_rtp_received_total", None).await, 0.0);
    assert_eq!(metric(&server, "sfu_hybrid_p2p_sessions", None).await, 0.0);
    assert_eq!(
        metric(&server, "sfu_hybrid_channels", Some(("state", "p2p"))).await,
        1.0
    );
    assert!(metric(&server, "sfu_hybrid_signals_total", Some(("kind", "offer"))).await >= 21.0);

    pump_for(&mut members, Duration::from_millis(1000)).await;
    let (gap, _) = judge(
        &members,
        Instant::now() - Duration::from_millis(1000),
        Instant::now(),
    );
    eprintln!("steady P2P: longest gap {gap:?}");
    // The eighth.
    let before = Instant::now() - Duration::from_millis(500);
    let eighth = Member::join(&server, "huddle", 7).await;
    assert_eq!(eighth.target, Path::Sfu, "the eighth starts on the SFU");
    let up = eighth.epoch;
    members.push(eighth);
    let done = pump_until(&mut members, LIMIT, |ms| {
        ms.iter().all(|m| m.completed.contains_key(&up))
    })
    .await;
    assert!(done, "every member is told the switch up completed");
    for m in &members[..7] {
        assert_eq!(m.modes.last().unwrap()["reason"], "size", "{:?}", m.modes);
        let c = &m.completed[&up];
        assert!(
            c["stragglers"].as_array().unwrap().is_empty(),
            "{c} {:?} {:?}",
            m.modes,
            m.errors
        );
    }
    pump_for(&mut members, Duration::from_millis(800)).await;
    let after = Instant::now();
    assert!(
        all_hear_all(&members),
        "all eight hear each other on the SFU"
    );
    let (gap, twice) = judge(&members[..7], before, after);
    assert!(gap < Duration::from_millis(100), "longest gap {gap:?}");
    assert_eq!(twice, 0, "windows heard twice");
    assert_eq!(
        metric(
            &server,
            "sfu_hybrid_switches_total",
            Some(("reason", "size"))
        )
        .await,
        1.0
    );
    assert!(metric(&server, "sfu_rtp_forwarded_total", None).await > 0.0);

    // Three leave (the eighth among them): five, and after a second P2P.
    for mut m in members.drain(5..) {
        m.ws.send(json!({"type": "leave"})).await;
    }
    let before = Instant::now() - Duration::from_millis(500);
    let down = until_switched(&mut members, "p2p").await;
    assert!(down, "the five return to P2P");
    for m in &members {
        assert_eq!(m.modes.last().unwrap()["reason"], "small");
    }
    pump_for(&mut members, Duration::from_millis(800)).await;
    let after = Instant::now();
    assert!(
        all_hear_all(&members),
        "the five hear each other over their mesh"
    );
    let (gap, twice) = judge(&members, before, after);
    assert!(gap < Duration::from_millis(100), "longest gap {gap:?}");
    assert_eq!(twice, 0);
    // The server ended every SFU session and carries nothing now.
    assert_eq!(metric(&server, "sfu_hybrid_p2p_sessions", None).await, 0.0);
    let received = metric(&server, "sfu_rtp_received_total", None).await;
    pump_for(&mut members, Duration::from_millis(300)).await;
    assert_eq!(
        metric(&server, "sfu_rtp_received_total", None).await,
        received
    );
    for m in &members {
        assert!(m.errors.is_empty(), "member {}: {:?}", m.id, m.errors);
        assert_eq!(m.mesh.decode_errors(), 0);
    }
}

/// A pair whose mesh link cannot connect (every datagram dropped): both
/// report it, the channel moves to the SFU with reason `p2p_failed`, and
/// they hear each other there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_link_that_cannot_connect_moves_the_channel_to_the_sfu() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = server(hybrid_config()).await;
    let mut a = Member::join(&server, "blocked", 0).await;
    a.blackhole = true;
    let mut b = Member::join(&server, "blocked", 1).await;
    b.blackhole = true;
    let mut members = vec![a, b];
    let up = until_switched(&mut members, "sfu").await;
    assert!(up, "the channel moves to the SFU");
    for m in &members {
        assert_eq!(m.modes.last().unwrap()["reason"], "p2p_failed");
    }
    assert!(
        pump_until(&mut members, LIMIT, all_hear_all).await,
        "the pair hears each other on the SFU"
    );
    assert_eq!(
        metric(
            &server,
            "sfu_hybrid_fallbacks_total",
            Some(("reason", "timeout"))
        )
        .await,
        1.0
    );
}

const ADMIN: &str = "an-admin-token-of-at-least-32-bytes-of-random";

/// `PUT /admin/hybrid` with `body` and `token`; the status and the JSON.
async fn put_hybrid(server: &Server, token: &str, body: Value) -> (u16, Value) {
    let url = format!("http://{}/admin/hybrid", server.http_addr());
    let auth = format!("Bearer {token}");
    let res = http(
        reqwest::Method::PUT,
        url,
        &[("authorization", auth.as_str())],
        body.to_string(),
    )
    .await;
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// P2P turned off at runtime (the admin endpoint) moves a talking P2P
/// channel onto the SFU with the usual switch; turned on again, the
/// channel returns after the hysteresis. Nobody is dropped; the endpoint
/// wants its token and checks what it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_turned_off_and_on_at_runtime_moves_channels_both_ways() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cfg = hybrid_config();
    cfg.admin_token = Some(ADMIN.into());
    let server = server(cfg).await;
    let mut members = vec![
        Member::join(&server, "rollout", 0).await,
        Member::join(&server, "rollout", 1).await,
    ];
    assert!(pump_until(&mut members, LIMIT, all_hear_all).await);
    // Past the burst a link delivers as it connects: a steady flow.
    pump_for(&mut members, Duration::from_millis(500)).await;

    let (status, _) = put_hybrid(&server, "wrong", json!({"enabled": false})).await;
    assert_eq!(status, 401);
    let (status, body) = put_hybrid(&server, ADMIN, json!({"p2p_max": 40})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("p2p_max"),
        "{body}"
    );
    let (status, body) = put_hybrid(&server, ADMIN, json!({"enable": false})).await;
    assert_eq!(status, 400, "an unknown key: {body}");

    let (status, body) = put_hybrid(&server, ADMIN, json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["settings"]["enabled"], false);
    let before = Instant::now() - Duration::from_millis(500);
    let up = until_switched(&mut members, "sfu").await;
    assert!(up, "the channel moves to the SFU");
    for m in &members {
        assert_eq!(m.modes.last().unwrap()["reason"], "disabled");
    }
    pump_for(&mut members, Duration::from_millis(500)).await;
    let (gap, twice) = judge(&members, before, Instant::now());
    assert!(gap < Duration::from_millis(100), "longest gap {gap:?}");
    assert_eq!(twice, 0);

    let (status, _) = put_hybrid(&server, ADMIN, json!({"enabled": true})).await;
    assert_eq!(status, 200);
    let down = until_switched(&mut members, "p2p").await;
    assert!(down, "the channel returns to P2P");
    let url = format!("http://{}/admin/hybrid", server.http_addr());
    let auth = format!("Bearer {ADMIN}");
    let got = http(
        reqwest::Method::GET,
        url,
        &[("authorization", auth.as_str())],
        String::new(),
    )
    .await;
    let got: Value = serde_json::from_str(&got.text().await.unwrap()).unwrap();
    assert_eq!(got["channels"]["p2p"], 1, "{got}");
    for m in &members {
        assert!(m.errors.is_empty(), "{:?}", m.errors);
    }
}

/// A node of two workers started without hybrid spreads big channels over
/// them (`spread_after` unset: 200): hybrid turns on at runtime there. A
/// node whose channels would spread while still small enough for P2P
/// (`spread_after` not above `p2p_max`) refuses it, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_turns_on_at_runtime_unless_channels_spread_while_small() {
    let mut cfg = config();
    cfg.admin_token = Some(ADMIN.into());
    cfg.workers = 2;
    let spreading = server(cfg.clone()).await;
    let (status, body) = put_hybrid(&spreading, ADMIN, json!({"enabled": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["settings"]["enabled"], true);

    cfg.spread_after = Some(5);
    let early = server(cfg).await;
    let (status, body) = put_hybrid(&early, ADMIN, json!({"enabled": true})).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("p2p_max"), "{body}");
    let (status, body) = put_hybrid(&early, ADMIN, json!({"p2p_max": 6})).await;
    assert_eq!(status, 200, "other keys still change: {body}");
    assert_eq!(body["settings"]["enabled"], false);
}

/// Hybrid on a node that spreads big channels over two workers
/// (`spread_after` 3, `p2p_max` 2): two members talk P2P, the third moves
/// the channel onto the SFU, the fourth is placed on the other worker and
/// joins on the SFU. When the first worker is down to one member the
/// channel stays on the SFU (a mesh there would not reach the member on
/// the other worker); once that member leaves too, the last one returns to
/// P2P.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_channel_stays_on_the_sfu_until_it_is_on_one_worker_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cfg = hybrid_config();
    cfg.workers = 2;
    cfg.spread_after = Some(3);
    cfg.p2p_max = 2;
    cfg.p2p_return_at = 2;
    let server = server(cfg).await;
    let mut members = vec![
        Member::join(&server, "spread", 0).await,
        Member::join(&server, "spread", 1).await,
    ];
    assert!(members.iter().all(|m| m.target == Path::Mesh));
    assert!(pump_until(&mut members, LIMIT, all_hear_all).await, "P2P");
    members.push(Member::join(&server, "spread", 2).await);
    assert!(
        until_switched(&mut members, "sfu").await,
        "the third moves it up"
    );
    let fourth = Member::join(&server, "spread", 3).await;
    assert_eq!(fourth.target, Path::Sfu, "the fourth joins on the SFU");
    let workers: Vec<u64> = members
        .iter()
        .chain([&fourth])
        .map(|m| m.id >> 40)
        .collect();
    assert_eq!(workers, [0, 0, 0, 1], "the fourth is on the other worker");
    members.push(fourth);
    assert!(
        pump_until(&mut members, LIMIT, all_hear_all).await,
        "the four hear each other across the workers"
    );
    // Two of the first worker leave: one member there, one on the other.
    for mut m in members.drain(1..3) {
        m.ws.send(json!({"type": "leave"})).await;
    }
    pump_for(&mut members, Duration::from_millis(2500)).await;
    for m in &members {
        assert_eq!(m.target, Path::Sfu, "still on the SFU: {:?}", m.modes);
    }
    assert!(all_hear_all(&members), "the two hear each other");
    // The other worker's member leaves: the last one returns to P2P.
    let mut last = members.pop().unwrap();
    last.ws.send(json!({"type": "leave"})).await;
    assert!(until_switched(&mut members, "p2p").await, "back to P2P");
    assert_eq!(members[0].modes.last().unwrap()["reason"], "small");
    for m in &members {
        assert!(m.errors.is_empty(), "member {}: {:?}", m.id, m.errors);
    }
}

/// `GET /admin/hybrid` of the server at `base`: its `settings`.
async fn settings_at(base: &str) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let res = http(
        reqwest::Method::GET,
        format!("{base}/admin/hybrid"),
        &[("authorization", auth.as_str())],
        String::new(),
    )
    .await;
    let got: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    got["settings"].clone()
}

/// The running binary applies the hybrid keys of its configuration file on
/// SIGHUP; a file it refuses leaves the settings in force, counted.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_configuration_file_s_hybrid_keys() {
    use std::io::BufRead;
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(format!("sfu-hybrid-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sfu-server.toml");
    let write = |body: &str| {
        // Aside, then renamed: a reload never reads half a file.
        let aside = dir.join("next.toml");
        // Channels on one worker: a node that may spread them over its
        // workers refuses to turn hybrid on at runtime.
        let head = format!("admin_token = \"{ADMIN}\"\nspread_after = 0\n");
        std::fs::write(&aside, format!("{head}{body}")).unwrap();
        std::fs::rename(&aside, &file).unwrap();
    };
    write("hybrid = false\n");
    let mut child = binary::sfu_server_on_free_ports()
        .arg("--config")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: String = lines
        .find_map(|l| {
            let rest = l.ok()?.split_once("open http://")?.1.to_owned();
            Some(rest.split_once('/')?.0.to_owned())
        })
        .expect("the server prints its address");
    let base = format!("http://{addr}");
    assert_eq!(settings_at(&base).await["enabled"], false);

    write("hybrid = true\np2p_max = 3\np2p_return_at = 2\np2p_rollout_percent = 50.0\n");
    binary::signal(&child, nix::sys::signal::Signal::SIGHUP);
    let applied = until(|| async {
        let s = settings_at(&base).await;
        s["enabled"] == true && s["p2p_max"] == 3 && s["rollout_percent"] == 50.0
    });
    assert!(applied.await, "SIGHUP applied the file's hybrid keys");

    write("hybrid = true\np2p_max = 99\n");
    binary::signal(&child, nix::sys::signal::Signal::SIGHUP);
    let refused = until(|| async {
        value(
            &scrape(&base).await,
            "sfu_config_reloads_total",
            Some(("outcome", "failed")),
        ) == 1.0
    });
    assert!(refused.await, "the bad file is counted");
    assert_eq!(
        settings_at(&base).await["p2p_max"],
        3,
        "the settings in force stay"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop it"
    );
    binary::signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token with `p2p: false` keeps its member, and so its channel, on the
/// SFU: a P2P channel it joins switches up with reason `token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_p2p_moves_the_channel_to_the_sfu() {
    use sfu_server::auth::{mint, Grants};
    let _serial = ONE_AT_A_TIME.lock().await;
    const SECRET: &str = "hybrid-test-secret-of-at-least-32-bytes";
    let mut cfg = hybrid_config();
    cfg.auth_secret = Some(SECRET.into());
    let server = server(cfg).await;
    let token = |sub: &str, p2p: Option<bool>| {
        let grants = Grants {
            sub: sub.into(),
            channel: "claims".into(),
            can_publish: true,
            can_subscribe: true,
            can_moderate: false,
            exp: sfu_server::state::unix_now() + 600,
            jti: None,
            region: None,
            p2p,
        };
        mint(SECRET.as_bytes(), &grants)
    };
    let a = Member::join_with(&server, "claims", 0, Some(&token("ann", None))).await;
    assert_eq!(a.target, Path::Mesh);
    let b = Member::join_with(&server, "claims", 1, Some(&token("bob", Some(false)))).await;
    assert_eq!(b.target, Path::Sfu, "its token keeps it on the SFU");
    let mut members = vec![a, b];
    assert!(until_switched(&mut members[..1], "sfu").await);
    assert_eq!(members[0].modes.last().unwrap()["reason"], "token");
    assert!(pump_until(&mut members, LIMIT, all_hear_all).await);
}

/// Without an admin token the endpoint does not exist.
#[tokio::test]
async fn the_admin_endpoint_needs_a_configured_token() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = server(hybrid_config()).await;
    let (status, _) = put_hybrid(&server, ADMIN, json!({"enabled": false})).await;
    assert_eq!(status, 404);
}

/// The median and the largest of `xs`.
fn p50_max(mut xs: Vec<Duration>) -> (Duration, Duration) {
    xs.sort();
    (xs[xs.len() / 2], xs[xs.len() - 1])
}

/// The media worker's CPU seconds and the bytes in and out of the server.
async fn cost(server: &Server) -> (f64, f64) {
    let base = format!("http://{}", server.http_addr());
    let s = scrape(&base).await;
    let cpu = value(&s, "sfu_worker_cpu_seconds_total", Some(("worker", "0")));
    let bytes = value(&s, "sfu_bytes_total", Some(("direction", "in")))
        + value(&s, "sfu_bytes_total", Some(("direction", "out")));
    (cpu, bytes)
}

/// BENCHMARKS.md, "Hybrid channels": the longest gap at the members'
/// decoders across 20 switches each way (three members; a fourth joins and
/// leaves), the time from the mode change to the switch complete, and the
/// server's CPU and bandwidth for a seven-member channel in P2P and on the
/// SFU. `cargo test --release -p sfu-server --test hybrid -- --ignored
/// --nocapture` (scripts/hybrid-bench.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/hybrid-bench.sh"]
async fn bench_switch_gaps_and_server_cost() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cfg = hybrid_config();
    cfg.p2p_max = 3;
    cfg.p2p_return_at = 3;
    cfg.admin_token = Some(ADMIN.into());
    let server = server(cfg).await;
    let mut members = Vec::new();
    for tone in 0..3 {
        members.push(Member::join(&server, "bench", tone).await);
    }
    assert!(pump_until(&mut members, LIMIT, all_hear_all).await);
    pump_for(&mut members, Duration::from_millis(500)).await;
    let (mut up_gaps, mut down_gaps, mut up_times, mut down_times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..20 {
        let before = Instant::now() - Duration::from_millis(500);
        let fourth = Member::join(&server, "bench", 3).await;
        let up = fourth.epoch;
        members.push(fourth);
        let t = Instant::now();
        let done = pump_until(&mut members, LIMIT, |ms| {
            ms.iter().all(|m| m.completed.contains_key(&up))
        })
        .await;
        assert!(done, "round {round}: up");
        up_times.push(t.elapsed());
        pump_for(&mut members, Duration::from_millis(500)).await;
        let (gap, twice) = judge(&members[..3], before, Instant::now());
        assert_eq!(twice, 0);
        up_gaps.push(gap);

        let mut gone = members.pop().unwrap();
        gone.ws.send(json!({"type": "leave"})).await;
        let before = Instant::now() - Duration::from_millis(500);
        let down = up + 1;
        // The mode change comes p2p_return_after (1 s) after the leave.
        let changed =
            pump_until(&mut members, LIMIT, |ms| ms.iter().all(|m| m.epoch == down)).await;
        assert!(changed, "round {round}: the mode change down");
        let t = Instant::now();
        let done = pump_until(&mut members, LIMIT, |ms| {
            ms.iter().all(|m| m.completed.contains_key(&down))
        })
        .await;
        assert!(done, "round {round}: down");
        down_times.push(t.elapsed());
        pump_for(&mut members, Duration::from_millis(500)).await;
        let (gap, twice) = judge(&members, before, Instant::now());
        assert_eq!(twice, 0);
        down_gaps.push(gap);
    }
    let (g50, gmax) = p50_max(up_gaps);
    let (t50, tmax) = p50_max(up_times);
    println!("switch up (20): longest gap p50 {g50:?} max {gmax:?}; mode change to complete p50 {t50:?} max {tmax:?}");
    let (g50, gmax) = p50_max(down_gaps);
    let (t50, tmax) = p50_max(down_times);
    println!("switch down (20): longest gap p50 {g50:?} max {gmax:?}; mode change to complete p50 {t50:?} max {tmax:?}");
    drop(members);

    // Seven members, 10 s in P2P, then 10 s on the SFU (P2P turned off).
    let (status, _) = put_hybrid(&server, ADMIN, json!({"p2p_max": 7, "p2p_return_at": 5})).await;
    assert_eq!(status, 200);
    let mut seven = Vec::new();
    for tone in 0..7 {
        seven.push(Member::join(&server, "seven", tone).await);
    }
    assert!(pump_until(&mut seven, LIMIT, all_hear_all).await);
    let window = Duration::from_secs(10);
    let (c0, b0) = cost(&server).await;
    pump_for(&mut seven, window).await;
    let (c1, b1) = cost(&server).await;
    let (status, _) = put_hybrid(&server, ADMIN, json!({"enabled": false})).await;
    assert_eq!(status, 200);
    assert!(until_switched(&mut seven, "sfu").await);
    pump_for(&mut seven, Duration::from_millis(500)).await;
    let (c2, b2) = cost(&server).await;
    pump_for(&mut seven, window).await;
    let (c3, b3) = cost(&server).await;
    assert!(all_hear_all(&seven));
    let secs = window.as_secs_f64();
    println!(
        "seven members, P2P: server media CPU {:.4} cores, {:.0} kbit/s; SFU: {:.4} cores, {:.0} kbit/s",
        (c1 - c0) / secs,
        (b1 - b0) * 8.0 / secs / 1000.0,
        (c3 - c2) / secs,
        (b3 - b2) * 8.0 / secs / 1000.0
    );
}
