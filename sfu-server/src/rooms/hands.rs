//! Raised hands: the listeners of a channel who ask to speak, in the order
//! they asked, for its moderators to call on (the lecture hall).
//!
//! One hand per member; raising a raised hand changes nothing (a client
//! that repeats itself does not lose its place, nor jump the queue). The
//! queue holds members of the channel only (a hand goes down when its
//! member leaves or is promoted), and at most [`MAX_RAISED_HANDS`] of them:
//! moderators get the whole queue whenever it changes, so its length is
//! what each of their messages costs.

use std::collections::VecDeque;
use std::time::Duration;

use media_core::PeerId;

/// Most hands a channel's queue holds. A moderator calls on a few people;
/// a queue of thousands is unreadable, and each `hands` message carries it
/// whole. Past it a raise is refused (`hands_full`, counted).
pub const MAX_RAISED_HANDS: usize = 100;

/// Least time between two `hands` messages of a channel: listeners raising
/// and lowering as fast as they can send would otherwise make every change
/// a message to every moderator, whose event queues would overflow.
pub const HANDS_INTERVAL: Duration = Duration::from_millis(200);

/// Why a hand may not go up (or down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandError {
    /// The member is not in a channel (any more).
    #[error("not in a channel")]
    NotJoined,
    /// A speaker speaks already.
    #[error("speakers have no hand to raise: they speak already")]
    AlreadySpeaker,
    /// The channel's queue is full.
    #[error("{0} hands are raised in this channel already; try again later")]
    Full(usize),
    /// The worker is gone.
    #[error("the media worker stopped")]
    WorkerGone,
}

/// One channel's raised hands, oldest first, each with the number that
/// orders it among the hands of the node's other workers (a channel spread
/// over workers has a queue on each: moderators get them merged by it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hands {
    queue: VecDeque<(PeerId, u64)>,
}

impl Hands {
    /// Raises `peer`'s hand at the end of the queue, numbered `order` (the
    /// node's hands grow in the order raised). `Ok(false)`: it was raised
    /// already (its place is kept).
    pub fn raise(&mut self, peer: PeerId, order: u64) -> Result<bool, HandError> {
        if self.is_raised(peer) {
            return Ok(false);
        }
        if self.queue.len() >= MAX_RAISED_HANDS {
            return Err(HandError::Full(MAX_RAISED_HANDS));
        }
        self.queue.push_back((peer, order));
        Ok(true)
    }

    /// Lowers `peer`'s hand; false when it was not raised.
    pub fn lower(&mut self, peer: PeerId) -> bool {
        let before = self.queue.len();
        self.queue.retain(|(p, _)| *p != peer);
        self.queue.len() != before
    }

    /// Whether `peer`'s hand is up.
    pub fn is_raised(&self, peer: PeerId) -> bool {
        self.queue.iter().any(|(p, _)| *p == peer)
    }

    /// The raised hands, oldest first.
    pub fn queue(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.queue.iter().map(|(p, _)| *p)
    }

    /// The raised hands with their order numbers, oldest first.
    pub fn ordered(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.queue.iter().copied()
    }

    /// Whether no hand is up.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_queue_in_the_order_raised_once_each() {
        let mut order = 0;
        let mut n = || {
            order += 1;
            order
        };
        let mut h = Hands::default();
        assert_eq!(h.raise(PeerId(5), n()), Ok(true));
        assert_eq!(h.raise(PeerId(3), n()), Ok(true));
        assert_eq!(
            h.raise(PeerId(5), n()),
            Ok(false),
            "a second raise keeps the place"
        );
        assert_eq!(h.queue().collect::<Vec<_>>(), [PeerId(5), PeerId(3)]);
        assert!(h.lower(PeerId(5)));
        assert!(!h.lower(PeerId(5)));
        assert_eq!(
            h.raise(PeerId(5), n()),
            Ok(true),
            "raised again: at the end"
        );
        assert_eq!(h.queue().collect::<Vec<_>>(), [PeerId(3), PeerId(5)]);
        assert_eq!(
            h.ordered().map(|(_, o)| o).collect::<Vec<_>>(),
            [2, 4],
            "each hand keeps the number it was raised with"
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut order = 0;
        let mut n = || {
            order += 1;
            order
        };
        let mut h = Hands::default();
        for p in 0..MAX_RAISED_HANDS as u64 {
            assert_eq!(h.raise(PeerId(p), n()), Ok(true));
        }
        let late = PeerId(MAX_RAISED_HANDS as u64);
        assert_eq!(h.raise(late, n()), Err(HandError::Full(MAX_RAISED_HANDS)));
        assert_eq!(
            h.raise(PeerId(0), n()),
            Ok(false),
            "a raised hand stays raised"
        );
        assert!(h.lower(PeerId(0)));
        assert_eq!(h.raise(late, n()), Ok(true));
        assert_eq!(h.queue().count(), MAX_RAISED_HANDS);
    }
}
