//! A channel: its members, its speaker selection, and the fan-out table that
//! maps each selected voice to the (listener, slot) pairs it is sent to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::EngineConfig;
use crate::demux::PeerKey;
use crate::dominant::DominantSpeakerDetector;
use crate::peer::Peer;
use crate::selection::SpeakerSelector;
use crate::slab::Slab;
use crate::{Event, LinkId, SourceId};

#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) name: Arc<str>,
    pub(crate) gen: u32,
    /// Local members (peers of this engine).
    pub(crate) members: Vec<PeerKey>,
    pub(crate) selector: SpeakerSelector,
    pub(crate) dominant: DominantSpeakerDetector<SourceId>,
    /// Last emitted `ActiveSpeakers` list.
    pub(crate) active: Vec<SourceId>,
    /// Selected voice → where it is sent. Rebuilt when the selection changes,
    /// appended to when a listener joins; read on every packet.
    pub(crate) fanout: HashMap<SourceId, Vec<(PeerKey, u8)>>,
    /// The deadline this channel has in the engine's timer heap.
    pub(crate) timer: Option<Instant>,
    pub(crate) next_tick: Instant,
    /// `Some`: a relay channel, following the origin on this link.
    pub(crate) upstream: Option<LinkId>,
    /// (Origin) the links over which relay channels subscribed to this one.
    pub(crate) subscribers: Vec<LinkId>,
    /// (Origin) voices that arrived over a relay link, and which.
    pub(crate) remote: HashMap<SourceId, LinkId>,
    /// Who each voice belongs to (local and remote), for `SourceInfo`.
    pub(crate) identities: HashMap<SourceId, Arc<str>>,
    /// Last dominant speaker emitted (relay channels learn it from the origin).
    pub(crate) last_dominant: Option<SourceId>,
    /// Hall mode: each selected voice's packing for the members that take
    /// 40 ms packets.
    pub(crate) packers: HashMap<SourceId, crate::pack::Packer>,
}

impl Channel {
    pub(crate) fn new(name: Arc<str>, gen: u32, config: &EngineConfig, now: Instant) -> Self {
        Channel {
            name,
            gen,
            members: Vec::new(),
            selector: SpeakerSelector::new(
                config.slots_per_listener,
                config.speech_expiry,
                config.switch_hysteresis_db,
                config.speech_level,
            ),
            dominant: DominantSpeakerDetector::new(),
            active: Vec::new(),
            fanout: HashMap::new(),
            timer: None,
            next_tick: now + config.dominant_interval,
            upstream: None,
            subscribers: Vec::new(),
            remote: HashMap::new(),
            identities: HashMap::new(),
            last_dominant: None,
            packers: HashMap::new(),
        }
    }

    /// When the channel's timer must fire next: its tick, or earlier when
    /// a packed voice's frame waits for its successor.
    pub(crate) fn deadline(&self) -> Instant {
        self.packers
            .values()
            .filter_map(crate::pack::Packer::held_since)
            .map(|at| at + crate::pack::PACK_WAIT)
            .fold(self.next_tick, Instant::min)
    }

    /// Whether the channel has no reason to exist any more.
    pub(crate) fn is_unused(&self) -> bool {
        self.members.is_empty() && self.subscribers.is_empty()
    }

    /// Maps the selected voices into one member's slots and adds the member's
    /// entries to the fan-out table. Slot changes are reported as events.
    pub(crate) fn assign_member(&mut self, key: PeerKey, peer: &mut Peer, events: &mut Vec<Event>) {
        assign_slots(self.selector.selected(), peer, events);
        for (i, slot) in peer.slots.iter().enumerate() {
            if let Some(source) = slot.source.filter(|s| self.selector.is_selected(*s)) {
                self.fanout.entry(source).or_default().push((key, i as u8));
            }
        }
    }

    /// Removes a member's entries from the fan-out table.
    pub(crate) fn unassign_member(&mut self, key: PeerKey, peer: &Peer) {
        for slot in &peer.slots {
            if let Some(src) = slot.source {
                if let Some(v) = self.fanout.get_mut(&src) {
                    v.retain(|(k, _)| *k != key);
                }
            }
        }
    }

    /// After a change of selection: re-map every member's slots and rebuild
    /// the fan-out table. Work proportional to members, done only on changes.
    pub(crate) fn reassign_all(&mut self, peers: &mut Slab<Box<Peer>>, events: &mut Vec<Event>) {
        self.fanout.clear();
        // Indexed, not iterated: `assign_member` borrows the whole channel.
        for i in 0..self.members.len() {
            let key = self.members[i];
            if let Some(peer) = peers.get_mut(key) {
                self.assign_member(key, peer, events);
            }
        }
    }

    /// Speaking voices, loudest first.
    pub(crate) fn speaking(&self, now: Instant) -> Vec<SourceId> {
        let mut v: Vec<SourceId> = self
            .selector
            .selected()
            .iter()
            .copied()
            .filter(|s| self.selector.is_speaking(*s, now))
            .collect();
        v.sort_by(|a, b| {
            self.selector
                .loudness(*b)
                .total_cmp(&self.selector.loudness(*a))
                .then(a.cmp(b))
        });
        v
    }
}

/// Puts every selected voice (but the member's own) into one of the member's
/// slots: a slot already carrying it keeps it; otherwise a free slot, else the
/// least recently active slot whose voice is no longer selected.
fn assign_slots(selected: &[SourceId], peer: &mut Peer, events: &mut Vec<Event>) {
    let own = peer.source;
    let capacity = peer.slots.len();
    let wanted: Vec<SourceId> = selected
        .iter()
        .copied()
        .filter(|s| *s != own)
        .take(capacity)
        .collect();
    for src in &wanted {
        if peer.slots.iter().any(|s| s.source == Some(*src)) {
            continue;
        }
        let free = peer.slots.iter().position(|s| s.source.is_none());
        let reuse = || {
            peer.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.source.is_some_and(|x| !wanted.contains(&x)))
                .min_by_key(|(_, s)| s.last_active)
                .map(|(i, _)| i)
        };
        let Some(i) = free.or_else(reuse) else {
            continue;
        };
        peer.slots[i].source = Some(*src);
        events.push(Event::SlotChanged {
            peer: peer.id,
            slot: i,
            mid: peer.slots[i].mid.to_string(),
            source: Some(*src),
        });
    }
}

impl Channel {
    /// Empties every slot of every member that carries voice `source` (it
    /// left, was muted or became a listener) and reports the freed slots.
    pub(crate) fn release_voice(
        &mut self,
        source: SourceId,
        peers: &mut Slab<Box<Peer>>,
        events: &mut Vec<Event>,
    ) {
        self.fanout.remove(&source);
        self.packers.remove(&source);
        for &key in &self.members {
            let Some(peer) = peers.get_mut(key) else {
                continue;
            };
            for (i, slot) in peer.slots.iter_mut().enumerate() {
                if slot.source == Some(source) {
                    slot.source = None;
                    events.push(Event::SlotChanged {
                        peer: peer.id,
                        slot: i,
                        mid: slot.mid.to_string(),
                        source: None,
                    });
                }
            }
        }
    }
}
