//! A channel spread over a core and three edges on a simulated clock: relay
//! messages between engines, real str0m clients, real Opus.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use media_core::{Command, EngineConfig, Role};
use testkit::client::ClientSpec;
use testkit::{link_to, Sim};

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

/// A core (node 0) and `edges` edges following it for `channel`.
fn cluster(edges: usize, channel: &str) -> (Sim, Vec<usize>) {
    Sim::cluster(
        EngineConfig::new(testkit::SEED),
        Instant::now(),
        edges,
        channel,
    )
}

#[test]
fn core_and_three_edges_every_listener_hears_the_selected_speakers() {
    let (mut sim, e) = cluster(3, "stage");
    let s0 = sim.join_on(
        0,
        "core-speaker",
        "stage",
        Role::Speaker,
        ClientSpec::speaker(0),
    );
    let s1 = sim.join_on(
        e[0],
        "edge1-speaker",
        "stage",
        Role::Speaker,
        ClientSpec::speaker(1),
    );
    let s2 = sim.join_on(
        e[1],
        "edge2-speaker",
        "stage",
        Role::Speaker,
        ClientSpec::speaker(2),
    );
    // A speaker that stays silent, on the third edge.
    let quiet = sim.join_on(
        e[2],
        "edge3-quiet",
        "stage",
        Role::Speaker,
        ClientSpec::speaker(3),
    );
    let mut listeners = Vec::new();
    for node in [0, e[0], e[1], e[2]] {
        for i in 0..3 {
            let name = format!("n{node}-l{i}");
            listeners.push(sim.join_on(
                node,
                &name,
                "stage",
                Role::Listener,
                ClientSpec::listener(),
            ));
        }
    }
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    for s in [s0, s1, s2] {
        sim.set_talking(s, true);
    }
    sim.run_for(Duration::from_secs(3));
    let (from, to) = (sim.now - Duration::from_secs(2), sim.now);
    for &l in listeners.iter().chain([&quiet]) {
        let c = &sim.clients[l];
        assert_eq!(c.tones_heard(from, to, 50), set(&[0, 1, 2]), "{}", c.name);
        assert_eq!(c.tones_heard(from, to, 1), set(&[0, 1, 2]), "{}", c.name);
        assert_eq!(c.decode_errors(), 0, "{}", c.name);
    }
    // Speakers hear the others, wherever they are, never themselves.
    assert_eq!(sim.clients[s0].tones_heard(from, to, 50), set(&[1, 2]));
    assert_eq!(sim.clients[s1].tones_heard(from, to, 50), set(&[0, 2]));
    assert_eq!(sim.clients[s2].tones_heard(from, to, 50), set(&[0, 1]));
    // The core sent each edge the selected voices once per link, not once
    // per listener: per edge about 3 voices × 50 packets/s (minus the edge's
    // own voice, which never goes back down).
    let relayed = sim.engine.stats().relay_out;
    assert!(relayed < 3 * 3 * 50 * 6, "{relayed} relay messages for 5 s");
    // Edges name the remote speakers.
    let named = sim.events.iter().zip(&sim.event_nodes).any(|((_, ev), n)| {
        *n == e[2] && matches!(ev, media_core::Event::RemoteSource { identity, .. } if &**identity == "edge1-speaker")
    });
    assert!(named, "edge 3 learned who edge 1's speaker is");
}

#[test]
fn an_edge_speaker_takes_over_when_the_core_speaker_stops() {
    let (mut sim, e) = cluster(2, "room");
    let core_s = sim.join_on(0, "a", "room", Role::Speaker, ClientSpec::speaker(0));
    let edge_s = sim.join_on(e[0], "b", "room", Role::Speaker, ClientSpec::speaker(1));
    let l = sim.join_on(e[1], "l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(core_s, true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.clients[l].tones_heard(sim.now - Duration::from_millis(600), sim.now, 20),
        set(&[0])
    );
    sim.set_talking(core_s, false);
    sim.set_talking(edge_s, true);
    let t = sim.now;
    sim.run_for(Duration::from_secs(1));
    let first = sim.clients[l]
        .first_heard(1, t)
        .expect("the edge speaker is heard on the other edge");
    // Up one hop and down another (5 ms each here) plus selection.
    assert!(first - t < Duration::from_millis(200), "{:?}", first - t);
    assert_eq!(
        sim.clients[l].tones_heard(t + Duration::from_millis(300), sim.now, 20),
        set(&[1])
    );
}

