//! Join time: from sending `join` to a listener's first audio packet. A
//! step's window opens once all its new listeners heard their first packet,
//! or at a deadline.

use std::time::{Duration, Instant};

use crate::member::Member;
use crate::pool::lock;

/// How often the wait looks at the listeners again.
const POLL: Duration = Duration::from_millis(50);

/// The joins of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinFigures {
    /// Join time of each new listener that heard a packet, sorted.
    pub(crate) join_times: Vec<Duration>,
    /// Listeners (all of them, not only the new) without a packet yet.
    pub(crate) without_audio: usize,
}

/// Waits, at most until `by`, for every listener from `first_new` on to
/// hear its first packet; then their join times.
pub(crate) async fn wait_for_first_audio(
    listeners: &[Member],
    first_new: usize,
    by: Instant,
) -> JoinFigures {
    let new = listeners.get(first_new..).unwrap_or_default();
    while Instant::now() < by && !new.iter().all(|m| first_packet(m).is_some()) {
        tokio::time::sleep(POLL).await;
    }
    let mut join_times: Vec<Duration> = new
        .iter()
        .filter_map(|m| Some(first_packet(m)?.saturating_duration_since(m.join_sent)))
        .collect();
    join_times.sort();
    let without_audio = listeners
        .iter()
        .filter(|m| first_packet(m).is_none())
        .count();
    JoinFigures {
        join_times,
        without_audio,
    }
}

/// When a member's first audio packet arrived, on any of its streams.
fn first_packet(m: &Member) -> Option<Instant> {
    lock(&m.client)
        .streams
        .values()
        .filter_map(|s| s.stats.first_at)
        .min()
}
