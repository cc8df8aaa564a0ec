//! A timer heap, so that a timeout costs work proportional to what is due,
//! never a scan over every peer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a timer wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerKey {
    /// A peer's str0m instance (by slab index and generation).
    Peer(u32, u32),
    /// A channel's speaker decision tick (by slab index and generation).
    Channel(u32, u32),
}

/// Min-heap of deadlines with lazy deletion: an owner remembers the deadline it
/// scheduled last; an entry that no longer matches is skipped when popped.
#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

impl TimerHeap {
    /// Schedules `key` at `at` if that is earlier than what `scheduled` holds.
    /// An owner's earlier entry firing early is harmless: it is polled, then
    /// reschedules itself.
    pub(crate) fn schedule(&mut self, key: TimerKey, at: Instant, scheduled: &mut Option<Instant>) {
        if scheduled.is_some_and(|s| s <= at) {
            return;
        }
        *scheduled = Some(at);
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline (possibly a stale one).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops the next entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}
