//! Demultiplexing one datagram to its peer with 10,000 peers registered: the
//! engine's `Demux` (through `media_core::bench_api`) on the two paths a
//! datagram takes, next to the least each could cost.
//!
//! - RTP (or any datagram) from a known 4-tuple: one hash lookup of the
//!   (client, engine) address pair. Baseline: a plain `HashMap` of the same
//!   pairs.
//! - A STUN binding request from an address not yet known (a client's first
//!   check, or a NAT rebinding): parse, look the USERNAME's ufrag up, check
//!   the MESSAGE-INTEGRITY with that peer's password. Baseline: one
//!   HMAC-SHA1 of the same message with the same password, compared with its
//!   MESSAGE-INTEGRITY.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use aws_lc_rs::hmac;
use media_core::bench_api::{hmac_sha1, Demux, DemuxRoute};
use str0m::ice::{StunMessage, TransId};

/// Peers registered in the rig.
pub const PEERS: usize = 10_000;

/// The engine's address (one host candidate).
pub const ENGINE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 3478);

/// Size of the RTP datagram routed (an SRTP Opus packet with extensions and tag).
const RTP_LEN: usize = 175;

const ICE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A small seeded generator (xorshift64), so every run registers the same peers.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn ice_string(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| ICE_ALPHABET[(self.next() % ICE_ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

/// Offset of the MESSAGE-INTEGRITY attribute (type 0x0008) in a STUN message.
fn integrity_offset(msg: &[u8]) -> Option<usize> {
    let mut at = 20;
    while at + 4 <= msg.len() {
        let typ = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = u16::from_be_bytes([msg[at + 2], msg[at + 3]]) as usize;
        if typ == 0x0008 {
            return Some(at);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// One registered peer.
#[derive(Debug)]
struct Peer {
    /// The 4-tuple source of its media.
    addr: SocketAddr,
    /// Its ICE password (the engine's local one for this peer).
    pass: String,
    /// A binding request from `stun_from`, USERNAME `engine-ufrag:client-ufrag`.
    stun: Vec<u8>,
    /// An address of the client the engine has not seen.
    stun_from: SocketAddr,
    /// Where the MESSAGE-INTEGRITY attribute starts in `stun`.
    integrity_at: usize,
    /// `pass` as an HMAC-SHA1 key, made once.
    key: hmac::Key,
}

/// What the visits read.
#[derive(Debug)]
struct Tables {
    demux: Demux,
    baseline: HashMap<(SocketAddr, SocketAddr), u32>,
    peers: Vec<Peer>,
    rtp: Vec<u8>,
}

/// A `Demux` with [`PEERS`] peers (ufrag, password and one 4-tuple each),
/// the same tuples in a plain `HashMap`, and per peer an RTP datagram and a
/// STUN binding request to route. Peers are visited in a seeded random order.
#[derive(Debug)]
pub struct DemuxRig {
    tables: Tables,
    order: Vec<u32>,
    cursor: usize,
}

impl DemuxRig {
    /// Registers `peers` peers, then checks every path on every peer.
    ///
    /// # Panics
    /// When a lookup does not find the right peer.
    pub fn new(peers: usize) -> Self {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut demux = Demux::new();
        let mut baseline = HashMap::new();
        let mut list = Vec::with_capacity(peers);
        let mut buf = vec![0u8; 1500];
        for i in 0..peers {
            let key = i as u32;
            // Clients behind many NATs: 100.64.0.0/10 addresses, high ports.
            let ip = Ipv4Addr::new(100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
            let port = 20_000 + (rng.next() % 40_000) as u16;
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            let stun_from = SocketAddr::new(IpAddr::V4(ip), port + 1);
            // As `Peer::accept`: an 8-character ufrag, a 24-character password;
            // the client's ufrag is 4 characters, as a browser's.
            let ufrag = rng.ice_string(8);
            let pass = rng.ice_string(24);
            let username = format!("{ufrag}:{}", rng.ice_string(4));
            let len = StunMessage::binding_request(
                &username,
                TransId::new(),
                true,
                rng.next(),
                0x6e7f_1eff,
                true,
            )
            .to_bytes(Some(pass.as_bytes()), &mut buf, hmac_sha1)
            .expect("binding request");
            let stun = buf[..len].to_vec();
            let integrity_at = integrity_offset(&stun).expect("MESSAGE-INTEGRITY");
            demux.add_ufrag(ufrag, pass.clone(), key);
            demux.add_tuple(addr, ENGINE, key);
            baseline.insert((addr, ENGINE), key);
            list.push(Peer {
                addr,
                key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pass.as_bytes()),
                pass,
                stun,
                stun_from,
                integrity_at,
            });
        }
        assert_eq!(baseline.len(), peers, "distinct 4-tuples");
        let mut order: Vec<u32> = (0..peers as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut rtp = vec![0u8; RTP_LEN];
        rtp[0] = 0x90; // RTP version 2 with an extension: not STUN.
        rtp[1] = 111;
        let mut rig = DemuxRig {
            tables: Tables {
                demux,
                baseline,
                peers: list,
                rtp,
            },
            order,
            cursor: 0,
        };
        // Every path finds the right peer for every peer; a request whose
        // integrity is off, or RTP from the new address, finds nobody.
        let n = peers as u64;
        assert_eq!(rig.rtp_tuple(n), n);
        assert_eq!(rig.baseline_hashmap(n), n);
        assert_eq!(rig.stun_ufrag(n), n);
        assert_eq!(rig.baseline_hmac_sha1(n), n);
        assert_eq!(rig.hmac_sha1_prekeyed(n), n);
        let t = &rig.tables;
        let p = &t.peers[0];
        let mut bad = p.stun.clone();
        bad[p.integrity_at + 4] ^= 1;
        assert_eq!(
            t.demux.route(p.stun_from, ENGINE, &bad),
            DemuxRoute::BadIntegrity
        );
        assert_eq!(
            t.demux.route(p.stun_from, ENGINE, &t.rtp),
            DemuxRoute::Unknown
        );
        rig
    }

    /// Mean size of the binding requests.
    pub fn mean_stun_len(&self) -> f64 {
        let peers = &self.tables.peers;
        peers.iter().map(|p| p.stun.len()).sum::<usize>() as f64 / peers.len() as f64
    }

    /// Runs `f` on the next `count` peers in the visiting order. Returns for
    /// how many it returned true.
    #[inline]
    fn visit(&mut self, count: u64, f: impl Fn(&Tables, &Peer, u32) -> bool) -> u64 {
        let mut ok = 0;
        let mut cursor = self.cursor;
        for _ in 0..count {
            let k = self.order[cursor];
            cursor += 1;
            if cursor == self.order.len() {
                cursor = 0;
            }
            ok += u64::from(f(&self.tables, &self.tables.peers[k as usize], k));
        }
        self.cursor = cursor;
        ok
    }

    /// Routes the RTP datagram of `count` peers through the `Demux`. Returns
    /// how many went to the right peer.
    pub fn rtp_tuple(&mut self, count: u64) -> u64 {
        self.visit(count, |t, p, k| {
            t.demux.route(p.addr, ENGINE, &t.rtp) == DemuxRoute::Known(k)
        })
    }

    /// Looks the same 4-tuples up in a plain `HashMap`. Returns how many
    /// found the right peer.
    pub fn baseline_hashmap(&mut self, count: u64) -> u64 {
        self.visit(count, |t, p, k| {
            t.baseline.get(&(p.addr, ENGINE)).copied() == Some(k)
        })
    }

    /// Routes the binding request of `count` peers (each from an address the
    /// `Demux` has not learned) through the `Demux`. Returns how many were
    /// routed to the right peer with a verified integrity.
    pub fn stun_ufrag(&mut self, count: u64) -> u64 {
        self.visit(count, |t, p, k| {
            t.demux.route(p.stun_from, ENGINE, &p.stun) == DemuxRoute::NewAddress(k)
        })
    }

    /// One HMAC-SHA1 per binding request with the peer's password, over what
    /// its MESSAGE-INTEGRITY covers (the header with the length up to and
    /// including that attribute, then the attributes before it: the three
    /// parts str0m's `verify` hashes), compared with it. Returns how many
    /// matched.
    pub fn baseline_hmac_sha1(&mut self, count: u64) -> u64 {
        self.visit(count, |_, p, _| {
            let covered = (p.integrity_at + 24 - 20) as u16;
            let tag = hmac_sha1(
                p.pass.as_bytes(),
                &[
                    &p.stun[..2],
                    &covered.to_be_bytes(),
                    &p.stun[4..p.integrity_at],
                ],
            );
            tag[..] == p.stun[p.integrity_at + 4..p.integrity_at + 24]
        })
    }

    /// As [`Self::baseline_hmac_sha1`], with the key made beforehand
    /// (`hmac::Key::new` hashes the password into the inner and outer
    /// states): what the HMAC would cost were the key kept per peer.
    pub fn hmac_sha1_prekeyed(&mut self, count: u64) -> u64 {
        self.visit(count, |_, p, _| {
            let covered = (p.integrity_at + 24 - 20) as u16;
            let mut ctx = hmac::Context::with_key(&p.key);
            ctx.update(&p.stun[..2]);
            ctx.update(&covered.to_be_bytes());
            ctx.update(&p.stun[4..p.integrity_at]);
            ctx.sign().as_ref() == &p.stun[p.integrity_at + 4..p.integrity_at + 24]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_finds_the_right_peer() {
        // `new` checks all four paths on every peer.
        let mut rig = DemuxRig::new(300);
        assert!(rig.mean_stun_len() > 60.0);
        // Around the end of the visiting order and again.
        assert_eq!(rig.stun_ufrag(450), 450);
        assert_eq!(rig.rtp_tuple(450), 450);
    }
}
