//! Rewriting one listener slot so that a browser sees one continuous stream
//! while the voice in it changes.
//!
//! Each slot is a send stream with a fixed SSRC. When a different voice takes
//! the slot:
//! - sequence numbers continue at +1 from the last one sent (and never start at
//!   or above 65536, which would need the SRTP rollover counter signalled out
//!   of band: str0m issue #1036);
//! - the RTP timestamp never goes backwards: the first packet of the new
//!   voice is stamped `elapsed × 48` samples after the last one, and at least
//!   that packet's own duration after it (two voices sending on the same
//!   20 ms grid switch with no time elapsed, and overlapping timestamps would
//!   make the receiver's jitter buffer drop audio); later packets keep the new
//!   voice's own spacing;
//! - the marker bit is set on the first packet after the switch (RFC 3551 §4.1:
//!   the first packet of a talkspurt).
//!
//! Within one voice, gaps in its sequence numbers pass through unchanged, so a
//! listener's loss statistics and concealment stay honest. When the same
//! voice resumes after more than [`RESUME_GAP`] without a packet (a relay
//! link failed over, a long network outage), it is rebased like a switch: a
//! new talkspurt continuing at +1, not hundreds of "lost" packets.

use std::time::Instant;

use crate::SourceId;

/// RTP clock of Opus (RFC 7587 §4.1): 48 kHz whatever the sampling rate.
const OPUS_CLOCK_PER_MS: u64 = 48;

/// Silence after which the same voice is rebased as if it were new.
pub(crate) const RESUME_GAP: std::time::Duration = std::time::Duration::from_millis(250);

/// 20 ms at 48 kHz: what WebRTC clients send unless told otherwise.
const DEFAULT_PACKET_SAMPLES: u32 = 960;

/// Where a forwarded packet lands in the slot's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// Extended sequence number on the slot's stream.
    pub(crate) seq: u64,
    /// RTP timestamp on the slot's stream.
    pub(crate) ts: u32,
    /// First packet after a change of voice.
    pub(crate) marker: bool,
}

/// Sequence number and timestamp state of one (listener, slot).
#[derive(Debug, Clone)]
pub(crate) struct SlotRewriter {
    source: Option<SourceId>,
    /// Added (wrapping) to a voice's extended sequence number.
    seq_offset: u64,
    /// Added (wrapping) to a voice's RTP timestamp.
    ts_offset: u32,
    /// Highest sequence number sent on the slot so far.
    highest_seq: u64,
    /// Packets of the current voice at or below this were due before the
    /// switch; they would go backwards and are dropped.
    floor_seq: u64,
    /// Timestamp of the highest packet sent, and when it was sent.
    last_ts: u32,
    last_sent: Option<Instant>,
    /// Samples the highest packet sent carries (960 = 20 ms until known).
    last_duration: u32,
    /// Set when the next packet is the first of a new voice.
    pending_marker: bool,
}

impl SlotRewriter {
    /// RTP timestamp of the highest packet sent on the slot (for sender
    /// reports).
    pub(crate) fn last_ts(&self) -> u32 {
        self.last_ts
    }

    /// A slot whose first packet gets sequence number `first_seq` (below 32768,
    /// so a long call does not roll over early) and timestamp `first_ts`.
    pub(crate) fn new(first_seq: u16, first_ts: u32) -> Self {
        let first_seq = (first_seq & 0x7fff) as u64;
        SlotRewriter {
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            // The first packet will be `highest_seq + 1`.
            highest_seq: first_seq.wrapping_sub(1),
            floor_seq: first_seq.wrapping_sub(1),
            last_ts: first_ts,
            last_sent: None,
            last_duration: DEFAULT_PACKET_SAMPLES,
            pending_marker: true,
        }
    }

