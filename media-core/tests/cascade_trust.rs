//! What a link may do to an origin, attacked from an authenticated edge: it
//! speaks only for the voices its own engine numbered, it brings in a bounded
//! number of them, and it leaves nothing behind when it closes. And voice
//! ids never collide across engines.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use media_core::{
    Command, EngineConfig, EngineId, Error, Event, Input, LinkId, RelayMsg, Role, SourceId,
};
use testkit::audio::{ToneSpeaker, TONES};
use testkit::client::ClientSpec;
use testkit::{link_to, Sim};

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

/// A core (node 0) and `edges` edges following it for `channel`.
fn cluster(config: EngineConfig, edges: usize, channel: &str) -> (Sim, Vec<usize>) {
    Sim::cluster(config, Instant::now(), edges, channel)
}

/// Hands the core a relay message over `link`, as if the edge at its other
/// end sent it; returns how many relay messages the core dropped for it
/// (`dropped_relay`, `dropped_relay_limit`).
fn inject(sim: &mut Sim, link: LinkId, msg: RelayMsg) -> (u64, u64) {
    let before = sim.engine.stats().clone();
    let now = sim.now;
    sim.engine
        .handle_input(Input::Relay { now, link, msg })
        .unwrap();
    let after = sim.engine.stats();
    (
        after.dropped_relay - before.dropped_relay,
        after.dropped_relay_limit - before.dropped_relay_limit,
    )
}

fn media(channel: &str, source: SourceId, seq: u64, payload: Vec<u8>) -> RelayMsg {
    RelayMsg::Media {
        channel: channel.into(),
        source,
        seq,
        rtp_ts: (seq as u32).wrapping_mul(960),
        // As loud as it gets, speaking: selected at once if admitted.
        level: 0,
        vad: Some(true),
        payload: Bytes::from(payload),
    }
}

fn source_info(channel: &str, source: SourceId, identity: &str) -> RelayMsg {
    RelayMsg::SourceInfo {
        channel: channel.into(),
        source,
        identity: identity.into(),
    }
}

