//! ICE restart ([`Command::Restart`]): a member whose network changed comes
//! back over its new address in the same session, as the same member; a bad
//! restart offer leaves its session as it was.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use media_core::{Command, EngineConfig, Error, Event, PeerId, Role};
use testkit::client::ClientSpec;
use testkit::Sim;

const MS: Duration = Duration::from_millis(1);

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

fn moved(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Two talking speakers and a listener; returns the sim and their indexes,
/// after two seconds of speech.
fn call(direct_srtp: bool) -> (Sim, usize, usize, usize) {
    let config = EngineConfig {
        direct_srtp,
        ..EngineConfig::new(testkit::SEED)
    };
    let mut sim = Sim::new(config, Instant::now());
    let a = sim.join("a", "room", Role::Speaker, ClientSpec::speaker(0));
    let b = sim.join("b", "room", Role::Speaker, ClientSpec::speaker(1));
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(a, true);
    sim.set_talking(b, true);
    sim.run_for(Duration::from_secs(2));
    (sim, a, b, l)
}

/// No member left or joined since `t`, and no engine call failed.
fn nobody_left(sim: &Sim, t: Instant) {
    let left: Vec<&Event> = sim
        .events_since(t)
        .filter(|e| matches!(e, Event::PeerLeft { .. } | Event::Answer { .. }))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(sim.errors.is_empty(), "{:?}", sim.errors);
}

/// A speaker moves to a new address (nothing reaches the old one) and
/// restarts ICE: the listener hears its voice again within a second, the
/// other speaker's voice never stops, and nobody leaves — on the engine's
/// own send path and on str0m's.
#[test]
fn speaker_restarts_from_a_new_address_and_is_heard_again() {
    for direct_srtp in [true, false] {
        let (mut sim, a, _, l) = call(direct_srtp);
        let t = sim.now;
        sim.restart_on(0, a, moved(20_000));
        let answered = sim
            .events_since(t)
            .any(|e| matches!(e, Event::Restarted { peer, .. } if *peer == PeerId(a as u64)));
        assert!(answered, "direct_srtp {direct_srtp}");
        sim.run_for(Duration::from_secs(3));
        let c = &sim.clients[l];
        let back = c.first_heard(0, t + 10 * MS).expect("a heard again");
        let gap = back - t;
        println!("direct_srtp {direct_srtp}: a heard again {gap:?} after restart");
        assert!(gap < Duration::from_secs(1), "{gap:?}");
        assert_eq!(
            c.tones_heard(t + Duration::from_secs(1), sim.now, 50),
            set(&[0, 1])
        );
        // b's voice went on through the restart.
        assert!(c
            .tones_heard(t, t + Duration::from_secs(1), 40)
            .contains(&1));
        assert_eq!(c.decode_errors(), 0);
        assert_eq!(sim.engine.channel_members("room").unwrap().len(), 3);
        nobody_left(&sim, t);
    }
}

/// A listener moves and restarts: it hears both speakers again over its new
/// address.
#[test]
fn listener_restarts_from_a_new_address_and_hears_again() {
    for direct_srtp in [true, false] {
        let (mut sim, _, _, l) = call(direct_srtp);
        let t = sim.now;
        sim.restart_on(0, l, moved(20_001));
        sim.run_for(Duration::from_secs(3));
        let c = &sim.clients[l];
        let back = c.first_heard(0, t + 10 * MS).expect("heard again");
        println!(
            "direct_srtp {direct_srtp}: listener hears again {:?} after restart",
            back - t
        );
        assert!(back - t < Duration::from_secs(1));
        assert_eq!(
            c.tones_heard(t + Duration::from_secs(1), sim.now, 50),
            set(&[0, 1]),
            "direct_srtp {direct_srtp}"
        );
        nobody_left(&sim, t);
    }
}

/// Restart offers the engine must refuse: unknown peer, garbage, and a
/// layout other than the session's. Each is an error, and the member's
/// session goes on as it was (still heard).
#[test]
fn bad_restart_offers_are_refused_and_the_session_goes_on() {
    let (mut sim, a, _, l) = call(true);
    let t = sim.now;
    // Offers of other clients: the same kind of member (other mids) and a
    // listener (no send m-line).
    let offer = |spec: &ClientSpec| {
        let cert = str0m_cert();
        testkit::client::Client::new("x", moved(20_003), spec, &[440.0], &cert, t).1
    };
    let (speaker, listener) = (
        offer(&ClientSpec::speaker(0)),
        offer(&ClientSpec::listener()),
    );
    let truncated: String = speaker.chars().take(speaker.len() / 2).collect();
    let cases: Vec<(PeerId, String)> = vec![
        (PeerId(99), speaker.clone()),
        (PeerId(a as u64), String::new()),
        (PeerId(a as u64), "v=0\r\nm=audio".into()),
        (PeerId(a as u64), "\u{0}\u{ffff}".repeat(100)),
        (PeerId(a as u64), speaker),
        (PeerId(a as u64), listener),
        (PeerId(a as u64), truncated),
    ];
    let n = cases.len();
    for (peer, offer) in cases {
        sim.command(Command::Restart { peer, offer });
    }
    assert_eq!(sim.errors.len(), n, "{:?}", sim.errors);
    assert!(matches!(sim.errors[0], Error::UnknownPeer(PeerId(99))));
    assert!(!sim
        .events_since(t)
        .any(|e| matches!(e, Event::Restarted { .. })));
    sim.run_for(Duration::from_secs(2));
    let c = &sim.clients[l];
    assert_eq!(c.tones_heard(t, sim.now, 90), set(&[0, 1]));
}

fn str0m_cert() -> str0m::config::DtlsCert {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("certificate")
}