    /// Rewrites a packet of `source` carrying `samples` of audio (`None`
    /// when unknown); `None` when it must not be sent (it predates the switch
    /// to this voice).
    pub(crate) fn rewrite(
        &mut self,
        source: SourceId,
        seq: u64,
        rtp_ts: u32,
        samples: Option<u32>,
        now: Instant,
    ) -> Option<Rewritten> {
        let resumed = self.source == Some(source)
            && self
                .last_sent
                .is_some_and(|t| now.saturating_duration_since(t) > RESUME_GAP)
            && seq.wrapping_add(self.seq_offset) > self.highest_seq.wrapping_add(1);
        if self.source != Some(source) || resumed {
            self.switch_to(source, seq, rtp_ts, now);
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        // `floor_seq` starts as `first - 1`, which for first == 0 wraps to
        // u64::MAX; compare as a signed distance to stay correct there.
        if (out_seq.wrapping_sub(self.floor_seq) as i64) <= 0 {
            return None;
        }
        let ts = rtp_ts.wrapping_add(self.ts_offset);
        if (out_seq.wrapping_sub(self.highest_seq) as i64) > 0 {
            self.highest_seq = out_seq;
            self.last_ts = ts;
            self.last_sent = Some(now);
            self.last_duration = samples.unwrap_or(DEFAULT_PACKET_SAMPLES);
        }
        let marker = std::mem::take(&mut self.pending_marker);
        Some(Rewritten {
            seq: out_seq,
            ts,
            marker,
        })
    }

    fn switch_to(&mut self, source: SourceId, seq: u64, rtp_ts: u32, now: Instant) {
        let first_ts = match self.last_sent {
            Some(t) => {
                let elapsed_ms = now.saturating_duration_since(t).as_millis() as u64;
                let advance = (elapsed_ms * OPUS_CLOCK_PER_MS)
                    .clamp(self.last_duration as u64, u32::MAX as u64 / 2);
                self.last_ts.wrapping_add(advance as u32)
            }
            None => self.last_ts,
        };
        self.source = Some(source);
        self.seq_offset = self.highest_seq.wrapping_add(1).wrapping_sub(seq);
        self.floor_seq = self.highest_seq;
        self.ts_offset = first_ts.wrapping_sub(rtp_ts);
        self.pending_marker = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn continuous_across_a_switch() {
        let t0 = testkit::epoch();
        let mut s = SlotRewriter::new(1000, 5000);
        let a = SourceId(1);
        let b = SourceId(2);
        let p1 = s.rewrite(a, 70_000, 123_000, None, t0).unwrap();
        assert_eq!((p1.seq, p1.ts, p1.marker), (1000, 5000, true));
        let p2 = s
            .rewrite(a, 70_001, 123_960, None, t0 + Duration::from_millis(20))
            .unwrap();
        assert_eq!((p2.seq, p2.ts, p2.marker), (1001, 5960, false));
        // Switch 100 ms later to a voice with unrelated numbering.
        let p3 = s
            .rewrite(b, 9, 42, None, t0 + Duration::from_millis(120))
            .unwrap();
        assert_eq!(p3.seq, 1002);
        assert!(p3.marker);
        assert_eq!(p3.ts, 5960 + 100 * 48);
        let p4 = s
            .rewrite(b, 10, 42 + 960, None, t0 + Duration::from_millis(140))
            .unwrap();
        assert_eq!((p4.seq, p4.ts, p4.marker), (1003, 5960 + 4800 + 960, false));
    }

    #[test]
    fn source_gaps_pass_through_and_stale_packets_are_dropped() {
        let t0 = testkit::epoch();
        let mut s = SlotRewriter::new(10, 0);
        let a = SourceId(1);
        let b = SourceId(2);
        s.rewrite(a, 100, 0, None, t0).unwrap();
        // 101 lost upstream: the gap stays visible to the listener.
        assert_eq!(s.rewrite(a, 102, 1920, None, t0).unwrap().seq, 12);
        s.rewrite(b, 500, 0, None, t0).unwrap();
        // A late packet of b from before the switch would go backwards.
        assert_eq!(s.rewrite(b, 499, 0, None, t0), None);
        // Back to a: continues after b.
        assert_eq!(s.rewrite(a, 103, 2880, None, t0).unwrap().seq, 14);
    }

    #[test]
    fn a_source_resuming_after_a_long_gap_is_rebased() {
        let t0 = testkit::epoch();
        let mut s = SlotRewriter::new(100, 0);
        let a = SourceId(1);
        s.rewrite(a, 10, 0, None, t0).unwrap();
        // 40 ms later with one packet lost: the gap shows.
        let p = s
            .rewrite(a, 12, 1920, None, t0 + Duration::from_millis(40))
            .unwrap();
        assert_eq!((p.seq, p.marker), (102, false));
        // A second later, 50 packets on: a new talkspurt at +1.
        let p = s
            .rewrite(
                a,
                62,
                1920 + 50 * 960,
                None,
                t0 + Duration::from_millis(1040),
            )
            .unwrap();
        assert_eq!((p.seq, p.marker), (103, true));
        assert_eq!(p.ts, 1920 + 1000 * 48);
    }

    #[test]
    fn first_sequence_number_stays_below_32768() {
        let mut s = SlotRewriter::new(u16::MAX, 0);
        let p = s
            .rewrite(SourceId(1), 5, 0, None, testkit::epoch())
            .unwrap();
        assert!(p.seq < 32768);
    }

    #[test]
    fn timestamps_never_go_backwards_even_if_the_clock_does() {
        let t0 = testkit::epoch() + Duration::from_secs(10);
        let mut s = SlotRewriter::new(0, u32::MAX - 10);
        let a = s.rewrite(SourceId(1), 0, 0, Some(480), t0).unwrap();
        let b = s
            .rewrite(SourceId(2), 0, 7, None, t0 - Duration::from_secs(1))
            .unwrap();
        // No time passed (the clock even went back): one packet's duration.
        assert_eq!(b.ts, a.ts.wrapping_add(480));
        assert_eq!(b.seq, a.seq + 1);
    }
}
