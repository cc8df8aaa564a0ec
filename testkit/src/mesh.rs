//! A member of a peer-to-peer voice channel (the hybrid mode,
//! docs/HYBRID.md), for tests on real sockets: one WebRTC link per other
//! member, each a [`UdpPeer`] (str0m with full ICE, DTLS, SRTP, real Opus)
//! on its own 127.0.0.1 socket, sending this member's tone and decoding the
//! other's; and, at the same time if asked, an SFU session (any
//! [`UdpPeer`] the test joined to a server).
//!
//! Signaling is data: a member's offers, answers and trickled candidates
//! come out as [`Signal`]s ([`MeshMember::take_signals`]) and the other
//! side's go in ([`MeshMember::handle_signal`]). A test moves them itself
//! ([`exchange`]) or through a server's WebSocket relay. The member with
//! the lower id offers, so two members never offer to each other at once.
//!
//! What the member plays is a [`Playback`]: mesh, SFU, or during a switch
//! both decode while one is heard; [`MeshMember::switch_playback`] swaps in
//! one call, and [`MeshMember::longest_gap`] and
//! [`MeshMember::heard_twice`] judge the switch at the decoders.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::audio::TONES;
use crate::client::ClientSpec;
use crate::playback::{doubled_windows, longest_gap, Frame, Path, Playback, Route};
use crate::udp::UdpPeer;

/// A member's id, as the room layer numbers members (the protocol's
/// `peer`).
pub type MemberId = u64;

/// What one member sends another through the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalData {
    /// An SDP offer (from the lower id).
    Offer(String),
    /// The SDP answer to it.
    Answer(String),
    /// A trickled ICE candidate (an SDP `candidate` attribute value).
    Candidate(String),
}

impl SignalData {
    /// `"offer"`, `"answer"` or `"candidate"`, as the protocol names them.
    pub fn kind(&self) -> &'static str {
        match self {
            SignalData::Offer(_) => "offer",
            SignalData::Answer(_) => "answer",
            SignalData::Candidate(_) => "candidate",
        }
    }
}

/// A signaling message between two members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// Who sends it.
    pub from: MemberId,
    /// Who it is for.
    pub to: MemberId,
    /// What it carries.
    pub data: SignalData,
}

