//! Clients that behave unlike a browser, on a simulated clock with real str0m
//! clients and real Opus: which voices listeners actually decode.
//!
//! - Senders whose RFC 6464 voice-activity bit is always 0 (aiortc, SIP
//!   gateways, music sources, stacks without a VAD): the level decides.
//! - Clients that offer RFC 2198 RED for Opus (Chromium): a sender's RED goes
//!   whole to listeners that negotiated it, as plain Opus to the others and
//!   over relay links.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use media_core::{Command, EngineConfig, Role};
use testkit::client::{Client, ClientSpec};
use testkit::{link_to, Sim};

const MS: Duration = Duration::from_millis(1);

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

/// A speaker that sends V = 0 on every packet, however loud.
fn without_vad(tone: usize) -> ClientSpec {
    ClientSpec {
        voice_activity: Some(false),
        ..ClientSpec::speaker(tone)
    }
}

/// The V=1 speaker `first` talks for a second (it becomes the dominant
/// speaker), then the V=0 speaker `second` joins in for two seconds: every
/// listener hears both, each speaker hears the other.
fn both_heard(sim: &mut Sim, first: usize, second: usize, listeners: &[usize]) {
    sim.set_talking(first, true);
    sim.run_for(Duration::from_secs(1));
    let t = sim.now;
    sim.set_talking(second, true);
    sim.run_for(Duration::from_secs(2));
    let (from, to) = (t + 300 * MS, sim.now);
    for &l in listeners {
        let c = &sim.clients[l];
        assert_eq!(c.tones_heard(from, to, 50), set(&[0, 1]), "{}", c.name);
        let onset = c.first_heard(1, t).expect("the V=0 voice is heard") - t;
        assert!(onset <= 200 * MS, "{}: heard after {onset:?}", c.name);
        assert_eq!(c.decode_errors(), 0);
    }
    assert_eq!(sim.clients[first].tones_heard(from, to, 50), set(&[1]));
    assert_eq!(sim.clients[second].tones_heard(from, to, 50), set(&[0]));
}

/// A voice flagged "no voice activity" on every packet is routed by its
/// level beside a voice with V = 1, with listeners' slots to spare: the V=1
/// voice talks first and is the dominant speaker, so only the per-packet
/// selection can route the other.
#[test]
fn a_loud_voice_with_v_bit_zero_is_heard_beside_one_with_v_bit_one() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let vad = sim.join("vad", "room", Role::Speaker, ClientSpec::speaker(0));
    let no_vad = sim.join("no-vad", "room", Role::Speaker, without_vad(1));
    let listeners: Vec<usize> = (0..3)
        .map(|i| {
            let name = format!("l{i}");
            sim.join(&name, "room", Role::Listener, ClientSpec::listener())
        })
        .collect();
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    both_heard(&mut sim, vad, no_vad, &listeners);

    // Silence with V = 0 is still not speech: once it stops, the slot it
    // had goes quiet and the V=1 voice stays.
    sim.set_talking(no_vad, false);
    let stop = sim.now;
    sim.run_for(Duration::from_secs(1));
    for &l in &listeners {
        let c = &sim.clients[l];
        assert_eq!(c.tones_heard(stop + 200 * MS, sim.now, 1), set(&[0]));
    }
}

/// Across the cascade: a V=0 voice on an edge goes up to the core and is
/// heard on the core, on its own edge and on another edge.
#[test]
fn an_edge_voice_with_v_bit_zero_reaches_the_whole_cluster() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let edges = [sim.add_node(), sim.add_node()];
    for e in edges {
        sim.command_on(
            e,
            Command::SetUpstream {
                channel: "stage".into(),
                link: Some(link_to(0)),
            },
        );
    }
    let core_s = sim.join_on(0, "core-s", "stage", Role::Speaker, ClientSpec::speaker(0));
    let edge_s = sim.join_on(edges[0], "edge-s", "stage", Role::Speaker, without_vad(1));
    let listeners: Vec<usize> = [0, edges[0], edges[1]]
        .into_iter()
        .map(|n| {
            let name = format!("n{n}-l");
            sim.join_on(n, &name, "stage", Role::Listener, ClientSpec::listener())
        })
        .collect();
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    both_heard(&mut sim, core_s, edge_s, &listeners);
}

/// A client that offers RED as Chromium does (and sends it when answered).
fn with_red(spec: ClientSpec) -> ClientSpec {
    ClientSpec { red: true, ..spec }
}

/// Opus's payload type in the test clients' offers (str0m's default).
const OPUS_PT: u8 = 111;

/// The payload types of the packets `c` received from `from` on.
fn payload_types(c: &Client, from: Instant) -> BTreeSet<u8> {
    c.streams
        .values()
        .flat_map(|s| &s.packets)
        .filter(|p| p.at >= from)
        .map(|p| p.pt)
        .collect()
}

/// In `sim`: a RED sender talking, a listener that offered RED and one that
/// did not, connected. Returns their indices.
fn red_room(sim: &mut Sim) -> [usize; 3] {
    let s = sim.join("s", "room", Role::Speaker, with_red(ClientSpec::speaker(0)));
    let red = with_red(ClientSpec::listener());
    let red = sim.join("red", "room", Role::Listener, red);
    let plain = sim.join("plain", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(10)));
    sim.set_talking(s, true);
    [s, red, plain]
}

