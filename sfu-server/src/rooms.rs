//! The room layer: the channels of this node as people see them, and the
//! rules about them. Who is in which channel with which role and grants;
//! who is listed; how often member counts go out; what a member joining
//! late is told about who speaks; who may moderate whom; whose hand is
//! raised; how many members a channel and how many channels the node may
//! have.
//!
//! Sans-IO, like the engine: no clock, no socket, no runtime. Inputs are
//! method calls (a join the engine accepted, an engine [`Event`], a
//! moderation, a hand raised or lowered, the drain, `now` for the member
//! counts and hand queues); outputs are
//! plain data: messages addressed to members by their [`PeerId`]
//! ([`Rooms::take_messages`]), the engine [`Command`] a rule asks for, the
//! [`Joined`] answer of a join. The worker carries them: it owns each
//! member's event channel and hands it the messages addressed to it.
//!
//! The methods come in four kinds: getters; `handle_*` (feed input and
//! queue messages); rules that answer without changing anything
//! ([`Rooms::moderation`]); `poll_*`/`take_*` (output).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use media_core::{Command, Event, LeaveReason, PeerId, Role, SourceId};

use crate::protocol::{HandInfo, MemberInfo, ServerMsg, Voice};
use mode::{Capability, Mode, ModePolicy};

mod hands;
mod hybrid;
mod member;
pub mod mode;
mod moderation;
mod spread;
#[cfg(test)]
mod tests;

pub use hands::{HandError, Hands, HANDS_INTERVAL, MAX_RAISED_HANDS};
pub use hybrid::{
    HybridCounters, SfuJoinError, SignalError, MESH_CONNECT_TIMEOUT, SIGNALS_BURST,
    SIGNALS_PER_SECOND,
};
pub use member::{role_name, Member, Rights};
pub use moderation::{ModerateError, Moderation};
pub use spread::RoomPart;

/// Listeners are announced to the others (`member_joined`/`member_left`,
/// and in a joiner's member list) only while their channel has at most this
/// many members on the node; speakers always are. Announcing every listener
/// of a 10,000-member hall to every other would be 10^8 messages, and a
/// member list nobody can read. `member_count` tells everyone how many there
/// are.
pub const LISTED_LISTENERS_UP_TO: usize = 100;

/// Least time between two `member_count` messages of a channel: a hall
/// filling at hundreds of joins a second would otherwise send every member
/// hundreds of counts a second.
pub const MEMBER_COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// What a member is told when the engine answered its join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new member's peer id.
    pub peer: PeerId,
    /// Its voice.
    pub source: SourceId,
    /// Receive slots granted.
    pub slots: usize,
    /// SDP answer.
    pub answer: String,
    /// The channel's listed members, the new one included.
    pub members: Vec<MemberInfo>,
    /// All members of the channel on this node.
    pub member_count: usize,
    /// Named voices of other nodes.
    pub voices: Vec<Voice>,
    /// Speaking now (peers of this node), loudest first.
    pub active_speakers: Vec<u64>,
    /// Dominant speaker, if a member here.
    pub dominant_speaker: Option<u64>,
    /// Dominant speaker's voice.
    pub dominant_source: Option<u32>,
    /// (hybrid) The mode the member starts in: P2P (no engine session: the
    /// answer is empty, the source 0) or the SFU.
    pub mode: Mode,
    /// (hybrid) The channel's epoch.
    pub epoch: u64,
}

/// What clients may create on this node at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Members of one channel.
    pub max_members_per_channel: usize,
    /// Channels with members.
    pub max_channels: usize,
}

impl RoomLimits {
    /// No limits.
    pub const NONE: RoomLimits = RoomLimits {
        max_members_per_channel: usize::MAX,
        max_channels: usize::MAX,
    };
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits::NONE
    }
}

