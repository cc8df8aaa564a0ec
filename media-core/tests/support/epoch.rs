//! The one clock read of media-core's unit tests, kept outside `src/`: the
//! engine never reads a clock, but tests need some `Instant` to count
//! simulated time from, and std offers no other way to make one.

/// An arbitrary origin for a unit test's simulated time.
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}
