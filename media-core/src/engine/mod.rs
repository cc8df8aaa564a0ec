//! The engine: every peer and channel of one UDP port, driven by
//! [`Engine::handle_input`] and polled with [`Engine::poll_output`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;

mod links;

use links::LinkState;

use crate::api::{Command, Input, Output};
use crate::channel::Channel;
use crate::config::EngineConfig;
use crate::datagram::DatagramKind;
use crate::demux::{Demux, PeerKey, Route};
use crate::effects::{Effects, Signal};
use crate::frame::{level_from_ext, VoiceFrame};
use crate::ids::SourceIds;
use crate::level::OpusLevelMeter;
use crate::ntp::NtpClock;
use crate::peer::{Peer, PeerSetup};
use crate::red::RedPayload;
use crate::rng::Rng;
use crate::slab::Slab;
use crate::stats::EngineStats;
use crate::timer::TimerKey;
use crate::{Error, Event, LeaveReason, LinkId, PeerId, RelayMsg, Role, SourceId};

/// How far ahead an idle engine (no peers, no channels) asks to be woken.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

/// Most receive slots a listener can have ([`EngineConfig::slots_per_listener`]
/// is clamped to it).
pub const MAX_SLOTS: usize = 32;

/// Longest channel name accepted, in bytes.
const MAX_CHANNEL_NAME: usize = 256;

/// The sans-IO forwarding engine. See the crate documentation for the run loop.
///
/// Methods come in three kinds:
/// - getters: [`stats`](Self::stats), [`peer_count`](Self::peer_count), …;
/// - [`handle_input`](Self::handle_input): feed a datagram, a relay message,
///   a command or a timeout — every change of state, the embedder's own
///   requests included ([`Command`]), comes in this way, so there are no
///   separate mutators;
/// - [`poll_output`](Self::poll_output): take what to send, events, and the
///   next timeout — after every `handle_input`, until it returns
///   [`Output::Timeout`].
///
/// The engine never reads a clock, a socket, an environment variable or an
/// unseeded random number generator: time comes in with every input.
pub struct Engine {
    config: EngineConfig,
    rng: Rng,
    dtls_cert: DtlsCert,
    // Boxed: a `Peer` holds its str0m `Rtc` inline (kilobytes); the slab
    // stays a dense table of pointers that grows without moving peers.
    peers: Slab<Box<Peer>>,
    peer_keys: HashMap<PeerId, PeerKey>,
    sources: HashMap<SourceId, PeerKey>,
    channels: Slab<Channel>,
    channel_keys: HashMap<Arc<str>, u32>,
    demux: Demux,
    /// Outputs, signals, pending events, counters, timers, NTP clock.
    fx: Effects,
    /// Origin channels whose selection changed since the last input: their
    /// subscribers get a `Speakers` message once the input is handled.
    speakers_dirty: Vec<u32>,
    source_ids: SourceIds,
    /// Open links (`Command::LinkOpened` until `LinkClosed`): the engine at
    /// the other end and what the link brought in.
    links: HashMap<LinkId, LinkState>,
    last_now: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("peers", &self.peers.len())
            .field("channels", &self.channels.len())
            .field("stats", &self.fx.stats)
            .finish()
    }
}

impl Engine {
    /// A new engine. `now` is the engine's notion of the current time.
    ///
    /// Generates a DTLS certificate when the config has none.
    pub fn new(mut config: EngineConfig, now: Instant) -> Self {
        // Slot indices travel as u8 in the fan-out table; a listener hears at
        // most this many voices at once.
        config.slots_per_listener = config.slots_per_listener.clamp(1, MAX_SLOTS);
        let dtls_cert = config.dtls_cert.clone().unwrap_or_else(generate_dtls_cert);
        let rng = Rng::from_seed(config.seed);
        let source_ids = SourceIds::new(config.engine_id);
        let ntp = NtpClock::new(now, config.wallclock_at_start);
        Engine {
            config,
            rng,
            dtls_cert,
            peers: Slab::default(),
            peer_keys: HashMap::new(),
            sources: HashMap::new(),
            channels: Slab::default(),
            channel_keys: HashMap::new(),
            demux: Demux::default(),
            fx: Effects::new(ntp),
            speakers_dirty: Vec::new(),
            source_ids,
            links: HashMap::new(),
            last_now: now,
        }
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters since the engine started.
    pub fn stats(&self) -> &EngineStats {
        &self.fx.stats
    }

    /// Joined peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Channels with at least one member.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The name of every channel the engine holds: one with members, or
    /// (as origin) one that other engines subscribe to over links.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.channel_keys.keys().map(AsRef::as_ref)
    }

