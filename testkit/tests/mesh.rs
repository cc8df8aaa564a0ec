//! Members of a peer-to-peer channel on 127.0.0.1: real ICE, DTLS, SRTP
//! and Opus between them, signaling moved by the test; and a switch of
//! playback from one path to another judged at the decoders.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use testkit::client::ClientSpec;
use testkit::mesh::{exchange, MeshMember, SignalCounts};
use testkit::playback::Path;
use testkit::udp::UdpPeer;

/// Longest silence a switch may cause in a voice (the goal).
const MAX_GAP: Duration = Duration::from_millis(100);

/// Members with ids `1..=n`, member `i` sending tone `i - 1`, talking, each
/// told of the others, their signals exchanged.
fn mesh(n: u64) -> (Vec<MeshMember>, SignalCounts) {
    let mut members: Vec<MeshMember> = (1..=n)
        .map(|id| MeshMember::new(id, Some(id as usize - 1)))
        .collect();
    for m in &mut members {
        m.set_talking(true);
        let id = m.id;
        m.connect_all((1..=n).filter(|o| *o != id)).unwrap();
    }
    let counts = exchange(&mut members).unwrap();
    (members, counts)
}

/// The tones member `id` of a mesh of `n` should hear: everyone's but its own.
fn others_tones(id: u64, n: u64) -> Vec<usize> {
    (1..=n)
        .filter(|o| *o != id)
        .map(|o| o as usize - 1)
        .collect()
}

