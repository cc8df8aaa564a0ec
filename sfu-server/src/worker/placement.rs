//! Which worker carries which channel: a new channel goes to the worker with
//! the fewest members placed on it (ties to the lowest index), its
//! *origin*, and stays there while any member holds a [`Ticket`] for it;
//! the last ticket dropped frees the channel, whose next member is placed
//! afresh.
//!
//! A big channel spreads: once its origin carries `spread_after` of its
//! members, each new member goes to the least-loaded worker, where the
//! channel is a relay of the origin over the workers' in-process link (the
//! origin selects the speakers; the others send their speakers' voices up
//! and fan the selected voices out to their members). Small channels stay
//! on one worker.
//!
//! The decision and the count move together under one lock, so that two
//! first joins racing for a new channel land on the same worker: a channel
//! never has two origins (each would select for itself, two rooms that
//! cannot hear each other).
//!
//! A member holds its ticket from before its join is sent to the worker
//! until its session ends (a WebSocket membership, parked or not; a
//! WHIP/WHEP resource): a ticket held a little longer than the member is
//! harmless (the channel stays where it is); one released too early could
//! split a channel, which the ordering above rules out.
//!
//! Channels count here against `max_channels` for the node as a whole (each
//! worker's room layer checks it for its own channels too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rooms::RoomRefusal;

/// The placement of a node's channels on its workers.
#[derive(Debug)]
pub struct Placement {
    inner: Mutex<Inner>,
    max_channels: usize,
    /// Members of one channel at most, on all workers together.
    max_members: usize,
    /// Members of a channel on its origin past which new ones go to the
    /// least-loaded worker (0: never).
    spread_after: usize,
}

#[derive(Debug)]
struct Inner {
    /// Each placed channel: its worker and the tickets held for it.
    channels: HashMap<String, Placed>,
    /// Tickets held per worker.
    load: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Placed {
    /// The worker that selects the channel's speakers.
    origin: usize,
    /// Tickets held for it on each worker.
    tickets: Vec<usize>,
}

/// A member's hold on its channel's placement (see the module
/// documentation); released when dropped.
#[derive(Debug)]
pub struct Ticket {
    placement: Arc<Placement>,
    channel: String,
    worker: usize,
    origin: usize,
}

impl Ticket {
    /// The worker the member is placed on.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The channel's origin worker (the member's own unless the channel
    /// spread).
    pub fn origin(&self) -> usize {
        self.origin
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.placement.release(&self.channel, self.worker);
    }
}

impl Placement {
    /// Placement over `workers` workers (at least one), at most
    /// `max_channels` channels at once and `max_members` members in one
    /// channel, a channel spreading past `spread_after` members on its
    /// origin (0: never).
    pub fn new(
        workers: usize,
        max_channels: usize,
        max_members: usize,
        spread_after: usize,
    ) -> Arc<Placement> {
        Arc::new(Placement {
            inner: Mutex::new(Inner {
                channels: HashMap::new(),
                load: vec![0; workers.max(1)],
            }),
            max_channels,
            max_members,
            spread_after,
        })
    }

    /// A ticket for `channel`: on its origin, or the least-loaded worker
    /// once the channel spreads; for a new channel, on the least-loaded
    /// worker, its origin. Refused when the channel is new and the node
    /// carries `max_channels` already.
    pub fn place(self: &Arc<Self>, channel: &str) -> Result<Ticket, RoomRefusal> {
        let mut inner = self.lock();
        let Inner { channels, load } = &mut *inner;
        let (worker, origin) = match channels.get_mut(channel) {
            Some(placed) => {
                if placed.tickets.iter().sum::<usize>() >= self.max_members {
                    return Err(RoomRefusal::ChannelFull(self.max_members));
                }
                let o = placed.origin;
                let spread = self.spread_after > 0 && placed.tickets[o] >= self.spread_after;
                let worker = if spread { least_loaded(load) } else { o };
                placed.tickets[worker] += 1;
                (worker, o)
            }
            None => {
                if channels.len() >= self.max_channels {
                    return Err(RoomRefusal::TooManyChannels(self.max_channels));
                }
                let worker = least_loaded(load);
                let mut tickets = vec![0; load.len()];
                tickets[worker] = 1;
                let placed = Placed {
                    origin: worker,
                    tickets,
                };
                channels.insert(channel.to_owned(), placed);
                (worker, worker)
            }
        };
        load[worker] += 1;
        Ok(Ticket {
            placement: self.clone(),
            channel: channel.to_owned(),
            worker,
            origin,
        })
    }

    /// The origin worker of `channel`, if any member holds a ticket for it.
    pub fn worker_of(&self, channel: &str) -> Option<usize> {
        self.lock().channels.get(channel).map(|p| p.origin)
    }

    /// Members of `channel` placed on each worker (empty when none is).
    pub fn spread_of(&self, channel: &str) -> Vec<usize> {
        self.lock()
            .channels
            .get(channel)
            .map(|p| p.tickets.clone())
            .unwrap_or_default()
    }

    /// Tickets held on each worker.
    pub fn load(&self) -> Vec<usize> {
        self.lock().load.clone()
    }

