//! Hall mode: two consecutive 20 ms Opus frames of a voice joined into one
//! 40 ms packet for members who only listen (RFC 6716 §3.2: an Opus packet
//! may carry several frames; nothing is decoded or re-encoded). Half the
//! packets and about a third fewer bytes per listener (each packet saved
//! is ~60 bytes of IP, UDP, RTP, header extension and SRTP tag), for 20 ms
//! more latency.
//!
//! A voice's [`Packer`] holds one frame until the next one comes: when the
//! two are consecutive (sequence number + 1, timestamp + the first's
//! duration) and can share a packet (both single-frame packets of the same
//! configuration, 120 ms at most together), they leave as one; otherwise
//! the held frame leaves alone. A frame held for [`PACK_WAIT`] without a
//! successor (a talkspurt ended, DTX, loss) leaves alone too. Packets
//! leave with sequence numbers of their own, counting up by one per packet
//! sent, and by half the frames missing across a gap in the voice's, so
//! that a listener's loss figures stay honest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{opus_samples, VoiceFrame};

/// How long a frame waits for its successor: a frame comes every 20 ms;
/// one that has not come 30 ms after its predecessor is late or lost.
pub(crate) const PACK_WAIT: Duration = Duration::from_millis(30);

/// Longest frame an Opus packet may carry (RFC 6716 §3.2.1).
const MAX_FRAME_BYTES: usize = 1275;

/// Samples (48 kHz) an Opus packet carries at most (120 ms).
const MAX_PACKET_SAMPLES: u32 = 5760;

/// A voice's sequence number this far behind the last one is a new
/// numbering (its sender started a new stream), not a late packet.
const RENUMBERED: u64 = 100;

/// `a` and `b`, two single-frame Opus packets (code 0) of the same
/// configuration, as one two-frame packet: code 1 when the frames are the
/// same size, code 2 otherwise (RFC 6716 §3.2.2, §3.2.3). `None` when they
/// cannot share a packet.
pub(crate) fn join_opus(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let (&toc, fa) = a.split_first()?;
    let (&toc_b, fb) = b.split_first()?;
    // Code 0 (one frame) both, same configuration, same stereo flag.
    if toc & 0x3 != 0 || toc != toc_b {
        return None;
    }
    if opus_samples(a)? * 2 > MAX_PACKET_SAMPLES
        || fa.len() > MAX_FRAME_BYTES
        || fb.len() > MAX_FRAME_BYTES
    {
        return None;
    }
    let mut out = Vec::with_capacity(3 + fa.len() + fb.len());
    if fa.len() == fb.len() {
        out.push(toc | 1);
    } else {
        out.push(toc | 2);
        // The first frame's length: one byte below 252, else two
        // (RFC 6716 §3.2.1).
        if fa.len() < 252 {
            out.push(fa.len() as u8);
        } else {
            let first = 252 + ((fa.len() - 252) & 3);
            out.push(first as u8);
            out.push(((fa.len() - first) / 4) as u8);
        }
    }
    out.extend_from_slice(fa);
    out.extend_from_slice(fb);
    Some(out)
}

/// What a [`Packer`] sends for one frame in: nothing (it holds the frame),
/// one packet, or two (the frame it held, alone, and then the new one,
/// which cannot be held).
pub(crate) type Packed = [Option<VoiceFrame>; 2];

/// One voice's packing for the members of a channel that take 40 ms
/// packets (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Packer {
    /// The frame waiting for its successor, and when it came.
    held: Option<(VoiceFrame, Instant)>,
    /// The last sequence number of the voice seen.
    last_in: Option<u64>,
    /// The sequence number of the next packet out.
    next_out: u64,
}

impl Packer {
    /// Takes the voice's next frame (in arrival order; a frame older than
    /// the last one is dropped, unless it is far behind: the voice started
    /// a new numbering, which the packer follows): what leaves now.
    pub(crate) fn push(&mut self, frame: &VoiceFrame, now: Instant) -> Packed {
        if let Some(l) = self.last_in.filter(|l| frame.seq <= *l) {
            if l - frame.seq < RENUMBERED {
                return [None, None];
            }
            // A new numbering: the frame held (of the old one) leaves
            // alone, and the new one starts afresh.
            self.last_in = None;
            let held = self.held.take().map(|(f, _)| self.number(f));
            return [held, self.hold_or_send(frame, now)];
        }
        // Packets lost before this one: about half as many packed ones.
        let missing = self.last_in.map_or(0, |l| frame.seq - l - 1);
        self.last_in = Some(frame.seq);
        if let Some((held, _)) = self.held.take() {
            let follows = missing == 0
                && opus_samples(&held.payload)
                    .is_some_and(|n| held.rtp_ts.wrapping_add(n) == frame.rtp_ts);
            if let Some(joined) = follows
                .then(|| join_opus(&held.payload, &frame.payload))
                .flatten()
            {
                let out = self.number(VoiceFrame {
                    payload: Arc::from(joined),
                    level: held.level.min(frame.level),
                    vad: match (held.vad, frame.vad) {
                        (None, None) => None,
                        (a, b) => Some(a == Some(true) || b == Some(true)),
                    },
                    red: None,
                    ..held
                });
                return [Some(out), None];
            }
            let alone = self.number(held);
            self.next_out += missing.div_ceil(2);
            return [Some(alone), self.hold_or_send(frame, now)];
        }
        self.next_out += missing.div_ceil(2);
        [self.hold_or_send(frame, now), None]
    }

