//! Fuzz bodies: what `fuzz/fuzz_targets/*.rs` run, kept here so that the
//! targets are three-line shims and `cargo test` (media-core's
//! `tests/malformed.rs`) can run the same bodies over a fixed corpus.
//!
//! - [`sdp_offer`]: arbitrary bytes as a join offer.
//! - [`datagrams`] / [`datagrams_reused`]: a sequence of datagrams, STUN
//!   requests, sealed RTP and RTCP, commands and time steps against an engine
//!   with established sessions ([`DatagramRig`]). The fuzz target reuses one
//!   rig across inputs and resets it between them (about 2 ms per input
//!   saved: see `rig.rs`); the tests build a fresh one.
//!
//! The newcomer of the rig (a member that joined but never connected) is
//! reached through `Engine::learn_address`, media-core's internal test hook:
//! hence the feature `fuzz`, which turns on media-core's
//! `_internal_test_exports`.
//!
//! The rule they check: **a panic on wire input is a bug**. Bad input is
//! dropped and counted; it never brings the engine down.

mod rig;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use media_core::{Command, Engine, Output, PeerId, Role};

use rig::{stun_source, RtpShape, StunRequest, StunTarget, STRANGERS};
pub use rig::{DatagramRig, NEWCOMER_REUSE};
use rig::{LISTENER, LISTENER_ADDR, NEWCOMER, NEWCOMER_ADDR, SPEAKER, SPEAKER_ADDR};

/// The STUN magic cookie (RFC 5389 §6).
const STUN_MAGIC: u32 = 0x2112_A442;

/// Arbitrary bytes as an SDP offer to join with, then (when joined) to
/// restart that session with: each refused with an error or
/// answered, never a panic.
///
/// `now` is any instant (the shim passes the current time).
pub fn sdp_offer(data: &[u8], now: Instant) {
    let mut e = Engine::new(rig::engine_config(), now);
    let offer = String::from_utf8_lossy(data).into_owned();
    let joined = rig::join(&mut e, now, PeerId(1), Role::Speaker, offer.clone()).is_ok();
    while !matches!(e.poll_output(), Output::Timeout(_)) {}
    // The same text as an ICE restart of that session (its layout then
    // matches: str0m takes a second offer on the existing session).
    if joined {
        let _ = e.handle_input(media_core::Input::Command {
            now,
            command: media_core::Command::Restart {
                peer: PeerId(1),
                offer,
            },
        });
        while !matches!(e.poll_output(), Output::Timeout(_)) {}
    }
}

/// Runs one input against a rig built for it (exact, and slow: two
/// handshakes per call). `start` is any instant.
pub fn datagrams(data: &[u8], start: Instant) {
    let mut rig = DatagramRig::new(start);
    run(&mut rig, data);
}

/// Runs one input against this thread's rig, built on first use, then
/// resets the rig (what the fuzz target runs). Prints a line when the rig
/// had to be rebuilt for the 1st, 10th, 100th… time, with the inputs so
/// far, so that a campaign's log shows how often that happens.
pub fn datagrams_reused(data: &[u8]) {
    thread_local! {
        static RIG: RefCell<Option<DatagramRig>> = const { RefCell::new(None) };
    }
    RIG.with_borrow_mut(|slot| {
        let rig = slot.get_or_insert_with(|| DatagramRig::new(Instant::now()));
        if rig.run_input(data) {
            let (inputs, rebuilds) = rig.counts();
            if is_power_of_ten(rebuilds) {
                let (down, gone) = rig.rebuild_reasons();
                eprintln!(
                    "datagrams: rig rebuilt {rebuilds} times in {inputs} inputs \
                     ({down} with a session down, {gone} with a member gone)"
                );
            }
        }
    });
}

impl DatagramRig {
    /// Runs one input, then [`reset`](Self::reset)s; returns whether the rig
    /// was rebuilt.
    pub fn run_input(&mut self, data: &[u8]) -> bool {
        self.start_input();
        run(self, data);
        self.reset()
    }
}

fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

/// Reads an input's bytes; past the end every read is 0 / empty, so that
/// every input is a valid program.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// A length byte, then up to that many bytes.
    fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u8()).min(self.0.len());
        let (chunk, rest) = self.0.split_at(len);
        self.0 = rest;
        chunk
    }
}

