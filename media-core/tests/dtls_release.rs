//! A member's DTLS instance is let go once the handshake is over for both
//! ends (its media has flowed for ten seconds with no DTLS record from it):
//! the call goes on as before, for minutes, DTLS records that still arrive
//! are ignored, and nobody leaves; on a lossy network every handshake
//! completes first.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use media_core::{EngineConfig, Event, Role};
use testkit::client::ClientSpec;
use testkit::Sim;

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

/// The tones `idx` heard over the last second.
fn heard_lately(sim: &Sim, idx: usize) -> BTreeSet<usize> {
    sim.clients[idx].tones_heard(sim.now - Duration::from_secs(1), sim.now, 25)
}

#[test]
fn a_released_dtls_instance_changes_nothing_a_member_hears() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let a = sim.join("a", "room", Role::Speaker, ClientSpec::speaker(0));
    let b = sim.join("b", "room", Role::Speaker, ClientSpec::speaker(1));
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    let connected = sim.now;
    assert_eq!(sim.engine.stats().dtls_released, 0, "nobody sent media yet");
    sim.set_talking(a, true);
    sim.set_talking(b, true);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.engine.stats().dtls_released, 0, "too early to tell");
    assert_eq!(heard_lately(&sim, l), set(&[0, 1]));
    sim.run_for(Duration::from_secs(15));
    // Both speakers sent SRTP; the listener its RTCP (every few seconds).
    let released = sim.engine.stats().dtls_released;
    assert_eq!(released, 3, "every member let its DTLS go");

    // Long past any DTLS timer; a handshake record and an alert from a
    // speaker's own address reach the released instance and are ignored.
    sim.run_for(Duration::from_secs(60));
    let addr = sim.clients[a].addr;
    let mut handshake = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 12];
    handshake.extend_from_slice(&[0; 12]);
    sim.inject(addr, &handshake);
    let alert = [21, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 2, 1, 0];
    sim.inject(addr, &alert);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(heard_lately(&sim, l), set(&[0, 1]), "l hears both");
    assert_eq!(heard_lately(&sim, a), set(&[1]), "a hears b");
    assert_eq!(heard_lately(&sim, b), set(&[0]), "b hears a");
    let left: Vec<&Event> = sim
        .events_since(connected)
        .filter(|e| matches!(e, Event::PeerLeft { .. }))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(sim.errors.is_empty(), "{:?}", sim.errors);
    assert_eq!(sim.engine.stats().dtls_released, released, "once each");
}

/// On str0m's own send path (no key tap) nothing is released.
#[test]
fn without_direct_srtp_dtls_stays() {
    let config = EngineConfig {
        direct_srtp: false,
        ..EngineConfig::new(testkit::SEED)
    };
    let mut sim = Sim::new(config, Instant::now());
    let a = sim.join("a", "room", Role::Speaker, ClientSpec::speaker(0));
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    sim.set_talking(a, true);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(heard_lately(&sim, l), set(&[0]));
    assert_eq!(sim.engine.stats().dtls_released, 0);
}

/// 10% loss each way: some handshake flights are lost and sent again; every
/// client completes its handshake, and every member's DTLS goes only after.
#[test]
fn on_a_lossy_network_handshakes_finish_before_dtls_goes() {
    for seed in 0..4u8 {
        let mut config = EngineConfig::new(testkit::SEED);
        config.seed[0] = seed;
        let mut sim = Sim::new(config, Instant::now());
        sim.net.uplink.loss = 0.10;
        sim.net.downlink.loss = 0.10;
        let speakers: Vec<usize> = (0..3)
            .map(|i| {
                sim.join(
                    &format!("s{i}"),
                    "room",
                    Role::Speaker,
                    ClientSpec::speaker(i),
                )
            })
            .collect();
        for i in 0..5 {
            sim.join(
                &format!("l{i}"),
                "room",
                Role::Listener,
                ClientSpec::listener(),
            );
        }
        assert!(
            sim.run_until_connected(Duration::from_secs(20)),
            "seed {seed}"
        );
        for &s in &speakers {
            sim.set_talking(s, true);
        }
        // A member's DTLS goes after 10 s of its media with no DTLS record;
        // a flight lost late is sent again seconds later (its timer backs
        // off), which starts the 10 s again: bounded at 45 s.
        for _ in 0..45 {
            if sim.engine.stats().dtls_released == 8 {
                break;
            }
            sim.run_for(Duration::from_secs(1));
        }
        assert!(sim.clients.iter().all(|c| c.connected));
        assert_eq!(sim.engine.stats().dtls_released, 8, "seed {seed}");
        assert!(sim.errors.is_empty(), "{:?}", sim.errors);
    }
}
