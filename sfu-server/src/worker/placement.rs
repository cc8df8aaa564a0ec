//! Which worker carries which channel: a new channel goes to the worker with
//! the fewest members placed on it (ties to the lowest index), and stays
//! there while any member holds a [`Ticket`] for it; the last ticket dropped
//! frees the channel, whose next member is placed afresh.
//!
//! The decision and the count move together under one lock, so that two
//! first joins racing for a new channel land on the same worker: a channel
//! is never split across workers (each worker's engine selects the speakers
//! of the channels it carries, and a channel on two workers would be two
//! rooms that cannot hear each other).
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
}

#[derive(Debug)]
struct Inner {
    /// Each placed channel: its worker and the tickets held for it.
    channels: HashMap<String, Placed>,
    /// Tickets held per worker.
    load: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Placed {
    worker: usize,
    tickets: usize,
}

/// A member's hold on its channel's placement (see the module
/// documentation); released when dropped.
#[derive(Debug)]
pub struct Ticket {
    placement: Arc<Placement>,
    channel: String,
    worker: usize,
}

impl Ticket {
    /// The worker the channel is on.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.placement.release(&self.channel, self.worker);
    }
}

impl Placement {
    /// Placement over `workers` workers (at least one), at most
    /// `max_channels` channels at once.
    pub fn new(workers: usize, max_channels: usize) -> Arc<Placement> {
        Arc::new(Placement {
            inner: Mutex::new(Inner {
                channels: HashMap::new(),
                load: vec![0; workers.max(1)],
            }),
            max_channels,
        })
    }

    /// A ticket for `channel`: on the worker that carries it, or, for a new
    /// channel, on the least-loaded worker. Refused when the channel is new
    /// and the node carries `max_channels` already.
    pub fn place(self: &Arc<Self>, channel: &str) -> Result<Ticket, RoomRefusal> {
        let mut inner = self.lock();
        let Inner { channels, load } = &mut *inner;
        let worker = match channels.get_mut(channel) {
            Some(placed) => {
                placed.tickets += 1;
                placed.worker
            }
            None => {
                if channels.len() >= self.max_channels {
                    return Err(RoomRefusal::TooManyChannels(self.max_channels));
                }
                let worker = least_loaded(load);
                channels.insert(channel.to_owned(), Placed { worker, tickets: 1 });
                worker
            }
        };
        load[worker] += 1;
        Ok(Ticket {
            placement: self.clone(),
            channel: channel.to_owned(),
            worker,
        })
    }

    /// The worker `channel` is on, if any member holds a ticket for it.
    pub fn worker_of(&self, channel: &str) -> Option<usize> {
        self.lock().channels.get(channel).map(|p| p.worker)
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
            placed.tickets = placed.tickets.saturating_sub(1);
            if placed.tickets == 0 {
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
        let p = Placement::new(3, 100);
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
        let p = Placement::new(2, 100);
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
        let p = Placement::new(2, 2);
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
        let p = Placement::new(4, 1000);
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
}
