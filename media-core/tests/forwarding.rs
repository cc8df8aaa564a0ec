//! Behaviour of the engine with real str0m clients on a simulated clock:
//! which voices each listener actually decodes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use media_core::{Command, EngineConfig, Event, LeaveReason, PeerId, Role, SourceId};
use testkit::client::ClientSpec;
use testkit::Sim;

const MS: Duration = Duration::from_millis(1);

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

fn source(sim: &Sim, idx: usize) -> SourceId {
    sim.engine.peer_source(PeerId(idx as u64)).expect("joined")
}

/// 3 speakers + 20 listeners: every listener hears exactly the talking
/// speakers' tones, a speaker never hears itself, and nothing fails to decode.
#[test]
fn three_speakers_twenty_listeners_hear_exactly_the_talkers() {
    // The engine's own RTP writer and SRTP sealing (the default), then
    // str0m's send path: the same listeners must hear the same voices.
    for direct_srtp in [true, false] {
        three_speakers_twenty_listeners(EngineConfig {
            direct_srtp,
            ..EngineConfig::new(testkit::SEED)
        });
    }
}

fn three_speakers_twenty_listeners(config: EngineConfig) {
    let direct = config.direct_srtp;
    let mut sim = Sim::new(config, Instant::now());
    let speakers = join_many(&mut sim, "s", 3, "hall", Role::Speaker);
    // A fourth speaker that never talks: present, but never heard.
    let quiet = sim.join("quiet", "hall", Role::Speaker, ClientSpec::speaker(3));
    let listeners = join_many(&mut sim, "l", 20, "hall", Role::Listener);
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    let stats = sim.engine.stats();
    let (fast, slow) = if direct { (24, 0) } else { (0, 24) };
    assert_eq!(
        (stats.peers_direct, stats.peers_str0m_send),
        (fast, slow),
        "which send path the engine took (direct_srtp = {direct})"
    );
    for &s in &speakers {
        sim.set_talking(s, true);
    }
    sim.run_for(Duration::from_secs(3));
    let (from, to) = (sim.now - Duration::from_millis(2500), sim.now);

    for &l in listeners.iter().chain([&quiet]) {
        let c = &sim.clients[l];
        assert_eq!(c.tones_heard(from, to, 50), set(&[0, 1, 2]), "{}", c.name);
        // Nothing else slipped through, even for a frame or two.
        assert_eq!(c.tones_heard(from, to, 1), set(&[0, 1, 2]), "{}", c.name);
        assert_eq!(c.decode_errors(), 0, "{}", c.name);
    }
    for (i, &s) in speakers.iter().enumerate() {
        let c = &sim.clients[s];
        let mut others = set(&[0, 1, 2]);
        others.remove(&i);
        assert_eq!(
            c.tones_heard(from, to, 1),
            others,
            "{} hears itself?",
            c.name
        );
        assert_eq!(c.decode_errors(), 0);
    }
}

