//! The room layer's side of hybrid channels (docs/HYBRID.md): the
//! [`ModePolicy`](super::mode::ModePolicy) fed with joins, leaves, reports
//! and time, its decisions turned into messages (`mode`, `switched`) and
//! engine commands (a switch to P2P ends the members' SFU sessions), the
//! signaling relay between the members of a P2P channel (checked and
//! rate-limited here: the rules are data), and `sfu_join`, a member's SFU
//! session during a switch up.
//!
//! A member of a P2P channel has no engine peer: its join is completed at
//! once ([`Rooms::answer_p2p`]). Its id is the one the worker gave it, and
//! its SFU session, when it gets one, is the engine peer under that id.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use media_core::{Command, PeerId, SourceId};

use super::mode::{
    Capability, Decision, HybridSettings, MeshFailure, Mode, ModeCensus, ModeState, ModeStats,
    ReportError,
};
use super::{tell_room, Joined, Rooms};
use crate::protocol::{ServerMsg, SignalData};

/// Signals one member may send a second, on average...
pub const SIGNALS_PER_SECOND: f64 = 20.0;
/// ...and at once: a joiner's offers and candidates to six others.
pub const SIGNALS_BURST: f64 = 100.0;

/// Why a `signal` was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// The sender or the addressee is not a member of the same channel.
    #[error("no such other member in this channel")]
    NotMember,
    /// The channel is not (becoming) peer-to-peer.
    #[error("the channel is not peer-to-peer")]
    WrongMode,
    /// The sender's epoch is not the channel's.
    #[error("stale epoch {got}: the channel is at epoch {current}")]
    Stale {
        /// The signal's.
        got: u64,
        /// The channel's.
        current: u64,
    },
    /// An offer from the higher id, or an answer from the lower one.
    #[error("the member with the lower id offers, the other answers")]
    Glare,
    /// Over [`SIGNALS_PER_SECOND`].
    #[error("too many signals: at most 20 a second")]
    Rate,
}

impl SignalError {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            SignalError::NotMember => "not_member",
            SignalError::WrongMode => "mode",
            SignalError::Stale { .. } => "stale",
            SignalError::Glare => "glare",
            SignalError::Rate => "rate",
        }
    }

    /// The protocol's error code.
    pub fn code(self) -> &'static str {
        match self {
            SignalError::NotMember => "not_found",
            SignalError::WrongMode => "wrong_mode",
            SignalError::Stale { .. } => "stale",
            SignalError::Glare => "bad_request",
            SignalError::Rate => "rate_limited",
        }
    }
}

/// Why an `sfu_join` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SfuJoinError {
    /// Not a member.
    #[error("not in a channel")]
    NotJoined,
    /// The member has an SFU session already.
    #[error("this member is on the SFU already")]
    AlreadyJoined,
    /// The channel is not (becoming) SFU.
    #[error("the channel is peer-to-peer")]
    WrongMode,
    /// The epoch is not the channel's.
    #[error("stale epoch {got}: the channel is at epoch {current}")]
    Stale {
        /// The request's.
        got: u64,
        /// The channel's.
        current: u64,
    },
}

impl SfuJoinError {
    /// The protocol's error code.
    pub fn code(self) -> &'static str {
        match self {
            SfuJoinError::NotJoined => "not_joined",
            SfuJoinError::AlreadyJoined => "already_joined",
            SfuJoinError::WrongMode => "wrong_mode",
            SfuJoinError::Stale { .. } => "stale",
        }
    }
}

/// How a channel differs from the mode and epoch a request names.
enum Mismatch {
    /// The channel has no members (any more).
    Gone,
    /// It is not (switching to) that mode.
    Mode,
    /// Its epoch is another.
    Stale { got: u64, current: u64 },
}

/// The hybrid counters of a node's rooms, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HybridCounters {
    /// Signals relayed, by kind.
    pub signals: BTreeMap<&'static str, u64>,
    /// Signals refused, by reason.
    pub signals_dropped: BTreeMap<&'static str, u64>,
    /// The policy's counters.
    pub stats: ModeStats,
    /// Channels and members by mode now.
    pub census: ModeCensus,
    /// SFU sessions of members of channels steady in P2P (must be 0).
    pub p2p_sessions: usize,
    /// `sfu_join`s the engine accepted.
    pub sfu_joins: u64,
}