#[test]
fn three_members_hear_each_other_over_a_mesh() {
    let (members, counts) = mesh(3);
    // One link per pair: the lower id offers, each side trickles its one
    // host candidate.
    assert_eq!(
        counts,
        SignalCounts {
            offers: 3,
            answers: 3,
            candidates: 6
        }
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = Instant::now();
    for m in &members {
        let tones = others_tones(m.id, 3);
        assert!(
            m.wait_until(deadline, |m| m.delivers(Path::Mesh, &tones, start)),
            "member {} hears {:?}",
            m.id,
            m.tones_played(start, Instant::now(), 1)
        );
        assert!(m.links().all(|o| m.link_connected(o)));
    }
    // A second of conversation, measured.
    let from = Instant::now();
    let until = from + Duration::from_secs(1);
    for m in &members {
        assert!(m.wait_until(deadline, |m| {
            m.played().last().is_some_and(|f| f.at >= until)
        }));
    }
    for m in &members {
        let want: BTreeSet<usize> = others_tones(m.id, 3).into_iter().collect();
        // Exactly the others: not its own voice, nothing else.
        assert_eq!(m.tones_played(from, until, 35), want, "member {}", m.id);
        assert_eq!(m.tones_played(from, until, 1), want, "member {}", m.id);
        for t in &want {
            let gap = m.longest_gap(*t, from, until);
            eprintln!("member {} tone {t}: longest gap {gap:?}", m.id);
            assert!(gap < MAX_GAP, "member {} tone {t}: gap {gap:?}", m.id);
            assert_eq!(m.heard_twice(*t, from, until), 0);
        }
        assert_eq!(m.decode_errors(), 0);
    }
}

/// Member 1 hears member 2 over their mesh link and over a second path
/// that stands in for the SFU: a link from a client that sends member 2's
/// tone too, held by the test. Returns (1, 2, the stand-in's sender).
fn two_paths() -> (MeshMember, MeshMember, UdpPeer) {
    let (mut members, _) = mesh(2);
    let b = members.pop().unwrap();
    let mut a = members.pop().unwrap();
    let (mut session, offer) = UdpPeer::new(
        "1-sfu",
        &ClientSpec {
            slots: 1,
            ..ClientSpec::listener()
        },
    )
    .unwrap();
    let (relay, answer) = UdpPeer::answer("sfu-2", &ClientSpec::speaker(1), &offer).unwrap();
    relay.set_talking(true);
    session.start(&answer);
    a.attach_sfu(session);
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = Instant::now();
    assert!(
        a.wait_until(deadline, |a| a.delivers(Path::Mesh, &[1], start)
            && a.delivers(Path::Sfu, &[1], start))
    );
    (a, b, relay)
}

/// Waits until `m` played frames for `d` after `from`; returns the end.
fn played_for(m: &MeshMember, from: Instant, d: Duration) -> Instant {
    let until = from + d;
    let deadline = Instant::now() + Duration::from_secs(20);
    assert!(m.wait_until(deadline, |m| m
        .played()
        .last()
        .is_some_and(|f| f.at >= until)));
    until
}

#[test]
fn a_make_before_break_switch_has_no_gap_and_no_double() {
    let (mut a, _b, _relay) = two_paths();
    let before = Instant::now();
    played_for(&a, before, Duration::from_millis(500));
    // Both paths deliver: swap, then close the old one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let at = a.switch_when_delivered(Path::Sfu, &[1], deadline).unwrap();
    a.close_mesh();
    let until = played_for(&a, at, Duration::from_millis(500));

    let gap = a.longest_gap(1, before, until);
    eprintln!("switch: longest gap {gap:?}");
    assert!(gap < MAX_GAP, "gap {gap:?} across the switch");
    assert_eq!(a.heard_twice(1, at, until), 0);
    // Before the switch everything played came over the mesh, after it
    // over the other path.
    for f in a.played().iter().filter(|f| f.at >= before && f.at < until) {
        assert_eq!(f.route.path() == Path::Mesh, f.at < at, "{f:?}");
    }
    assert_eq!(a.tones_played(before, until, 40), [1].into());
    assert_eq!(a.decode_errors(), 0);
}

#[test]
fn the_measures_see_a_doubled_voice_and_a_break_before_make() {
    let (mut a, _b, _relay) = two_paths();
    // Both paths heard at once: the voice twice in nearly every window.
    let both = a.set_playing(Path::Sfu, true);
    let until = played_for(&a, both, Duration::from_millis(400));
    let doubled = a.heard_twice(1, both, until);
    eprintln!("both paths playing: {doubled} of 20 windows doubled");
    assert!(doubled >= 15, "{doubled} of 20 windows doubled");

    // Neither heard until the other path delivered a frame 200 ms later: a
    // break-before-make switch, at least that long without the voice.
    a.switch_playback(Path::Mesh);
    let off = a.set_playing(Path::Mesh, false);
    let deadline = Instant::now() + Duration::from_secs(5);
    assert!(a.wait_until(deadline, |a| {
        a.frames()
            .iter()
            .any(|f| f.route.path() == Path::Sfu && f.at >= off + Duration::from_millis(200))
    }));
    let on = a.set_playing(Path::Sfu, true);
    let until = played_for(&a, on, Duration::from_millis(200));
    let gap = a.longest_gap(1, off - Duration::from_millis(100), until);
    // Nothing played from `off` to `on`.
    assert!(gap >= on - off, "gap {gap:?}, silent for {:?}", on - off);
    assert!(gap > MAX_GAP);
}

#[test]
fn a_pair_that_cannot_reach_each_other_is_reported_by_both() {
    let mut members: Vec<MeshMember> = (1..=3)
        .map(|id| MeshMember::new(id, Some(id as usize - 1)))
        .collect();
    for m in &mut members {
        let id = m.id;
        m.connect_all((1..=3).filter(|o| *o != id)).unwrap();
    }
    // 1 offered to 2; nothing of that link gets through.
    members[0].set_link_blackhole(2, true);
    exchange(&mut members).unwrap();
    members[1].set_link_blackhole(1, true);

    let timeout = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    // The links with 3 connect; 1 and 2 each see the other fail.
    for (i, other) in [(0, 2), (1, 1)] {
        let m = &members[i];
        assert!(
            m.wait_until(deadline, |m| m.failed_links(timeout, Instant::now())
                == [other].into())
        );
        assert!(m.link_connected(3), "member {}", m.id);
        assert!(!m.link_connected(other));
    }
    assert!(members[2].failed_links(timeout, Instant::now()).is_empty());
}
