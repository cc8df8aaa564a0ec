//! A channel's media mode, hybrid P2P ⇄ SFU (docs/HYBRID.md): small
//! groups whose members can all do it talk peer-to-peer (a mesh the server
//! only signals for), larger ones or ones with a member that cannot go
//! through the SFU; this is the policy that decides which, and when a
//! switch between the two is complete.
//!
//! Sans-IO like the rest of the room layer: the inputs are method calls on
//! [`ModePolicy`] (a member joins with its [`Capability`], leaves, reports
//! that it switched or that a mesh link failed; the settings change; time
//! passes), the outputs are plain data: the mode a joiner gets
//! ([`Assignment`]) and [`Decision`]s ([`ModePolicy::poll_decision`]) that
//! the room layer turns into messages and engine commands. Nothing here
//! sends, sleeps or reads a clock.
//!
//! The rules, in short:
//! - A channel is P2P while P2P is allowed for it ([`HybridSettings`]:
//!   enabled, in the rollout, not disabled for the channel), every member
//!   can take part ([`Capability::P2p`]), no mesh link between two present
//!   members failed, and it has at most `p2p_max` members.
//! - It moves to the SFU as soon as one of those stops holding, and back to
//!   P2P only after all of them held with at most `p2p_return_at` members
//!   for `p2p_return_after` without interruption (hysteresis: a channel at
//!   the boundary does not flap).
//! - Every change of mode starts a switch with a new epoch; the switch is
//!   complete when every member that was there reported `switched` for that
//!   epoch, or after `switch_timeout`: a switch to the SFU then completes
//!   anyway, a switch to P2P falls back to the SFU.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use media_core::PeerId;

#[cfg(test)]
mod tests;

/// Most members `p2p_max` may allow: every member of a mesh sends its voice
/// once per other member, so a 16-member mesh sends 15 copies up from every
/// member's uplink; beyond that the SFU is cheaper for everyone.
pub const MAX_P2P_MEMBERS: usize = 16;

/// The rollout is decided per channel in buckets of 0.01 %: a channel is in
/// a rollout of `p` percent when its bucket is below `p × 100`.
pub const ROLLOUT_BUCKETS: u16 = 10_000;

/// Longest `p2p_return_after` accepted (a longer one is a typo, and a
/// channel would effectively never return).
pub const MAX_RETURN_AFTER: Duration = Duration::from_secs(3600);

/// `switch_timeout` range: a switch needs at least ICE and DTLS of the new
/// path; one that takes more than a minute has failed.
pub const SWITCH_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60));

/// How a channel's members exchange audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// A mesh between the members; the server relays signaling only.
    P2p,
    /// Through the SFU.
    Sfu,
}

impl Mode {
    /// `"p2p"` / `"sfu"`, as the protocol and the metrics write it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::P2p => "p2p",
            Mode::Sfu => "sfu",
        }
    }

    /// `"up"` (to the SFU) / `"down"` (to P2P): the direction of a switch to
    /// this mode, as the metrics label it.
    pub fn direction(self) -> &'static str {
        match self {
            Mode::P2p => "down",
            Mode::Sfu => "up",
        }
    }
}

/// Why a member can only be carried by the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SfuOnly {
    /// A WebSocket client that did not say it can do P2P in its `join`.
    Client,
    /// A WHIP publisher or WHEP listener: one HTTP offer/answer, no signaling
    /// channel to build a mesh over.
    Http,
    /// Its token's `p2p` claim is false.
    Token,
    /// A channel spread over the node's workers: a member joined on a
    /// worker that follows the channel's first one, or the members of
    /// another worker (one stand-in each in the policy of the others), whose
    /// mesh could not reach this worker's members.
    Spread,
}

/// Whether a member can take part in a mesh; fixed for its membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// A WebSocket client that said `p2p: true`, with a token that allows it.
    P2p,
    /// Only the SFU can carry it.
    SfuOnly(SfuOnly),
}

/// Why a member reported a mesh link as failed (`p2p_failed`'s `reason`).
/// A closed set, because it labels a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MeshFailure {
    /// The link was not connected (ICE and DTLS, first audio) within the
    /// client's mesh connect timeout.
    ConnectTimeout,
    /// ICE failed: no candidate pair works (a restrictive NAT without TURN).
    IceFailed,
    /// An established link stayed disconnected.
    Disconnected,
    /// Anything else a client reports.
    Other,
}

