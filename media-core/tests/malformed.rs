//! Bad input never panics the engine, is counted, and leaves everyone else
//! unaffected: random bytes, truncated RTP/RTCP, bad STUN, datagrams from
//! unknown addresses, and a peer that vanishes mid-handshake.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media_core::{EngineConfig, Event, LeaveReason, PeerId, Role};
use testkit::client::ClientSpec;
use testkit::Sim;

/// Deterministic bytes for the test (xorshift64*).
struct Bytes(u64);
impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A STUN binding request (RFC 5389 §6) naming `ufrag` with a forged
/// MESSAGE-INTEGRITY.
fn forged_binding_request(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:evil");
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    // PRIORITY (RFC 8445 §7.1.1), required in a binding request.
    attrs.extend_from_slice(&0x0024u16.to_be_bytes());
    attrs.extend_from_slice(&4u16.to_be_bytes());
    attrs.extend_from_slice(&0x6e00_1eff_u32.to_be_bytes());
    attrs.extend_from_slice(&0x0008u16.to_be_bytes());
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&[0xAB; 20]);
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attrs);
    m
}

fn answer_ufrag(sim: &Sim, peer: usize) -> String {
    sim.events
        .iter()
        .find_map(|(_, e)| match e {
            Event::Answer { peer: p, sdp, .. } if *p == PeerId(peer as u64) => sdp
                .lines()
                .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
                .map(|s| s.trim().to_string()),
            _ => None,
        })
        .expect("answer with ufrag")
}

#[test]
fn garbage_is_dropped_counted_and_harmless() {
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let s = sim.join("s", "room", Role::Speaker, ClientSpec::speaker(0));
    let victim = sim.join("victim", "room", Role::Listener, ClientSpec::listener());
    let l = sim.join("l", "room", Role::Listener, ClientSpec::listener());
    assert!(sim.run_until_connected(Duration::from_secs(5)));
    // A peer that vanishes in the middle of its handshake.
    let ghost = sim.join("ghost", "room", Role::Speaker, ClientSpec::speaker(1));
    sim.vanish(ghost);
    sim.set_talking(s, true);
    sim.run_for(Duration::from_secs(1));
    let clean_from = sim.now;

    let mut rnd = Bytes(0x1234_5678_9abc_def1);
    let stranger: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let victim_addr = sim.clients[victim].addr;
    let ufrag = answer_ufrag(&sim, victim);

    for round in 0..50 {
        // Random bytes of every size and first byte, from a stranger and from
        // a known client's own address (spoofed).
        for _ in 0..40 {
            let len = (rnd.next() % 1300) as usize;
            let d = rnd.fill(len);
            sim.inject(stranger, &d);
            sim.inject(victim_addr, &d);
        }
        // Truncated RTP and RTCP (first byte 0x80, payload types in the
        // RTP and RTCP ranges), and DTLS-looking records, from the victim.
        for len in [0usize, 1, 2, 4, 11, 12, 13, 20] {
            let mut rtp = rnd.fill(len.max(2));
            rtp[0] = 0x80;
            rtp[1] = if len % 2 == 0 { 111 } else { 200 };
            rtp.truncate(len);
            sim.inject(victim_addr, &rtp);
            let mut dtls = rnd.fill(len.max(1));
            dtls[0] = 23;
            sim.inject(victim_addr, &dtls);
        }
        // STUN: garbage after a STUN-looking first byte, and a well-formed
        // binding request naming the victim with a forged integrity.
        let mut bad_stun = rnd.fill(40);
        bad_stun[0] = 0;
        sim.inject(stranger, &bad_stun);
        sim.inject(stranger, &forged_binding_request(&ufrag));
        let _ = round;
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_secs(16));

    let st = sim.engine.stats().clone();
    assert!(st.dropped_unknown_source > 0, "{st:?}");
    assert!(st.dropped_malformed > 0, "{st:?}");
    assert!(st.dropped_rejected > 0, "{st:?}");

    // The ghost was dropped when its connect timeout passed.
    assert!(sim.events.iter().any(|(_, e)| matches!(
        e,
        Event::PeerLeft { peer, reason: LeaveReason::ConnectTimeout } if *peer == PeerId(ghost as u64)
    )));
    assert!(st.peers_failed >= 1);
    // Nobody else left; the victim and the bystander still hear the speaker,
    // with nothing lost and nothing undecodable.
    assert_eq!(sim.engine.peer_count(), 3);
    for who in [victim, l] {
        let c = &sim.clients[who];
        assert!(c.connected && !c.closed, "{}", c.name);
        let heard = c.tones_heard(clean_from, sim.now, 500);
        assert_eq!(heard.into_iter().collect::<Vec<_>>(), vec![0], "{}", c.name);
        assert_eq!(c.decode_errors(), 0);
        for log in c.streams.values() {
            assert_eq!(log.lost(), 0, "{}", c.name);
        }
    }
    // The forged STUN requests did not teach the engine the stranger's address.
    let before = sim.engine.stats().dropped_unknown_source;
    sim.inject(stranger, &[0x80, 111, 0, 1]);
    assert_eq!(sim.engine.stats().dropped_unknown_source, before + 1);
}

/// The fuzz bodies over a fixed pseudo-random corpus: the same code the fuzz
/// targets run, as a smoke test in every `cargo test`.
#[test]
fn fuzz_bodies_survive_a_fixed_corpus() {
    use testkit::fuzz;
    let start = Instant::now();
    // One rig for every datagram input, reset between them, as the fuzz
    // target runs it.
    let mut rig = fuzz::DatagramRig::new(start);
    let mut rnd = Bytes(0xfeed_f00d_dead_beef);
    for i in 0..300 {
        let len = (rnd.next() % 600) as usize;
        let mut data = rnd.fill(len);
        if i % 3 == 0 {
            // Mostly valid SDP with random damage.
            let mut sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 00:11\r\na=setup:actpass\r\n".to_vec();
            for _ in 0..(rnd.next() % 4) {
                let at = (rnd.next() as usize) % sdp.len();
                sdp[at] = rnd.next() as u8;
            }
            data = sdp;
        }
        fuzz::sdp_offer(&data, start);
        rig.run_input(&data);
    }
}

/// Offers that cannot be used are refused with a message fit for a client,
/// and leave no trace in the engine.
#[test]
fn bad_offers_are_refused_clearly() {
    use media_core::{Command, Error};
    let mut sim = Sim::new(EngineConfig::new(testkit::SEED), Instant::now());
    let video_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\n";
    for (i, offer) in ["garbage", "", "v=0\r\n", video_only]
        .into_iter()
        .enumerate()
    {
        sim.command(Command::Join {
            peer: PeerId(100 + i as u64),
            channel: "room".into(),
            identity: "x".into(),
            role: Role::Speaker,
            offer: offer.into(),
        });
        let err = sim.errors.pop().expect("refused");
        let text = err.to_string();
        assert!(
            matches!(err, Error::InvalidOffer(_) | Error::UnusableOffer(_)),
            "{text}"
        );
        assert!(
            !text.contains('\n') && !text.contains("PointerOffset"),
            "{text}"
        );
        assert!(text.len() < 200, "{text}");
    }
    sim.command(Command::Join {
        peer: PeerId(1),
        channel: String::new(),
        identity: "x".into(),
        role: Role::Speaker,
        offer: "v=0".into(),
    });
    assert_eq!(sim.errors.pop(), Some(Error::InvalidChannel("empty")));
    assert_eq!(sim.engine.peer_count(), 0);
    assert_eq!(sim.engine.channel_count(), 0);
    assert!(sim.events.is_empty());
}