    /// The link a channel follows its origin over (`None`: it selects here,
    /// or does not exist).
    pub fn channel_upstream(&self, channel: &str) -> Option<LinkId> {
        self.channels
            .get(*self.channel_keys.get(channel)?)?
            .upstream
    }

    /// The members of a channel, or `None` if it does not exist.
    pub fn channel_members(&self, channel: &str) -> Option<Vec<PeerId>> {
        let ch = self.channels.get(*self.channel_keys.get(channel)?)?;
        Some(
            ch.members
                .iter()
                .filter_map(|k| self.peers.get(*k).map(|p| p.id))
                .collect(),
        )
    }

    /// The voice a joined peer sends, whatever its role.
    pub fn peer_source(&self, peer: PeerId) -> Option<SourceId> {
        Some(self.peers.get(*self.peer_keys.get(&peer)?)?.source)
    }

    /// The identity a joined peer gave when it joined.
    pub fn peer_identity(&self, peer: PeerId) -> Option<&str> {
        Some(&self.peers.get(*self.peer_keys.get(&peer)?)?.identity)
    }

    /// The local peer that sends a voice, if it is joined here.
    pub fn source_peer(&self, source: SourceId) -> Option<PeerId> {
        Some(self.peers.get(*self.sources.get(&source)?)?.id)
    }

    /// The voices selected for forwarding in a channel now.
    pub fn selected_speakers(&self, channel: &str) -> Option<Vec<SourceId>> {
        let ch = self.channels.get(*self.channel_keys.get(channel)?)?;
        Some(ch.selector.selected().to_vec())
    }

    /// The voices a channel knows by name: its local speakers and, as origin,
    /// the voices its subscribers announced, or as relay, those its origin
    /// named. `None` if the channel does not exist.
    pub fn voices(&self, channel: &str) -> Option<Vec<(SourceId, Arc<str>)>> {
        let ch = self.channels.get(*self.channel_keys.get(channel)?)?;
        Some(ch.identities.iter().map(|(s, i)| (*s, i.clone())).collect())
    }

    /// (origin) How many voices came over `link` and are known now, all
    /// channels together (at most [`EngineConfig::max_sources_per_link`]).
    pub fn link_voices(&self, link: LinkId) -> usize {
        self.links.get(&link).map_or(0, |l| l.voices)
    }

    /// Routes datagrams from `source` to `peer` as if ICE had learned the
    /// address, so that fuzzing reaches a peer's WebRTC stack without first
    /// solving STUN message integrity. Fuzzing only.
    #[cfg(feature = "_internal_test_exports")]
    #[doc(hidden)]
    pub fn learn_address(&mut self, peer: PeerId, source: SocketAddr, destination: SocketAddr) {
        if let Some(&key) = self.peer_keys.get(&peer) {
            if let Some(p) = self.peers.get_mut(key) {
                p.tuples.push((source, destination));
                self.demux.add_tuple(source, destination, key);
            }
        }
    }