impl MeshFailure {
    /// The protocol's reason string; an unknown one is [`MeshFailure::Other`]
    /// (clients may be newer than the server).
    pub fn parse(reason: &str) -> MeshFailure {
        match reason {
            "timeout" => MeshFailure::ConnectTimeout,
            "ice_failed" => MeshFailure::IceFailed,
            "disconnected" => MeshFailure::Disconnected,
            _ => MeshFailure::Other,
        }
    }

    /// As the protocol and the metrics write it.
    pub fn name(self) -> &'static str {
        match self {
            MeshFailure::ConnectTimeout => "timeout",
            MeshFailure::IceFailed => "ice_failed",
            MeshFailure::Disconnected => "disconnected",
            MeshFailure::Other => "other",
        }
    }
}

/// Why a channel switches. The first seven move it to the SFU, `Small`
/// back to P2P.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// More than `p2p_max` members.
    Size,
    /// A member only the SFU can carry joined.
    SfuOnlyMember(SfuOnly),
    /// A member reported a failed mesh link (a fallback).
    P2pFailed(MeshFailure),
    /// Not every member had switched to P2P within `switch_timeout` (a
    /// fallback: some mesh link did not come up).
    SwitchTimeout,
    /// P2P turned off for every channel (`hybrid.enabled = false`).
    Disabled,
    /// The channel is outside `hybrid.rollout_percent`.
    NotInRollout,
    /// P2P turned off for this channel.
    ChannelDisabled,
    /// At most `p2p_return_at` members for `p2p_return_after`.
    Small,
}

impl Reason {
    /// The protocol's `reason` and the metrics' label.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::SfuOnlyMember(SfuOnly::Client) => "client",
            Reason::SfuOnlyMember(SfuOnly::Http) => "whip_whep",
            Reason::SfuOnlyMember(SfuOnly::Token) => "token",
            Reason::SfuOnlyMember(SfuOnly::Spread) => "spread",
            Reason::P2pFailed(_) => "p2p_failed",
            Reason::SwitchTimeout => "switch_timeout",
            Reason::Disabled => "disabled",
            Reason::NotInRollout => "rollout",
            Reason::ChannelDisabled => "channel_disabled",
            Reason::Small => "small",
        }
    }

    /// The fallback this reason is, for `sfu_hybrid_fallbacks_total`: a
    /// switch to the SFU because P2P did not work, not because a rule
    /// asked for it.
    pub fn fallback(self) -> Option<&'static str> {
        match self {
            Reason::P2pFailed(f) => Some(f.name()),
            Reason::SwitchTimeout => Some("switch_timeout"),
            _ => None,
        }
    }
}

/// FNV-1a, 64 bits (the published offset basis and prime): the rollout's
/// hash of a channel name. Fixed here rather than taken from std, whose
/// hashers are free to change between releases and are seeded per process.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A channel's rollout bucket, `0..ROLLOUT_BUCKETS`: FNV-1a of its UTF-8
/// name, mixed by SplitMix64's finalizer (FNV's low digits alone are
/// uneven for names that differ in their last character, `room1`,
/// `room2`…), modulo [`ROLLOUT_BUCKETS`]. Stable across processes, nodes
/// and versions: a channel in a 5 % rollout stays in it on every node, and
/// raising the percentage only adds channels.
pub fn rollout_bucket(channel: &str) -> u16 {
    let mut z = fnv1a64(channel.as_bytes());
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(ROLLOUT_BUCKETS)) as u16
}

/// The share of channels that may use P2P, in steps of 0.01 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rollout {
    /// Channels whose bucket is below this are in.
    below: u16,
}

impl Rollout {
    /// Every channel.
    pub const ALL: Rollout = Rollout {
        below: ROLLOUT_BUCKETS,
    };
    /// No channel.
    pub const NONE: Rollout = Rollout { below: 0 };