/// Turns and overlaps on a script: in every segment, listeners hear exactly
/// the voices the script selects, a new voice is heard within 150 ms of its
/// onset, and the dominant speaker follows the script.
#[test]
fn scripted_turns_and_overlaps() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let s = join_many(&mut sim, "s", 5, "room", Role::Speaker);
    let listeners = join_many(&mut sim, "l", 2, "room", Role::Listener);
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.run_for(Duration::from_millis(500));

    // (amplitudes of s0..s4, voices the listeners must hear, voices whose
    // onset must be heard within 150 ms, dominant speaker at the end if the
    // script decides one)
    type Segment = ([f32; 5], &'static [usize], &'static [usize], Option<usize>);
    let script: [Segment; 6] = [
        ([0.5, 0.0, 0.0, 0.0, 0.0], &[0], &[0], Some(0)),
        ([0.5, 0.5, 0.0, 0.0, 0.0], &[0, 1], &[1], None),
        ([0.0, 0.5, 0.5, 0.5, 0.0], &[1, 2, 3], &[2, 3], None),
        // s3 stops and s4 starts: s4 takes the place of the silent voice.
        ([0.0, 0.5, 0.5, 0.0, 0.5], &[1, 2, 4], &[4], None),
        // s0 murmurs (20 dB quieter): not enough to displace anyone.
        ([0.05, 0.5, 0.5, 0.0, 0.5], &[1, 2, 4], &[], None),
        // Everyone but s0 stops; s0 speaks up.
        ([0.5, 0.0, 0.0, 0.0, 0.0], &[0], &[], Some(0)),
    ];
    let seg_len = Duration::from_secs(2);
    for (n, (amps, expect, onsets, dominant)) in script.iter().enumerate() {
        let start = sim.now;
        let was_talking: Vec<bool> = s.iter().map(|&i| sim.clients[i].is_talking()).collect();
        for (i, &a) in amps.iter().enumerate() {
            sim.set_amplitude(s[i], a);
        }
        sim.run_for(seg_len);
        for &l in &listeners {
            let c = &sim.clients[l];
            let heard = c.tones_heard(start + 400 * MS, sim.now, 10);
            assert_eq!(
                heard,
                set(expect),
                "segment {n}: {} heard {heard:?}",
                c.name
            );
            for &o in *onsets {
                assert!(!was_talking[o], "script error: onset of a talking voice");
                let first = c
                    .first_heard(o, start)
                    .unwrap_or_else(|| panic!("segment {n}: s{o} never heard"));
                let delay = first - start;
                assert!(delay <= 150 * MS, "segment {n}: s{o} heard after {delay:?}");
            }
        }
        if let Some(d) = dominant {
            let last = sim
                .events
                .iter()
                .rev()
                .find_map(|(_, e)| match e {
                    Event::DominantSpeaker { speaker, .. } => Some(*speaker),
                    _ => None,
                })
                .flatten();
            assert_eq!(last, Some(source(&sim, s[*d])), "segment {n}: dominant");
        }
    }
    // Dominant-speaker events only on change.
    let dominants: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::DominantSpeaker { speaker, .. } => Some(*speaker),
            _ => None,
        })
        .collect();
    assert!(dominants.windows(2).all(|w| w[0] != w[1]), "{dominants:?}");
    // Active-speaker lists too, and they name who was talking.
    let actives: Vec<&Vec<SourceId>> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ActiveSpeakers { speakers, .. } => Some(speakers),
            _ => None,
        })
        .collect();
    assert!(actives.windows(2).all(|w| w[0] != w[1]));
    let mut last: Vec<SourceId> = actives.last().unwrap().to_vec();
    last.sort();
    assert_eq!(last, vec![source(&sim, s[0])], "only s0 talks at the end");
    assert!(dominants.len() >= 2, "{dominants:?}");
}

/// When the voice in a slot changes, the listener's stream stays continuous:
/// seq +1, timestamps never backwards, marker on the switch, CSRC names the
/// new voice, and the one decoder of the slot never fails.
#[test]
fn slot_stays_continuous_across_speaker_switches() {
    let config = EngineConfig {
        slots_per_listener: 1,
        ..EngineConfig::new(testkit::SEED)
    };
    let mut sim = Sim::new(config, Instant::now());
    let a = sim.join("a", "room", Role::Speaker, ClientSpec::speaker(0));
    let b = sim.join("b", "room", Role::Speaker, ClientSpec::speaker(1));
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    for (talker, silent) in [(a, b), (b, a), (a, b), (b, a)] {
        sim.set_talking(silent, false);
        sim.set_talking(talker, true);
        sim.run_for(Duration::from_millis(800));
    }
    let (src_a, src_b) = (source(&sim, a).0, source(&sim, b).0);
    let c = &sim.clients[l];
    assert_eq!(c.streams.len(), 1, "one slot, one stream");
    let log = c.streams.values().next().unwrap();
    let p = &log.packets;
    assert!(p.len() > 120, "{} packets", p.len());
    let mut switches = 0;
    for w in p.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "seq continuity");
        assert!(w[1].ts.wrapping_sub(w[0].ts) < u32::MAX / 2, "ts backwards");
        let switched = w[1].csrc != w[0].csrc;
        assert_eq!(
            w[1].marker, switched,
            "marker exactly on switches at {}",
            w[1].seq
        );
        if switched {
            switches += 1;
            // Time passes over the switch: at least one 20 ms packet.
            assert!(w[1].ts.wrapping_sub(w[0].ts) >= 960);
        }
    }
    assert_eq!(switches, 3, "a→b→a→b");
    assert!(p[0].seq < 65536);
    for pk in p {
        assert!(pk.csrc == Some(src_a) || pk.csrc == Some(src_b));
    }
    // The tone decoded matches the CSRC, a couple of frames after a switch.
    let mut agree = 0;
    for pk in p.iter().filter(|pk| pk.tone.is_some()) {
        let expect = if pk.csrc == Some(src_a) { 0 } else { 1 };
        if pk.tone == Some(expect) {
            agree += 1;
        }
    }
    let voiced = p.iter().filter(|pk| pk.tone.is_some()).count();
    assert!(
        agree + 8 >= voiced,
        "{agree} of {voiced} frames match their CSRC"
    );
    assert_eq!(log.decoder.as_ref().unwrap().errors(), 0);
}

