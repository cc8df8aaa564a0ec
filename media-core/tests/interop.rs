//! Clients that behave unlike a browser, on a simulated clock with real str0m
//! clients and real Opus: which voices listeners actually decode.
//!
//! - Senders whose RFC 6464 voice-activity bit is always 0 (aiortc, SIP
//!   gateways, music sources, stacks without a VAD): the level decides.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use media_core::{Command, EngineConfig, Role};
use testkit::client::ClientSpec;
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
    let mut sim = Sim::new(EngineConfig::default(), Instant::now());
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
    let mut sim = Sim::new(EngineConfig::default(), Instant::now());
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