    /// `percent` of the channels (0 to 100, rounded to 0.01 %); `None`
    /// outside that range or not a number.
    pub fn from_percent(percent: f64) -> Option<Rollout> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let below = (percent * f64::from(ROLLOUT_BUCKETS) / 100.0).round() as u16;
        Some(Rollout { below })
    }

    /// The share in percent.
    pub fn percent(self) -> f64 {
        f64::from(self.below) * 100.0 / f64::from(ROLLOUT_BUCKETS)
    }

    /// Whether `channel` is in.
    pub fn includes(self, channel: &str) -> bool {
        rollout_bucket(channel) < self.below
    }
}

/// The hybrid mode's settings, node-wide and changeable at runtime
/// ([`ModePolicy::handle_settings`]). The server fills them from its
/// configuration (`[hybrid]`), the admin endpoint and SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridSettings {
    /// P2P at all. Off by default: turning it on is the operator's choice,
    /// and turning it off moves every P2P channel onto the SFU.
    pub enabled: bool,
    /// Which channels may use P2P.
    pub rollout: Rollout,
    /// Channels that never use P2P (however the rollout falls).
    pub disabled_channels: BTreeSet<String>,
    /// Most members of a P2P channel (1 to [`MAX_P2P_MEMBERS`]); default 7.
    pub p2p_max: usize,
    /// A channel on the SFU returns to P2P at this many members or fewer
    /// (at most `p2p_max`)...; default 5.
    pub p2p_return_at: usize,
    /// ...after this long without interruption; default 10 s.
    pub p2p_return_after: Duration,
    /// A switch not every member completed in this time completes anyway
    /// (to the SFU) or falls back (to P2P); default 10 s.
    pub switch_timeout: Duration,
}

impl Default for HybridSettings {
    fn default() -> Self {
        HybridSettings {
            enabled: false,
            rollout: Rollout::ALL,
            disabled_channels: BTreeSet::new(),
            p2p_max: 7,
            p2p_return_at: 5,
            p2p_return_after: Duration::from_secs(10),
            switch_timeout: Duration::from_secs(10),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// `p2p_max` out of range.
    #[error("p2p_max: {0} is out of range 1..={MAX_P2P_MEMBERS}")]
    P2pMax(usize),
    /// `p2p_return_at` above `p2p_max`.
    #[error(
        "p2p_return_at: {return_at} is above p2p_max ({max}); a channel would flap at the boundary"
    )]
    ReturnAt {
        /// `p2p_return_at`.
        return_at: usize,
        /// `p2p_max`.
        max: usize,
    },
    /// `p2p_return_after` too long.
    #[error("p2p_return_after: {0:?} is longer than an hour")]
    ReturnAfter(Duration),
    /// `switch_timeout` out of range.
    #[error("switch_timeout: {0:?} is out of range 1 s..=60 s")]
    SwitchTimeout(Duration),
}

impl HybridSettings {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.p2p_max == 0 || self.p2p_max > MAX_P2P_MEMBERS {
            return Err(SettingsError::P2pMax(self.p2p_max));
        }
        if self.p2p_return_at > self.p2p_max {
            return Err(SettingsError::ReturnAt {
                return_at: self.p2p_return_at,
                max: self.p2p_max,
            });
        }
        if self.p2p_return_after > MAX_RETURN_AFTER {
            return Err(SettingsError::ReturnAfter(self.p2p_return_after));
        }
        let (lo, hi) = SWITCH_TIMEOUT_RANGE;
        if self.switch_timeout < lo || self.switch_timeout > hi {
            return Err(SettingsError::SwitchTimeout(self.switch_timeout));
        }
        Ok(())
    }

    /// Why P2P is not allowed for `channel` whoever its members are, or
    /// `None` when it is.
    pub fn refusal(&self, channel: &str) -> Option<Reason> {
        if !self.enabled {
            Some(Reason::Disabled)
        } else if self.disabled_channels.contains(channel) {
            Some(Reason::ChannelDisabled)
        } else if !self.rollout.includes(channel) {
            Some(Reason::NotInRollout)
        } else {
            None
        }
    }
}

/// The mode a member uses from its join on, and the epoch it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// P2P (build mesh links) or SFU (the join's offer goes to the engine).
    /// During a switch, the mode the channel switches to.
    pub mode: Mode,
    /// The channel's epoch: the count of its mode changes.
    pub epoch: u64,
}

