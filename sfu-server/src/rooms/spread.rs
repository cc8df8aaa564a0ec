//! A channel spread over the node's workers (`spread_after`): each worker's
//! room layer holds the members that joined its engine; the workers tell
//! each other their *part* of the channel — how many members, the listed
//! ones, the raised hands — so that every member sees the whole channel as
//! if it were on one worker: one member count, one member list (members of
//! other workers come and go with `member_joined`/`member_updated`/
//! `member_left`, as local ones do), one queue of raised hands for the
//! moderators, in the order the hands went up on the node. Moderating a
//! member of another worker is the worker's business ([`Rooms::moderation`]
//! refuses it here with [`ModerateError::NotFound`]; the worker sends it to
//! the member's worker, where [`Rooms::moderation_for`] applies the target's
//! side of the rules).
//!
//! A part is a whole snapshot, not a delta: one lost (a full queue) is made
//! good by the next, which is sent once the sender's part changes again or
//! at once ([`Rooms::part_not_sent`]). A worker that hears from another for
//! the first time about a channel sends its own part again, so a worker
//! that joins a spread channel late learns the rest. Only spread channels
//! pay anything: a channel is spread once it has `spread_after` members on
//! its worker (the placement sends the next ones elsewhere: they find the
//! whole room in their `joined`), once a join placed it here as a relay of
//! another worker ([`Rooms::mark_spread`]), or once another worker's part
//! names it. (A member that joins another worker within the moment
//! between the origin's part and its arrival learns the origin's members
//! from `member_joined` messages right after its `joined`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Instant;

use media_core::{PeerId, SourceId};

use super::mode::{Capability, SfuOnly};
use super::{tell_room, ModerateError, Moderation, Rooms};
use crate::protocol::{HandInfo, MemberInfo, ServerMsg};
use media_core::{Command, Role};

/// One worker's part of a spread channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPart {
    /// The channel.
    pub channel: String,
    /// The worker it describes (its index on the node).
    pub worker: usize,
    /// Its members there; 0: it has none left (the others forget the part).
    pub members: usize,
    /// Its listed members, as everyone sees them.
    pub listed: Vec<MemberInfo>,
    /// Its raised hands with the node's order numbers.
    pub hands: Vec<(u64, HandInfo)>,
    /// Listed members that left since its last part, with the reason
    /// (`member_left`'s): a departure the others would otherwise call
    /// `left`.
    pub gone: Vec<(u64, String)>,
}

/// The room layer's view of the node's other workers.
#[derive(Debug, Default)]
pub(super) struct Spread {
    /// This worker's index.
    worker: usize,
    /// A channel with this many members here may spread (the placement's
    /// `spread_after`; 0: never): from then on its part goes to the other
    /// workers, so that a member the placement puts on another one finds
    /// the whole room in its `joined`.
    spread_after: usize,
    /// The engine numbers of the other workers: their members' voices are
    /// members here, not voices of another node.
    siblings: HashSet<u16>,
    /// Numbers the node's raised hands in the order raised (shared by the
    /// workers).
    hand_clock: Arc<AtomicU64>,
    /// The other workers' parts of each spread channel, by worker.
    parts: HashMap<String, BTreeMap<usize, RoomPart>>,
    /// The spread channels this worker knows of.
    spread: HashSet<String>,
    /// Spread channels whose part here may have changed.
    dirty: HashSet<String>,
    /// Listed members of each channel gone since its last part.
    gone: HashMap<String, Vec<(u64, String)>>,
    /// The last part sent of each channel (to send only changes).
    sent: HashMap<String, RoomPart>,
    /// (hybrid) The stand-in of each other worker's members of a spread
    /// channel in this worker's mode policy: a member only the SFU carries,
    /// so the channel stays on the SFU while they are there.
    stand_ins: HashMap<(String, usize), PeerId>,
    /// Stand-in ids count down from here (real peer ids are below 2^53).
    next_stand_in: u64,
}

impl Spread {
    /// A new stand-in's id.
    fn stand_in(&mut self) -> PeerId {
        self.next_stand_in += 1;
        PeerId(u64::MAX - self.next_stand_in)
    }

