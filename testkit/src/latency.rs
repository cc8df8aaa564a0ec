//! One-way latency of received packets (from `abs-capture-time`) in a
//! histogram of constant memory.

use std::time::Duration;

/// A histogram of durations with 1 µs resolution below 100 µs and 2%
/// relative resolution above (up to about 12 minutes), in constant memory:
/// per-packet latencies of long runs and many listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Counts per bucket; empty until the first sample.
    counts: Vec<u32>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl LatencyHistogram {
    const EXACT_US: u64 = 100;
    const LOG_BUCKETS: usize = 800;
    const GROWTH: f64 = 1.02;

    fn bucket(us: u64) -> usize {
        if us < Self::EXACT_US {
            return us as usize;
        }
        let i = ((us as f64 / Self::EXACT_US as f64).ln() / Self::GROWTH.ln()) as usize;
        Self::EXACT_US as usize + i.min(Self::LOG_BUCKETS - 1)
    }

    /// A representative value of bucket `i` (its geometric middle).
    fn value_us(i: usize) -> f64 {
        if i < Self::EXACT_US as usize {
            i as f64
        } else {
            let k = (i - Self::EXACT_US as usize) as f64 + 0.5;
            Self::EXACT_US as f64 * Self::GROWTH.powf(k)
        }
    }

    /// Adds a sample.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if self.counts.is_empty() {
            self.counts = vec![0; Self::EXACT_US as usize + Self::LOG_BUCKETS];
        }
        let b = &mut self.counts[Self::bucket(us)];
        *b = b.saturating_add(1);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean of the samples.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_us / self.count))
    }

    /// Largest sample (exact; of everything recorded, see
    /// [`since`](Self::since)).
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.max_us))
    }

    /// The `q` quantile (0..=1), within the bucket resolution.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let rank = ((total.saturating_sub(1)) as f64 * q.clamp(0.0, 1.0)).round() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen > rank {
                return Some(Duration::from_nanos((Self::value_us(i) * 1e3) as u64));
            }
        }
        self.max()
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; other.counts.len()];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The samples recorded since `earlier` (a clone of this histogram
    /// taken before). The maximum is that of all samples.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = self.clone();
        for (a, b) in d.counts.iter_mut().zip(&earlier.counts) {
            *a = a.saturating_sub(*b);
        }
        d.count = d.count.saturating_sub(earlier.count);
        d.sum_us = d.sum_us.saturating_sub(earlier.sum_us);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_and_windows() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let before = h.clone();
        let close = |d: Option<Duration>, ms: f64| {
            let d = d.unwrap().as_secs_f64() * 1e3;
            assert!((d - ms).abs() <= ms * 0.02 + 0.001, "{d} vs {ms}");
        };
        close(h.quantile(0.5), 50.5);
        close(h.quantile(0.99), 99.0);
        close(h.quantile(0.0), 1.0);
        close(h.mean(), 50.5);
        for _ in 0..100 {
            h.record(Duration::from_micros(40));
        }
        let w = h.since(&before);
        assert_eq!(w.count(), 100);
        assert_eq!(w.quantile(0.5), Some(Duration::from_micros(40)));
        let mut m = LatencyHistogram::default();
        m.merge(&w);
        m.merge(&before);
        assert_eq!(m.count(), 200);
        h.record(Duration::MAX);
        assert!(h.max().is_some());
    }
}
