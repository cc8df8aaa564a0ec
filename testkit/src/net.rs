//! A virtual network: datagrams delivered on a simulated clock, with delay
//! and seeded random loss.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// A datagram in flight.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Datagram {
    /// Sender address.
    pub source: SocketAddr,
    /// Receiver address.
    pub destination: SocketAddr,
    /// Bytes.
    pub contents: Vec<u8>,
}

/// Conditions of a direction of the network.
#[derive(Debug, Clone, Copy)]
pub struct LinkConditions {
    /// One-way delay.
    pub delay: Duration,
    /// Probability in 0..=1 that a datagram is lost.
    pub loss: f64,
}

impl Default for LinkConditions {
    fn default() -> Self {
        LinkConditions {
            delay: Duration::from_millis(5),
            loss: 0.0,
        }
    }
}

/// The network between the engine and its clients.
#[derive(Debug)]
pub struct Net {
    queue: BinaryHeap<Reverse<(Instant, u64, Datagram)>>,
    counter: u64,
    rng: SplitMix64,
    /// Conditions from clients to the engine.
    pub uplink: LinkConditions,
    /// Conditions from the engine to clients.
    pub downlink: LinkConditions,
    /// Datagrams dropped by simulated loss.
    pub lost: u64,
    /// Datagrams carried.
    pub sent: u64,
}

impl Net {
    /// A lossless network with 5 ms one-way delay.
    pub fn new(seed: u64) -> Self {
        Net {
            queue: BinaryHeap::new(),
            counter: 0,
            rng: SplitMix64::new(seed),
            uplink: LinkConditions::default(),
            downlink: LinkConditions::default(),
            lost: 0,
            sent: 0,
        }
    }

    /// A seeded coin that comes up true with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.next_unit() < p
    }

    /// Sends a datagram at `now` over a link with `cond`.
    pub fn send(&mut self, now: Instant, cond: LinkConditions, d: Datagram) {
        self.sent += 1;
        if cond.loss > 0.0 && self.chance(cond.loss) {
            self.lost += 1;
            return;
        }
        self.counter += 1;
        self.queue
            .push(Reverse((now + cond.delay, self.counter, d)));
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        match self.queue.peek() {
            Some(Reverse((t, _, _))) if *t <= now => self.queue.pop().map(|Reverse((_, _, d))| d),
            _ => None,
        }
    }
}
