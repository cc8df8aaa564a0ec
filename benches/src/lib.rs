//! Rigs for the criterion benchmarks in `benches/`: the engine forwarding one
//! speaker's real SRTP packets to N listeners, and a baseline that does only
//! the unavoidable work per (packet, listener): a copy and AES-256-GCM;
//! speaker selection per packet ([`selection`]); datagram demultiplexing with
//! 10,000 peers ([`demux`]).
//!
//! They time only what they measure and report it with
//! [`criterion::Bencher::iter_custom`], so setup and the regeneration of
//! packets stay out of the figures.

#[cfg(feature = "internal-rigs")]
pub mod demux;
#[cfg(feature = "internal-rigs")]
pub mod selection;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use media_core::{EngineConfig, Input, Output, Role};
use testkit::audio::{ToneSpeaker, TONES};
use testkit::client::ClientSpec;
use testkit::net::Datagram;
use testkit::{Sim, ENGINE_ADDR};

/// The CPU time this thread has run, in ns, from the Linux scheduler
/// (`/proc/thread-self/schedstat`; not updated for the slice running now,
/// so good to a scheduler tick: use it only on totals of many calls). `None`
/// elsewhere.
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Measured wall time and the CPU time the thread ran meanwhile: on a shared
/// machine, a CPU share well below 100% means the figures were inflated by
/// other processes taking the CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timed {
    /// Total measured wall time.
    pub wall: Duration,
    /// Total CPU time of the thread over the same windows (plus the reads).
    pub cpu: Duration,
}

impl Timed {
    /// CPU time as a share of wall time, in percent.
    pub fn cpu_share(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Runs `f`, adding its wall time and the thread's CPU time meanwhile.
    /// Returns what `f` returned and its wall time.
    pub fn measure<R>(&mut self, f: impl FnOnce() -> R) -> (R, Duration) {
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let r = f();
        let wall = start.elapsed();
        if let (Some(a), Some(b)) = (cpu0, thread_cpu_ns()) {
            self.cpu += Duration::from_nanos(b.saturating_sub(a));
        }
        self.wall += wall;
        (r, wall)
    }
}

/// What an empty timed window costs (two `Instant::now()` and a
/// subtraction), the mean over a million: the overhead in a figure timed
/// call by call.
pub fn clock_overhead() -> Duration {
    const N: u32 = 1_000_000;
    let mut total = Duration::ZERO;
    for _ in 0..N {
        let start = Instant::now();
        total += black_box(start).elapsed();
    }
    total / N
}

/// Two costs measured in alternation, so that both see the same load of a
/// shared machine: see [`paired`].
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    /// Median of the per-round ratios `a / b`.
    pub median: f64,
    /// First quartile of the per-round ratios.
    pub q1: f64,
    /// Third quartile of the per-round ratios.
    pub q3: f64,
    /// The fastest round of `a` over the fastest round of `b`: the ratio
    /// least disturbed by other processes.
    pub fastest: f64,
}

/// `rounds` rounds of `a` then `b` (every other round `b` then `a`), each
/// timed once (wall).
pub fn paired(rounds: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> Paired {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64().max(1e-12)
    };
    let times: Vec<(f64, f64)> = (0..rounds)
        .map(|round| {
            if round % 2 == 0 {
                let ta = time(&mut a);
                (ta, time(&mut b))
            } else {
                let tb = time(&mut b);
                (time(&mut a), tb)
            }
        })
        .collect();
    let mut ratios: Vec<f64> = times.iter().map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    let fastest = |t: fn(&(f64, f64)) -> f64| times.iter().map(t).fold(f64::INFINITY, f64::min);
    Paired {
        median: at(0.5),
        q1: at(0.25),
        q3: at(0.75),
        fastest: fastest(|t| t.0) / fastest(|t| t.1),
    }
}

/// One 20 ms Opus frame per packet.
pub const FRAME: Duration = Duration::from_millis(20);

/// Packets captured from the speaker per refill of the pool: 3 s of speech.
/// The simulation is held while they are fed, so this bounds how long the
/// clients go without ICE keepalives (str0m's ICE-lite side gives up after
/// 15 s without a binding request).
const POOL: usize = 150;

/// The engine with one speaker and `listeners` listeners in one channel, and
/// a pool of real SRTP packets from the speaker, captured from its str0m
/// client and not yet delivered.
pub struct ForwardRig {
    sim: Sim,
    speaker: usize,
    speaker_addr: SocketAddr,
    listeners: usize,
    pool: Vec<Datagram>,
    next: usize,
    /// Transmits the engine produced in measured calls (warm-up included).
    pub transmits: u64,
    /// Packets fed in measured calls (warm-up included).
    pub packets: u64,
    /// Bytes of the packets fed (SRTP datagrams as the speaker sent them).
    pub bytes_in: u64,
    /// Time of the measured calls.
    pub timed: Timed,
}