    /// The next number of a raised hand.
    pub(super) fn next_hand(&self) -> u64 {
        self.hand_clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a channel with `members` here may spread now.
    pub(super) fn may_spread(&self, members: usize) -> bool {
        self.spread_after > 0 && members >= self.spread_after
    }

    /// Notes that `channel`'s part here may have changed (nothing for a
    /// channel that is not spread).
    pub(super) fn touch(&mut self, channel: &str) {
        if self.spread.contains(channel) {
            self.dirty.insert(channel.to_string());
        }
    }

    /// A listed member of `channel` left for `reason`.
    pub(super) fn gone(&mut self, channel: &str, peer: PeerId, reason: &str) {
        if self.spread.contains(channel) {
            self.gone
                .entry(channel.to_string())
                .or_default()
                .push((peer.0, reason.to_string()));
            self.dirty.insert(channel.to_string());
        }
    }

    /// Members of `channel` on the other workers.
    pub(super) fn remote_members(&self, channel: &str) -> usize {
        self.parts
            .get(channel)
            .map_or(0, |p| p.values().map(|p| p.members).sum())
    }

    /// The listed members of `channel` on the other workers.
    pub(super) fn remote_listed(&self, channel: &str) -> impl Iterator<Item = &MemberInfo> {
        self.parts
            .get(channel)
            .into_iter()
            .flat_map(|p| p.values())
            .flat_map(|p| p.listed.iter())
    }

    /// The raised hands of `channel` on the other workers.
    pub(super) fn remote_hands(&self, channel: &str) -> impl Iterator<Item = &(u64, HandInfo)> {
        self.parts
            .get(channel)
            .into_iter()
            .flat_map(|p| p.values())
            .flat_map(|p| p.hands.iter())
    }

    /// Whether a voice was numbered by another worker of this node.
    pub(super) fn is_sibling_voice(&self, source: SourceId) -> bool {
        self.siblings.contains(&source.engine().get())
    }

    /// The peer id of a member of another worker by its voice.
    pub(super) fn remote_peer_of(&self, channel: &str, source: SourceId) -> Option<u64> {
        self.remote_listed(channel)
            .find(|m| m.source == source.0)
            .map(|m| m.peer)
    }
}

impl Rooms {
    /// This room layer is worker `worker` of a node whose other workers'
    /// engines are numbered `siblings`, where a channel spreads past
    /// `spread_after` members on its first worker; `hand_clock` numbers
    /// the node's raised hands (one counter for all its workers).
    pub fn set_siblings(
        &mut self,
        worker: usize,
        siblings: &[u16],
        spread_after: usize,
        hand_clock: Arc<AtomicU64>,
    ) {
        self.spread.worker = worker;
        self.spread.spread_after = spread_after;
        self.spread.siblings = siblings.iter().copied().collect();
        self.spread.hand_clock = hand_clock;
    }

    /// `channel` is spread: a join placed it here as a relay of another
    /// worker. Its part goes to the other workers from now on.
    pub fn mark_spread(&mut self, channel: &str) {
        self.spread.spread.insert(channel.to_string());
        self.spread.dirty.insert(channel.to_string());
    }

    /// The members of `channel` on every worker of the node.
    pub fn channel_members(&self, channel: &str) -> usize {
        self.member_count(channel) + self.spread.remote_members(channel)
    }

    /// Another worker's part of a channel at `now`: its listed members are
    /// announced to this worker's members of the channel as they come,
    /// change and go; the member count and the raised hands follow at their
    /// next poll. (hybrid) While that worker has members, a stand-in for
    /// them keeps the channel on the SFU here: a mesh of this worker's
    /// members would not reach them.
    pub fn handle_part(&mut self, part: RoomPart, now: Instant) {
        let channel = part.channel.clone();
        let key = (channel.clone(), part.worker);
        if part.members > 0 && !self.spread.stand_ins.contains_key(&key) {
            let id = self.spread.stand_in();
            self.spread.stand_ins.insert(key, id);
            let spread = Capability::SfuOnly(SfuOnly::Spread);
            self.policy.handle_join(&channel, id, spread, now);
            self.apply_decisions();
        } else if part.members == 0 {
            if let Some(id) = self.spread.stand_ins.remove(&key) {
                self.policy.handle_leave(id, now);
                self.apply_decisions();
            }
        }
        let parts = self.spread.parts.entry(channel.clone()).or_default();
        let gone = part.gone.clone();
        let old = if part.members == 0 {
            parts.remove(&part.worker)
        } else {
            parts.insert(part.worker, part.clone())
        };
        if parts.is_empty() {
            self.spread.parts.remove(&channel);
            if !self.rooms.contains_key(&channel) {
                // Nobody of it anywhere now: forgotten here too.
                self.spread.spread.remove(&channel);
                self.spread.sent.remove(&channel);
                self.spread.dirty.remove(&channel);
                self.spread.gone.remove(&channel);
            }
        }
        if old.is_none() && part.members > 0 {
            // A worker new to the channel (or back): it learns this part.
            self.spread.sent.remove(&channel);
            self.spread.spread.insert(channel.clone());
            self.spread.touch(&channel);
        }
        let Some(room) = self.rooms.get(&channel) else {
            return;
        };
        let before: HashMap<u64, &MemberInfo> = old
            .as_ref()
            .map(|p| p.listed.iter().map(|m| (m.peer, m)).collect())
            .unwrap_or_default();
        let now: Vec<&MemberInfo> = if part.members == 0 {
            Vec::new()
        } else {
            part.listed.iter().collect()
        };
        for m in &now {
            match before.get(&m.peer) {
                None => tell_room(
                    &mut self.messages,
                    room,
                    None,
                    ServerMsg::MemberJoined {
                        member: (*m).clone(),
                    },
                ),
                Some(b) if *b != *m => tell_room(
                    &mut self.messages,
                    room,
                    None,
                    ServerMsg::MemberUpdated {
                        member: (*m).clone(),
                    },
                ),
                Some(_) => {}
            }
        }
        for peer in before.keys() {
            if now.iter().any(|m| m.peer == *peer) {
                continue;
            }
            let reason = gone
                .iter()
                .find(|(p, _)| p == peer)
                .map_or("left", |(_, r)| r.as_str());
            let msg = ServerMsg::MemberLeft {
                peer: *peer,
                reason: reason.to_string(),
                message: None,
            };
            tell_room(&mut self.messages, room, None, msg);
        }
        let old_count = old.as_ref().map_or(0, |p| p.members);
        if old_count != part.members {
            self.counts_changed.insert(channel.clone());
        }
        let old_hands = old.map(|p| p.hands).unwrap_or_default();
        if old_hands != part.hands || (part.members == 0 && !old_hands.is_empty()) {
            self.hands_changed.insert(channel);
        }
    }