/// What the policy decided; the room layer carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A switch begins: tell every member `mode {mode: to, reason, epoch}`.
    /// Each builds the `to` path while the old one plays, swaps playback
    /// when the new one delivers, and reports `switched`.
    ModeChange {
        /// The channel.
        channel: String,
        /// The new mode.
        to: Mode,
        /// Why.
        reason: Reason,
        /// The new epoch.
        epoch: u64,
    },
    /// The switch of `epoch` is over: tell every member `switched {mode,
    /// epoch}`, after which the old path is released (mesh links closed;
    /// after a switch to P2P, the members' engine peers removed).
    SwitchComplete {
        /// The channel.
        channel: String,
        /// The mode now.
        mode: Mode,
        /// The switch's epoch.
        epoch: u64,
        /// From the mode change to now (`sfu_hybrid_switch_seconds`).
        duration: Duration,
        /// Members that had not reported `switched` when `switch_timeout`
        /// passed (empty: every member switched).
        stragglers: Vec<PeerId>,
    },
}

/// Why a member's report was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The reporter is not a member of a channel here.
    #[error("not a member of a channel")]
    NotAMember,
    /// The report names an epoch that is not the channel's current one
    /// (it crossed a newer mode change).
    #[error("stale epoch {got}: the channel is at epoch {current}")]
    StaleEpoch {
        /// The report's epoch.
        got: u64,
        /// The channel's.
        current: u64,
    },
    /// `switched` to a mode the channel is not switching to.
    #[error("the channel's mode is not the one reported")]
    WrongMode,
    /// `p2p_failed` about someone who is not another member of the channel.
    #[error("no such other member in the channel")]
    UnknownPeer,
}

/// What stops a channel from being P2P while its members are present.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    /// A mesh link between these two failed.
    Pair(PeerId, PeerId, MeshFailure),
    /// This member did not complete a switch to P2P in time.
    Member(PeerId),
}

impl Block {
    /// Whether it still applies with `members` present.
    fn applies(&self, members: &BTreeMap<PeerId, Capability>) -> bool {
        match self {
            Block::Pair(a, b, _) => members.contains_key(a) && members.contains_key(b),
            Block::Member(m) => members.contains_key(m),
        }
    }

    fn reason(&self) -> Reason {
        match self {
            Block::Pair(_, _, f) => Reason::P2pFailed(*f),
            Block::Member(_) => Reason::SwitchTimeout,
        }
    }
}

/// A switch in progress (towards [`ChannelMode::mode`]).
#[derive(Debug, Clone)]
struct Switch {
    since: Instant,
    /// Members that were there when it began and have not switched yet.
    pending: BTreeSet<PeerId>,
}

/// What a channel is doing now, for tests, logs and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModeState {
    /// Steady in a mode.
    Steady(Mode),
    /// Switching to a mode.
    Switching(Mode),
}

/// The thresholds a channel applies (from [`HybridSettings`]).
#[derive(Debug, Clone, Copy)]
struct Limits {
    p2p_max: usize,
    return_at: usize,
    return_after: Duration,
    switch_timeout: Duration,
}

impl Limits {
    fn of(s: &HybridSettings) -> Limits {
        Limits {
            p2p_max: s.p2p_max,
            return_at: s.p2p_return_at,
            return_after: s.p2p_return_after,
            switch_timeout: s.switch_timeout,
        }
    }
}

/// One channel's mode and the members it decides by.
#[derive(Debug, Clone)]
pub struct ChannelMode {
    name: String,
    /// The mode joiners get: the steady mode, or during a switch the mode
    /// the channel switches to.
    mode: Mode,
    switch: Option<Switch>,
    epoch: u64,
    members: BTreeMap<PeerId, Capability>,
    blocks: Vec<Block>,
    /// Since when the channel could have returned to P2P, without a break.
    return_since: Option<Instant>,
    /// Why the settings refuse P2P for this channel.
    refusal: Option<Reason>,
    limits: Limits,
}