#[test]
fn ten_percent_relay_loss_costs_listeners_no_more_than_that() {
    let (mut sim, e) = cluster(1, "lossy");
    sim.relay_link.loss = 0.10;
    let s = sim.join_on(0, "s", "lossy", Role::Speaker, ClientSpec::speaker(0));
    let ls: Vec<usize> = (0..4)
        .map(|i| {
            sim.join_on(
                e[0],
                &format!("l{i}"),
                "lossy",
                Role::Listener,
                ClientSpec::listener(),
            )
        })
        .collect();
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(s, true);
    sim.run_for(Duration::from_secs(6));
    assert!(sim.relay_lost > 0);
    for &l in &ls {
        let c = &sim.clients[l];
        assert_eq!(
            c.tones_heard(sim.now - Duration::from_secs(5), sim.now, 100),
            set(&[0])
        );
        assert_eq!(c.decode_errors(), 0);
        for log in c.streams.values() {
            let total = log.packets.len() as u64 + log.lost();
            let loss = log.lost() as f64 / total as f64;
            // The link lost ~10% of the media; every listener of the edge
            // misses the same packets, and nothing more.
            assert!(loss > 0.05 && loss < 0.16, "{}: {loss:.3}", c.name);
        }
    }
}

#[test]
fn edge_resubscribes_after_a_link_failure_and_slots_continue() {
    let (mut sim, e) = cluster(1, "ha");
    let s = sim.join_on(0, "s", "ha", Role::Speaker, ClientSpec::speaker(0));
    let l = sim.join_on(e[0], "l", "ha", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(s, true);
    sim.run_for(Duration::from_secs(1));
    let streams_before = sim.clients[l].streams.len();

    // The link dies for a second; the listener hears nothing meanwhile.
    sim.set_link_cut(0, e[0], true);
    let cut = sim.now;
    sim.run_for(Duration::from_secs(1));
    assert!(sim.clients[l]
        .tones_heard(cut + Duration::from_millis(100), sim.now, 1)
        .is_empty());
    // The transport reconnects and the edge subscribes again.
    sim.set_link_cut(0, e[0], false);
    let back = sim.now;
    sim.command_on(
        e[0],
        Command::SetUpstream {
            channel: "ha".into(),
            link: Some(link_to(0)),
        },
    );
    sim.run_for(Duration::from_secs(1));
    let first = sim.clients[l].first_heard(0, back).expect("audio resumes");
    assert!(
        first - back < Duration::from_millis(300),
        "{:?}",
        first - back
    );

    // No renegotiation: the same streams, sequence numbers +1 across the gap,
    // timestamps moved on by at least the silence.
    let c = &sim.clients[l];
    assert_eq!(c.streams.len(), streams_before);
    for log in c.streams.values() {
        for w in log.packets.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1, "seq continuity across the outage");
            let dt = w[1].ts.wrapping_sub(w[0].ts);
            assert!(dt < u32::MAX / 2, "timestamp went backwards");
            let gap = w[1].at - w[0].at;
            if gap > Duration::from_millis(500) {
                assert!(
                    dt as u64 >= (gap.as_millis() as u64 - 100) * 48,
                    "ts moved {dt} over {gap:?}"
                );
            }
        }
    }
    assert_eq!(c.decode_errors(), 0);
}

/// A relay message from a link that is neither the channel's origin nor one
/// of its subscribers (or for a channel this engine does not carry) is
/// dropped and counted; listeners hear nothing of it.
#[test]
fn relay_messages_from_strangers_are_dropped_and_counted() {
    use media_core::{Input, LinkId, RelayMsg, SourceId};
    let (mut sim, e) = cluster(1, "c");
    let l = sim.join_on(e[0], "l", "c", Role::Listener, ClientSpec::listener());
    let s = sim.join_on(0, "s", "c", Role::Speaker, ClientSpec::speaker(0));
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(s, true);
    sim.run_for(Duration::from_millis(500));
    let before = sim.engine.stats().dropped_relay;
    let now = sim.now;
    let stranger = LinkId(999);
    for (i, channel) in ["c", "unknown"].iter().enumerate() {
        let msgs = [
            RelayMsg::Media {
                channel: (*channel).into(),
                source: SourceId(4242),
                seq: i as u64,
                rtp_ts: 0,
                level: 10,
                vad: Some(true),
                payload: bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            },
            RelayMsg::Speakers {
                channel: (*channel).into(),
                selected: vec![SourceId(4242)],
                active: vec![],
                dominant: None,
            },
            RelayMsg::SourceInfo {
                channel: (*channel).into(),
                source: SourceId(4242),
                identity: "intruder".into(),
            },
        ];
        for msg in msgs {
            sim.engine
                .handle_input(Input::Relay {
                    now,
                    link: stranger,
                    msg,
                })
                .unwrap();
        }
    }
    assert_eq!(sim.engine.stats().dropped_relay, before + 6);
    assert!(!sim
        .engine
        .selected_speakers("c")
        .unwrap()
        .contains(&SourceId(4242)));
    sim.run_for(Duration::from_millis(500));
    // The edge's listener still hears exactly the real speaker.
    let c = &sim.clients[l];
    assert_eq!(
        c.tones_heard(sim.now - Duration::from_millis(400), sim.now, 10),
        set(&[0])
    );
}