/// The input format: repeated, one selector byte, then that operation's
/// bytes (a datagram is a length byte and up to 255 bytes).
///
/// | selector % 16 | operation |
/// |---|---|
/// | 0, 1 | time moves on by byte + 1 ms, with every timer on the way |
/// | 2 | a command: mute, unmute, make listener, make speaker (of the speaker or the listener), or the newcomer leaves |
/// | 3, 4, 5 | a datagram from the speaker's address (its STUN, DTLS, SRTP, SRTCP state) |
/// | 6, 7 | a datagram from the listener's address |
/// | 8 | a datagram from the newcomer's address (a handshake not yet started) |
/// | 9, 10 | a datagram from a stranger's address |
/// | 11 | a STUN binding request naming the speaker's or the newcomer's ufrag, signed or not, from one of 16 addresses (signed to the speaker: from its own address) |
/// | 12 | STUN with the speaker's or the newcomer's USERNAME, then arbitrary attributes |
/// | 13, 14 | an RTP packet sealed by the speaker's SRTP: header fields and an arbitrary or real Opus payload |
/// | 15 | RTCP feedback (PLI, FIR, REMB) sealed by the listener's SRTCP |
fn run(rig: &mut DatagramRig, data: &[u8]) {
    let mut r = Reader(data);
    while let Some(sel) = r.0.first().copied() {
        r.u8();
        match sel % 16 {
            0 | 1 => {
                let ms = u64::from(r.u8()) + 1;
                rig.advance(Duration::from_millis(ms));
            }
            2 => {
                let b = r.u8();
                let peer = if b & 4 == 0 { SPEAKER } else { LISTENER };
                let command = match b % 8 {
                    0 | 4 => Command::SetMuted { peer, muted: true },
                    1 | 5 => Command::SetMuted { peer, muted: false },
                    2 | 6 => Command::SetRole {
                        peer,
                        role: Role::Listener,
                    },
                    7 => Command::Leave { peer: NEWCOMER },
                    _ => Command::SetRole {
                        peer,
                        role: Role::Speaker,
                    },
                };
                rig.command(command);
            }
            3..=5 => rig.inject(SPEAKER_ADDR, r.chunk()),
            6 | 7 => rig.inject(LISTENER_ADDR, r.chunk()),
            8 => rig.inject(NEWCOMER_ADDR, r.chunk()),
            9 | 10 => rig.inject(STRANGERS[usize::from(sel & 16 != 0)], r.chunk()),
            11 => {
                let flags = r.u8();
                let from = r.u8();
                let request = StunRequest {
                    signed: flags & 1 != 0,
                    use_candidate: flags & 2 != 0,
                    controlling: flags & 4 != 0,
                    prio: u32::from(r.u16()) << 8,
                };
                let target = if flags & 8 == 0 {
                    StunTarget::Speaker
                } else {
                    StunTarget::Newcomer
                };
                rig.stun(target, stun_source(from), request);
            }
            12 => {
                let flags = r.u8();
                let tail = r.chunk();
                let (target, source) = match flags % 4 {
                    0 => (StunTarget::Speaker, stun_source(flags >> 3)),
                    1 => (StunTarget::Speaker, SPEAKER_ADDR),
                    2 => (StunTarget::Newcomer, stun_source(flags >> 3)),
                    _ => (StunTarget::Newcomer, NEWCOMER_ADDR),
                };
                let username = rig.stun_username(target);
                let msg = stun_with_attributes(&username, tail, flags & 4 != 0);
                rig.inject(source, &msg);
            }
            13 | 14 => {
                let flags = r.u8();
                let level = r.u8();
                let shape = RtpShape {
                    seq_delta: r.u8() as i8,
                    ts_jitter: i16::from(r.u8() as i8) * 16,
                    marker: flags & 1 != 0,
                    level: (flags & 2 != 0).then_some((
                        level,
                        [None, Some(true), Some(false)][usize::from(flags >> 6) % 3],
                    )),
                    csrcs: (flags >> 2) & 3,
                    pt: (flags & 16 != 0).then_some(level),
                };
                let payload = (flags & 32 != 0).then(|| r.chunk());
                rig.speak(shape, payload, usize::from(level));
            }
            _ => {
                let slot = usize::from(r.u8() % 4);
                rig.feedback(slot, r.u8());
            }
        }
    }
}

/// A STUN binding request header, a USERNAME attribute, then `tail` as
/// further attributes; the header's length covers them exactly, or is taken
/// from the tail's first two bytes (`raw_length`).
fn stun_with_attributes(username: &str, tail: &[u8], raw_length: bool) -> Vec<u8> {
    let mut attrs = Vec::with_capacity(8 + username.len() + tail.len());
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(tail);
    let length = match tail {
        [a, b, ..] if raw_length => u16::from_be_bytes([*a, *b]),
        _ => attrs.len() as u16,
    };
    let mut msg = Vec::with_capacity(20 + attrs.len());
    msg.extend_from_slice(&0x0001u16.to_be_bytes());
    msg.extend_from_slice(&length.to_be_bytes());
    msg.extend_from_slice(&STUN_MAGIC.to_be_bytes());
    msg.extend_from_slice(&[0x5a; 12]);
    msg.extend_from_slice(&attrs);
    msg
}