/// Mute, unmute, role changes and leaving in the middle of speech.
#[test]
fn mute_role_and_leave_mid_speech() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let s = join_many(&mut sim, "s", 3, "room", Role::Speaker);
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    for &x in &s {
        sim.set_talking(x, true);
    }
    sim.run_for(Duration::from_secs(1));
    let heard =
        |sim: &Sim, who: usize, from: Instant| sim.clients[who].tones_heard(from, sim.now, 10);

    // Server mute s1.
    let t = sim.now;
    sim.command(Command::SetMuted {
        peer: PeerId(s[1] as u64),
        muted: true,
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(heard(&sim, l, t + 50 * MS), set(&[0, 2]));
    assert!(sim.clients[l].tones_heard(t + 50 * MS, sim.now, 1).len() == 2);
    let src1 = source(&sim, s[1]);
    assert_eq!(sim.engine.source_peer(src1), Some(PeerId(s[1] as u64)));
    let freed = sim.events_since(t).any(
        |e| matches!(e, Event::SlotChanged { peer, source: None, .. } if *peer == PeerId(l as u64)),
    );
    assert!(freed, "the muted voice's slot is released");
    assert!(sim.engine.stats().dropped_not_allowed > 0);
    assert!(!sim
        .engine
        .selected_speakers("room")
        .unwrap()
        .contains(&src1));

    // Unmute.
    let t = sim.now;
    sim.command(Command::SetMuted {
        peer: PeerId(s[1] as u64),
        muted: false,
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(heard(&sim, l, t + 150 * MS), set(&[0, 1, 2]));

    // s2 becomes a listener: no longer heard, and hears the others.
    let t = sim.now;
    sim.command(Command::SetRole {
        peer: PeerId(s[2] as u64),
        role: Role::Listener,
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(heard(&sim, l, t + 50 * MS), set(&[0, 1]));
    assert_eq!(heard(&sim, s[2], t + 50 * MS), set(&[0, 1]));

    // A listener that offered nothing to send cannot be promoted.
    sim.command(Command::SetRole {
        peer: PeerId(l as u64),
        role: Role::Speaker,
    });
    assert_eq!(
        sim.errors.pop(),
        Some(media_core::Error::CannotSpeak(PeerId(l as u64)))
    );

    // s2 back to speaker.
    let t = sim.now;
    sim.command(Command::SetRole {
        peer: PeerId(s[2] as u64),
        role: Role::Speaker,
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(heard(&sim, l, t + 150 * MS), set(&[0, 1, 2]));

    // s0 leaves mid-sentence.
    let t = sim.now;
    sim.command(Command::Leave {
        peer: PeerId(s[0] as u64),
    });
    assert!(sim.events_since(t).any(|e| matches!(
        e,
        Event::PeerLeft { peer, reason: LeaveReason::Left } if *peer == PeerId(s[0] as u64)
    )));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(heard(&sim, l, t + 50 * MS), set(&[1, 2]));
    assert_eq!(sim.engine.channel_members("room").unwrap().len(), 3);
    // Commands for a peer that left are refused clearly.
    sim.command(Command::Leave {
        peer: PeerId(s[0] as u64),
    });
    assert_eq!(
        sim.errors.pop(),
        Some(media_core::Error::UnknownPeer(PeerId(s[0] as u64)))
    );

    for who in [s[1], s[2], l] {
        sim.command(Command::Leave {
            peer: PeerId(who as u64),
        });
    }
    assert_eq!(sim.engine.channel_count(), 0);
    assert_eq!(sim.engine.peer_count(), 0);
    assert!(sim.errors.is_empty(), "{:?}", sim.errors);
}

/// A client that sends no audio-level extension is still routed by its real
/// loudness (the engine decodes its Opus to measure it).
#[test]
fn speaker_without_audio_level_is_routed_by_loudness() {
    let config = EngineConfig {
        slots_per_listener: 1,
        ..EngineConfig::new(testkit::SEED)
    };
    let mut sim = Sim::new(config, Instant::now());
    let loud = sim.join(
        "no-level",
        "room",
        Role::Speaker,
        ClientSpec {
            audio_level: false,
            ..ClientSpec::speaker(0)
        },
    );
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.run_for(Duration::from_millis(500));
    let t = sim.now;
    sim.set_talking(loud, true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.clients[l].tones_heard(t, sim.now, 20), set(&[0]));
    let first = sim.clients[l].first_heard(0, t).unwrap();
    assert!(first - t <= 150 * MS, "{:?}", first - t);
    assert_eq!(sim.engine.stats().level_decode_errors, 0);
}

/// 10% loss each way: listeners still hear exactly the talking voices, lose
/// no more than the network lost, and their decoders conceal the gaps.
#[test]
fn lossy_network_loses_only_what_the_network_lost() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    sim.net.uplink.loss = 0.10;
    sim.net.downlink.loss = 0.10;
    sim.net.downlink.delay = Duration::from_millis(30);
    let s = join_many(&mut sim, "s", 2, "room", Role::Speaker);
    let listeners = join_many(&mut sim, "l", 5, "room", Role::Listener);
    assert!(sim.run_until_connected(Duration::from_secs(10)));
    for &x in &s {
        sim.set_talking(x, true);
    }
    sim.run_for(Duration::from_secs(5));
    let from = sim.now - Duration::from_secs(4);
    for &l in &listeners {
        let c = &sim.clients[l];
        assert_eq!(c.tones_heard(from, sim.now, 50), set(&[0, 1]), "{}", c.name);
        assert_eq!(c.decode_errors(), 0);
        for log in c.streams.values() {
            let expected = log.packets.len() as u64 + log.lost();
            let loss = log.lost() as f64 / expected as f64;
            // Two lossy hops of 10%: about 19% end to end; never more than
            // the network could have taken (with sampling slack).
            assert!(loss > 0.10 && loss < 0.28, "{}: loss {loss:.3}", c.name);
        }
    }
}

/// A connected member that disappears without a word (browser tab killed)
/// is removed once ICE consent lapses; the others carry on.
#[test]
fn vanished_member_is_removed_and_others_carry_on() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let a = sim.join("a", "room", Role::Speaker, ClientSpec::speaker(0));
    let b = sim.join("b", "room", Role::Speaker, ClientSpec::speaker(1));
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(a, true);
    sim.set_talking(b, true);
    sim.run_for(Duration::from_secs(1));
    let t = sim.now;
    sim.vanish(b);
    sim.run_for(Duration::from_secs(40));
    let left = sim.events_since(t).find_map(|e| match e {
        Event::PeerLeft { peer, reason } if *peer == PeerId(b as u64) => Some(*reason),
        _ => None,
    });
    assert_eq!(left, Some(LeaveReason::Disconnected));
    assert_eq!(sim.engine.channel_members("room").unwrap().len(), 2);
    let c = &sim.clients[l];
    assert_eq!(
        c.tones_heard(sim.now - Duration::from_secs(5), sim.now, 100),
        set(&[0])
    );
    assert_eq!(c.decode_errors(), 0);
}

/// The speaker's `abs-capture-time` reaches listeners unchanged, on the
/// engine's own send path and on str0m's: one-way latency measured from it
/// is the two network hops (5 ms each; the histogram has sub-ms buckets)
/// plus at most the client's send pacing, and
/// every packet heard carries it.
#[test]
fn capture_time_passes_through_to_listeners() {
    for direct_srtp in [true, false] {
        let start = Instant::now();
        let clock = Some((
            start,
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let config = EngineConfig {
            direct_srtp,
            ..EngineConfig::new(testkit::SEED)
        };
        let mut sim = Sim::new(config, start);
        let speaker = sim.join(
            "s",
            "hall",
            Role::Speaker,
            ClientSpec {
                capture_clock: clock,
                ..ClientSpec::speaker(0)
            },
        );
        let listeners: Vec<usize> = (0..3)
            .map(|i| {
                sim.join(
                    &format!("l{i}"),
                    "hall",
                    Role::Listener,
                    ClientSpec {
                        capture_clock: clock,
                        ..ClientSpec::listener()
                    },
                )
            })
            .collect();
        assert!(sim.run_until_connected(Duration::from_secs(5)));
        sim.set_talking(speaker, true);
        sim.run_for(Duration::from_secs(2));
        for &l in &listeners {
            let c = &sim.clients[l];
            let n = c.latency.count();
            assert!(n >= 80, "{}: {n} packets with capture time", c.name);
            assert_eq!(c.packets_without_capture_time, 0, "{}", c.name);
            let (p50, max) = (c.latency.quantile(0.5).unwrap(), c.latency.max().unwrap());
            assert!(
                p50 >= Duration::from_micros(9_500) && max <= Duration::from_millis(40),
                "{} (direct_srtp = {direct_srtp}): p50 {p50:?}, max {max:?}",
                c.name
            );
        }
    }
}

/// Hall mode: listeners receive each voice in 40 ms packets (two 20 ms
/// Opus frames joined, RFC 6716 §3.2), half as many as a speaker receives,
/// and decode every voice whole: the right tones, no decoding error, one
/// packet every 1,920 samples without a gap. Speakers keep 20 ms packets.
/// Both send paths.
#[test]
fn hall_mode_listeners_decode_40_ms_packets_whole() {
    for direct_srtp in [true, false] {
        let mut sim = Sim::new(
            EngineConfig {
                direct_srtp,
                pack_listeners: true,
                ..EngineConfig::new(testkit::SEED)
            },
            Instant::now(),
        );
        let speakers = join_many(&mut sim, "s", 3, "hall", Role::Speaker);
        let listeners = join_many(&mut sim, "l", 4, "hall", Role::Listener);
        assert!(sim.run_until_connected(Duration::from_secs(5)));
        for &s in &speakers[..2] {
            sim.set_talking(s, true);
        }
        sim.run_for(Duration::from_secs(3));
        let (from, to) = (sim.now - Duration::from_millis(2500), sim.now);
        // Packets of the two talking voices in the window, per client.
        let packets = |c| talking_packets(c, from, to);
        for &l in &listeners {
            let c = &sim.clients[l];
            assert_eq!(c.tones_heard(from, to, 50), set(&[0, 1]), "{}", c.name);
            assert_eq!(c.tones_heard(from, to, 1), set(&[0, 1]), "{}", c.name);
            assert_eq!(c.decode_errors(), 0, "{}", c.name);
            let streams = packets(c);
            assert_eq!(streams.len(), 2, "{}: a stream per voice", c.name);
            for s in streams {
                // 2.5 s of one voice: 62 or 63 packets of 40 ms.
                assert!(
                    (61..=64).contains(&s.len()),
                    "{}: {} packets",
                    c.name,
                    s.len()
                );
                for w in s.windows(2) {
                    assert_eq!(w[1].seq, w[0].seq + 1, "{}: no gap", c.name);
                    assert_eq!(
                        w[1].ts.wrapping_sub(w[0].ts),
                        1920,
                        "{}: 40 ms per packet",
                        c.name
                    );
                }
            }
        }
        // A speaker hears the other talking voice in 20 ms packets.
        let c = &sim.clients[speakers[2]];
        assert_eq!(c.tones_heard(from, to, 100), set(&[0, 1]), "{}", c.name);
        for s in packets(c) {
            assert!(
                (124..=126).contains(&s.len()),
                "{}: {} packets",
                c.name,
                s.len()
            );
            assert!(s.windows(2).all(|w| w[1].ts.wrapping_sub(w[0].ts) == 960));
        }
        assert_eq!(c.decode_errors(), 0);
    }
}

/// The packets of each stream of `c` that carried a tone in `[from, to)`
/// (streams without any left out).
fn talking_packets(
    c: &testkit::client::Client,
    from: Instant,
    to: Instant,
) -> Vec<Vec<&testkit::client::Received>> {
    c.streams
        .values()
        .map(|s| {
            s.packets
                .iter()
                .filter(|p| p.at >= from && p.at < to && p.tone.is_some())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

/// `n` members named `prefix0`, `prefix1`… joining `channel` as `role`
/// (speaker `i` with tone `i`): their client indices.
fn join_many(sim: &mut Sim, prefix: &str, n: usize, channel: &str, role: Role) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let spec = match role {
                Role::Speaker => ClientSpec::speaker(i),
                Role::Listener => ClientSpec::listener(),
            };
            sim.join(&format!("{prefix}{i}"), channel, role, spec)
        })
        .collect()
}