/// Why the room layer refuses a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomRefusal {
    /// The channel has its maximum of members on this node.
    #[error("the channel is full: it has its maximum of {0} members on this node")]
    ChannelFull(usize),
    /// The node has its maximum of channels and this would be a new one.
    #[error("this node carries its maximum of {0} channels")]
    TooManyChannels(usize),
}

/// How many channels and members there are, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Channels with members.
    pub channels: usize,
    /// Members.
    pub members: usize,
    /// Members who speak.
    pub speakers: usize,
    /// Members who listen.
    pub listeners: usize,
}

/// One channel on this node.
#[derive(Debug, Default)]
struct Room {
    /// Its members, in the order they joined (peer ids grow).
    members: BTreeSet<PeerId>,
    /// Who speaks now (the engine's last `ActiveSpeakers`), for late joiners.
    active: Vec<SourceId>,
    /// The dominant speaker now, for late joiners.
    dominant: Option<SourceId>,
    /// Voices of other nodes and their identities, for late joiners.
    voices: BTreeMap<u32, String>,
    /// When this channel's last `member_count` went out.
    count_sent_at: Option<Instant>,
    /// Its members who may moderate: they are sent the raised hands.
    moderators: BTreeSet<PeerId>,
    /// Its raised hands.
    hands: Hands,
    /// When this channel's last `hands` went out.
    hands_sent_at: Option<Instant>,
}

/// The channels of a node and their members. See the module documentation.
#[derive(Debug, Default)]
pub struct Rooms {
    /// By channel name. A room is made by the first join or engine event
    /// that names its channel and forgotten when its last member leaves.
    rooms: HashMap<String, Room>,
    members: HashMap<PeerId, Member>,
    /// Local members' voices, to name the peer behind a source.
    sources: HashMap<SourceId, PeerId>,
    /// Channels whose member count changed since it was last sent.
    counts_changed: HashSet<String>,
    /// Channels whose raised hands changed since they were last sent.
    hands_changed: HashSet<String>,
    /// Shutting down: joins are refused.
    draining: bool,
    /// What joins may create.
    limits: RoomLimits,
    /// Messages to members, in the order they were produced.
    messages: Vec<(PeerId, ServerMsg)>,
    /// (hybrid) Each channel's mode.
    policy: ModePolicy,
    /// (hybrid) Engine commands the rules asked for (SFU sessions to end
    /// after a switch to P2P), for the worker to carry out.
    commands: Vec<Command>,
    /// (hybrid) Members whose SFU session the room layer is ending: the
    /// engine's `PeerLeft` for them ends the session, not the membership.
    closing: HashSet<PeerId>,
    /// (hybrid) Signal rate buckets and counters.
    hybrid: hybrid::HybridState,
    /// The node's other workers, for channels spread over them.
    spread: spread::Spread,
}

impl Rooms {
    /// No channels, no members, no limits.
    pub fn new() -> Rooms {
        Rooms::with_limits(RoomLimits::NONE)
    }

    /// No channels, no members; joins within `limits`.
    pub fn with_limits(limits: RoomLimits) -> Rooms {
        Rooms {
            limits,
            ..Rooms::default()
        }
    }

    /// Whether a join of `channel` fits the limits: the channel below its
    /// maximum of members, or a new channel while the node is below its
    /// maximum of channels. Changes nothing.
    pub fn admit(&self, channel: &str) -> Result<(), RoomRefusal> {
        let RoomLimits {
            max_members_per_channel,
            max_channels,
        } = self.limits;
        match self.rooms.get(channel).map(|r| r.members.len()) {
            Some(n) if n >= max_members_per_channel => {
                Err(RoomRefusal::ChannelFull(max_members_per_channel))
            }
            Some(n) if n > 0 => Ok(()),
            // A new channel (or one known only from engine events).
            _ if self.channels().count() >= max_channels => {
                Err(RoomRefusal::TooManyChannels(max_channels))
            }
            _ => Ok(()),
        }
    }

    /// A member, by its peer id.
    pub fn member(&self, peer: PeerId) -> Option<&Member> {
        self.members.get(&peer)
    }