/// A RED sender, a listener that negotiated RED and one that did not: the
/// first gets every packet as RED (the sender's payload, whole), the second
/// plain Opus; both decode the voice. On both send paths.
#[test]
fn red_goes_whole_to_red_listeners_and_as_opus_to_the_others() {
    for direct_srtp in [true, false] {
        let config = EngineConfig {
            direct_srtp,
            ..EngineConfig::new(testkit::SEED)
        };
        let mut sim = Sim::new(config, Instant::now());
        let [s, red, plain] = red_room(&mut sim);
        let red_pt = sim.clients[s].red_pt.map(|pt| *pt).expect("RED answered");
        assert_eq!(sim.clients[red].red_pt.map(|pt| *pt), Some(red_pt));
        assert_eq!(sim.clients[plain].red_pt, None);
        sim.run_for(Duration::from_secs(2));
        let from = sim.now - Duration::from_millis(1500);

        let (r, p) = (&sim.clients[red], &sim.clients[plain]);
        assert_eq!(payload_types(r, from), [red_pt].into());
        assert_eq!(payload_types(p, from), [OPUS_PT].into());
        for c in [r, p] {
            let name = &c.name;
            assert_eq!(
                c.tones_heard(from, sim.now, 70),
                set(&[0]),
                "{direct_srtp} {name}"
            );
            assert_eq!((c.decode_errors(), c.malformed_rtp), (0, 0), "{name}");
        }
        assert_eq!(sim.engine.stats().dropped_wrong_codec, 0);
    }
}

/// With loss on both hops, a RED listener fills most lost packets from the
/// next one's redundancy (the sender's, passed through: uplink losses too),
/// a plain listener conceals them all.
#[test]
fn red_listeners_fill_single_losses_end_to_end() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    sim.net.uplink.loss = 0.08;
    sim.net.downlink.loss = 0.08;
    let [_, red, plain] = red_room(&mut sim);
    sim.run_for(Duration::from_secs(8));

    let totals = |c: &Client| {
        c.streams.values().fold((0, 0), |(lost, rec), s| {
            (lost + s.lost(), rec + s.recovered)
        })
    };
    let (lost, recovered) = totals(&sim.clients[red]);
    // Two hops of 8%: about 60 of 400 packets; a loss is filled unless the
    // next packet was lost too (about 15% of them).
    assert!(lost >= 20, "only {lost} lost: the test would prove nothing");
    assert!(
        recovered * 10 >= lost * 7 && recovered <= lost,
        "RED listener: {recovered} of {lost} losses filled"
    );
    let (lost, recovered) = totals(&sim.clients[plain]);
    assert!(
        lost >= 20 && recovered == 0,
        "plain listener: {recovered} of {lost}"
    );
    for c in [red, plain] {
        let c = &sim.clients[c];
        let from = sim.now - Duration::from_secs(6);
        assert_eq!(c.tones_heard(from, sim.now, 200), set(&[0]));
        assert_eq!(c.decode_errors(), 0);
    }
}

/// `EngineConfig::red = false` answers Opus only, even to clients that offer
/// RED; they send and receive plain Opus.
#[test]
fn red_can_be_turned_off() {
    let config = EngineConfig {
        red: false,
        ..EngineConfig::new(testkit::SEED)
    };
    let mut sim = Sim::new(config, Instant::now());
    let [s, red, _] = red_room(&mut sim);
    assert_eq!(
        (sim.clients[s].red_pt, sim.clients[red].red_pt),
        (None, None)
    );
    sim.run_for(Duration::from_secs(1));
    let from = sim.now - Duration::from_millis(700);
    assert_eq!(payload_types(&sim.clients[red], from), [OPUS_PT].into());
    assert_eq!(sim.clients[red].tones_heard(from, sim.now, 30), set(&[0]));
}

/// Relay links carry the Opus primary: a RED listener beside a RED sender
/// on an edge gets RED, one on the core gets plain Opus, both hear it.
#[test]
fn red_stays_on_the_node_the_sender_is_on() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let edge = sim.add_node();
    sim.command_on(
        edge,
        Command::SetUpstream {
            channel: "stage".into(),
            link: Some(link_to(0)),
        },
    );
    let s = sim.join_on(
        edge,
        "s",
        "stage",
        Role::Speaker,
        with_red(ClientSpec::speaker(0)),
    );
    let near = sim.join_on(
        edge,
        "near",
        "stage",
        Role::Listener,
        with_red(ClientSpec::listener()),
    );
    let far = sim.join_on(
        0,
        "far",
        "stage",
        Role::Listener,
        with_red(ClientSpec::listener()),
    );
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(s, true);
    sim.run_for(Duration::from_secs(2));
    let from = sim.now - Duration::from_millis(1500);
    let red_pt = sim.clients[near]
        .red_pt
        .map(|pt| *pt)
        .expect("RED answered");
    assert_eq!(payload_types(&sim.clients[near], from), [red_pt].into());
    assert_eq!(payload_types(&sim.clients[far], from), [OPUS_PT].into());
    for c in [near, far] {
        let c = &sim.clients[c];
        assert_eq!(c.tones_heard(from, sim.now, 70), set(&[0]), "{}", c.name);
        assert_eq!(c.decode_errors(), 0);
    }
}