/// A member's signal budget.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-member hybrid state of the rooms.
#[derive(Debug, Default)]
pub(super) struct HybridState {
    buckets: HashMap<PeerId, Bucket>,
    counters: HybridCounters,
    /// Completed switches since the last take: to which mode, how long.
    switches: Vec<(Mode, Duration)>,
}

impl HybridState {
    /// `peer` left.
    pub(super) fn forget(&mut self, peer: PeerId) {
        self.buckets.remove(&peer);
    }

    /// Takes one signal from `peer`'s budget at `now`.
    fn take(&mut self, peer: PeerId, now: Instant) -> bool {
        let b = self.buckets.entry(peer).or_insert(Bucket {
            tokens: SIGNALS_BURST,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * SIGNALS_PER_SECOND;
        b.tokens = (b.tokens + refill).min(SIGNALS_BURST);
        b.at = b.at.max(now);
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

impl Rooms {
    /// New hybrid settings (validated) from `now` on: every channel is
    /// re-evaluated ([`ModePolicy::handle_settings`](super::mode::ModePolicy::handle_settings)).
    pub fn set_hybrid(&mut self, settings: HybridSettings, now: Instant) {
        self.policy.handle_settings(settings, now);
        self.apply_decisions();
    }

    /// The mode a member with `capability` would start in by joining
    /// `channel` now. Changes no membership.
    pub fn preview_mode(&mut self, channel: &str, capability: Capability, now: Instant) -> Mode {
        let mode = self.policy.preview_join(channel, capability, now);
        self.apply_decisions();
        mode
    }

    /// Completes the join of `peer` (after [`Rooms::handle_join`]) in a
    /// P2P channel: no engine session, announced at once.
    pub fn answer_p2p(&mut self, peer: PeerId, now: Instant) -> Option<Joined> {
        self.members.get_mut(&peer)?.in_engine = false;
        self.complete_join(peer, 0, String::new(), now)
    }

    /// Whether `peer` may join the SFU now (`sfu_join` for `epoch`), with
    /// the channel, identity and role its engine join takes. Changes
    /// nothing: [`Rooms::sfu_joining`] once the engine accepted.
    pub fn sfu_join(
        &self,
        peer: PeerId,
        epoch: u64,
    ) -> Result<(String, String, media_core::Role), SfuJoinError> {
        let m = self.members.get(&peer).ok_or(SfuJoinError::NotJoined)?;
        if m.in_engine {
            return Err(SfuJoinError::AlreadyJoined);
        }
        self.channel_at(&m.channel, Mode::Sfu, epoch)
            .map_err(|e| match e {
                Mismatch::Gone => SfuJoinError::NotJoined,
                Mismatch::Mode => SfuJoinError::WrongMode,
                Mismatch::Stale { got, current } => SfuJoinError::Stale { got, current },
            })?;
        Ok((m.channel.clone(), m.identity.clone(), m.role))
    }

    /// The engine accepted `peer`'s SFU session: its answer comes as the
    /// engine's `Answer` ([`Rooms::session_answered`]).
    pub fn sfu_joining(&mut self, peer: PeerId) {
        if let Some(m) = self.members.get_mut(&peer) {
            m.in_engine = true;
            self.hybrid.counters.sfu_joins += 1;
        }
    }

    /// The engine answered a member's SFU session: it is told
    /// (`sfu_joined`), the others see its voice (`member_updated`).
    pub(super) fn session_answered(
        &mut self,
        peer: PeerId,
        source: SourceId,
        slots: usize,
        answer: String,
    ) {
        let Some(m) = self.members.get_mut(&peer) else {
            return;
        };
        m.source = Some(source);
        self.sources.insert(source, peer);
        let epoch = self.policy.channel(&m.channel).map_or(0, |c| c.epoch());
        self.messages.push((
            peer,
            ServerMsg::SfuJoined {
                answer,
                source: source.0,
                slots,
                epoch,
            },
        ));
        self.member_changed(peer);
    }

    /// The engine's `PeerLeft` for `peer`: true when it ends only the SFU
    /// session the room layer is closing (after a switch to P2P); the
    /// member stays, without a voice.
    pub(super) fn session_ended(&mut self, peer: PeerId) -> bool {
        if !self.closing.remove(&peer) {
            return false;
        }
        let Some(m) = self.members.get_mut(&peer) else {
            return false;
        };
        m.in_engine = false;
        if let Some(source) = m.source.take() {
            self.sources.remove(&source);
        }
        self.member_changed(peer);
        true
    }

    /// Tells the channel (the member alone when unlisted) how `peer` is now.
    fn member_changed(&mut self, peer: PeerId) {
        let Some(m) = self.members.get(&peer) else {
            return;
        };
        let msg = ServerMsg::MemberUpdated {
            member: m.info(peer),
        };
        match self.rooms.get(&m.channel) {
            Some(room) if m.listed => tell_room(&mut self.messages, room, None, msg),
            _ => self.messages.push((peer, msg)),
        }
    }

    /// Relays `from`'s signal to `to`, checked (see [`SignalError`]).
    pub fn handle_signal(
        &mut self,
        from: PeerId,
        to: PeerId,
        epoch: u64,
        data: SignalData,
        now: Instant,
    ) -> Result<(), SignalError> {
        let res = self.check_signal(from, to, epoch, &data, now);
        let c = &mut self.hybrid.counters;
        match res {
            Ok(()) => {
                *c.signals.entry(data.kind()).or_default() += 1;
                self.messages.push((
                    to,
                    ServerMsg::Signal {
                        from: from.0,
                        epoch,
                        data,
                    },
                ));
            }
            Err(e) => *c.signals_dropped.entry(e.reason()).or_default() += 1,
        }
        res
    }

    fn check_signal(
        &mut self,
        from: PeerId,
        to: PeerId,
        epoch: u64,
        data: &SignalData,
        now: Instant,
    ) -> Result<(), SignalError> {
        let sender = self.members.get(&from).ok_or(SignalError::NotMember)?;
        match self.members.get(&to) {
            Some(m) if to != from && m.channel == sender.channel => {}
            _ => return Err(SignalError::NotMember),
        }
        self.channel_at(&sender.channel, Mode::P2p, epoch)
            .map_err(|e| match e {
                Mismatch::Gone => SignalError::NotMember,
                Mismatch::Mode => SignalError::WrongMode,
                Mismatch::Stale { got, current } => SignalError::Stale { got, current },
            })?;
        let glare = match data {
            SignalData::Offer { .. } => from > to,
            SignalData::Answer { .. } => from < to,
            SignalData::Candidate { .. } => false,
        };
        if glare {
            return Err(SignalError::Glare);
        }
        if !self.hybrid.take(from, now) {
            return Err(SignalError::Rate);
        }
        Ok(())
    }

    /// Whether `channel` is (switching to) `mode` at `epoch`.
    fn channel_at(&self, channel: &str, mode: Mode, epoch: u64) -> Result<(), Mismatch> {
        let ch = self.policy.channel(channel).ok_or(Mismatch::Gone)?;
        if ch.mode() != mode {
            return Err(Mismatch::Mode);
        }
        if ch.epoch() != epoch {
            return Err(Mismatch::Stale {
                got: epoch,
                current: ch.epoch(),
            });
        }
        Ok(())
    }

    /// `peer` swapped its playback to `mode` for `epoch`.
    pub fn handle_switched(
        &mut self,
        peer: PeerId,
        mode: Mode,
        epoch: u64,
        now: Instant,
    ) -> Result<(), ReportError> {
        let res = self.policy.handle_switched(peer, mode, epoch, now);
        self.apply_decisions();
        res
    }

    /// `peer`'s mesh link with `other` failed.
    pub fn handle_p2p_failed(
        &mut self,
        peer: PeerId,
        other: PeerId,
        failure: MeshFailure,
        epoch: u64,
        now: Instant,
    ) -> Result<(), ReportError> {
        let res = self
            .policy
            .handle_p2p_failed(peer, other, failure, epoch, now);
        self.apply_decisions();
        res
    }

    /// Time passed for the mode policy; returns when it is due next.
    pub fn poll_mode(&mut self, now: Instant) -> Option<Instant> {
        self.policy.handle_timeout(now);
        self.apply_decisions();
        self.policy.poll_timeout()
    }

    /// The switches completed since the last call: to which mode, and from
    /// the mode change to complete (`sfu_hybrid_switch_seconds`).
    pub fn take_switches(&mut self) -> std::vec::Drain<'_, (Mode, Duration)> {
        self.hybrid.switches.drain(..)
    }

    /// The engine commands the rules asked for since the last call.
    pub fn take_commands(&mut self) -> std::vec::Drain<'_, Command> {
        self.commands.drain(..)
    }

    /// Hybrid counters and census now.
    pub fn hybrid_counters(&self) -> HybridCounters {
        let mut c = self.hybrid.counters.clone();
        c.stats = self.policy.stats().clone();
        c.census = self.policy.census();
        c.p2p_sessions = self
            .members
            .iter()
            .filter(|(p, m)| {
                m.in_engine
                    && !self.closing.contains(p)
                    && self.policy.channel(&m.channel).map(|c| c.state())
                        == Some(ModeState::Steady(Mode::P2p))
            })
            .count();
        c
    }

    /// Ends `peer`'s membership now (it leaves, is kicked or dropped);
    /// returns whether it has an SFU session, which the caller removes from
    /// the engine (the engine's `PeerLeft` then finds nobody).
    pub fn remove(
        &mut self,
        peer: PeerId,
        reason: media_core::LeaveReason,
        now: Instant,
    ) -> Option<bool> {
        let m = self.members.get(&peer)?;
        let in_engine = m.in_engine && !self.closing.contains(&peer);
        self.left(peer, reason, now);
        Some(in_engine)
    }

    /// Carries out the mode policy's decisions: members are told, SFU
    /// sessions of channels now P2P are ended.
    pub(super) fn apply_decisions(&mut self) {
        while let Some(d) = self.policy.poll_decision() {
            match d {
                Decision::ModeChange {
                    channel,
                    to,
                    reason,
                    epoch,
                } => {
                    tracing::info!(%channel, mode = to.name(), reason = reason.name(), epoch, "channel switches");
                    let msg = ServerMsg::Mode {
                        mode: to.name(),
                        reason: reason.name(),
                        epoch,
                    };
                    self.tell_capable(&channel, &msg);
                }
                Decision::SwitchComplete {
                    channel,
                    mode,
                    epoch,
                    duration,
                    stragglers,
                } => {
                    tracing::info!(%channel, mode = mode.name(), epoch, ?duration, stragglers = stragglers.len(), "switch complete");
                    self.hybrid.switches.push((mode, duration));
                    let msg = ServerMsg::Switched {
                        mode: mode.name(),
                        epoch,
                        stragglers: stragglers.iter().map(|p| p.0).collect(),
                    };
                    self.tell_capable(&channel, &msg);
                    if mode == Mode::P2p {
                        self.end_sessions(&channel);
                    }
                }
            }
        }
    }

    /// Queues `msg` for the members of `channel` that take part in the
    /// hybrid protocol.
    fn tell_capable(&mut self, channel: &str, msg: &ServerMsg) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        for peer in &room.members {
            if self
                .members
                .get(peer)
                .is_some_and(|m| m.capability == Capability::P2p)
            {
                self.messages.push((*peer, msg.clone()));
            }
        }
    }

    /// Ends the SFU session of every member of `channel` (it is P2P now).
    fn end_sessions(&mut self, channel: &str) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        for peer in &room.members {
            let in_engine = self.members.get(peer).is_some_and(|m| m.in_engine);
            if in_engine && self.closing.insert(*peer) {
                self.commands.push(Command::Leave { peer: *peer });
            }
        }
    }
}

