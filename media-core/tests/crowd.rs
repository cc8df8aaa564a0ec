//! One channel with 200 listeners through 10 simulated seconds of speech: no
//! packet lost on a lossless network.

use std::time::{Duration, Instant};

use media_core::{Command, EngineConfig, PeerId, Role};
use testkit::client::ClientSpec;
use testkit::Sim;

#[test]
fn two_hundred_listeners_ten_seconds_no_loss() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let speakers: Vec<usize> = (0..3)
        .map(|i| {
            sim.join(
                &format!("s{i}"),
                "town-hall",
                Role::Speaker,
                ClientSpec::speaker(i),
            )
        })
        .collect();
    let listeners: Vec<usize> = (0..200)
        .map(|i| {
            // Every tenth listener decodes (and so checks the tones); the
            // others count packets, to keep the test quick.
            let spec = ClientSpec {
                decode: i % 10 == 0,
                ..ClientSpec::listener()
            };
            sim.join(&format!("l{i}"), "town-hall", Role::Listener, spec)
        })
        .collect();
    assert!(sim.run_until_connected(Duration::from_secs(10)));
    for &s in &speakers {
        sim.set_talking(s, true);
    }
    let start = sim.now;
    sim.run_for(Duration::from_secs(10));
    // The speakers leave; let the last packets in flight land.
    for &s in &speakers {
        sim.command(Command::Leave {
            peer: PeerId(s as u64),
        });
    }
    sim.run_for(Duration::from_millis(100));

    for &l in &listeners {
        let c = &sim.clients[l];
        assert_eq!(c.streams.len(), 3, "{}: one stream per slot", c.name);
        for log in c.streams.values() {
            assert_eq!(
                log.lost(),
                0,
                "{} lost packets on ssrc {}",
                c.name,
                log.ssrc
            );
            // 50 packets/s for 10 s, from the moment the voice was selected.
            assert!(
                log.packets.len() >= 495,
                "{}: {}",
                c.name,
                log.packets.len()
            );
            // The engine sends RTCP sender reports on every slot.
            let last = log.packets.last().unwrap();
            assert!(last.after_sender_report, "{}: no sender report", c.name);
        }
        if c.decode {
            assert_eq!(
                c.tones_heard(start + Duration::from_millis(200), sim.now, 400)
                    .len(),
                3
            );
            assert_eq!(c.decode_errors(), 0);
        }
    }
    let stats = sim.engine.stats();
    assert_eq!(sim.net.lost, 0);
    // Every packet the engine forwarded reached its listener (speakers hear
    // each other too), once.
    let total: usize = sim.clients.iter().map(|c| c.packets_received()).sum();
    assert_eq!(stats.rtp_forwarded, total as u64);
    assert_eq!(stats.dropped_stale, 0);
}
