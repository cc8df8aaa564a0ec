//! What the listeners received in a window: packets, RFC 3550 loss and
//! jitter per stream, one-way latency, and who stalled or never connected.

use std::time::{Duration, Instant};

use crate::member::Member;
use crate::pool::lock;
use crate::window::{ListenerSnapshot, Window};
use testkit::latency::LatencyHistogram;

/// A listener that heard nothing for this long at the end of a window has
/// stalled (speakers send every 20 ms, or every 400 ms in DTX pauses).
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// The listeners' figures over one window.
#[derive(Debug, Default)]
pub(crate) struct ListenerFigures {
    /// Packets received by all listeners.
    pub(crate) received: u64,
    /// RFC 3550 interval loss summed over streams.
    pub(crate) lost: u64,
    /// One-way latency of the packets that carried `abs-capture-time`.
    pub(crate) latency: LatencyHistogram,
    pub(crate) without_capture_time: u64,
    /// RFC 3550 interarrival jitter (ms) at the end of the window of every
    /// stream that received in it, sorted.
    pub(crate) jitters: Vec<f64>,
    /// ICE and DTLS up at the end.
    pub(crate) connected: usize,
    pub(crate) malformed_rtp: u64,
    /// No packet in the last [`STALLED_AFTER`] of the window.
    pub(crate) stalled: usize,
    /// Listeners whose answer negotiated `abs-capture-time`.
    pub(crate) negotiated_capture_time: usize,
}

impl ListenerFigures {
    /// The figures of `listeners` (in the order the window read them).
    pub(crate) fn of(window: &Window, listeners: &[Member]) -> ListenerFigures {
        let mut f = ListenerFigures::default();
        for (m, (before, after)) in listeners.iter().zip(window.listeners()) {
            let (r, l) = received_and_lost(before, after);
            f.received += r;
            f.lost += l;
            f.latency.merge(&after.latency.since(&before.latency));
            f.without_capture_time += after
                .without_capture_time
                .saturating_sub(before.without_capture_time);

            let c = lock(&m.client);
            f.connected += usize::from(c.is_connected());
            f.malformed_rtp += c.malformed_rtp;
            f.negotiated_capture_time += usize::from(c.ext_ids.abs_capture_time.is_some());
            for (ssrc, s) in &c.streams {
                let r0 = before.streams.get(ssrc).map_or(0, |x| x.0);
                if after.streams.get(ssrc).map_or(0, |x| x.0) > r0 {
                    f.jitters.push(s.stats.jitter_ms());
                }
            }
            let last = c.streams.values().filter_map(|s| s.stats.last_at).max();
            f.stalled += usize::from(stalled(last, window.to));
        }
        f.jitters.sort_by(f64::total_cmp);
        f
    }

    /// Lost over expected (0 when nothing was expected).
    pub(crate) fn loss(&self) -> f64 {
        if self.received + self.lost > 0 {
            self.lost as f64 / (self.received + self.lost) as f64
        } else {
            0.0
        }
    }

    /// Mean jitter over the streams (`None` without any).
    pub(crate) fn jitter_mean(&self) -> Option<f64> {
        (!self.jitters.is_empty())
            .then(|| self.jitters.iter().sum::<f64>() / self.jitters.len() as f64)
    }

    /// Why there is no latency figure (`None` when there is one): never
    /// estimated, so the report says what kept it from being measured.
    pub(crate) fn latency_unavailable(&self, speakers_negotiated: bool) -> Option<&'static str> {
        if self.latency.count() > 0 {
            None
        } else if self.received == 0 {
            Some("unavailable (no packets received)")
        } else if !speakers_negotiated {
            Some("unavailable (server does not negotiate abs-capture-time with speakers)")
        } else if self.negotiated_capture_time == 0 {
            Some("unavailable (server does not negotiate abs-capture-time with listeners)")
        } else {
            Some("unavailable (server does not forward abs-capture-time)")
        }
    }
}

/// Whether a listener whose last packet came at `last` had stalled by `end`.
fn stalled(last: Option<Instant>, end: Instant) -> bool {
    last.is_none_or(|at| at + STALLED_AFTER < end)
}

/// Received and lost between two snapshots (RFC 3550 interval loss per
/// stream: expected minus received in the interval, at least 0).
fn received_and_lost(before: &ListenerSnapshot, after: &ListenerSnapshot) -> (u64, u64) {
    let (mut received, mut lost) = (0, 0);
    for (ssrc, (r1, e1)) in &after.streams {
        let (r0, e0) = before.streams.get(ssrc).copied().unwrap_or_default();
        let r = r1.saturating_sub(r0);
        received += r;
        lost += e1.saturating_sub(e0).saturating_sub(r);
    }
    (received, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_loss_per_stream() {
        let s = |v: &[(u32, u64, u64)]| ListenerSnapshot {
            streams: v.iter().map(|&(k, r, e)| (k, (r, e))).collect(),
            ..Default::default()
        };
        // Stream 1: 100 more expected, 98 more received; stream 2 new with
        // 50 expected, 50 received; stream 3 gone quiet.
        let before = s(&[(1, 10, 10), (3, 5, 6)]);
        let after = s(&[(1, 108, 110), (2, 50, 50), (3, 5, 6)]);
        assert_eq!(received_and_lost(&before, &after), (148, 2));
        // Duplicates never make loss negative.
        assert_eq!(
            received_and_lost(&s(&[(1, 0, 0)]), &s(&[(1, 12, 10)])),
            (12, 0)
        );
    }

    #[test]
    fn loss_jitter_and_stalls() {
        let mut f = ListenerFigures {
            received: 98,
            lost: 2,
            jitters: vec![1.0, 2.0, 6.0],
            ..Default::default()
        };
        assert_eq!(f.loss(), 0.02);
        assert_eq!(f.jitter_mean(), Some(3.0));
        f.jitters.clear();
        assert_eq!(f.jitter_mean(), None);
        assert_eq!(ListenerFigures::default().loss(), 0.0);

        let end = Instant::now() + Duration::from_secs(10);
        assert!(stalled(None, end));
        assert!(stalled(Some(end - Duration::from_millis(1001)), end));
        assert!(!stalled(Some(end - Duration::from_millis(999)), end));
    }

    #[test]
    fn latency_unavailable_says_why() {
        let mut f = ListenerFigures::default();
        assert_eq!(
            f.latency_unavailable(true),
            Some("unavailable (no packets received)")
        );
        f.received = 10;
        assert!(f
            .latency_unavailable(false)
            .unwrap()
            .contains("with speakers"));
        assert!(f
            .latency_unavailable(true)
            .unwrap()
            .contains("with listeners"));
        f.negotiated_capture_time = 1;
        assert!(f.latency_unavailable(true).unwrap().contains("forward"));
        f.latency.record(Duration::from_millis(3));
        assert_eq!(f.latency_unavailable(false), None);
    }
}