/// How long a client waits for a mesh link to connect before it reports
/// it (`joined.mesh_connect_timeout_ms`).
pub const MESH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl std::ops::AddAssign<&HybridCounters> for HybridCounters {
    /// Adds another worker's counters.
    fn add_assign(&mut self, rhs: &HybridCounters) {
        fn add<K: Ord + Clone>(a: &mut BTreeMap<K, u64>, b: &BTreeMap<K, u64>) {
            for (k, n) in b {
                *a.entry(k.clone()).or_default() += n;
            }
        }
        add(&mut self.signals, &rhs.signals);
        add(&mut self.signals_dropped, &rhs.signals_dropped);
        add(&mut self.stats.switches, &rhs.stats.switches);
        add(&mut self.stats.fallbacks, &rhs.stats.fallbacks);
        add(&mut self.stats.completed, &rhs.stats.completed);
        self.stats.reports_ignored += rhs.stats.reports_ignored;
        let (a, b) = (&mut self.census, &rhs.census);
        a.p2p_channels += b.p2p_channels;
        a.sfu_channels += b.sfu_channels;
        a.switching_up += b.switching_up;
        a.switching_down += b.switching_down;
        a.p2p_members += b.p2p_members;
        a.sfu_members += b.sfu_members;
        a.switching_members += b.switching_members;
        self.p2p_sessions += rhs.p2p_sessions;
        self.sfu_joins += rhs.sfu_joins;
    }
}
