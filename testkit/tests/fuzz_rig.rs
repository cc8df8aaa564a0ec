//! The datagram fuzz body's rig: each kind of operation reaches the state it
//! is meant to (established SRTP forwarding, STUN demux by ufrag, the
//! newcomer's handshake), and the reset between inputs undoes what an input
//! changed, so that inputs do not leak into each other.

use std::time::Instant;

use media_core::PeerId;
use testkit::fuzz::{self, DatagramRig};

/// Selector bytes of the input format (`testkit::fuzz`, `run`).
const ADVANCE: u8 = 0;
const COMMAND: u8 = 2;
const FROM_SPEAKER: u8 = 3;
const FROM_NEWCOMER: u8 = 8;
/// From stranger 0; `| 16` from stranger 1.
const FROM_STRANGER: u8 = 9;
const STUN: u8 = 11;
const STUN_ATTRS: u8 = 12;
const SPEAK: u8 = 13;
const FEEDBACK: u8 = 15;

const NEWCOMER: PeerId = PeerId(3);

/// A loud real Opus frame with its level extension (0 = loudest), then
/// 20 ms of time.
const LOUD_FRAME: [u8; 7] = [SPEAK, 2, 0, 0, 0, ADVANCE, 4];

fn rig() -> DatagramRig {
    DatagramRig::new(testkit::epoch())
}

#[test]
fn sealed_rtp_is_forwarded_to_the_listener() {
    let mut rig = rig();
    assert!(rig.is_healthy());
    let before = (rig.listener_packets(), rig.engine().stats().rtp_forwarded);
    for _ in 0..5 {
        assert!(!rig.run_input(&LOUD_FRAME));
    }
    let after = (rig.listener_packets(), rig.engine().stats().rtp_forwarded);
    assert!(after.0 >= before.0 + 4, "{before:?} -> {after:?}");
    assert!(after.1 >= before.1 + 4, "{before:?} -> {after:?}");
}

#[test]
fn a_command_is_undone_between_inputs() {
    let mut rig = rig();
    rig.run_input(&LOUD_FRAME);
    // Muted within the input: the listener hears nothing of it.
    let heard = rig.listener_packets();
    let mut muted = vec![COMMAND, 0];
    muted.extend(LOUD_FRAME);
    muted.extend(LOUD_FRAME);
    assert!(!rig.run_input(&muted));
    assert_eq!(rig.listener_packets(), heard);
    // The next input starts unmuted.
    assert!(!rig.run_input(&LOUD_FRAME));
    assert!(rig.listener_packets() > heard);
    // Made a listener, then back: the same.
    let heard = rig.listener_packets();
    assert!(!rig.run_input(&[COMMAND, 2]));
    assert!(!rig.run_input(&LOUD_FRAME));
    assert!(rig.listener_packets() > heard);
}

#[test]
fn stun_naming_the_speaker_is_checked() {
    let mut rig = rig();
    let rejected = rig.engine().stats().dropped_rejected;
    // Wrong password, from a stranger: refused by the demux.
    assert!(!rig.run_input(&[STUN, 0, 0, 0, 1]));
    assert_eq!(rig.engine().stats().dropped_rejected, rejected + 1);
    // Signed: from the speaker's own address, str0m's ICE agent takes it.
    assert!(!rig.run_input(&[STUN, 2 | 1, 5, 0, 1]));
    assert!(rig.is_healthy());
    // Arbitrary attributes after the right USERNAME: no integrity, refused.
    let malformed = rig.engine().stats().dropped_malformed;
    let rejected = rig.engine().stats().dropped_rejected;
    assert!(!rig.run_input(&[STUN_ATTRS, 0, 4, 0x80, 0x22, 0, 0]));
    let st = rig.engine().stats();
    assert_eq!(
        (st.dropped_malformed - malformed) + (st.dropped_rejected - rejected),
        1,
        "{st:?}"
    );
    assert_eq!(rig.counts().1, 0);
}