/// Why a signal could not be used.
#[derive(Debug)]
pub enum MeshError {
    /// A socket could not be bound, or an offer not answered.
    Io(std::io::Error),
    /// The signal is for another member.
    Misaddressed {
        /// The signal's addressee.
        to: MemberId,
        /// The member it was given to.
        me: MemberId,
    },
    /// An offer from the higher id: the rule is that the lower one offers.
    OfferFromHigherId {
        /// The offerer.
        from: MemberId,
        /// The member it offered to.
        to: MemberId,
    },
    /// An answer or candidate (the kind) for a link that does not exist or
    /// does not expect it.
    Unexpected(MemberId, &'static str),
    /// The answer or candidate was refused.
    Rejected(String),
}

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshError::Io(e) => write!(f, "socket or offer: {e}"),
            MeshError::Misaddressed { to, me } => {
                write!(f, "signal for member {to} given to member {me}")
            }
            MeshError::OfferFromHigherId { from, to } => {
                write!(f, "offer from {from} to {to}: the lower id offers")
            }
            MeshError::Unexpected(m, kind) => {
                write!(f, "no link with member {m} expects this {kind}")
            }
            MeshError::Rejected(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MeshError {}

impl From<std::io::Error> for MeshError {
    fn from(e: std::io::Error) -> Self {
        MeshError::Io(e)
    }
}

/// One peer-to-peer link.
#[derive(Debug)]
struct Link {
    peer: UdpPeer,
    /// When it was offered or answered.
    since: Instant,
    /// This member offered and waits for the answer.
    awaiting_answer: bool,
}

/// A member of a peer-to-peer channel on real sockets. See the module
/// documentation.
#[derive(Debug)]
pub struct MeshMember {
    /// Its id (the lower of two ids offers).
    pub id: MemberId,
    name: String,
    /// The tone it sends (index into [`TONES`]), if it speaks.
    pub tone: Option<usize>,
    talking: bool,
    links: BTreeMap<MemberId, Link>,
    /// Members whose offer this one waits for, since when.
    awaited: BTreeMap<MemberId, Instant>,
    /// Closed links and SFU sessions: stopped, kept for their logs.
    retired: Vec<(Route, UdpPeer)>,
    /// The SFU session now and its number.
    sfu: Option<(usize, UdpPeer)>,
    sfu_sessions: usize,
    playback: Playback,
    outbox: Vec<Signal>,
}

impl MeshMember {
    /// A member `id` that sends tone `tone` (index into [`TONES`]) or
    /// nothing, playing its mesh links. It starts silent: see
    /// [`set_talking`](Self::set_talking).
    pub fn new(id: MemberId, tone: Option<usize>) -> MeshMember {
        MeshMember {
            id,
            name: format!("member-{id}"),
            tone: tone.map(|t| t % TONES.len()),
            talking: false,
            links: BTreeMap::new(),
            awaited: BTreeMap::new(),
            retired: Vec::new(),
            sfu: None,
            sfu_sessions: 0,
            playback: Playback::new(Path::Mesh, Instant::now()),
            outbox: Vec::new(),
        }
    }

    /// The client a link runs: this member's tone on one send m-line, the
    /// other's voice on one receive m-line, trickled candidates.
    fn link_spec(&self) -> ClientSpec {
        ClientSpec {
            tone: self.tone.map(|t| TONES[t]),
            slots: 1,
            trickle: true,
            ..ClientSpec::default()
        }
    }

    /// Starts a link with `other`: this member offers if its id is the
    /// lower one, else it waits for `other`'s offer. Both sides call it
    /// (when either learns of the other); a link that exists is kept.
    pub fn connect(&mut self, other: MemberId) -> Result<(), MeshError> {
        if other == self.id || self.links.contains_key(&other) {
            return Ok(());
        }
        if other < self.id {
            self.awaited.entry(other).or_insert_with(Instant::now);
            return Ok(());
        }
        let name = format!("{}-to-{other}", self.name);
        let (peer, offer) = UdpPeer::new(&name, &self.link_spec())?;
        peer.set_talking(self.talking);
        self.send(other, SignalData::Offer(offer));
        self.add_link(other, peer, true);
        Ok(())
    }

    /// [`connect`](Self::connect)s with each of `others`.
    pub fn connect_all(
        &mut self,
        others: impl IntoIterator<Item = MemberId>,
    ) -> Result<(), MeshError> {
        others.into_iter().try_for_each(|o| self.connect(o))
    }

    /// A signal from another member: an offer is answered (a new link, its
    /// thread running), an answer completes this member's offer, a
    /// candidate goes to its link.
    pub fn handle_signal(&mut self, signal: Signal) -> Result<(), MeshError> {
        let Signal { from, to, data } = signal;
        if to != self.id {
            return Err(MeshError::Misaddressed { to, me: self.id });
        }
        match data {
            SignalData::Offer(offer) => {
                if from > self.id {
                    return Err(MeshError::OfferFromHigherId { from, to });
                }
                // A new offer replaces the link (the other side restarted it).
                self.disconnect(from);
                self.awaited.remove(&from);
                let name = format!("{}-to-{from}", self.name);
                let (peer, answer) = UdpPeer::answer(&name, &self.link_spec(), &offer)?;
                peer.set_talking(self.talking);
                self.send(from, SignalData::Answer(answer));
                self.add_link(from, peer, false);
            }
            SignalData::Answer(answer) => {
                let link = self
                    .links
                    .get_mut(&from)
                    .filter(|l| l.awaiting_answer)
                    .ok_or(MeshError::Unexpected(from, "answer"))?;
                link.peer.try_start(&answer).map_err(MeshError::Rejected)?;
                link.awaiting_answer = false;
            }
            SignalData::Candidate(c) => {
                let link = self
                    .links
                    .get(&from)
                    .ok_or(MeshError::Unexpected(from, "candidate"))?;
                link.peer
                    .add_remote_candidate(&c)
                    .map_err(MeshError::Rejected)?;
            }
        }
        Ok(())
    }

    /// The signals for other members made since the last call.
    pub fn take_signals(&mut self) -> Vec<Signal> {
        std::mem::take(&mut self.outbox)
    }

    fn send(&mut self, to: MemberId, data: SignalData) {
        self.outbox.push(Signal {
            from: self.id,
            to,
            data,
        });
    }

    /// Keeps `peer` as the link with `other`, after queueing its local
    /// candidates for `other` (they follow the offer or answer).
    fn add_link(&mut self, other: MemberId, peer: UdpPeer, awaiting_answer: bool) {
        let candidates = peer.lock().take_local_candidates();
        for c in candidates {
            self.send(other, SignalData::Candidate(c));
        }
        let since = Instant::now();
        self.links.insert(
            other,
            Link {
                peer,
                since,
                awaiting_answer,
            },
        );
    }

    /// Closes the link with `other` (the other member left, or the mesh is
    /// no longer needed). What it received stays measurable.
    pub fn disconnect(&mut self, other: MemberId) {
        self.awaited.remove(&other);
        if let Some(mut link) = self.links.remove(&other) {
            link.peer.stop();
            self.retired.push((Route::Mesh(other), link.peer));
        }
    }

    /// Closes every mesh link at once.
    pub fn close_mesh(&mut self) {
        self.awaited.clear();
        for link in self.links.values() {
            link.peer.signal_stop();
        }
        let others: Vec<MemberId> = self.links.keys().copied().collect();
        for other in others {
            self.disconnect(other);
        }
    }

    /// The members it has a link with (connected or not).
    pub fn links(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.links.keys().copied()
    }

    /// Whether the link with `other` is connected (ICE and DTLS).
    pub fn link_connected(&self, other: MemberId) -> bool {
        self.links
            .get(&other)
            .is_some_and(|l| l.peer.lock().is_connected())
    }

    /// The members whose link did not connect within `timeout` of being
    /// offered or answered, or whose offer did not come within it, at
    /// `now`: what a client reports as `p2p_failed` with reason `timeout`.
    pub fn failed_links(&self, timeout: Duration, now: Instant) -> BTreeSet<MemberId> {
        let late = |since: Instant| now.saturating_duration_since(since) >= timeout;
        let unconnected = self
            .links
            .iter()
            .filter(|(_, l)| late(l.since) && !l.peer.lock().is_connected())
            .map(|(m, _)| *m);
        let unoffered = self
            .awaited
            .iter()
            .filter(|(_, since)| late(**since))
            .map(|(m, _)| *m);
        unconnected.chain(unoffered).collect()
    }

    /// Drops every datagram of the link with `other` from now on (`true`):
    /// a pair of members that cannot reach each other.
    pub fn set_link_blackhole(&self, other: MemberId, on: bool) {
        if let Some(l) = self.links.get(&other) {
            l.peer.set_blackhole(on);
        }
    }

    /// Holds `session` (a client the test joined to the SFU) as this
    /// member's SFU path, beside its mesh links; it talks as the member
    /// does. A session it held before is closed.
    pub fn attach_sfu(&mut self, session: UdpPeer) {
        self.detach_sfu();
        session.set_talking(self.talking);
        self.sfu = Some((self.sfu_sessions, session));
        self.sfu_sessions += 1;
    }

    /// The SFU session, if it holds one.
    pub fn sfu(&self) -> Option<&UdpPeer> {
        self.sfu.as_ref().map(|(_, s)| s)
    }

    /// Closes the SFU session (what it received stays measurable).
    pub fn detach_sfu(&mut self) {
        if let Some((n, mut session)) = self.sfu.take() {
            session.stop();
            self.retired.push((Route::Sfu(n), session));
        }
    }

    /// Starts or stops talking on every link and the SFU session.
    pub fn set_talking(&mut self, talking: bool) {
        self.talking = talking;
        for l in self.links.values() {
            l.peer.set_talking(talking);
        }
        if let Some((_, s)) = &self.sfu {
            s.set_talking(talking);
        }
    }

    /// From now on `to` is heard and the other path not, in one step;
    /// returns the instant of the switch.
    pub fn switch_playback(&mut self, to: Path) -> Instant {
        let at = Instant::now();
        self.playback.switch(to, at);
        at
    }

    /// Turns one path's playback on or off alone (a client that swaps in
    /// two steps: the measures show what that costs).
    pub fn set_playing(&mut self, path: Path, on: bool) -> Instant {
        let at = Instant::now();
        self.playback.set(path, on, at);
        at
    }

    /// Whether `path` is heard now.
    pub fn playing(&self, path: Path) -> bool {
        self.playback.is_on(path)
    }

    /// Every decoded frame that carried a tone, on every link and session
    /// it has or had, played or not.
    pub fn frames(&self) -> Vec<Frame> {
        let live = self
            .links
            .iter()
            .map(|(m, l)| (Route::Mesh(*m), &l.peer))
            .chain(self.sfu.iter().map(|(n, s)| (Route::Sfu(*n), s)));
        let all = live.chain(self.retired.iter().map(|(r, p)| (*r, p)));
        let mut frames = Vec::new();
        for (route, peer) in all {
            let client = peer.lock();
            for (ssrc, log) in &client.streams {
                frames.extend(log.packets.iter().filter_map(|p| {
                    Some(Frame {
                        at: p.at,
                        tone: p.tone?,
                        route,
                        ssrc: *ssrc,
                    })
                }));
            }
        }
        frames
    }

    /// The frames it played, in arrival order.
    pub fn played(&self) -> Vec<Frame> {
        self.playback.played(&self.frames())
    }

    /// Whether `path` delivered a frame of each of `tones` at or after
    /// `since` (played or not): the new path is ready to be heard.
    pub fn delivers(&self, path: Path, tones: &[usize], since: Instant) -> bool {
        let heard: BTreeSet<usize> = self
            .frames()
            .into_iter()
            .filter(|f| f.route.path() == path && f.at >= since)
            .map(|f| f.tone)
            .collect();
        tones.iter().all(|t| heard.contains(t))
    }

    /// The tones played in at least `min_frames` frames in `[from, to)`.
    pub fn tones_played(&self, from: Instant, to: Instant, min_frames: usize) -> BTreeSet<usize> {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for f in self.played() {
            if f.at >= from && f.at < to {
                *counts.entry(f.tone).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n >= min_frames)
            .map(|(t, _)| t)
            .collect()
    }

    /// The longest time in `[from, to]` in which no frame of `tone` was
    /// played (see [`longest_gap`]).
    pub fn longest_gap(&self, tone: usize, from: Instant, to: Instant) -> Duration {
        longest_gap(&self.played(), tone, from, to)
    }

    /// 20 ms windows of `[from, to)` in which `tone` was played from two
    /// streams (see [`doubled_windows`]); count from the switch.
    pub fn heard_twice(&self, tone: usize, from: Instant, to: Instant) -> usize {
        doubled_windows(&self.played(), tone, from, to)
    }

    /// Waits until `cond` holds for the member, at most until `deadline`;
    /// returns whether it held. The links run on their own threads; this
    /// looks again every 5 ms.
    pub fn wait_until(&self, deadline: Instant, cond: impl Fn(&MeshMember) -> bool) -> bool {
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `to` delivers every one of `tones` (frames since the
    /// call), then switches playback to it: make-before-break in one call.
    /// Returns the instant of the switch, or `None` (no switch) if `to` did
    /// not deliver by `deadline`.
    pub fn switch_when_delivered(
        &mut self,
        to: Path,
        tones: &[usize],
        deadline: Instant,
    ) -> Option<Instant> {
        let since = Instant::now();
        self.wait_until(deadline, |m| m.delivers(to, tones, since))
            .then(|| self.switch_playback(to))
    }

    /// Decode errors on every link and session.
    pub fn decode_errors(&self) -> u64 {
        let live = self.links.values().map(|l| &l.peer).chain(self.sfu());
        live.chain(self.retired.iter().map(|(_, p)| p))
            .map(|p| p.lock().decode_errors())
            .sum()
    }
}

impl Drop for MeshMember {
    fn drop(&mut self) {
        // Ask every thread to stop first, so they wind down together.
        for l in self.links.values() {
            l.peer.signal_stop();
        }
        if let Some((_, s)) = &self.sfu {
            s.signal_stop();
        }
    }
}

/// Signals moved, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalCounts {
    /// Offers.
    pub offers: usize,
    /// Answers.
    pub answers: usize,
    /// Candidates.
    pub candidates: usize,
}

/// Moves the signals of `members` to their addressees until none is left:
/// the test's stand-in for the server's relay. A signal for a member not
/// in `members` is an error.
pub fn exchange(members: &mut [MeshMember]) -> Result<SignalCounts, MeshError> {
    let mut counts = SignalCounts::default();
    loop {
        let signals: Vec<Signal> = members.iter_mut().flat_map(|m| m.take_signals()).collect();
        if signals.is_empty() {
            return Ok(counts);
        }
        for s in signals {
            match s.data {
                SignalData::Offer(_) => counts.offers += 1,
                SignalData::Answer(_) => counts.answers += 1,
                SignalData::Candidate(_) => counts.candidates += 1,
            }
            let me = s.from;
            let to = members
                .iter_mut()
                .find(|m| m.id == s.to)
                .ok_or(MeshError::Misaddressed { to: s.to, me })?;
            to.handle_signal(s)?;
        }
    }
}