    /// Whether a frame waits, and since when.
    pub(crate) fn held_since(&self) -> Option<Instant> {
        self.held.as_ref().map(|(_, at)| *at)
    }

    /// The held frame, alone, when it has waited [`PACK_WAIT`] by `now`.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<VoiceFrame> {
        let due = self
            .held_since()
            .is_some_and(|at| now.saturating_duration_since(at) >= PACK_WAIT);
        if !due {
            return None;
        }
        let (frame, _) = self.held.take()?;
        Some(self.number(frame))
    }

    /// Holds a frame that may share a packet with its successor; sends any
    /// other (already several frames, or malformed) at once.
    fn hold_or_send(&mut self, frame: &VoiceFrame, now: Instant) -> Option<VoiceFrame> {
        let joinable = frame.payload.first().is_some_and(|toc| toc & 0x3 == 0)
            && opus_samples(&frame.payload).is_some_and(|n| n * 2 <= MAX_PACKET_SAMPLES);
        if joinable {
            self.held = Some((frame.clone(), now));
            None
        } else {
            Some(self.number(VoiceFrame {
                red: None,
                ..frame.clone()
            }))
        }
    }

    /// `frame` with the next outgoing sequence number.
    fn number(&mut self, frame: VoiceFrame) -> VoiceFrame {
        let seq = self.next_out;
        self.next_out += 1;
        VoiceFrame {
            seq,
            red: None,
            ..frame
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SourceId;

    /// SILK WB 20 ms, mono, one frame.
    const TOC: u8 = 9 << 3;

    fn frame(seq: u64, payload: &[u8]) -> VoiceFrame {
        VoiceFrame {
            source: SourceId(7),
            seq,
            rtp_ts: 1000 + 960 * seq as u32,
            level: 30,
            vad: Some(seq.is_multiple_of(2)),
            payload: Arc::from(payload),
            red: None,
            capture: None,
        }
    }

    #[test]
    fn two_frames_join_as_code_1_or_2() {
        assert_eq!(
            join_opus(&[TOC, 1, 2], &[TOC, 3, 4]),
            Some(vec![TOC | 1, 1, 2, 3, 4])
        );
        assert_eq!(
            join_opus(&[TOC, 1, 2, 3], &[TOC, 4]),
            Some(vec![TOC | 2, 3, 1, 2, 3, 4])
        );
        // DTX frames (no bytes) join too.
        assert_eq!(join_opus(&[TOC], &[TOC]), Some(vec![TOC | 1]));
        // A first frame of 252 bytes or more takes two length bytes.
        for len in [252usize, 253, 700, 1275] {
            let a: Vec<u8> = std::iter::once(TOC)
                .chain((0..len).map(|i| i as u8))
                .collect();
            let joined = join_opus(&a, &[TOC, 9]).unwrap();
            assert_eq!(joined[0], TOC | 2);
            let decoded = usize::from(joined[1]) + 4 * usize::from(joined[2]);
            assert_eq!(decoded, len, "RFC 6716 §3.2.1 length of {len}");
            assert_eq!(&joined[3..3 + len], &a[1..]);
            assert_eq!(&joined[3 + len..], &[9]);
            assert_eq!(opus_samples(&joined), Some(1920));
        }
    }

    #[test]
    fn frames_that_cannot_share_a_packet_do_not_join() {
        assert_eq!(
            join_opus(&[TOC, 1], &[10 << 3, 1]),
            None,
            "configurations differ"
        );
        assert_eq!(join_opus(&[TOC, 1], &[TOC | 4, 1]), None, "mono and stereo");
        assert_eq!(
            join_opus(&[TOC | 1, 1, 1], &[TOC, 1]),
            None,
            "two frames already"
        );
        assert_eq!(join_opus(&[], &[TOC]), None);
        // Two 60 ms frames are 120 ms, the most a packet carries.
        assert!(join_opus(&[(3 << 3), 1], &[(3 << 3), 1]).is_some());
        let big = vec![TOC; 1277];
        assert_eq!(join_opus(&big, &[TOC, 1]), None, "a frame over 1275 bytes");
    }

    #[test]
    fn consecutive_frames_leave_in_pairs_numbered_anew() {
        let t0 = testkit::epoch();
        let mut p = Packer::default();
        assert!(matches!(p.push(&frame(10, &[TOC, 1]), t0), [None, None]));
        let [Some(out), None] = p.push(&frame(11, &[TOC, 2]), t0) else {
            panic!("a pair")
        };
        assert_eq!((out.seq, out.rtp_ts), (0, 1000 + 960 * 10));
        assert_eq!(&out.payload[..], &[TOC | 1, 1, 2]);
        assert_eq!(out.vad, Some(true), "either frame's voice activity");
        assert!(matches!(p.push(&frame(12, &[TOC, 3]), t0), [None, None]));
        let [Some(out), None] = p.push(&frame(13, &[TOC, 4]), t0) else {
            panic!("a pair")
        };
        assert_eq!(out.seq, 1);
        // A stale or repeated frame is dropped.
        assert!(matches!(p.push(&frame(13, &[TOC, 4]), t0), [None, None]));
    }

    #[test]
    fn a_gap_sends_the_held_frame_alone_and_skips_sequence_numbers() {
        let t0 = testkit::epoch();
        let mut p = Packer::default();
        p.push(&frame(0, &[TOC, 1]), t0);
        // Frames 1 to 4 lost: 0 leaves alone, 5 waits; 4 frames missing =
        // 2 packets' numbers skipped.
        let [Some(alone), None] = p.push(&frame(5, &[TOC, 5]), t0) else {
            panic!("the held frame alone")
        };
        assert_eq!((alone.seq, &alone.payload[..]), (0, &[TOC, 1][..]));
        let [Some(pair), None] = p.push(&frame(6, &[TOC, 6]), t0) else {
            panic!("a pair")
        };
        assert_eq!(pair.seq, 3, "0, then 1 and 2 for the four lost frames");
        // A frame that cannot join (a configuration change) sends the held
        // one alone, then waits itself.
        p.push(&frame(7, &[TOC, 7]), t0);
        let [Some(a), None] = p.push(&frame(8, &[10 << 3, 8]), t0) else {
            panic!("alone")
        };
        assert_eq!((a.seq, &a.payload[..]), (4, &[TOC, 7][..]));
        assert!(p.held_since().is_some());
        // Two frames in one packet already: out at once.
        let [Some(held), Some(now)] = p.push(&frame(9, &[TOC | 1, 1, 1]), t0) else {
            panic!("both alone")
        };
        assert_eq!((held.seq, now.seq), (5, 6));
    }

    #[test]
    fn a_frame_without_a_successor_leaves_after_the_wait() {
        let t0 = testkit::epoch();
        let mut p = Packer::default();
        p.push(&frame(0, &[TOC, 1]), t0);
        assert!(p.flush(t0 + PACK_WAIT - Duration::from_millis(1)).is_none());
        assert_eq!(p.held_since(), Some(t0));
        let out = p.flush(t0 + PACK_WAIT).expect("alone");
        assert_eq!((out.seq, &out.payload[..]), (0, &[TOC, 1][..]));
        assert!(p.flush(t0 + PACK_WAIT * 2).is_none());
        // The next frame (after a DTX pause) starts a new pair at the next
        // number.
        p.push(&frame(20, &[TOC, 2]), t0 + PACK_WAIT * 10);
        let [Some(pair), None] = p.push(&frame(21, &[TOC, 3]), t0 + PACK_WAIT * 10) else {
            panic!("a pair")
        };
        assert_eq!(pair.seq, 1 + 19_u64.div_ceil(2));
    }

    #[test]
    fn a_voice_that_starts_a_new_numbering_is_followed() {
        let t0 = testkit::epoch();
        let mut p = Packer::default();
        p.push(&frame(5000, &[TOC, 1]), t0);
        p.push(&frame(5001, &[TOC, 2]), t0);
        p.push(&frame(5002, &[TOC, 3]), t0);
        // A late frame: dropped.
        assert!(matches!(p.push(&frame(4990, &[TOC, 9]), t0), [None, None]));
        // Far behind: the sender numbers anew. The held frame leaves
        // alone, the new one waits for its successor.
        let [Some(held), None] = p.push(&frame(7, &[TOC, 4]), t0) else {
            panic!("the held frame alone")
        };
        assert_eq!((held.seq, &held.payload[..]), (1, &[TOC, 3][..]));
        let [Some(pair), None] = p.push(&frame(8, &[TOC, 5]), t0) else {
            panic!("a pair of the new numbering")
        };
        assert_eq!((pair.seq, &pair.payload[..]), (2, &[TOC | 1, 4, 5][..]));
    }
}