    /// True once shutdown began: joins are refused.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether `channel` has members on this node.
    pub fn has_members(&self, channel: &str) -> bool {
        self.member_count(channel) > 0
    }

    /// How many members `channel` has on this node.
    pub fn member_count(&self, channel: &str) -> usize {
        self.rooms.get(channel).map_or(0, |r| r.members.len())
    }

    /// Every member's peer id.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.members.keys().copied()
    }

    /// The channels that have members.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.rooms
            .iter()
            .filter(|(_, r)| !r.members.is_empty())
            .map(|(name, _)| name.as_str())
    }

    /// Channels and members now.
    pub fn census(&self) -> Census {
        let members = self.members.len();
        let speakers = self
            .members
            .values()
            .filter(|m| m.role == Role::Speaker)
            .count();
        Census {
            channels: self.channels().count(),
            members,
            speakers,
            listeners: members - speakers,
        }
    }

    /// The engine accepted `peer`'s join of `channel`. Nobody is told yet:
    /// that waits for the engine's answer ([`Event::Answer`]), when the
    /// member has a voice.
    ///
    /// `capability` says whether the member can take part in a mesh
    /// (hybrid); a member that joins a P2P channel is completed at once
    /// with [`Rooms::answer_p2p`] instead of by the engine's answer.
    pub fn handle_join(
        &mut self,
        peer: PeerId,
        channel: String,
        identity: String,
        role: Role,
        rights: Rights,
        capability: Capability,
    ) {
        tracing::info!(%peer, %channel, %identity, role = role_name(role), "member joined");
        let room = self.rooms.entry(channel.clone()).or_default();
        room.members.insert(peer);
        if rights.can_moderate {
            room.moderators.insert(peer);
        }
        self.members.insert(
            peer,
            Member {
                channel,
                identity,
                role,
                muted: false,
                rights,
                source: None,
                listed: false,
                kicked: None,
                capability,
                answered: false,
                // The worker joins the engine first (SFU) or completes the
                // join with `answer_p2p` at once (P2P).
                in_engine: true,
            },
        );
    }

    /// An event of the engine. Returns the answer of a join when the event
    /// completes one (the worker hands it to whoever asked to join).
    pub fn handle_event(&mut self, event: Event, now: Instant) -> Option<Joined> {
        match event {
            Event::Answer {
                peer,
                source,
                slots,
                sdp,
            } => return self.answered(peer, source, slots, sdp, now),
            Event::PeerConnected { peer } => {
                tracing::debug!(%peer, "media connected");
                self.send(peer, ServerMsg::Connected);
            }
            // (hybrid) A session the room layer ended leaves the member in.
            Event::PeerLeft { peer, reason } if !self.session_ended(peer) => {
                self.left(peer, reason, now);
            }
            Event::SlotChanged {
                peer,
                slot,
                mid,
                source,
            } => {
                let msg = ServerMsg::Slot {
                    slot,
                    mid,
                    peer: source.and_then(|s| self.peer_of(s)),
                    source: source.map(|s| s.0),
                };
                self.send(peer, msg);
            }
            Event::ActiveSpeakers { channel, speakers } => {
                let msg = ServerMsg::ActiveSpeakers {
                    speakers: speakers
                        .iter()
                        .filter_map(|s| self.peer_in(&channel, *s))
                        .collect(),
                    sources: speakers.iter().map(|s| s.0).collect(),
                };
                let room = self.rooms.entry(channel.to_string()).or_default();
                room.active = speakers;
                tell_room(&mut self.messages, room, None, msg);
            }
            Event::DominantSpeaker { channel, speaker } => {
                let msg = ServerMsg::DominantSpeaker {
                    peer: speaker.and_then(|s| self.peer_in(&channel, s)),
                    source: speaker.map(|s| s.0),
                };
                let room = self.rooms.entry(channel.to_string()).or_default();
                room.dominant = speaker;
                tell_room(&mut self.messages, room, None, msg);
            }
            // A voice of another worker of this node: its member is listed
            // from that worker's part of the channel.
            Event::RemoteSource { source, .. } if self.spread.is_sibling_voice(source) => {}
            Event::RemoteSource {
                channel,
                source,
                identity,
            } => {
                let room = self.rooms.entry(channel.to_string()).or_default();
                if identity.is_empty() {
                    room.voices.remove(&source.0);
                } else {
                    room.voices.insert(source.0, identity.to_string());
                }
                let voice = Voice {
                    source: source.0,
                    identity: identity.to_string(),
                };
                tell_room(&mut self.messages, room, None, ServerMsg::Voice { voice });
            }
            _ => {}
        }
        None
    }

    /// Whether `by` may apply `action` to `target`, and if so the engine
    /// command that does it. Changes nothing: once the engine accepted the
    /// command, [`Rooms::handle_moderated`] records and announces it.
    pub fn moderation(
        &self,
        by: PeerId,
        target: PeerId,
        action: &Moderation,
    ) -> Result<Command, ModerateError> {
        let moderator = self.moderator(by, action)?;
        self.target_command(&moderator.channel, target, action)
    }

    /// The moderator's side of the rules: `by` may moderate, and may hand
    /// on what `action` gives.
    fn moderator(&self, by: PeerId, action: &Moderation) -> Result<&Member, ModerateError> {
        let moderator = self.members.get(&by).ok_or(ModerateError::Forbidden)?;
        if !moderator.rights.can_moderate {
            return Err(ModerateError::Forbidden);
        }
        // A moderator hands on only what its own token grants: moderation
        // must not turn a listener-only grant into a way onto the stage.
        if spread::beyond_grant(action, moderator.rights.can_publish) {
            return Err(ModerateError::BeyondOwnGrant);
        }
        Ok(moderator)
    }

    /// The target's side of the rules: `target` is a member of `channel`
    /// here, and may be moderated so; the engine command that does it.
    fn target_command(
        &self,
        channel: &str,
        target: PeerId,
        action: &Moderation,
    ) -> Result<Command, ModerateError> {
        let member = match self.members.get(&target) {
            Some(m) if m.channel == channel => m,
            _ => return Err(ModerateError::NotFound),
        };
        Ok(match action {
            Moderation::Mute(muted) => Command::SetMuted {
                peer: target,
                muted: *muted,
            },
            Moderation::SetRole(role) => Command::SetRole {
                peer: target,
                role: *role,
            },
            Moderation::Kick { .. } if member.rights.can_moderate => {
                return Err(ModerateError::TargetModerates)
            }
            Moderation::Kick { .. } => Command::Leave { peer: target },
        })
    }

    /// The engine applied a moderation to `target`: record it and tell the
    /// channel. An unlisted listener made a speaker is announced now, as if
    /// it joined; a change to an unlisted listener is told to it alone. A
    /// promoted member's hand goes down. A kicked member's departure is
    /// announced when the engine reports it (as `kicked`).
    pub fn handle_moderated(&mut self, target: PeerId, action: Moderation) {
        let Some(m) = self.members.get_mut(&target) else {
            return;
        };
        match action {
            Moderation::Mute(muted) => m.muted = muted,
            Moderation::SetRole(role) => m.role = role,
            Moderation::Kick { reason } => {
                tracing::info!(peer = %target, channel = %m.channel, "member kicked");
                m.kicked = Some(reason.unwrap_or_else(|| "removed by a moderator".into()));
                return;
            }
        }
        let channel = m.channel.clone();
        self.spread.touch(&channel);
        if m.role == Role::Speaker {
            self.lower_hand(target, &channel);
        }
        let Some(m) = self.members.get_mut(&target) else {
            return;
        };
        let member = m.info(target);
        let msg = if m.listed {
            ServerMsg::MemberUpdated { member }
        } else if m.role == Role::Speaker {
            m.listed = true;
            ServerMsg::MemberJoined { member }
        } else {
            self.messages
                .push((target, ServerMsg::MemberUpdated { member }));
            return;
        };
        if let Some(room) = self.rooms.get(&m.channel) {
            tell_room(&mut self.messages, room, None, msg);
        }
    }

    /// `peer` raises (or lowers) its hand. Only listeners raise hands;
    /// raising a raised hand, or lowering a lowered one, changes nothing.
    /// The member is told its hand's state when it changed; the channel's
    /// moderators get the queue at the next [`Rooms::poll_hands`].
    pub fn handle_hand(&mut self, peer: PeerId, raised: bool) -> Result<(), HandError> {
        let m = self.members.get(&peer).ok_or(HandError::NotJoined)?;
        if raised && m.role == Role::Speaker {
            return Err(HandError::AlreadySpeaker);
        }
        let channel = m.channel.clone();
        if raised {
            let room = self.rooms.get_mut(&channel).ok_or(HandError::NotJoined)?;
            if room.hands.raise(peer, self.spread.next_hand())? {
                self.spread.touch(&channel);
                self.hands_changed.insert(channel);
                self.messages.push((peer, ServerMsg::Hand { raised: true }));
            }
        } else {
            self.lower_hand(peer, &channel);
        }
        Ok(())
    }

    /// The raised hands of `channel`, oldest first.
    pub fn hands(&self, channel: &str) -> Vec<PeerId> {
        self.rooms
            .get(channel)
            .map(|r| r.hands.queue().collect())
            .unwrap_or_default()
    }

    /// The server drains for shutdown: refuse joins from now on and tell
    /// every member to move before `deadline`.
    pub fn handle_drain(&mut self, deadline: Duration) {
        self.draining = true;
        let msg = ServerMsg::Shutdown {
            reason: "the server is shutting down; join again elsewhere".into(),
            deadline_ms: deadline.as_millis() as u64,
        };
        for peer in self.members.keys() {
            self.messages.push((*peer, msg.clone()));
        }
    }

    /// Queues the member counts that changed and whose channel's interval
    /// passed, with the count as it is now; returns when the next one is
    /// due (`None`: none is waiting).
    pub fn poll_member_counts(&mut self, now: Instant) -> Option<Instant> {
        let Rooms {
            rooms,
            counts_changed,
            messages,
            spread,
            ..
        } = self;
        let mut next: Option<Instant> = None;
        counts_changed.retain(|channel| {
            let Some(room) = rooms.get_mut(channel) else {
                return false;
            };
            if let Err(at) = throttle(&mut room.count_sent_at, MEMBER_COUNT_INTERVAL, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
                return true;
            }
            let count = room.members.len() + spread.remote_members(channel);
            tell_room(messages, room, None, ServerMsg::MemberCount { count });
            false
        });
        next
    }

    /// Queues the raised-hand queues that changed, to their channel's
    /// moderators, when the channel's [`HANDS_INTERVAL`] passed; returns
    /// when the next one is due (`None`: none is waiting).
    pub fn poll_hands(&mut self, now: Instant) -> Option<Instant> {
        let Rooms {
            rooms,
            members,
            hands_changed,
            messages,
            spread,
            ..
        } = self;
        let mut next: Option<Instant> = None;
        hands_changed.retain(|channel| {
            let Some(room) = rooms.get_mut(channel) else {
                return false;
            };
            if let Err(at) = throttle(&mut room.hands_sent_at, HANDS_INTERVAL, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
                return true;
            }
            let msg = hands_message(members, &room.hands, spread, channel);
            for peer in &room.moderators {
                messages.push((*peer, msg.clone()));
            }
            false
        });
        next
    }

    /// The messages queued for members since the last call, in order.
    pub fn take_messages(&mut self) -> std::vec::Drain<'_, (PeerId, ServerMsg)> {
        self.messages.drain(..)
    }

    /// The engine answered `peer`'s join: the member is listed (or not),
    /// announced to the others, and told the state of its channel. For a
    /// member already in (a P2P member's `sfu_join`), the answer is its SFU
    /// session's ([`Rooms::session_answered`]).
    fn answered(
        &mut self,
        peer: PeerId,
        source: SourceId,
        slots: usize,
        answer: String,
        now: Instant,
    ) -> Option<Joined> {
        let m = self.members.get_mut(&peer)?;
        if m.answered {
            self.session_answered(peer, source, slots, answer);
            return None;
        }
        m.source = Some(source);
        self.sources.insert(source, peer);
        self.complete_join(peer, slots, answer, now)
    }

    /// A join is complete (the engine answered it, or it is P2P): the
    /// member is listed (or not), announced to the others, told the state
    /// of its channel, and its channel's mode policy counts it.
    fn complete_join(
        &mut self,
        peer: PeerId,
        slots: usize,
        answer: String,
        now: Instant,
    ) -> Option<Joined> {
        let m = self.members.get_mut(&peer)?;
        let room = self.rooms.get(&m.channel)?;
        m.answered = true;
        let member_count = room.members.len() + self.spread.remote_members(&m.channel);
        m.listed = m.role == Role::Speaker || member_count <= LISTED_LISTENERS_UP_TO;
        let (member, listed, channel, capability) =
            (m.info(peer), m.listed, m.channel.clone(), m.capability);
        let members = room
            .members
            .iter()
            .filter_map(|p| {
                let m = self.members.get(p)?;
                (m.listed || *p == peer).then(|| m.info(*p))
            })
            .chain(self.spread.remote_listed(&channel).cloned())
            .collect();
        let assignment = self.policy.handle_join(&channel, peer, capability, now);
        let joined = Joined {
            peer,
            source: self.members[&peer].source.unwrap_or(SourceId(0)),
            slots,
            answer,
            members,
            member_count,
            voices: room
                .voices
                .iter()
                .map(|(source, identity)| Voice {
                    source: *source,
                    identity: identity.clone(),
                })
                .collect(),
            active_speakers: room
                .active
                .iter()
                .filter_map(|s| self.peer_in(&channel, *s))
                .collect(),
            dominant_speaker: room.dominant.and_then(|s| self.peer_in(&channel, s)),
            dominant_source: room.dominant.map(|s| s.0),
            mode: assignment.mode,
            epoch: assignment.epoch,
        };
        if listed {
            let msg = ServerMsg::MemberJoined { member };
            tell_room(&mut self.messages, room, Some(peer), msg);
        }
        // A moderator who joins late learns who waits to speak.
        if room.moderators.contains(&peer)
            && (!room.hands.is_empty() || self.spread.remote_hands(&channel).next().is_some())
        {
            let msg = hands_message(&self.members, &room.hands, &self.spread, &channel);
            self.messages.push((peer, msg));
        }
        if self.spread.may_spread(member_count) {
            self.mark_spread(&channel);
        }
        self.spread.touch(&channel);
        self.counts_changed.insert(channel);
        self.apply_decisions();
        Some(joined)
    }

    /// `peer` left: it is told (so that its session ends), the others are
    /// told if it was listed, and the channel's count changes. The last
    /// member out forgets the room.
    fn left(&mut self, peer: PeerId, reason: LeaveReason, now: Instant) {
        if self.members.contains_key(&peer) {
            self.closing.remove(&peer);
            self.hybrid.forget(peer);
            self.leave_room(peer, reason);
            // After the room forgot it: a switch its leaving completes is
            // told to the others only.
            self.policy.handle_leave(peer, now);
            self.apply_decisions();
        }
    }

    fn leave_room(&mut self, peer: PeerId, reason: LeaveReason) {
        let Some(m) = self.members.remove(&peer) else {
            return;
        };
        tracing::info!(%peer, channel = %m.channel, identity = %m.identity, ?reason, "member left");
        if let Some(source) = m.source {
            self.sources.remove(&source);
        }
        let reason = match m.kicked {
            Some(_) => "kicked",
            None => leave_reason_name(reason),
        };
        let left = |message| ServerMsg::MemberLeft {
            peer: peer.0,
            reason: reason.to_string(),
            message,
        };
        // The moderator's words are for the member removed alone.
        self.messages.push((peer, left(m.kicked)));
        let msg = left(None);
        if m.listed && m.answered {
            self.spread.gone(&m.channel, peer, reason);
        } else {
            self.spread.touch(&m.channel);
        }
        let Some(room) = self.rooms.get_mut(&m.channel) else {
            return;
        };
        room.members.remove(&peer);
        room.moderators.remove(&peer);
        if room.members.is_empty() {
            self.rooms.remove(&m.channel);
            self.counts_changed.remove(&m.channel);
            self.hands_changed.remove(&m.channel);
            return;
        }
        if room.hands.lower(peer) {
            self.hands_changed.insert(m.channel.clone());
        }
        if m.listed {
            tell_room(&mut self.messages, room, None, msg);
        }
        self.counts_changed.insert(m.channel);
    }

    /// Lowers `peer`'s hand in `channel`; when it was up, the member is
    /// told and the channel's moderators will be.
    fn lower_hand(&mut self, peer: PeerId, channel: &str) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        if room.hands.lower(peer) {
            self.hands_changed.insert(channel.to_string());
            self.spread.touch(channel);
            self.messages
                .push((peer, ServerMsg::Hand { raised: false }));
        }
    }

    /// Queues `msg` for `peer` if it is a member.
    fn send(&mut self, peer: PeerId, msg: ServerMsg) {
        if self.members.contains_key(&peer) {
            self.messages.push((peer, msg));
        }
    }

    /// The peer id of a local member's voice (`None` for voices of other
    /// nodes).
    fn peer_of(&self, source: SourceId) -> Option<u64> {
        self.sources.get(&source).map(|p| p.0)
    }

    /// The peer id of a voice of `channel`: a member here or, in a spread
    /// channel, on another worker of the node.
    fn peer_in(&self, channel: &str, source: SourceId) -> Option<u64> {
        self.peer_of(source)
            .or_else(|| self.spread.remote_peer_of(channel, source))
    }
}