    /// Feeds one input. Afterwards poll [`poll_output`](Self::poll_output)
    /// until it returns [`Output::Timeout`].
    ///
    /// Errors are only for commands the engine refuses (unknown peer, bad
    /// offer…). Bad datagrams are never errors: they are dropped and counted
    /// in [`stats`](Self::stats).
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), Error> {
        let res = match input {
            Input::Receive {
                now,
                source,
                destination,
                datagram,
            } => {
                let now = self.advance(now);
                self.receive(now, source, destination, datagram);
                Ok(())
            }
            Input::Command { now, command } => {
                let now = self.advance(now);
                self.command(now, command)
            }
            Input::Relay { now, link, msg } => {
                let now = self.advance(now);
                self.on_relay(now, link, msg);
                Ok(())
            }
            Input::Timeout(now) => {
                let now = self.advance(now);
                self.timeout(now);
                Ok(())
            }
        };
        self.flush_speakers();
        self.process_signals();
        res
    }

    /// The next thing to do: send a datagram, handle an event, or wait until
    /// a time.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.fx.outputs.pop_front() {
            return o;
        }
        Output::Timeout(self.fx.timers.peek().unwrap_or(self.last_now + IDLE_WAKEUP))
    }

    /// Time never goes backwards inside the engine, whatever the embedder passes.
    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    fn receive(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        self.fx.stats.datagrams_in += 1;
        self.fx.stats.bytes_in += data.len() as u64;
        let key = match self.demux.route(source, destination, data) {
            Route::Known(k) => k,
            Route::NewAddress(k) => {
                let Some(peer) = self.peers.get_mut(k) else {
                    return;
                };
                if peer.tuples.len() >= self.config.max_addrs_per_peer {
                    self.fx.stats.dropped_address_limit += 1;
                    return;
                }
                peer.tuples.push((source, destination));
                self.demux.add_tuple(source, destination, k);
                k
            }
            Route::Unknown => {
                self.fx.stats.dropped_unknown_source += 1;
                return;
            }
            Route::BadStun => {
                self.fx.stats.dropped_malformed += 1;
                return;
            }
            Route::BadIntegrity => {
                self.fx.stats.dropped_rejected += 1;
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if peer.failed {
            return;
        }
        let Ok(recv) = Receive::new(Protocol::Udp, source, destination, data) else {
            self.fx.stats.dropped_malformed += 1;
            return;
        };
        // The member's nominated pair is where its media comes from, and
        // where it nominates (USE-CANDIDATE, with its password): after an
        // ICE restart, the slots the engine sends itself follow it there.
        let path = match DatagramKind::of(data) {
            DatagramKind::Rtp | DatagramKind::Rtcp => true,
            DatagramKind::Stun => peer.is_direct() && nominates(data, &peer.ice_pass),
            _ => false,
        };
        if let Err(e) = peer.rtc.handle_input(str0m::Input::Receive(now, recv)) {
            tracing::trace!(peer = %peer.id, error = %e, "datagram rejected");
            self.fx.stats.dropped_rejected += 1;
        } else if path && peer.follow(destination, source, now) {
            self.fx.stats.dtls_released += 1;
        }
        peer.settle(key, now, &mut self.fx);
    }

    fn command(&mut self, now: Instant, command: Command) -> Result<(), Error> {
        match command {
            Command::Join {
                peer,
                channel,
                identity,
                role,
                offer,
            } => self.join(now, peer, channel, identity, role, &offer),
            Command::Restart { peer, offer } => self.restart(now, peer, &offer),
            Command::Leave { peer } => {
                let key = self.key(peer)?;
                self.remove_peer(key, LeaveReason::Left, now);
                Ok(())
            }
            Command::SetMuted { peer, muted } => {
                let key = self.key(peer)?;
                let p = self.peers.get_mut(key).ok_or(Error::UnknownPeer(peer))?;
                p.muted = muted;
                if muted {
                    self.silence(key, now);
                }
                Ok(())
            }
            Command::SetRole { peer, role } => {
                let key = self.key(peer)?;
                let p = self.peers.get_mut(key).ok_or(Error::UnknownPeer(peer))?;
                if role == Role::Speaker && p.uplink_pt.is_none() {
                    return Err(Error::CannotSpeak(peer));
                }
                p.role = role;
                if role == Role::Listener {
                    self.silence(key, now);
                } else {
                    self.announce_voice(key);
                }
                Ok(())
            }
            Command::SetUpstream { channel, link } => self.set_upstream(now, channel, link),
            Command::LinkOpened { link, engine } => self.link_opened(link, engine),
            Command::LinkClosed { link } => {
                self.link_closed(link);
                Ok(())
            }
        }
    }

    fn key(&self, peer: PeerId) -> Result<PeerKey, Error> {
        self.peer_keys
            .get(&peer)
            .copied()
            .ok_or(Error::UnknownPeer(peer))
    }

    fn join(
        &mut self,
        now: Instant,
        id: PeerId,
        channel: String,
        identity: String,
        role: Role,
        offer: &str,
    ) -> Result<(), Error> {
        if self.peer_keys.contains_key(&id) {
            return Err(Error::PeerIdInUse(id));
        }
        if channel.is_empty() {
            return Err(Error::InvalidChannel("empty"));
        }
        if channel.len() > MAX_CHANNEL_NAME {
            return Err(Error::InvalidChannel("longer than 256 bytes"));
        }
        let sources = &self.sources;
        let source = self
            .source_ids
            .allocate(|s| sources.contains_key(&s))
            .ok_or(Error::SourceIdsExhausted)?;
        let setup = PeerSetup {
            id,
            gen: 0,
            channel: u32::MAX,
            identity: identity.into(),
            role,
            source,
            offer,
            dtls_cert: &self.dtls_cert,
        };
        let (mut peer, sdp) = Peer::accept(setup, &self.config, &mut self.rng, now)?;
        self.fx.stats.peers_joined += 1;

        let ch_key = self.channel_or_create(channel, now);
        peer.channel = ch_key;
        let slots = peer.slots.len();
        let key = self.peers.insert_with(|_, gen| {
            peer.gen = gen;
            Box::new(peer)
        });
        self.peer_keys.insert(id, key);
        self.sources.insert(source, key);
        let peer = self.peers.get_mut(key).expect("just inserted");
        self.demux
            .add_ufrag(peer.ufrag.clone(), peer.ice_pass.clone(), key);
        peer.settle(key, now, &mut self.fx);
        self.fx.emit(Event::Answer {
            peer: id,
            source,
            slots,
            sdp,
        });
        let ch = self.channels.get_mut(ch_key).expect("channel exists");
        ch.members.push(key);
        ch.assign_member(key, peer, &mut self.fx.events);
        self.fx.flush_events();
        if role == Role::Speaker {
            self.announce_voice(key);
        }
        Ok(())
    }

    /// Applies a member's new offer (ICE restart) to its session.
    fn restart(&mut self, now: Instant, id: PeerId, offer: &str) -> Result<(), Error> {
        let key = self.key(id)?;
        let peer = self.peers.get_mut(key).ok_or(Error::UnknownPeer(id))?;
        if peer.failed {
            return Err(Error::UnknownPeer(id));
        }
        let (sdp, old_ufrag) = peer.restart(offer)?;
        self.demux
            .replace_ufrag(&old_ufrag, peer.ufrag.clone(), peer.ice_pass.clone(), key);
        // The old path is gone: its addresses are learnt again (with the new
        // credentials) if they still reach the member, and do not count
        // against its limit of addresses.
        let old_tuples = std::mem::take(&mut peer.tuples);
        self.demux.remove_tuples(&old_tuples);
        peer.settle(key, now, &mut self.fx);
        self.fx.emit(Event::Restarted { peer: id, sdp });
        Ok(())
    }

    /// The channel named `name`, created (with its decision timer) if absent.
    fn channel_or_create(&mut self, name: String, now: Instant) -> u32 {
        if let Some(k) = self.channel_keys.get(name.as_str()) {
            return *k;
        }
        let name: Arc<str> = name.into();
        let config = &self.config;
        let k = self
            .channels
            .insert_with(|_, gen| Channel::new(name.clone(), gen, config, now));
        self.channel_keys.insert(name, k);
        let ch = self.channels.get_mut(k).expect("just inserted");
        self.fx
            .timers
            .schedule(TimerKey::Channel(k, ch.gen), ch.next_tick, &mut ch.timer);
        k
    }

    /// Removes a channel nobody uses any more (no local member, no
    /// subscriber), unsubscribing from its origin.
    fn remove_if_unused(&mut self, k: u32) {
        let Some(ch) = self.channels.get(k) else {
            return;
        };
        if !ch.is_unused() {
            return;
        }
        let (name, upstream) = (ch.name.clone(), ch.upstream);
        if let Some(link) = upstream {
            self.fx.relay(
                link,
                RelayMsg::Unsubscribe {
                    channel: name.clone(),
                },
            );
        }
        self.channels.remove(k);
        self.channel_keys.remove(&name);
    }

    /// The member's voice is no longer routed (muted, or became a listener).
    fn silence(&mut self, key: PeerKey, _now: Instant) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let (source, ch_key) = (peer.source, peer.channel);
        self.release_voice(ch_key, source);
    }

    fn remove_peer(&mut self, key: PeerKey, reason: LeaveReason, now: Instant) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let id = peer.id;
        if peer.role == Role::Speaker {
            self.silence(key, now);
        }
        let Some(mut peer) = self.peers.remove(key) else {
            return;
        };
        self.peer_keys.remove(&id);
        self.sources.remove(&peer.source);
        self.demux.remove(&peer.ufrag, &peer.tuples);
        // Tell the client (DTLS close_notify) when it is still there to hear.
        if reason == LeaveReason::Left && peer.connected {
            peer.rtc.disconnect();
        }
        if reason != LeaveReason::Left {
            self.fx.stats.peers_failed += 1;
        }
        if let Some(ch) = self.channels.get_mut(peer.channel) {
            ch.members.retain(|k| *k != key);
            ch.unassign_member(key, &peer);
            if ch.identities.remove(&peer.source).is_some() {
                let msg = RelayMsg::SourceInfo {
                    channel: ch.name.clone(),
                    source: peer.source,
                    identity: "".into(),
                };
                self.relay_to_all(peer.channel, msg);
            }
        }
        self.remove_if_unused(peer.channel);
        self.fx.emit(Event::PeerLeft { peer: id, reason });
    }

    fn timeout(&mut self, now: Instant) {
        while let Some((t, key)) = self.fx.timers.pop_due(now) {
            match key {
                TimerKey::Peer(k, gen) => {
                    let Some(peer) = self.peers.get_gen_mut(k, gen) else {
                        continue;
                    };
                    if peer.timer != Some(t) {
                        continue; // superseded by an earlier deadline
                    }
                    peer.timer = None;
                    if !peer.connected && now >= peer.connect_deadline {
                        self.remove_peer(k, LeaveReason::ConnectTimeout, now);
                        continue;
                    }
                    if peer.failed {
                        continue;
                    }
                    if let Err(e) = peer.rtc.handle_input(str0m::Input::Timeout(now)) {
                        tracing::debug!(peer = %peer.id, error = %e, "timeout failed");
                        peer.failed = true;
                        self.fx.signals.push_back((k, gen, Signal::Failed));
                        continue;
                    }
                    peer.settle(k, now, &mut self.fx);
                }
                TimerKey::Channel(k, gen) => {
                    let Some(ch) = self.channels.get_gen_mut(k, gen) else {
                        continue;
                    };
                    if ch.timer != Some(t) {
                        continue;
                    }
                    ch.timer = None;
                    self.flush_packers(k, now);
                    if self.channels.get(k).is_some_and(|ch| now >= ch.next_tick) {
                        self.channel_tick(k, now);
                    }
                    if let Some(ch) = self.channels.get_mut(k) {
                        let at = ch.deadline();
                        self.fx
                            .timers
                            .schedule(TimerKey::Channel(k, ch.gen), at, &mut ch.timer);
                    }
                }
            }
            self.process_signals();
        }
    }

    /// Hall mode: sends alone every frame that waited its successor for
    /// [`crate::pack::PACK_WAIT`].
    fn flush_packers(&mut self, k: u32, now: Instant) {
        let Engine {
            channels,
            peers,
            fx,
            ..
        } = self;
        let Some(ch) = channels.get_mut(k) else {
            return;
        };
        for (source, packer) in &mut ch.packers {
            let Some(frame) = packer.flush(now) else {
                continue;
            };
            if let Some(targets) = ch.fanout.get(source) {
                send_packed(peers, fx, targets, &frame, now);
            }
        }
    }

    /// The slow speed of speaker selection: dominant speaker and the active
    /// speaker list, every `dominant_interval`.
    fn channel_tick(&mut self, k: u32, now: Instant) {
        let Some(ch) = self.channels.get_mut(k) else {
            return;
        };
        if ch.upstream.is_some() {
            // A relay channel's speakers are decided by its origin.
            ch.next_tick = now + self.config.dominant_interval;
            self.fx
                .timers
                .schedule(TimerKey::Channel(k, ch.gen), ch.next_tick, &mut ch.timer);
            return;
        }
        if let Some(d) = ch.dominant.decide(now) {
            ch.last_dominant = Some(d);
            self.speakers_dirty.push(k);
            self.fx.events.push(Event::DominantSpeaker {
                channel: ch.name.clone(),
                speaker: Some(d),
            });
            if ch.selector.pin(Some(d), now) {
                self.fx.stats.speaker_switches += 1;
                ch.reassign_all(&mut self.peers, &mut self.fx.events);
            }
        }
        let speaking = ch.speaking(now);
        if speaking != ch.active {
            self.speakers_dirty.push(k);
            ch.active = speaking.clone();
            self.fx.events.push(Event::ActiveSpeakers {
                channel: ch.name.clone(),
                speakers: speaking,
            });
        }
        ch.next_tick = now + self.config.dominant_interval;
        self.fx
            .timers
            .schedule(TimerKey::Channel(k, ch.gen), ch.next_tick, &mut ch.timer);
        self.fx.flush_events();
    }

    fn process_signals(&mut self) {
        let now = self.last_now;
        while let Some((k, gen, signal)) = self.fx.signals.pop_front() {
            let Some(peer) = self.peers.get_gen_mut(k, gen) else {
                continue;
            };
            match signal {
                Signal::Connected => {
                    if !peer.connected {
                        peer.connected = true;
                        self.fx.stats.peers_connected += 1;
                        if peer.start_direct() {
                            self.fx.stats.peers_direct += 1;
                        } else {
                            self.fx.stats.peers_str0m_send += 1;
                        }
                        let id = peer.id;
                        self.fx.emit(Event::PeerConnected { peer: id });
                    }
                }
                Signal::Disconnected => self.remove_peer(k, LeaveReason::Disconnected, now),
                Signal::Failed => self.remove_peer(k, LeaveReason::Failed, now),
                Signal::Rtp(p) => self.on_rtp(k, p, now),
            }
        }
    }

    /// One audio packet from a local member.
    fn on_rtp(&mut self, key: PeerKey, p: RtpPacket, now: Instant) {
        self.fx.stats.rtp_in += 1;
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let Some(opus_pt) = peer.uplink_pt else {
            self.fx.stats.dropped_wrong_codec += 1;
            return;
        };
        // Plain Opus, or RED around it (where negotiated): then the Opus
        // primary is what is measured, selected and relayed, and the RED
        // goes whole to the listeners that take it (`red.rs`).
        let pt = p.header.payload_type;
        let (payload, red) = if pt == opus_pt {
            (p.payload, None)
        } else if Some(pt) == peer.uplink_red_pt {
            let Some((primary, all_opus)) = crate::red::opus_primary(&p.payload, *opus_pt) else {
                self.fx.stats.dropped_wrong_codec += 1;
                return;
            };
            let red = all_opus.then(|| RedPayload {
                payload: p.payload.clone(),
                opus_pt: *opus_pt,
            });
            (Arc::from(primary), red)
        } else {
            self.fx.stats.dropped_wrong_codec += 1;
            return;
        };
        if !peer.may_speak() {
            self.fx.stats.dropped_not_allowed += 1;
            return;
        }
        let level = match p.header.ext_vals.audio_level {
            Some(l) => level_from_ext(l),
            // A client without the audio-level extension is still routed by
            // its real loudness.
            None => {
                let meter = match &mut peer.level_meter {
                    Some(m) => m,
                    None => match OpusLevelMeter::new() {
                        Ok(m) => peer.level_meter.insert(m),
                        Err(_) => return,
                    },
                };
                match meter.measure(&payload) {
                    Some(l) => l,
                    None => {
                        self.fx.stats.level_decode_errors += 1;
                        127
                    }
                }
            }
        };
        let frame = VoiceFrame {
            source: peer.source,
            seq: *p.seq_no,
            rtp_ts: p.header.timestamp,
            level,
            vad: p.header.ext_vals.voice_activity,
            payload,
            red,
            capture: p.header.ext_vals.abs_capture_time,
        };
        let ch = peer.channel;
        self.route(ch, &frame, now, None);
    }

    /// Selection and fan-out of one frame, wherever it came from: a local
    /// member (`from: None`) or another engine over a link.
    fn route(&mut self, ch_key: u32, frame: &VoiceFrame, now: Instant, from: Option<LinkId>) {
        let Engine {
            channels,
            peers,
            fx,
            config,
            speakers_dirty,
            ..
        } = self;
        let Some(ch) = channels.get_mut(ch_key) else {
            return;
        };
        let speech = frame.is_speech(config.speech_level);
        match ch.upstream {
            // Origin: selection runs here, on every packet.
            None => {
                ch.dominant.record_level(frame.source, frame.level, now);
                if ch
                    .selector
                    .on_packet(frame.source, frame.level, speech, now)
                {
                    fx.stats.speaker_switches += 1;
                    ch.reassign_all(peers, &mut fx.events);
                    speakers_dirty.push(ch_key);
                }
            }
            // Relay: a local voice goes up when it speaks (so the origin can
            // select it) or is selected (so listeners hear it whole).
            Some(up) if from.is_none() => {
                if speech || ch.selector.is_selected(frame.source) {
                    fx.relay(up, frame.to_relay(&ch.name));
                }
            }
            Some(_) => {}
        }
        let selected = ch.selector.is_selected(frame.source);
        if let Some(targets) = ch.fanout.get(&frame.source) {
            let mut packing = false;
            for &(key, slot) in targets {
                let Some(peer) = peers.get_mut(key) else {
                    continue;
                };
                if peer.packs {
                    packing = true;
                } else {
                    send_slot(peer, fx, key, slot, frame, now);
                }
            }
            // Hall mode: the members that take 40 ms packets get what the
            // voice's packer lets out.
            if packing {
                let packer = ch.packers.entry(frame.source).or_default();
                let out = packer.push(frame, now);
                if let Some(at) = packer.held_since() {
                    fx.timers.schedule(
                        TimerKey::Channel(ch_key, ch.gen),
                        at + crate::pack::PACK_WAIT,
                        &mut ch.timer,
                    );
                }
                for f in out.iter().flatten() {
                    send_packed(peers, fx, targets, f, now);
                }
            }
        } else if !selected {
            fx.stats.not_selected += 1;
        }
        // Origin: each subscriber gets a selected voice once, except the
        // one it came from.
        if ch.upstream.is_none() && selected && !ch.subscribers.is_empty() {
            let msg = frame.to_relay(&ch.name);
            for &link in &ch.subscribers {
                if Some(link) != from {
                    fx.relay(link, msg.clone());
                }
            }
        }
        fx.flush_events();
    }
}