impl std::fmt::Debug for ForwardRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardRig")
            .field("listeners", &self.listeners)
            .field("packets", &self.packets)
            .field("transmits", &self.transmits)
            .finish()
    }
}

impl ForwardRig {
    /// Joins one speaker and `listeners` non-decoding listeners, connects
    /// them all (real ICE and DTLS), lets the speaker talk for 0.5 s so that
    /// it is selected, then checks that one packet comes out `listeners`
    /// times.
    ///
    /// # Panics
    /// When the peers do not connect or the engine does not forward.
    pub fn new(listeners: usize) -> Self {
        Self::with_config(listeners, EngineConfig::new(testkit::SEED))
    }

    /// [`ForwardRig::new`] with an engine configuration of one's own (e.g.
    /// `direct_srtp: false`, str0m's send path, for comparison).
    ///
    /// # Panics
    /// When the peers do not connect or the engine does not forward.
    pub fn with_config(listeners: usize, config: EngineConfig) -> Self {
        let direct = config.direct_srtp;
        let mut sim = Sim::new(config, Instant::now());
        let speaker = sim.join("speaker", "bench", Role::Speaker, ClientSpec::speaker(0));
        for i in 0..listeners {
            let spec = ClientSpec {
                decode: false,
                ..ClientSpec::listener()
            };
            sim.join(&format!("l{i}"), "bench", Role::Listener, spec);
        }
        assert!(
            sim.run_until_connected(Duration::from_secs(30)),
            "not every client connected"
        );
        let stats = sim.engine.stats();
        let on_direct_path = if direct { listeners as u64 + 1 } else { 0 };
        assert_eq!(
            stats.peers_direct, on_direct_path,
            "peers on the engine's own send path"
        );
        sim.set_talking(speaker, true);
        sim.run_for(Duration::from_millis(500));
        assert!(sim.errors.is_empty(), "engine errors: {:?}", sim.errors);
        let source = sim
            .engine
            .peer_source(media_core::PeerId(speaker as u64))
            .expect("speaker joined");
        assert_eq!(
            sim.engine.selected_speakers("bench"),
            Some(vec![source]),
            "the speaker is selected"
        );
        let speaker_addr = sim.clients[speaker].addr;
        let mut rig = ForwardRig {
            sim,
            speaker,
            speaker_addr,
            listeners,
            pool: Vec::new(),
            next: 0,
            transmits: 0,
            packets: 0,
            bytes_in: 0,
            timed: Timed::default(),
        };
        rig.refill();
        // The bench must not silently measure nothing.
        for _ in 0..3 {
            let before = rig.transmits;
            rig.forward(1);
            let out = rig.transmits - before;
            // Exactly `listeners` RTP packets (`forward` asserts it on the
            // engine's counter), plus RTCP reports that happened to be due.
            assert!(
                out >= listeners as u64 && out <= 2 * listeners as u64,
                "one packet gave {out} transmits for {listeners} listeners"
            );
        }
        rig.transmits = 0;
        rig.packets = 0;
        rig.bytes_in = 0;
        rig.timed = Timed::default();
        rig
    }

    /// The number of listeners.
    pub fn listeners(&self) -> usize {
        self.listeners
    }

    /// Captures a fresh pool of packets from the speaker (the simulation
    /// runs meanwhile: keepalives, RTCP, timers).
    fn refill(&mut self) {
        self.pool = self.sim.capture_uplink(self.speaker, POOL);
        self.next = 0;
        assert!(
            self.pool.len() >= POOL,
            "the speaker sent {} packets, not {POOL}",
            self.pool.len()
        );
    }