/// Queues `msg` for every member of `room` but `except`.
fn tell_room(
    messages: &mut Vec<(PeerId, ServerMsg)>,
    room: &Room,
    except: Option<PeerId>,
    msg: ServerMsg,
) {
    for peer in &room.members {
        if Some(*peer) != except {
            messages.push((*peer, msg.clone()));
        }
    }
}

/// `Ok` (and the time noted as `sent_at`) when a message sent at most
/// every `interval` may go out at `now`; else when it may.
fn throttle(
    sent_at: &mut Option<Instant>,
    interval: Duration,
    now: Instant,
) -> Result<(), Instant> {
    match sent_at.map(|t| t + interval) {
        Some(at) if at > now => Err(at),
        _ => {
            *sent_at = Some(now);
            Ok(())
        }
    }
}

/// The `hands` message of `channel`: its raised hands here and on the
/// node's other workers, oldest first, with their identities.
fn hands_message(
    members: &HashMap<PeerId, Member>,
    hands: &Hands,
    spread: &spread::Spread,
    channel: &str,
) -> ServerMsg {
    let local = hands.ordered().filter_map(|(p, order)| {
        members.get(&p).map(|m| {
            let info = HandInfo {
                peer: p.0,
                identity: m.identity.clone(),
            };
            (order, info)
        })
    });
    spread::merged_hands(local, spread.remote_hands(channel).cloned())
}

/// How the protocol names why a member left.
fn leave_reason_name(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Left => "left",
        LeaveReason::Disconnected => "disconnected",
        LeaveReason::ConnectTimeout => "timeout",
        _ => "failed",
    }
}