impl ChannelMode {
    /// A channel whose first member joins at `now`: P2P if the settings and
    /// the member allow it, else SFU. Epoch 1, no switch.
    fn new(
        name: &str,
        first: PeerId,
        capability: Capability,
        settings: &HybridSettings,
        now: Instant,
    ) -> ChannelMode {
        let mut ch = ChannelMode {
            name: name.to_string(),
            mode: Mode::Sfu,
            switch: None,
            epoch: 1,
            members: BTreeMap::from([(first, capability)]),
            blocks: Vec::new(),
            return_since: None,
            refusal: settings.refusal(name),
            limits: Limits::of(settings),
        };
        if ch.sfu_reason().is_none() {
            ch.mode = Mode::P2p;
        }
        ch.track_return(now);
        ch
    }

    /// The mode joiners get now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Steady or switching, and to what.
    pub fn state(&self) -> ModeState {
        match self.switch {
            Some(_) => ModeState::Switching(self.mode),
            None => ModeState::Steady(self.mode),
        }
    }

    /// The count of mode changes (1 at creation).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members present.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member is present.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members that have yet to report `switched` in the switch under way.
    pub fn pending(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.switch.iter().flat_map(|s| s.pending.iter().copied())
    }

    /// When the channel must be looked at again without another input:
    /// the switch's timeout, or the moment it may return to P2P.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.switch {
            Some(s) => Some(s.since + self.limits.switch_timeout),
            None if self.mode == Mode::Sfu => {
                self.return_since.map(|t| t + self.limits.return_after)
            }
            None => None,
        }
    }

    /// Why the channel cannot be P2P now, if it cannot.
    fn sfu_reason(&self) -> Option<Reason> {
        if let Some(r) = self.refusal {
            return Some(r);
        }
        if let Some(why) = self.members.values().find_map(|c| match c {
            Capability::SfuOnly(why) => Some(*why),
            Capability::P2p => None,
        }) {
            return Some(Reason::SfuOnlyMember(why));
        }
        if let Some(b) = self.blocks.iter().find(|b| b.applies(&self.members)) {
            return Some(b.reason());
        }
        (self.members.len() > self.limits.p2p_max).then_some(Reason::Size)
    }

    /// Starts or stops the return timer: it runs while P2P would be allowed
    /// with at most `p2p_return_at` members.
    fn track_return(&mut self, now: Instant) {
        // The size first: a hall's every join looks, and `sfu_reason` goes
        // through the members.
        let could = !self.members.is_empty()
            && self.members.len() <= self.limits.return_at
            && self.sfu_reason().is_none();
        if !could {
            self.return_since = None;
        } else if self.return_since.is_none() {
            self.return_since = Some(now);
        }
    }

    /// Applies the rules at `now`: completes or times out the switch under
    /// way, moves to the SFU when P2P stopped being possible, returns to
    /// P2P when the hysteresis allows it.
    fn evaluate(&mut self, now: Instant, out: &mut Outputs) {
        let timeout = self.limits.switch_timeout;
        if let Some((all_switched, timed_out)) =
            (self.switch.as_ref()).map(|s| (s.pending.is_empty(), now >= s.since + timeout))
        {
            if all_switched || (timed_out && self.mode == Mode::Sfu) {
                self.complete(now, out);
            } else if timed_out {
                // Some mesh link did not come up: those members keep the
                // channel on the SFU while they are in it.
                let stragglers: Vec<Block> = self.pending().map(Block::Member).collect();
                self.blocks.extend(stragglers);
                self.begin(Mode::Sfu, Reason::SwitchTimeout, now, out);
            }
        }
        if self.mode == Mode::P2p {
            if let Some(reason) = self.sfu_reason() {
                self.begin(Mode::Sfu, reason, now, out);
            }
        }
        self.track_return(now);
        if let (Mode::Sfu, None, Some(since)) = (self.mode, &self.switch, self.return_since) {
            if now >= since + self.limits.return_after {
                self.begin(Mode::P2p, Reason::Small, now, out);
            }
        }
    }

    fn begin(&mut self, to: Mode, reason: Reason, now: Instant, out: &mut Outputs) {
        self.mode = to;
        self.epoch += 1;
        let pending = self
            .members
            .iter()
            .filter(|(_, c)| **c == Capability::P2p)
            .map(|(p, _)| *p)
            .collect();
        self.switch = Some(Switch {
            since: now,
            pending,
        });
        tracing::info!(channel = %self.name, to = to.name(), reason = reason.name(), epoch = self.epoch, "channel switches mode");
        out.push(Decision::ModeChange {
            channel: self.name.clone(),
            to,
            reason,
            epoch: self.epoch,
        });
    }

    fn complete(&mut self, now: Instant, out: &mut Outputs) {
        let Some(s) = self.switch.take() else { return };
        let stragglers: Vec<PeerId> = s.pending.into_iter().collect();
        let duration = now.saturating_duration_since(s.since);
        tracing::info!(channel = %self.name, mode = self.mode.name(), epoch = self.epoch, ?duration, stragglers = stragglers.len(), "channel switched mode");
        out.push(Decision::SwitchComplete {
            channel: self.name.clone(),
            mode: self.mode,
            epoch: self.epoch,
            duration,
            stragglers,
        });
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), ReportError> {
        if epoch == self.epoch {
            Ok(())
        } else {
            Err(ReportError::StaleEpoch {
                got: epoch,
                current: self.epoch,
            })
        }
    }
}