/// Edge 1 sends real Opus frames of its own tones under the ids of a core
/// member's voice and of edge 2's, renames them and tries to make edge 2's
/// voice leave. The core drops and counts every one of those messages;
/// every listener, on the core and on edge 2, keeps hearing exactly the two
/// real speakers, and the core keeps their names.
#[test]
fn an_edge_cannot_speak_for_the_cores_members_or_another_edges() {
    let (mut sim, e) = cluster(EngineConfig::new(testkit::SEED), 2, "c");
    let core_speaker = sim.join_on(0, "alice", "c", Role::Speaker, ClientSpec::speaker(0));
    let edge_speaker = sim.join_on(e[1], "bob", "c", Role::Speaker, ClientSpec::speaker(1));
    let core_listener = sim.join_on(0, "l0", "c", Role::Listener, ClientSpec::listener());
    let edge_listener = sim.join_on(e[1], "l2", "c", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(core_speaker, true);
    sim.set_talking(edge_speaker, true);
    sim.run_for(Duration::from_secs(1));

    let alice = sim
        .engine
        .peer_source(media_core::PeerId(core_speaker as u64));
    let alice = alice.expect("alice joined the core");
    let bob = sim
        .engine_at(e[1])
        .peer_source(media_core::PeerId(edge_speaker as u64))
        .expect("bob joined edge 2");
    assert_eq!(alice.engine(), sim.engine.config().engine_id);
    assert_eq!(bob.engine(), sim.engine_at(e[1]).config().engine_id);
    // A voice edge 2 could number next: not edge 1's either.
    let bob_next = SourceId(bob.0 + 1);

    let attacker = link_to(e[0]);
    let start = sim.now;
    let mut fake = [(alice, 5), (bob, 6), (bob_next, 7)]
        .map(|(source, tone)| (source, ToneSpeaker::new(TONES[tone], 0.5)));
    let mut dropped = 0;
    let mut sent = 0;
    for seq in 0..100u64 {
        for (source, speaker) in &mut fake {
            let msg = media("c", *source, 1_000_000 + seq, speaker.next_frame().payload);
            dropped += inject(&mut sim, attacker, msg).0;
            sent += 1;
        }
        sim.run_for(Duration::from_millis(20));
    }
    for msg in [
        source_info("c", alice, "mallory"),
        source_info("c", bob_next, "mallory"),
        source_info("c", bob, ""),
    ] {
        dropped += inject(&mut sim, attacker, msg).0;
        sent += 1;
    }
    assert_eq!(dropped, sent, "every forged message dropped and counted");
    sim.run_for(Duration::from_millis(500));

    for l in [core_listener, edge_listener] {
        let c = &sim.clients[l];
        assert_eq!(
            c.tones_heard(start, sim.now, 1),
            set(&[0, 1]),
            "{} hears only the real speakers",
            c.name
        );
    }
    let voices = sim.engine.voices("c").unwrap();
    let names: BTreeSet<(SourceId, &str)> = voices.iter().map(|(s, i)| (*s, &**i)).collect();
    assert_eq!(names, BTreeSet::from([(alice, "alice"), (bob, "bob")]));
    let renamed = sim
        .events_since(start)
        .any(|ev| matches!(ev, Event::RemoteSource { identity, .. } if &**identity == "mallory"));
    assert!(!renamed, "no node was told of the forged name");
    assert_eq!(sim.engine.link_voices(attacker), 0);
}

/// Edge 1 announces 10,000 voices numbered as its own (and sends a frame of
/// each) and subscribes to 10,000 channels: the core takes the first 1,024
/// voices and 4,096 channels (the defaults), drops and counts the rest, and
/// forgets all of it when the link closes.
#[test]
fn an_edge_spraying_ten_thousand_voices_is_capped_and_forgotten_on_close() {
    let config = EngineConfig::new(testkit::SEED);
    let (max_voices, max_channels) = (config.max_sources_per_link, config.max_channels_per_link);
    let (mut sim, e) = cluster(config, 1, "c");
    let speaker = sim.join_on(0, "alice", "c", Role::Speaker, ClientSpec::speaker(0));
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.run_for(Duration::from_millis(200));
    let alice = sim.engine.peer_source(media_core::PeerId(speaker as u64));
    let edge = sim.engine_at(e[0]).config().engine_id;
    let link = link_to(e[0]);

    let mut limited = 0;
    for i in 1..=10_000u32 {
        let source = SourceId(u32::from(edge.get()) << 20 | i);
        limited += inject(&mut sim, link, source_info("c", source, &format!("v{i}"))).1;
        limited += inject(
            &mut sim,
            link,
            media("c", source, 1, vec![0xf8, 0xff, 0xfe]),
        )
        .1;
    }
    assert_eq!(sim.engine.link_voices(link), max_voices);
    assert_eq!(limited, 2 * (10_000 - max_voices as u64));
    let voices = sim.engine.voices("c").unwrap();
    assert_eq!(voices.len(), max_voices + 1, "the capped voices and alice");

    let channels_before = sim.engine.channel_count();
    let mut refused = 0;
    for i in 0..10_000 {
        let msg = RelayMsg::Subscribe {
            channel: format!("spray-{i}").into(),
        };
        refused += inject(&mut sim, link, msg).1;
    }
    // "c" is one of the link's channels already.
    assert_eq!(refused, 10_000 - (max_channels as u64 - 1));
    assert_eq!(
        sim.engine.channel_count(),
        channels_before + max_channels - 1
    );

    sim.set_link_cut(0, e[0], true);
    assert_eq!(sim.engine.link_voices(link), 0);
    assert_eq!(
        sim.engine.voices("c").unwrap(),
        vec![(alice.unwrap(), "alice".into())]
    );
    assert_eq!(sim.engine.channel_count(), channels_before);
    // Closed: whatever still comes over the link is dropped, not counted in.
    let late = SourceId(u32::from(edge.get()) << 20 | 1);
    assert_eq!(inject(&mut sim, link, source_info("c", late, "x")), (1, 0));
    assert_eq!(sim.engine.voices("c").unwrap().len(), 1);
}

/// Every engine of a cluster numbers its voices in its own range: ids from
/// the core and two edges never coincide and each names its engine.
#[test]
fn engines_never_give_out_the_same_source_id() {
    let (mut sim, e) = cluster(EngineConfig::new(testkit::SEED), 2, "c");
    let mut peers = Vec::new();
    for node in [0, e[0], e[1]] {
        for i in 0..20 {
            let name = format!("n{node}-{i}");
            let idx = sim.join_on(node, &name, "c", Role::Speaker, ClientSpec::speaker(0));
            peers.push((node, idx));
        }
    }
    let mut seen = HashSet::new();
    for (node, idx) in peers {
        let engine = sim.engine_at(node);
        let source = engine
            .peer_source(media_core::PeerId(idx as u64))
            .expect("joined");
        assert_eq!(source.engine(), engine.config().engine_id);
        assert!(seen.insert(source), "{source} given out twice");
    }
}

/// A link to this engine's own number, or to the number of another open
/// link, is refused: two links speaking for one engine's voices would make
/// ownership ambiguous. Reopening a link to another engine forgets what it
/// brought in before.
#[test]
fn a_link_to_an_engine_number_in_use_is_refused() {
    let (mut sim, e) = cluster(EngineConfig::new(testkit::SEED), 1, "c");
    let own = sim.engine.config().engine_id;
    let edge = sim.engine_at(e[0]).config().engine_id;
    let now = sim.now;
    let mut open = |link, engine| {
        sim.engine.handle_input(Input::Command {
            now,
            command: Command::LinkOpened { link, engine },
        })
    };
    assert_eq!(open(LinkId(77), own), Err(Error::EngineIdInUse(own)));
    assert_eq!(open(LinkId(77), edge), Err(Error::EngineIdInUse(edge)));
    let other = EngineId::new(9).unwrap();
    assert_eq!(open(LinkId(77), other), Ok(()));
    // The same link again, same engine: nothing changes.
    assert_eq!(open(LinkId(77), other), Ok(()));

    let link = LinkId(77);
    let subscribe = RelayMsg::Subscribe {
        channel: "c".into(),
    };
    assert_eq!(inject(&mut sim, link, subscribe), (0, 0));
    let voice = SourceId(9 << 20 | 1);
    assert_eq!(inject(&mut sim, link, source_info("c", voice, "v")), (0, 0));
    assert_eq!(sim.engine.link_voices(link), 1);
    let now = sim.now;
    let command = Command::LinkOpened {
        link,
        engine: EngineId::new(10).unwrap(),
    };
    sim.engine
        .handle_input(Input::Command { now, command })
        .unwrap();
    assert_eq!(sim.engine.link_voices(link), 0);
    // (The channel itself is gone: nothing else used it.)
    let voices = sim.engine.voices("c").unwrap_or_default();
    assert!(!voices.iter().any(|(s, _)| *s == voice));
}
