//! One measurement window: every counter read at its start and at its end,
//! `--seconds` apart. The figures of a report are differences of the two.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::member::Member;
use crate::pool::lock;
use crate::proc_stats::{self, ProcessReading};
use testkit::client::Client;
use testkit::latency::LatencyHistogram;

/// Counters of one listener at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerSnapshot {
    /// Per stream (SSRC): packets received, packets expected.
    pub(crate) streams: BTreeMap<u32, (u64, u64)>,
    pub(crate) latency: LatencyHistogram,
    pub(crate) without_capture_time: u64,
}

impl ListenerSnapshot {
    fn of(c: &Client) -> ListenerSnapshot {
        ListenerSnapshot {
            streams: c
                .streams
                .iter()
                .map(|(ssrc, s)| (*ssrc, (s.stats.received, s.stats.expected())))
                .collect(),
            latency: c.latency.clone(),
            without_capture_time: c.packets_without_capture_time,
        }
    }
}

/// Counters of one speaker at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SpeakerCounts {
    pub(crate) packets_sent: u64,
    /// Frames DTX kept back.
    pub(crate) frames_suppressed: u64,
    /// Frames with voice (not pauses).
    pub(crate) frames_talked: u64,
}

impl SpeakerCounts {
    fn of(c: &Client) -> SpeakerCounts {
        SpeakerCounts {
            packets_sent: c.packets_sent,
            frames_suppressed: c.frames_suppressed,
            frames_talked: c.frames_talked,
        }
    }

    /// What the speaker did between `before` and `self`.
    fn since(self, before: SpeakerCounts) -> SpeakerCounts {
        // Destructured, so that a counter added later cannot be forgotten.
        let SpeakerCounts {
            packets_sent,
            frames_suppressed,
            frames_talked,
        } = before;
        SpeakerCounts {
            packets_sent: self.packets_sent.saturating_sub(packets_sent),
            frames_suppressed: self.frames_suppressed.saturating_sub(frames_suppressed),
            frames_talked: self.frames_talked.saturating_sub(frames_talked),
        }
    }
}

/// All speakers together.
impl std::iter::Sum for SpeakerCounts {
    fn sum<I: Iterator<Item = SpeakerCounts>>(iter: I) -> SpeakerCounts {
        iter.fold(SpeakerCounts::default(), |sum, s| {
            let SpeakerCounts {
                packets_sent,
                frames_suppressed,
                frames_talked,
            } = s;
            SpeakerCounts {
                packets_sent: sum.packets_sent + packets_sent,
                frames_suppressed: sum.frames_suppressed + frames_suppressed,
                frames_talked: sum.frames_talked + frames_talked,
            }
        })
    }
}

/// The clients' counters at one moment.
#[derive(Debug, Clone)]
struct ClientReading {
    speakers: Vec<SpeakerCounts>,
    listeners: Vec<ListenerSnapshot>,
}

impl ClientReading {
    fn take(speakers: &[Member], listeners: &[Member]) -> ClientReading {
        ClientReading {
            speakers: speakers
                .iter()
                .map(|m| SpeakerCounts::of(&lock(&m.client)))
                .collect(),
            listeners: listeners
                .iter()
                .map(|m| ListenerSnapshot::of(&lock(&m.client)))
                .collect(),
        }
    }
}

/// A measured window.
#[derive(Debug)]
pub(crate) struct Window {
    /// Its start and end: the client readings enclose them, and the
    /// process readings enclose those.
    pub(crate) from: Instant,
    pub(crate) to: Instant,
    clients_before: ClientReading,
    clients_after: ClientReading,
    pub(crate) processes_before: ProcessReading,
    pub(crate) processes_after: ProcessReading,
    /// Resident memory of each `--pid` at the end (KiB).
    pub(crate) rss_kib: Vec<Option<u64>>,
}

impl Window {
    /// Reads every counter, waits `seconds`, reads them again.
    pub(crate) async fn measure(
        pids: &[(String, u32)],
        speakers: &[Member],
        listeners: &[Member],
        seconds: u64,
    ) -> Window {
        let processes_before = ProcessReading::take(pids);
        let clients_before = ClientReading::take(speakers, listeners);
        let from = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let to = Instant::now();
        let clients_after = ClientReading::take(speakers, listeners);
        let processes_after = ProcessReading::take(pids);
        Window {
            from,
            to,
            clients_before,
            clients_after,
            processes_before,
            processes_after,
            rss_kib: proc_stats::rss_kib_of(pids),
        }
    }

    /// Its length in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        (self.to - self.from).as_secs_f64()
    }

    /// Each listener's snapshots at the start and the end, in listener
    /// order.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = (&ListenerSnapshot, &ListenerSnapshot)> {
        self.clients_before
            .listeners
            .iter()
            .zip(&self.clients_after.listeners)
    }

    /// What each speaker did in the window, in speaker order.
    pub(crate) fn speakers(&self) -> impl Iterator<Item = SpeakerCounts> + '_ {
        self.clients_after
            .speakers
            .iter()
            .zip(&self.clients_before.speakers)
            .map(|(after, before)| after.since(*before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaker_counts_over_a_window_and_together() {
        let counts = |packets_sent, frames_suppressed, frames_talked| SpeakerCounts {
            packets_sent,
            frames_suppressed,
            frames_talked,
        };
        assert_eq!(counts(10, 4, 7).since(counts(3, 1, 2)), counts(7, 3, 5));
        let all: SpeakerCounts = [counts(1, 2, 3), counts(10, 20, 30)].into_iter().sum();
        assert_eq!(all, counts(11, 22, 33));
    }
}