/// Counters of the policy's decisions, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeStats {
    /// Switches begun, by (mode switched to, reason name).
    pub switches: BTreeMap<(Mode, &'static str), u64>,
    /// Switches to the SFU because P2P did not work, by fallback name
    /// ([`Reason::fallback`]).
    pub fallbacks: BTreeMap<&'static str, u64>,
    /// Switches completed with every member (`false`) or at the timeout
    /// (`true`), by mode switched to.
    pub completed: BTreeMap<(Mode, bool), u64>,
    /// Reports (`switched`, `p2p_failed`) ignored: stale, wrong mode,
    /// unknown member.
    pub reports_ignored: u64,
}

impl ModeStats {
    fn count(&mut self, d: &Decision) {
        match d {
            Decision::ModeChange { to, reason, .. } => {
                *self.switches.entry((*to, reason.name())).or_default() += 1;
                if let Some(f) = reason.fallback() {
                    *self.fallbacks.entry(f).or_default() += 1;
                }
            }
            Decision::SwitchComplete {
                mode, stragglers, ..
            } => {
                *self
                    .completed
                    .entry((*mode, !stragglers.is_empty()))
                    .or_default() += 1;
            }
        }
    }
}

/// What handling one input produced: the decisions, counted as they are
/// made.
#[derive(Debug, Default)]
struct Outputs {
    decisions: VecDeque<Decision>,
    stats: ModeStats,
}

impl Outputs {
    fn push(&mut self, d: Decision) {
        self.stats.count(&d);
        self.decisions.push_back(d);
    }
}

/// Channels and members by mode, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeCensus {
    /// Channels steady in P2P.
    pub p2p_channels: usize,
    /// Channels steady on the SFU.
    pub sfu_channels: usize,
    /// Channels switching to the SFU.
    pub switching_up: usize,
    /// Channels switching to P2P.
    pub switching_down: usize,
    /// Members of channels steady in P2P.
    pub p2p_members: usize,
    /// Members of channels steady on the SFU.
    pub sfu_members: usize,
    /// Members of channels that switch.
    pub switching_members: usize,
}

/// The mode policy of every channel of a node. See the module
/// documentation.
///
/// Methods: getters; `handle_*` (inputs: joins, leaves, reports,
/// settings, timeouts); `poll_*` (the next decision, the next deadline).
#[derive(Debug, Default)]
pub struct ModePolicy {
    settings: HybridSettings,
    channels: HashMap<String, ChannelMode>,
    /// Each member's channel.
    member_channel: HashMap<PeerId, String>,
    /// Each channel's deadline, earliest first (a channel has at most one
    /// entry: the one in `indexed`).
    deadlines: BTreeSet<(Instant, String)>,
    indexed: HashMap<String, Instant>,
    out: Outputs,
}