#[test]
fn the_newcomer_learns_addresses_and_is_joined_afresh_in_time() {
    let mut rig = rig();
    let source = rig.engine().peer_source(NEWCOMER).expect("newcomer joined");
    // A datagram to someone else leaves it alone.
    let unknown = rig.engine().stats().dropped_unknown_source;
    assert!(!rig.run_input(&[FROM_STRANGER, 2, 22, 254]));
    assert_eq!(rig.engine().stats().dropped_unknown_source, unknown + 1);
    // Signed requests from 9 addresses: the newcomer (one address already)
    // learns 7, then its limit refuses the rest.
    let mut data = Vec::new();
    for from in 0..9 {
        data.extend([STUN, 8 | 1, from, 0, 1]);
    }
    let limited = rig.engine().stats().dropped_address_limit;
    assert!(!rig.run_input(&data));
    assert_eq!(rig.engine().stats().dropped_address_limit, limited + 2);
    // Garbage comes from other addresses than STUN: still nobody's.
    let unknown = rig.engine().stats().dropped_unknown_source;
    assert!(!rig.run_input(&[FROM_STRANGER | 16, 2, 0x80, 0]));
    assert!(!rig.run_input(&[FROM_STRANGER, 2, 0x80, 0]));
    assert_eq!(rig.engine().stats().dropped_unknown_source, unknown + 2);
    // The newcomer is the same member until it was reached by
    // NEWCOMER_REUSE inputs (this was the first), then joins afresh: a new
    // source, and the addresses it learned are forgotten (they are learned
    // again, up to the limit).
    for _ in 1..fuzz::NEWCOMER_REUSE {
        assert_eq!(rig.engine().peer_source(NEWCOMER), Some(source));
        assert!(!rig.run_input(&[FROM_NEWCOMER, 3, 22, 254, 253]));
    }
    let again = rig.engine().peer_source(NEWCOMER).expect("newcomer joined");
    assert_ne!(again, source, "not joined afresh");
    let limited = rig.engine().stats().dropped_address_limit;
    assert!(!rig.run_input(&data));
    assert_eq!(rig.engine().stats().dropped_address_limit, limited + 2);
    // It leaving is undone at once.
    assert!(!rig.run_input(&[COMMAND, 7]));
    assert!(rig.engine().peer_source(NEWCOMER).is_some());
    assert_eq!(rig.counts().1, 0);
}

#[test]
fn sessions_stay_up_as_time_goes_by() {
    let mut rig = rig();
    let start = rig.now();
    let newcomer = rig.engine().peer_source(NEWCOMER);
    // 40 simulated seconds in 250 ms steps: consent checks and RTCP flow;
    // nothing is rebuilt, and the newcomer waits (its connect timeout is an
    // hour here).
    for _ in 0..160 {
        assert!(!rig.run_input(&[ADVANCE, 249]));
    }
    assert!(rig.now() >= start + std::time::Duration::from_secs(40));
    assert!(rig.is_healthy());
    assert_eq!(rig.counts().1, 0);
    assert_eq!(rig.engine().peer_source(NEWCOMER), newcomer);
    let heard = rig.listener_packets();
    assert!(!rig.run_input(&LOUD_FRAME));
    assert!(rig.listener_packets() > heard);
    // RTCP feedback from the listener on a slot it receives.
    assert!(!rig.run_input(&[FEEDBACK, 0, 0, FEEDBACK, 0, 1, FEEDBACK, 0, 2, ADVANCE, 10]));
    assert!(rig.is_healthy());
}

/// Deterministic bytes (a 64-bit LCG, the high bits).
fn bytes(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (*state >> 56) as u8
        })
        .collect()
}

#[test]
fn a_pseudo_random_corpus_on_one_rig_and_on_fresh_ones() {
    let mut state = 0x0dd_ba11_cafe_f00d;
    let mut rig = rig();
    for _ in 0..300 {
        let len = usize::from(bytes(&mut state, 1)[0]) * 2;
        let data = bytes(&mut state, len);
        rig.run_input(&data);
        assert!(rig.is_healthy());
    }
    let (inputs, rebuilds) = rig.counts();
    assert_eq!(inputs, 300);
    // A few inputs sign STUN from a stranger or break a session; most do not.
    assert!(rebuilds < 150, "{rebuilds} rebuilds in 300 inputs");
    for _ in 0..3 {
        fuzz::datagrams(&bytes(&mut state, 200), Instant::now());
    }
    // Malformed STUN, RTP and DTLS from the speaker, without a panic.
    let mut data = vec![FROM_SPEAKER, 4, 0, 1, 0, 0];
    data.extend([FROM_SPEAKER, 3, 0x80, 200, 0, FROM_SPEAKER, 2, 23, 254]);
    rig.run_input(&data);
}

/// The seed offers of the `sdp_offer` target (fuzz/seeds) are offers the
/// engine answers, so that the fuzzer starts from the parser's far end.
#[test]
fn the_sdp_seeds_are_answered() {
    use media_core::{Command, Engine, EngineConfig, Event, Input, Output, Role};
    for (i, seed) in [
        include_str!("../../fuzz/seeds/sdp_offer/chrome-speaker.sdp"),
        include_str!("../../fuzz/seeds/sdp_offer/firefox-listener.sdp"),
    ]
    .into_iter()
    .enumerate()
    {
        let now = testkit::epoch();
        let config = EngineConfig {
            host_candidates: vec![testkit::ENGINE_ADDR],
            ..EngineConfig::new(testkit::SEED)
        };
        let mut engine = Engine::new(config, now);
        let role = if i == 0 {
            Role::Speaker
        } else {
            Role::Listener
        };
        let command = Command::Join {
            peer: PeerId(1),
            channel: "seed".into(),
            identity: "seed".into(),
            role,
            offer: seed.into(),
        };
        engine
            .handle_input(Input::Command { now, command })
            .unwrap_or_else(|e| panic!("seed {i}: {e}"));
        let answered = std::iter::from_fn(|| match engine.poll_output() {
            Output::Timeout(_) => None,
            o => Some(o),
        })
        .any(|o| matches!(o, Output::Event(Event::Answer { .. })));
        assert!(answered, "seed {i}");
    }
}
