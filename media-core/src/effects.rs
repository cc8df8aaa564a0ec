//! What handling one input produces, gathered in one place: outputs for the
//! embedder, signals for the engine, events waiting for their turn, the
//! counters, the timer heap, and the clock for sender reports.
//!
//! The engine owns one [`Effects`]; a peer or a send path that produces any
//! of these takes `&mut Effects`, not one reference per piece.

use std::collections::VecDeque;

use str0m::rtp::RtpPacket;

use crate::api::{Output, Transmit};
use crate::demux::PeerKey;
use crate::ntp::NtpClock;
use crate::stats::EngineStats;
use crate::timer::TimerHeap;
use crate::{Event, LinkId, RelayMsg};

/// What a peer's str0m instance reported that the engine must act on.
#[derive(Debug)]
// The signal queue is reused across calls; boxing the packet would instead
// allocate once per received packet.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Signal {
    Connected,
    Disconnected,
    Failed,
    Rtp(RtpPacket),
}

/// The engine's effects; see the module documentation.
#[derive(Debug)]
pub(crate) struct Effects {
    /// For the embedder, in order ([`Engine::poll_output`](crate::Engine::poll_output)).
    pub(crate) outputs: VecDeque<Output>,
    /// For the engine, after the peer that raised them is settled:
    /// (peer, its generation, what happened).
    pub(crate) signals: VecDeque<(PeerKey, u32, Signal)>,
    /// Events raised while packets of the same input are still being
    /// forwarded; they follow those packets' transmits
    /// ([`flush_events`](Self::flush_events)).
    pub(crate) events: Vec<Event>,
    pub(crate) stats: EngineStats,
    pub(crate) timers: TimerHeap,
    /// The engine's clock in NTP time (sender reports).
    pub(crate) ntp: NtpClock,
}

impl Effects {
    pub(crate) fn new(ntp: NtpClock) -> Self {
        Effects {
            outputs: VecDeque::new(),
            signals: VecDeque::new(),
            events: Vec::new(),
            stats: EngineStats::default(),
            timers: TimerHeap::default(),
            ntp,
        }
    }

    /// Queues a datagram, counted.
    pub(crate) fn transmit(&mut self, t: Transmit) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += t.contents.len() as u64;
        self.outputs.push_back(Output::Transmit(t));
    }

    /// Queues a message to another engine, counted.
    pub(crate) fn relay(&mut self, link: LinkId, msg: RelayMsg) {
        self.stats.relay_out += 1;
        self.outputs.push_back(Output::Relay { link, msg });
    }

    /// Queues an event for the embedder now.
    pub(crate) fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Moves the waiting events behind the outputs queued so far.
    pub(crate) fn flush_events(&mut self) {
        for e in self.events.drain(..) {
            self.outputs.push_back(Output::Event(e));
        }
    }
}