    /// The parts of this worker's spread channels that changed since they
    /// were last taken, for the node's other workers.
    pub fn take_parts(&mut self) -> Vec<RoomPart> {
        let dirty: Vec<String> = self.spread.dirty.drain().collect();
        let mut out = Vec::new();
        for channel in dirty {
            let part = self.part(&channel);
            let gone = self.spread.gone.remove(&channel).unwrap_or_default();
            if part.members == 0 && !self.spread.parts.contains_key(&channel) {
                // Nobody left anywhere: the channel is forgotten.
                self.spread.spread.remove(&channel);
            }
            let last = self.spread.sent.get(&channel);
            if last == Some(&part) && gone.is_empty() {
                continue;
            }
            if last.is_none() && part.members == 0 {
                continue;
            }
            if part.members == 0 {
                self.spread.sent.remove(&channel);
            } else {
                self.spread.sent.insert(channel.clone(), part.clone());
            }
            out.push(RoomPart { gone, ..part });
        }
        out
    }

    /// `part` could not be handed to every other worker: it goes again with
    /// the next [`Rooms::take_parts`].
    pub fn part_not_sent(&mut self, part: &RoomPart) {
        self.spread.sent.remove(&part.channel);
        self.spread.spread.insert(part.channel.clone());
        self.spread.dirty.insert(part.channel.clone());
        if !part.gone.is_empty() {
            self.spread
                .gone
                .entry(part.channel.clone())
                .or_default()
                .extend(part.gone.iter().cloned());
        }
    }

    /// Whether `channel` has members on other workers of the node (a
    /// moderation of a member not here may be theirs).
    pub fn is_spread(&self, channel: &str) -> bool {
        self.spread.spread.contains(channel)
    }

    /// This worker's part of `channel` as it is now.
    fn part(&self, channel: &str) -> RoomPart {
        let room = self.rooms.get(channel);
        let listed = room
            .into_iter()
            .flat_map(|r| r.members.iter())
            .filter_map(|p| {
                let m = self.members.get(p)?;
                (m.listed && m.answered).then(|| m.info(*p))
            })
            .collect();
        let hands = room
            .into_iter()
            .flat_map(|r| r.hands.ordered())
            .filter_map(|(p, order)| {
                let m = self.members.get(&p)?;
                Some((
                    order,
                    HandInfo {
                        peer: p.0,
                        identity: m.identity.clone(),
                    },
                ))
            })
            .collect();
        RoomPart {
            channel: channel.to_string(),
            worker: self.spread.worker,
            members: room.map_or(0, |r| r.members.len()),
            listed,
            hands,
            gone: Vec::new(),
        }
    }

    /// `by` moderates `target`, a member of its channel on another worker:
    /// the moderator's side of the rules ([`Rooms::moderation`]); the
    /// channel, for the target's worker ([`Rooms::moderation_for`]).
    pub fn moderation_elsewhere(
        &self,
        by: PeerId,
        action: &Moderation,
    ) -> Result<String, ModerateError> {
        let moderator = self.moderator(by, action)?;
        if !self.is_spread(&moderator.channel) {
            return Err(ModerateError::NotFound);
        }
        Ok(moderator.channel.clone())
    }

    /// A moderator of another worker moderates `target` in `channel`: the
    /// target's side of the rules, and if they allow it the engine command
    /// that does it.
    pub fn moderation_for(
        &self,
        channel: &str,
        target: PeerId,
        action: &Moderation,
    ) -> Result<Command, ModerateError> {
        self.target_command(channel, target, action)
    }
}

/// The `hands` message of a spread channel: the hands of every worker,
/// oldest first.
pub(super) fn merged_hands(
    local: impl Iterator<Item = (u64, HandInfo)>,
    remote: impl Iterator<Item = (u64, HandInfo)>,
) -> ServerMsg {
    let mut all: Vec<(u64, HandInfo)> = local.chain(remote).collect();
    all.sort_by_key(|(order, _)| *order);
    ServerMsg::Hands {
        queue: all.into_iter().map(|(_, h)| h).collect(),
    }
}

/// Whether `action` gives more than a moderator's own `can_publish` grant.
pub(super) fn beyond_grant(action: &Moderation, can_publish: bool) -> bool {
    *action == Moderation::SetRole(Role::Speaker) && !can_publish
}