    /// Feeds `packets` fresh packets to the engine, 20 ms apart in simulated
    /// time, and drains its output after each (transmits are counted and
    /// dropped). Returns the time spent in `handle_input` and `poll_output`
    /// only: refilling the pool is not timed.
    ///
    /// # Panics
    /// When a packet is not forwarded to every listener.
    pub fn forward(&mut self, packets: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = packets;
        while left > 0 {
            if self.next == self.pool.len() {
                self.refill();
            }
            let k = ((self.pool.len() - self.next) as u64).min(left) as usize;
            let batch = &self.pool[self.next..self.next + k];
            let forwarded_before = self.sim.engine.stats().rtp_forwarded;
            let engine = &mut self.sim.engine;
            let mut now = self.sim.now;
            let mut transmits = 0u64;
            let (_, wall) = self.timed.measure(|| {
                for d in batch {
                    now += FRAME;
                    let _ = engine.handle_input(Input::Receive {
                        now,
                        source: self.speaker_addr,
                        destination: ENGINE_ADDR,
                        datagram: &d.contents,
                    });
                    loop {
                        match engine.poll_output() {
                            Output::Transmit(t) => {
                                transmits += 1;
                                drop(black_box(t));
                            }
                            Output::Event(e) => drop(black_box(e)),
                            // No relay links in this bench.
                            o @ Output::Relay { .. } => drop(black_box(o)),
                            Output::Timeout(_) => break,
                        }
                    }
                }
            });
            total += wall;
            self.sim.now = now;
            self.bytes_in += batch.iter().map(|d| d.contents.len() as u64).sum::<u64>();
            self.next += k;
            self.packets += k as u64;
            self.transmits += transmits;
            left -= k as u64;
            let forwarded = self.sim.engine.stats().rtp_forwarded - forwarded_before;
            assert_eq!(
                forwarded,
                (k * self.listeners) as u64,
                "{k} packets were not forwarded to {} listeners",
                self.listeners
            );
        }
        total
    }
}

/// The floor of forwarding: for every (packet, listener), copy an RTP header
/// and the Opus payload into a buffer and seal it with AES-256-GCM (the SRTP
/// AEAD profile str0m negotiates, RFC 7714), with a distinct nonce each time.
pub struct Baseline {
    key: LessSafeKey,
    listeners: usize,
    payloads: Vec<Vec<u8>>,
    buf: Vec<u8>,
    counter: u64,
    /// Time of the measured calls.
    pub timed: Timed,
}

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baseline")
            .field("listeners", &self.listeners)
            .finish()
    }
}

/// RTP header size in the baseline (no CSRC, no extension).
pub const RTP_HEADER: usize = 12;

impl Baseline {
    /// A baseline for `listeners` listeners, with the Opus payloads of the
    /// same tone, amplitude and encoder settings as the rig's speaker.
    pub fn new(listeners: usize) -> Self {
        let mut speaker = ToneSpeaker::new(TONES[0], 0.5);
        let payloads = (0..50).map(|_| speaker.next_frame().payload).collect();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("AES key"));
        Baseline {
            key,
            listeners,
            payloads,
            buf: Vec::with_capacity(1500),
            counter: 0,
            timed: Timed::default(),
        }
    }

    /// (Packet, listener) pairs sealed so far.
    pub fn sealed(&self) -> u64 {
        self.counter
    }

    /// Mean Opus payload size in bytes.
    pub fn mean_payload(&self) -> f64 {
        self.payloads.iter().map(|p| p.len()).sum::<usize>() as f64 / self.payloads.len() as f64
    }

    /// Copies and seals `packets` packets for every listener. Returns the
    /// (wall) time it took.
    pub fn forward(&mut self, packets: u64) -> Duration {
        let mut timed = self.timed;
        let (_, wall) = timed.measure(|| self.seal(packets));
        self.timed = timed;
        wall
    }

    fn seal(&mut self, packets: u64) {
        for p in 0..packets {
            let payload = &self.payloads[(p % self.payloads.len() as u64) as usize];
            for l in 0..self.listeners {
                self.counter += 1;
                let seq = self.counter as u16;
                let ssrc = l as u32;
                let ts = (self.counter as u32).wrapping_mul(960);
                let mut header = [0u8; RTP_HEADER];
                header[0] = 0x80;
                header[1] = 111;
                header[2..4].copy_from_slice(&seq.to_be_bytes());
                header[4..8].copy_from_slice(&ts.to_be_bytes());
                header[8..12].copy_from_slice(&ssrc.to_be_bytes());
                self.buf.clear();
                self.buf.extend_from_slice(&header);
                self.buf.extend_from_slice(payload);
                let mut nonce = [0u8; NONCE_LEN];
                nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
                let (head, body) = self.buf.split_at_mut(RTP_HEADER);
                let tag = self
                    .key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&*head),
                        body,
                    )
                    .expect("seal");
                self.buf.extend_from_slice(tag.as_ref());
                black_box(&self.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rig_forwards_to_every_listener_across_refills() {
        let mut rig = ForwardRig::new(10);
        // 60 simulated seconds, feeding and capturing: past str0m's 15 s
        // ICE-lite consent timeout, so the refills must keep ICE alive.
        rig.forward(10 * POOL as u64 + 10);
        assert!(rig.transmits >= rig.packets * 10);
    }

    #[test]
    fn baseline_seals() {
        let mut b = Baseline::new(3);
        b.forward(2);
        assert_eq!(b.counter, 6);
        assert!(b.mean_payload() > 20.0);
    }
}
