//! A datagram flood at a media port, for the tests and the flood script that
//! check a server keeps working under one: a thread sends, as fast as it
//! can, a mix of what an attacker without credentials can send — garbage,
//! RTP- and DTLS-looking garbage, and STUN binding requests with made-up
//! ICE usernames and integrity (and, given the server's ufrag, with the
//! right local half of the username, so that the server must check the
//! integrity).
//!
//! The contents come from a seeded [`SplitMix64`]: a run sends the same datagrams.
//! They are made before the flood starts ([`POOL`] of them, sent in turn),
//! so that the sending thread does nothing but send.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// STUN's magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Distinct datagrams a flood sends in turn.
pub const POOL: usize = 4096;

/// What the flood sends, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Random bytes of random length.
    Random,
    /// A first byte of RTP (RFC 7983: 128–191), then random bytes.
    RtpLike,
    /// A first byte of DTLS (20–63), then random bytes.
    DtlsLike,
    /// A STUN binding request with a USERNAME, MESSAGE-INTEGRITY and
    /// FINGERPRINT of random bytes (RFC 8489, RFC 8445 §7.1.2).
    Stun,
}

/// Every kind, in the order a flood cycles through them.
pub const EVERY_KIND: [Garbage; 4] = [
    Garbage::Random,
    Garbage::RtpLike,
    Garbage::DtlsLike,
    Garbage::Stun,
];

/// Builds the flood's datagrams.
#[derive(Debug)]
pub struct GarbageMaker {
    rng: SplitMix64,
    /// The server's ICE ufrag, if known: STUN requests then name it.
    server_ufrag: Option<String>,
}

impl GarbageMaker {
    /// Datagrams from `seed`; STUN requests name `server_ufrag` if given.
    pub fn new(seed: u64, server_ufrag: Option<String>) -> GarbageMaker {
        GarbageMaker {
            rng: SplitMix64::new(seed),
            server_ufrag,
        }
    }

    /// Writes one datagram of `kind` into `out` (cleared first).
    pub fn make(&mut self, kind: Garbage, out: &mut Vec<u8>) {
        out.clear();
        match kind {
            Garbage::Random => {
                let len = 1 + self.below(1200);
                self.fill(out, len);
            }
            Garbage::RtpLike | Garbage::DtlsLike => {
                let (first, span) = if kind == Garbage::RtpLike {
                    (128, 64)
                } else {
                    (20, 44)
                };
                out.push(first + self.below(span) as u8);
                let len = 12 + self.below(200);
                self.fill(out, len);
            }
            Garbage::Stun => self.stun(out),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        for _ in 0..n {
            out.push(self.rng.next_u64() as u8);
        }
    }

    fn stun(&mut self, out: &mut Vec<u8>) {
        let remote: String = (0..8)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect();
        let local = match &self.server_ufrag {
            Some(u) => u.clone(),
            None => (0..8)
                .map(|_| char::from(b'a' + self.below(26) as u8))
                .collect(),
        };
        let username = format!("{local}:{remote}");
        // Header: binding request, length later, cookie, transaction id.
        out.extend_from_slice(&0x0001u16.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        self.fill(out, 12);
        attribute(out, 0x0006, username.as_bytes());
        let mut integrity = Vec::with_capacity(20);
        self.fill(&mut integrity, 20);
        attribute(out, 0x0008, &integrity);
        let mut fingerprint = Vec::with_capacity(4);
        self.fill(&mut fingerprint, 4);
        attribute(out, 0x8028, &fingerprint);
        let len = (out.len() - 20) as u16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends a STUN attribute, padded to 4 bytes.
fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A flood running on its own thread until [`Flood::stop`] (or drop).
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Starts flooding `target` from a socket on 127.0.0.1 with the kinds
    /// `kinds` in turn: as fast as the thread can, or at most `per_second`.
    pub fn start(
        target: SocketAddr,
        kinds: &[Garbage],
        mut maker: GarbageMaker,
        per_second: Option<u64>,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let pool: Vec<Vec<u8>> = (0..POOL)
            .map(|i| {
                let mut d = Vec::new();
                maker.make(kinds[i % kinds.len()], &mut d);
                d
            })
            .collect();
        let (stopping, counting) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
                return;
            };
            let began = Instant::now();
            let mut n = 0u64;
            // A slow rate sends a datagram at a time, on schedule.
            let batch = match per_second {
                Some(rate) if rate < 1000 * SEND_BATCH as u64 => 1,
                _ => SEND_BATCH,
            };
            'flood: while !stopping.load(Ordering::Relaxed) {
                for datagrams in pool.chunks(batch) {
                    n += send_batch(&socket, target, datagrams);
                    counting.store(n, Ordering::Relaxed);
                    let Some(rate) = per_second.filter(|r| *r > 0) else {
                        continue;
                    };
                    // Ahead of the rate: wait until the schedule says, a
                    // little at a time so that a stop is seen.
                    let due = began + Duration::from_secs_f64(n as f64 / rate as f64);
                    loop {
                        if stopping.load(Ordering::Relaxed) {
                            break 'flood;
                        }
                        let wait = due.saturating_duration_since(Instant::now());
                        if wait.is_zero() {
                            break;
                        }
                        std::thread::sleep(wait.min(Duration::from_millis(10)));
                    }
                }
            }
        });
        Flood {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the thread; returns how many datagrams it sent.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent()
    }
}

