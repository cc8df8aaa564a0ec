//! RFC 3550 receiver statistics of one incoming RTP stream: loss and
//! interarrival jitter, kept as packets arrive (constant memory).

use std::time::{Duration, Instant};

/// Opus's RTP clock rate (RFC 7587), the unit of RTP timestamps here.
const OPUS_CLOCK_HZ: f64 = 48_000.0;

/// RFC 3550 receiver statistics of one incoming stream, kept as packets
/// arrive (constant memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Packets received (duplicates included, as RFC 3550 counts them).
    pub received: u64,
    /// Lowest extended sequence number received.
    pub first_seq: u64,
    /// Highest extended sequence number received.
    pub highest_seq: u64,
    /// First and last arrival.
    pub first_at: Option<Instant>,
    /// Last arrival.
    pub last_at: Option<Instant>,
    /// Interarrival jitter estimate (RFC 3550 §6.4.1, A.8), in RTP
    /// timestamp units.
    jitter: f64,
    /// Arrival (timestamp units since the client's epoch) and RTP timestamp
    /// of the previous packet.
    previous: Option<(f64, u32)>,
}

impl StreamStats {
    /// Counts a packet with extended sequence number `seq` and RTP
    /// timestamp `ts` that arrived `arrival` after the client's epoch.
    pub(crate) fn on_packet(&mut self, at: Instant, arrival: Duration, seq: u64, ts: u32) {
        if self.received == 0 {
            self.first_seq = seq;
            self.highest_seq = seq;
            self.first_at = Some(at);
        }
        self.received += 1;
        self.first_seq = self.first_seq.min(seq);
        self.highest_seq = self.highest_seq.max(seq);
        self.last_at = Some(at);
        // J(i) = J(i-1) + (|D(i-1,i)| - J(i-1))/16, D = (Rj - Ri) - (Sj - Si),
        // in timestamp units, for packets in arrival order.
        let r = arrival.as_secs_f64() * OPUS_CLOCK_HZ;
        if let Some((r0, s0)) = self.previous {
            let d = (r - r0) - f64::from(ts.wrapping_sub(s0) as i32);
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.previous = Some((r, ts));
    }

    /// Packets expected: highest minus lowest sequence number, plus one.
    pub fn expected(&self) -> u64 {
        if self.received == 0 {
            0
        } else {
            self.highest_seq - self.first_seq + 1
        }
    }

    /// Packets lost: expected minus received (RFC 3550 §6.4.1; duplicates
    /// offset losses), at least 0.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The interarrival jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter / OPUS_CLOCK_HZ * 1e3
    }
}