/// Forwards `frame` into slot `slot` of `peer` (key `key`), once it is
/// connected.
fn send_slot(
    peer: &mut Peer,
    fx: &mut Effects,
    key: PeerKey,
    slot: u8,
    frame: &VoiceFrame,
    now: Instant,
) {
    if !peer.connected {
        return;
    }
    if peer.write_slot(slot as usize, frame, now, fx) {
        fx.stats.rtp_forwarded += 1;
    } else {
        fx.stats.dropped_stale += 1;
    }
    // A peer the engine sends for itself has nothing new in str0m.
    if !peer.is_direct() {
        peer.settle(key, now, fx);
    }
}

/// Forwards a packed `frame` to the members of `targets` that take 40 ms
/// packets (hall mode).
fn send_packed(
    peers: &mut Slab<Box<Peer>>,
    fx: &mut Effects,
    targets: &[(PeerKey, u8)],
    frame: &VoiceFrame,
    now: Instant,
) {
    for &(key, slot) in targets {
        if let Some(peer) = peers.get_mut(key).filter(|p| p.packs) {
            send_slot(peer, fx, key, slot, frame, now);
        }
    }
}

fn generate_dtls_cert() -> DtlsCert {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("the DTLS provider generates a certificate")
}

/// Whether `datagram` is a STUN binding request that nominates its pair
/// (USE-CANDIDATE) and proves it knows `pass`.
fn nominates(datagram: &[u8], pass: &str) -> bool {
    str0m::ice::StunMessage::parse(datagram).is_ok_and(|m| {
        m.is_binding_request()
            && m.use_candidate()
            && m.verify(pass.as_bytes(), crate::demux::hmac_sha1)
    })
}