    /// The state; a panic while it was held cannot leave it half-changed
    /// (every change is a few integer updates), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, channel: &str, worker: usize) {
        let mut inner = self.lock();
        let Inner { channels, load } = &mut *inner;
        if let Some(l) = load.get_mut(worker) {
            *l = l.saturating_sub(1);
        }
        if let Some(placed) = channels.get_mut(channel) {
            if let Some(t) = placed.tickets.get_mut(worker) {
                *t = t.saturating_sub(1);
            }
            if placed.tickets.iter().all(|t| *t == 0) {
                channels.remove(channel);
            }
        }
    }
}

/// The index of the smallest load, the lowest on a tie.
fn least_loaded(load: &[usize]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|&(i, l)| (*l, i))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_channels_go_to_the_least_loaded_worker() {
        let p = Placement::new(3, 100, usize::MAX, 0);
        let a = p.place("a").unwrap();
        let a2 = p.place("a").unwrap();
        let b = p.place("b").unwrap();
        let c = p.place("c").unwrap();
        assert_eq!((a.worker(), a2.worker()), (0, 0), "one channel, one worker");
        assert_eq!((b.worker(), c.worker()), (1, 2));
        assert_eq!(p.load(), [2, 1, 1]);
        // Worker 0 is the busiest: the next new channel avoids it.
        let d = p.place("d").unwrap();
        assert_eq!(d.worker(), 1);
        assert_eq!(p.load(), [2, 2, 1]);
    }

    #[test]
    fn a_channel_stays_until_its_last_ticket_is_dropped() {
        let p = Placement::new(2, 100, usize::MAX, 0);
        let busy = p.place("busy").unwrap();
        let first = p.place("room").unwrap();
        assert_eq!(first.worker(), 1);
        let second = p.place("room").unwrap();
        drop(first);
        // Worker 1 is no longer the less loaded, yet the room stays.
        let _more = p.place("busy").unwrap();
        assert_eq!(p.worker_of("room"), Some(1));
        assert_eq!(p.place("room").unwrap().worker(), 1);
        drop(second);
        assert_eq!(p.worker_of("room"), None, "the last ticket frees it");
        assert_eq!(p.load(), [2, 0]);
        drop(busy);
        assert_eq!(p.load(), [1, 0]);
    }

    #[test]
    fn max_channels_counts_the_node_and_refuses_only_new_channels() {
        let p = Placement::new(2, 2, usize::MAX, 0);
        let _a = p.place("a").unwrap();
        let b = p.place("b").unwrap();
        assert!(matches!(p.place("c"), Err(RoomRefusal::TooManyChannels(2))));
        assert!(p.place("a").is_ok(), "an existing channel takes members");
        drop(b);
        assert!(p.place("c").is_ok(), "a freed channel makes room");
    }

    /// Many threads placing the first members of the same new channels at
    /// once: each channel ends on exactly one worker.
    #[test]
    fn racing_first_joins_land_on_one_worker() {
        let p = Placement::new(4, 1000, usize::MAX, 0);
        let tickets: Vec<Ticket> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let p = p.clone();
                    s.spawn(move || {
                        (0..50)
                            .map(|c| p.place(&format!("channel-{c}")).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for t in &tickets {
            let w = *seen.entry(t.channel.as_str()).or_insert(t.worker());
            assert_eq!(w, t.worker(), "{} split across workers", t.channel);
        }
        assert_eq!(seen.len(), 50);
        assert_eq!(p.load().iter().sum::<usize>(), 400);
        assert!(
            p.load().iter().all(|&l| l > 0),
            "every worker got channels: {:?}",
            p.load()
        );
        drop(tickets);
        assert_eq!(p.load(), [0; 4]);
        assert_eq!(p.worker_of("channel-0"), None);
    }

    #[test]
    fn a_big_channel_spreads_to_the_least_loaded_workers() {
        let p = Placement::new(3, 100, usize::MAX, 2);
        let other = p.place("other").unwrap();
        let first: Vec<Ticket> = (0..2).map(|_| p.place("hall").unwrap()).collect();
        assert_eq!(first[0].worker(), 1, "the least loaded, the origin");
        assert!(first.iter().all(|t| (t.worker(), t.origin()) == (1, 1)));
        // Two on the origin: the next go to the least-loaded worker.
        let more: Vec<Ticket> = (0..4).map(|_| p.place("hall").unwrap()).collect();
        let placed: Vec<usize> = more.iter().map(Ticket::worker).collect();
        assert_eq!(placed, [2, 0, 2, 0], "worker 0 carries \"other\" too");
        assert!(more.iter().all(|t| t.origin() == 1));
        assert_eq!(p.spread_of("hall"), [2, 2, 2]);
        assert_eq!(p.load(), [3, 2, 2]);
        // The origin's members leave: the channel keeps its origin while
        // any member holds a ticket; joins go there again (under the bar).
        drop(first);
        assert_eq!(p.worker_of("hall"), Some(1));
        assert_eq!(p.place("hall").unwrap().worker(), 1);
        drop(more);
        assert_eq!(
            p.spread_of("hall"),
            Vec::<usize>::new(),
            "the last ticket frees it"
        );
        drop(other);
        assert_eq!(p.load(), [0, 0, 0]);
    }
}
