//! Identifiers the engine and its embedder share.

use std::fmt;

/// A member's connection to the engine, chosen by the embedder when it joins
/// (for example a database id or a counter). Unique within one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer-{}", self.0)
    }
}

/// One voice in a channel: the audio a member sends, wherever the member is
/// connected (this engine, another worker, another node).
///
/// Listeners see it as the CSRC of every packet forwarded from that voice, so a
/// browser's `getContributingSources()` names who is speaking in each slot.
///
/// Numbered by the engine the member joined: its [`EngineId`] in the high
/// 12 bits, a counter of that engine's joins in the low 20 (from 1; it wraps,
/// skipping ids still in use). So ids are unique across every engine of a
/// cluster by construction, an origin knows which link may speak for a voice
/// (the one to the engine in its high bits), and an id tells nobody anything
/// but the engine and the order of joins: nothing random goes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

/// Bits of a [`SourceId`] below its engine number.
const SOURCE_COUNTER_BITS: u32 = 20;
/// The counter part of a [`SourceId`].
const SOURCE_COUNTER_MASK: u32 = (1 << SOURCE_COUNTER_BITS) - 1;

impl SourceId {
    /// The engine that numbered this voice (the engine its member joined).
    pub const fn engine(self) -> EngineId {
        EngineId((self.0 >> SOURCE_COUNTER_BITS) as u16)
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source-{}", self.0)
    }
}

/// An engine's number among all the engines that share channels: the worker
/// threads of a node and the nodes of a cluster. The embedder gives each
/// engine its own ([`EngineConfig::engine_id`](crate::EngineConfig::engine_id));
/// it is the high 12 bits of every [`SourceId`] the engine numbers, so two
/// engines with different numbers never give out the same id.
///
/// A node with several engines derives them from its node number, for
/// example `node × workers + worker` (then `nodes × workers` must stay at or
/// below 4096).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineId(u16);

impl EngineId {
    /// The largest engine number (12 bits).
    pub const MAX: u16 = (1 << (32 - SOURCE_COUNTER_BITS)) - 1;

    /// Engine number `n`, or `None` above [`EngineId::MAX`].
    pub const fn new(n: u16) -> Option<EngineId> {
        if n <= Self::MAX {
            Some(EngineId(n))
        } else {
            None
        }
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "engine-{}", self.0)
    }
}

/// Gives out the [`SourceId`]s of one engine: its number, then a counter
/// from 1 that wraps and skips ids still in use.
#[derive(Debug)]
pub(crate) struct SourceIds {
    engine: EngineId,
    /// The counter of the id given out last.
    last: u32,
}

impl SourceIds {
    pub(crate) fn new(engine: EngineId) -> Self {
        SourceIds { engine, last: 0 }
    }

    /// The next id `in_use` does not claim, or `None` when every one is
    /// (about a million voices joined at once).
    pub(crate) fn allocate(&mut self, in_use: impl Fn(SourceId) -> bool) -> Option<SourceId> {
        let high = u32::from(self.engine.0) << SOURCE_COUNTER_BITS;
        for _ in 0..SOURCE_COUNTER_MASK {
            // 1..=MASK: counter 0 is never used, so engine 0's first voice
            // is not CSRC 0 (which some stacks treat as "none").
            self.last = self.last % SOURCE_COUNTER_MASK + 1;
            let id = SourceId(high | self.last);
            if !in_use(id) {
                return Some(id);
            }
        }
        None
    }
}

/// The role of a member in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May send voice; is routed when selected as an active speaker.
    Speaker,
    /// Only listens; whatever it sends is dropped (and counted).
    Listener,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_carry_their_engine_and_never_collide_across_engines() {
        let engines = [0, 1, 7, EngineId::MAX].map(|n| EngineId::new(n).unwrap());
        let mut seen = HashSet::new();
        for e in engines {
            let mut ids = SourceIds::new(e);
            for _ in 0..10_000 {
                let id = ids.allocate(|_| false).unwrap();
                assert_eq!(id.engine(), e);
                assert_ne!(id.0, 0);
                assert!(seen.insert(id), "{id} given out twice");
            }
        }
        assert_eq!(EngineId::new(EngineId::MAX + 1), None);
    }

    #[test]
    fn the_counter_wraps_and_skips_ids_in_use() {
        let e = EngineId::new(3).unwrap();
        let mut ids = SourceIds::new(e);
        let first = ids.allocate(|_| false).unwrap();
        assert_eq!(first.0, 3 << 20 | 1);
        // Near the end of the counter: it wraps to 1, which is taken, so 2.
        ids.last = SOURCE_COUNTER_MASK - 1;
        assert_eq!(
            ids.allocate(|_| false).unwrap().0,
            3 << 20 | SOURCE_COUNTER_MASK
        );
        assert_eq!(ids.allocate(|s| s == first).unwrap().0, 3 << 20 | 2);
        assert_eq!(ids.allocate(|_| true), None);
    }
}
