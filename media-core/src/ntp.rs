//! NTP timestamps, as RTCP sender reports (RFC 3550 §4) and the
//! `abs-capture-time` header extension carry them: 64-bit fixed point
//! (Q32.32) seconds since 1900-01-01.
//!
//! The one place that knows the NTP epoch: the engine's sender reports, its
//! rewriting of `abs-capture-time`, and the test kit's latency measurement
//! all convert here.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// From the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01): 70 years
/// with 17 leap days.
pub const UNIX_OFFSET: Duration = Duration::from_secs(2_208_988_800);

/// The Q32.32 timestamp of `since_1900`.
///
/// NTP seconds wrap in 2036 (era 1); the 32-bit seconds field wraps with
/// them, as RFC 5905 §6 prescribes.
pub fn to_q32(since_1900: Duration) -> u64 {
    let secs = since_1900.as_secs() as u32 as u64;
    (secs << 32) | ((u64::from(since_1900.subsec_nanos()) << 32) / 1_000_000_000)
}

/// The Q32.32 timestamp of a wall-clock time; `None` before 1970 or when it
/// does not fit.
pub fn from_system_time(t: SystemTime) -> Option<u64> {
    let since_unix = t.duration_since(UNIX_EPOCH).ok()?;
    Some(to_q32(since_unix.checked_add(UNIX_OFFSET)?))
}

/// The wall-clock time of a Q32.32 timestamp; `None` before 1970.
pub fn to_system_time(ntp: u64) -> Option<SystemTime> {
    let secs = (ntp >> 32).checked_sub(UNIX_OFFSET.as_secs())?;
    let nanos = ((ntp & 0xffff_ffff) * 1_000_000_000) >> 32;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
}

/// The engine's clock mapped to NTP time, for its sender reports: the
/// engine reads no wall clock, so the embedder's
/// [`EngineConfig::wallclock_at_start`](crate::EngineConfig::wallclock_at_start)
/// anchors its first `now`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NtpClock {
    at: Instant,
    /// NTP time at `at`, since 1900-01-01.
    since_1900: Duration,
}

impl NtpClock {
    /// `wallclock` at `at`; without one, the engine's start counts as the
    /// Unix epoch (receivers only use differences).
    pub(crate) fn new(at: Instant, wallclock: Option<SystemTime>) -> Self {
        let since_unix = wallclock
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        NtpClock {
            at,
            since_1900: since_unix + UNIX_OFFSET,
        }
    }

    /// The Q32.32 timestamp of `now`.
    pub(crate) fn q32(&self, now: Instant) -> u64 {
        to_q32(self.since_1900 + now.saturating_duration_since(self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_refuse_before_1970() {
        let t = to_system_time((UNIX_OFFSET.as_secs() + 10) << 32 | 0x8000_0000).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(10_500));
        assert_eq!(to_system_time(5), None);
        let wall = UNIX_EPOCH + Duration::new(1_750_000_000, 250_000_000);
        let q = from_system_time(wall).unwrap();
        assert_eq!(q & 0xffff_ffff, 1 << 30);
        let back = to_system_time(q).unwrap();
        assert!(back <= wall && wall.duration_since(back).unwrap() < Duration::from_nanos(1));
    }

    #[test]
    fn engine_clock_counts_from_its_anchor() {
        let at = testkit::epoch();
        let wall = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let clock = NtpClock::new(at, Some(wall));
        let later = at + Duration::from_millis(1500);
        assert_eq!(
            clock.q32(later),
            from_system_time(wall + Duration::from_millis(1500)).unwrap()
        );
        // Without a wall clock the start is the Unix epoch.
        let bare = NtpClock::new(at, None);
        assert_eq!(bare.q32(at) >> 32, UNIX_OFFSET.as_secs());
    }
}