impl ModePolicy {
    /// No channels; `settings` must be valid ([`HybridSettings::validate`]).
    pub fn new(settings: HybridSettings) -> ModePolicy {
        ModePolicy {
            settings,
            ..ModePolicy::default()
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &HybridSettings {
        &self.settings
    }

    /// A channel's mode, if it has members.
    pub fn channel(&self, channel: &str) -> Option<&ChannelMode> {
        self.channels.get(channel)
    }

    /// The decision counters.
    pub fn stats(&self) -> &ModeStats {
        &self.out.stats
    }

    /// Channels and members by mode now.
    pub fn census(&self) -> ModeCensus {
        let mut c = ModeCensus::default();
        for ch in self.channels.values() {
            let n = ch.len();
            match ch.state() {
                ModeState::Steady(Mode::P2p) => {
                    c.p2p_channels += 1;
                    c.p2p_members += n;
                }
                ModeState::Steady(Mode::Sfu) => {
                    c.sfu_channels += 1;
                    c.sfu_members += n;
                }
                ModeState::Switching(to) => {
                    match to {
                        Mode::P2p => c.switching_down += 1,
                        Mode::Sfu => c.switching_up += 1,
                    }
                    c.switching_members += n;
                }
            }
        }
        c
    }

    /// `member` joins `channel` at `now`; returns the mode it uses from
    /// the start. A member that makes the channel switch, or joins during a
    /// switch, gets the mode switched to and has nothing to switch itself.
    pub fn handle_join(
        &mut self,
        channel: &str,
        member: PeerId,
        capability: Capability,
        now: Instant,
    ) -> Assignment {
        if let Some(ch) = self
            .member_channel
            .get(&member)
            .and_then(|c| self.channels.get(c))
        {
            return Assignment {
                mode: ch.mode,
                epoch: ch.epoch,
            };
        }
        self.member_channel.insert(member, channel.to_string());
        let assignment = match self.channels.get_mut(channel) {
            None => {
                let ch = ChannelMode::new(channel, member, capability, &self.settings, now);
                let a = Assignment {
                    mode: ch.mode,
                    epoch: ch.epoch,
                };
                self.channels.insert(channel.to_string(), ch);
                a
            }
            Some(ch) => {
                // What was due before the join happens first, so that the
                // join is judged as `preview_join` judged it.
                ch.evaluate(now, &mut self.out);
                let before = ch.epoch;
                ch.members.insert(member, capability);
                ch.evaluate(now, &mut self.out);
                if ch.epoch != before {
                    // It caused the switch: it starts in the new mode.
                    if let Some(s) = &mut ch.switch {
                        s.pending.remove(&member);
                    }
                }
                Assignment {
                    mode: ch.mode,
                    epoch: ch.epoch,
                }
            }
        };
        self.settle(channel);
        assignment
    }

    /// The mode a member with `capability` would get by joining `channel`
    /// at `now`, without adding it: the room layer asks before the engine
    /// join, so that an offer the engine refuses cannot move a channel.
    /// What was due for the channel at `now` is applied first (that may
    /// decide), as [`handle_join`](Self::handle_join) does; then a join
    /// keeps a P2P channel P2P only if the joiner is capable and fits under
    /// `p2p_max`, and never turns an SFU channel P2P.
    pub fn preview_join(&mut self, channel: &str, capability: Capability, now: Instant) -> Mode {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.evaluate(now, &mut self.out);
            self.settle(channel);
        }
        let fits = |n: usize| capability == Capability::P2p && n < self.settings.p2p_max;
        match self.channels.get(channel) {
            None if self.settings.refusal(channel).is_none() && fits(0) => Mode::P2p,
            Some(ch) if ch.mode == Mode::P2p && fits(ch.len()) => Mode::P2p,
            _ => Mode::Sfu,
        }
    }

    /// `member` left at `now`. The last member out forgets the channel
    /// (its failed links included).
    pub fn handle_leave(&mut self, member: PeerId, now: Instant) {
        let Some(channel) = self.member_channel.remove(&member) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        ch.members.remove(&member);
        if ch.members.is_empty() {
            self.channels.remove(&channel);
            if let Some(at) = self.indexed.remove(&channel) {
                self.deadlines.remove(&(at, channel));
            }
            return;
        }
        if let Some(s) = &mut ch.switch {
            s.pending.remove(&member);
        }
        let members = &ch.members;
        ch.blocks.retain(|b| b.applies(members));
        ch.evaluate(now, &mut self.out);
        self.settle(&channel);
    }

    /// `member` reports that it plays `mode` for `epoch` now (its
    /// `switched`). A report for another epoch or mode is ignored.
    pub fn handle_switched(
        &mut self,
        member: PeerId,
        mode: Mode,
        epoch: u64,
        now: Instant,
    ) -> Result<(), ReportError> {
        self.report(member, epoch, now, |ch| {
            if mode != ch.mode {
                return Err(ReportError::WrongMode);
            }
            if let Some(s) = &mut ch.switch {
                s.pending.remove(&member);
            }
            Ok(())
        })
    }

    /// `member` reports that its mesh link with `peer` failed, in `epoch`.
    /// While the channel is (or is becoming) P2P this moves it to the SFU,
    /// where it stays while both are members. Ignored when the channel is
    /// (becoming) SFU anyway, or for a stale epoch.
    pub fn handle_p2p_failed(
        &mut self,
        member: PeerId,
        peer: PeerId,
        failure: MeshFailure,
        epoch: u64,
        now: Instant,
    ) -> Result<(), ReportError> {
        self.report(member, epoch, now, |ch| {
            if peer == member || !ch.members.contains_key(&peer) {
                return Err(ReportError::UnknownPeer);
            }
            if ch.mode != Mode::P2p {
                return Err(ReportError::WrongMode);
            }
            tracing::info!(channel = %ch.name, %member, %peer, reason = failure.name(), "mesh link failed");
            ch.blocks.push(Block::Pair(member, peer, failure));
            Ok(())
        })
    }

    /// A member's report about `epoch` of its channel: `apply` records it
    /// (or refuses it), then the channel's rules run. Refused or stale
    /// reports change nothing and are counted.
    fn report(
        &mut self,
        member: PeerId,
        epoch: u64,
        now: Instant,
        apply: impl FnOnce(&mut ChannelMode) -> Result<(), ReportError>,
    ) -> Result<(), ReportError> {
        let channel = self.member_channel.get(&member).cloned();
        let ch = channel.as_ref().and_then(|c| self.channels.get_mut(c));
        let res = match ch {
            None => Err(ReportError::NotAMember),
            Some(ch) => ch.check_epoch(epoch).and_then(|()| {
                apply(ch)?;
                ch.evaluate(now, &mut self.out);
                Ok(())
            }),
        };
        match (&res, channel) {
            (Ok(()), Some(channel)) => self.settle(&channel),
            _ => self.out.stats.reports_ignored += 1,
        }
        res
    }

    /// New settings (already validated) from `now` on: every channel is
    /// re-evaluated. Turning P2P off (globally, by the rollout or for a
    /// channel) or lowering `p2p_max` below a P2P channel's size moves it to
    /// the SFU with a make-before-break switch; turning it on lets SFU
    /// channels return under the usual hysteresis.
    pub fn handle_settings(&mut self, settings: HybridSettings, now: Instant) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            if let Some(ch) = self.channels.get_mut(&name) {
                ch.refusal = settings.refusal(&name);
                ch.limits = Limits::of(&settings);
                ch.evaluate(now, &mut self.out);
            }
            self.settle(&name);
        }
        self.settings = settings;
    }

    /// Time passed: applies the rules to the channels whose deadline is
    /// `now` or earlier.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, name)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, name.clone()));
            self.indexed.remove(&name);
            if let Some(ch) = self.channels.get_mut(&name) {
                ch.evaluate(now, &mut self.out);
            }
            self.settle(&name);
        }
    }

    /// The next decision, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.out.decisions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// After `channel` changed: moves its entry in the deadline index.
    fn settle(&mut self, channel: &str) {
        let next = self.channels.get(channel).and_then(ChannelMode::deadline);
        let old = self.indexed.get(channel).copied();
        if old == next {
            return;
        }
        if let Some(at) = old {
            self.deadlines.remove(&(at, channel.to_string()));
            self.indexed.remove(channel);
        }
        if let Some(at) = next {
            self.deadlines.insert((at, channel.to_string()));
            self.indexed.insert(channel.to_string(), at);
        }
    }
}