/// Datagrams per `sendmmsg`.
const SEND_BATCH: usize = 64;

/// Sends `batch` to `target`; returns how many the kernel took. A full
/// socket buffer or an ICMP error from an earlier send: carry on, the point
/// is to keep sending.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, target: SocketAddr, batch: &[Vec<u8>]) -> u64 {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|d| [IoSlice::new(d)]).collect();
    let addrs = vec![Some(SockaddrStorage::from(target)); batch.len()];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    match sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &iovs,
        &addrs,
        [],
        MsgFlags::empty(),
    ) {
        Ok(sent) => sent.count() as u64,
        Err(_) => 0,
    }
}

#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, target: SocketAddr, batch: &[Vec<u8>]) -> u64 {
    batch
        .iter()
        .filter(|d| socket.send_to(d, target).is_ok())
        .count() as u64
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_requests_are_well_formed_and_name_the_server_ufrag() {
        let mut maker = GarbageMaker::new(1, Some("srv1".into()));
        let mut d = Vec::new();
        maker.make(Garbage::Stun, &mut d);
        assert_eq!(
            media_core::DatagramKind::of(&d),
            media_core::DatagramKind::Stun
        );
        assert_eq!(&d[0..2], &[0, 1]);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 20);
        assert_eq!(&d[4..8], &MAGIC_COOKIE.to_be_bytes());
        let username = &d[24..24 + u16::from_be_bytes([d[22], d[23]]) as usize];
        assert!(username.starts_with(b"srv1:"));
    }

    /// A paced flood never runs ahead of its rate (it may fall behind on a
    /// busy machine), and stops when told even while it waits.
    #[test]
    fn a_paced_flood_keeps_to_its_rate_and_stops() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = sink.local_addr().unwrap();
        let began = Instant::now();
        let mut flood = Flood::start(target, &EVERY_KIND, GarbageMaker::new(3, None), Some(500));
        while flood.sent() < 20 {
            std::thread::yield_now();
        }
        let sent = flood.stop();
        let allowed = 500.0 * began.elapsed().as_secs_f64() + 1.0;
        assert!(sent as f64 <= allowed, "{sent} sent, {allowed} allowed");
    }

    #[test]
    fn each_kind_looks_like_what_it_says_and_the_seed_repeats_it() {
        let (mut a, mut b) = (GarbageMaker::new(7, None), GarbageMaker::new(7, None));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for kind in EVERY_KIND {
            a.make(kind, &mut x);
            b.make(kind, &mut y);
            assert_eq!(x, y);
            assert!(!x.is_empty());
            match kind {
                Garbage::RtpLike => assert!((128..192).contains(&x[0])),
                Garbage::DtlsLike => assert!((20..64).contains(&x[0])),
                _ => {}
            }
        }
    }
}
