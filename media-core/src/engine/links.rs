//! The engine's side of links to other engines: a channel as origin
//! (subscribers, voices that came over their links) or as relay (following
//! an origin's selection over its upstream link).
//!
//! What a link may do is bounded: messages count only over an open link
//! (`Command::LinkOpened`); as origin, a link brings in only voices of the
//! engine at its other end (the high bits of their `SourceId`), at most
//! `max_sources_per_link` of them, into at most `max_channels_per_link`
//! channels; everything a link brought in is forgotten when it closes.

use std::sync::Arc;
use std::time::Instant;

use super::Engine;
use crate::demux::PeerKey;
use crate::frame::VoiceFrame;
use crate::{EngineId, Error, Event, LinkId, RelayMsg, Role, SourceId};

/// A relayed message's channel and link, as [`Engine::admit`] found them.
struct Admitted {
    /// The channel.
    k: u32,
    link: LinkId,
    /// Whether the link is the channel's origin (else a subscriber).
    from_origin: bool,
    /// The engine at the link's other end.
    engine: EngineId,
}

/// An open link: the engine at its other end and what it brought in.
#[derive(Debug)]
pub(super) struct LinkState {
    /// The engine at the other end: as origin, the only engine whose voices
    /// this link may bring in.
    engine: EngineId,
    /// Voices it brought in (entries of its channels' `remote`).
    pub(super) voices: usize,
    /// Channels it subscribed to.
    channels: usize,
}

impl Engine {
    /// Sends `msg` to every engine that shares channel `k`: its origin, if
    /// it follows one, and its subscribers.
    pub(super) fn relay_to_all(&mut self, k: u32, msg: RelayMsg) {
        let Some(ch) = self.channels.get(k) else {
            return;
        };
        let links: Vec<LinkId> = ch
            .upstream
            .iter()
            .chain(ch.subscribers.iter())
            .copied()
            .collect();
        for link in links {
            self.fx.relay(link, msg.clone());
        }
    }

    /// The channel a relayed message is for, if `link` is open and may speak
    /// for it: as its origin or as one of its subscribers. Anything else is
    /// dropped and counted.
    fn admit(&mut self, channel: &str, link: LinkId) -> Option<Admitted> {
        let admitted = self.links.get(&link).and_then(|state| {
            let k = *self.channel_keys.get(channel)?;
            let ch = self.channels.get(k)?;
            let from_origin = ch.upstream == Some(link);
            (from_origin || ch.subscribers.contains(&link)).then_some(Admitted {
                k,
                link,
                from_origin,
                engine: state.engine,
            })
        });
        if admitted.is_none() {
            self.fx.stats.dropped_relay += 1;
        }
        admitted
    }

    /// Whether an admitted message may be about `source`. The origin speaks
    /// for every voice but this engine's own (it never sends one back to
    /// where it came from). A subscriber speaks only for voices of the
    /// engine at its other end, and brings in at most
    /// `max_sources_per_link`: a new one is recorded in the channel's
    /// `remote` and counted. Refusals are dropped and counted.
    fn admit_voice(&mut self, at: &Admitted, source: SourceId) -> bool {
        let stats = &mut self.fx.stats;
        let own = self.config.engine_id;
        let allowed = if at.from_origin {
            source.engine() != own
        } else {
            source.engine() == at.engine
        };
        if !allowed {
            stats.dropped_relay += 1;
            return false;
        }
        if at.from_origin {
            return true;
        }
        let Some(ch) = self.channels.get_mut(at.k) else {
            return false;
        };
        // The common case, once per relayed frame: a voice already in.
        if ch.remote.contains_key(&source) {
            return true;
        }
        let Some(state) = self.links.get_mut(&at.link) else {
            return false;
        };
        if state.voices >= self.config.max_sources_per_link {
            stats.dropped_relay_limit += 1;
            return false;
        }
        state.voices += 1;
        ch.remote.insert(source, at.link);
        true
    }

    /// A voice that came over a link left channel `k`: forgotten there and
    /// uncounted on its link. Returns whether the channel had it.
    fn forget_voice(&mut self, k: u32, source: SourceId) -> bool {
        let Some(link) = self
            .channels
            .get_mut(k)
            .and_then(|ch| ch.remote.remove(&source))
        else {
            return false;
        };
        if let Some(state) = self.links.get_mut(&link) {
            state.voices = state.voices.saturating_sub(1);
        }
        true
    }

    /// One message from another engine.
    pub(super) fn on_relay(&mut self, now: Instant, link: LinkId, msg: RelayMsg) {
        self.fx.stats.relay_in += 1;
        match msg {
            RelayMsg::Subscribe { channel } => {
                let Some(state) = self.links.get(&link) else {
                    self.fx.stats.dropped_relay += 1;
                    return;
                };
                let subscribed = self
                    .channel_keys
                    .get(&channel)
                    .and_then(|k| self.channels.get(*k))
                    .is_some_and(|ch| ch.subscribers.contains(&link));
                if !subscribed && state.channels >= self.config.max_channels_per_link {
                    self.fx.stats.dropped_relay_limit += 1;
                    return;
                }
                let k = self.channel_or_create(channel.to_string(), now);
                let Some(ch) = self.channels.get_mut(k) else {
                    return;
                };
                if ch.upstream.is_some() {
                    // A relay cannot serve as origin (no loops in the tree).
                    self.fx.stats.dropped_relay += 1;
                    return;
                }
                if !subscribed {
                    ch.subscribers.push(link);
                    if let Some(state) = self.links.get_mut(&link) {
                        state.channels += 1;
                    }
                }
                // Who is who, then what is selected.
                let infos: Vec<RelayMsg> = ch
                    .identities
                    .iter()
                    .filter(|(s, _)| ch.remote.get(s) != Some(&link))
                    .map(|(s, id)| RelayMsg::SourceInfo {
                        channel: ch.name.clone(),
                        source: *s,
                        identity: id.clone(),
                    })
                    .collect();
                for m in infos {
                    self.fx.relay(link, m);
                }
                self.send_speakers(k, Some(link));
            }
            RelayMsg::Unsubscribe { channel } => {
                let Some(&k) = self.channel_keys.get(&channel) else {
                    self.fx.stats.dropped_relay += 1;
                    return;
                };
                self.drop_subscriber(k, link);
                self.remove_if_unused(k);
            }
            RelayMsg::Media {
                channel,
                source,
                seq,
                rtp_ts,
                level,
                vad,
                payload,
            } => {
                let Some(at) = self.admit(&channel, link) else {
                    return;
                };
                if !self.admit_voice(&at, source) {
                    return;
                }
                let frame = VoiceFrame {
                    source,
                    seq,
                    rtp_ts,
                    level: level.min(127),
                    vad,
                    // One copy per frame and node: str0m wants `Arc<[u8]>`.
                    payload: Arc::from(&payload[..]),
                    red: None,
                    capture: None,
                };
                self.route(at.k, &frame, now, Some(link));
            }
            RelayMsg::Speakers {
                channel,
                selected,
                active,
                dominant,
            } => {
                let Some(&k) = self.channel_keys.get(&channel) else {
                    self.fx.stats.dropped_relay += 1;
                    return;
                };
                let Some(ch) = self.channels.get_mut(k) else {
                    return;
                };
                if ch.upstream != Some(link) {
                    self.fx.stats.dropped_relay += 1;
                    return;
                }
                if ch.selector.set_selected(&selected) {
                    self.fx.stats.speaker_switches += 1;
                    ch.reassign_all(&mut self.peers, &mut self.fx.events);
                }
                if ch.active != active {
                    ch.active = active.clone();
                    self.fx.events.push(Event::ActiveSpeakers {
                        channel: ch.name.clone(),
                        speakers: active,
                    });
                }
                if ch.last_dominant != dominant {
                    ch.last_dominant = dominant;
                    self.fx.events.push(Event::DominantSpeaker {
                        channel: ch.name.clone(),
                        speaker: dominant,
                    });
                }
                self.fx.flush_events();
            }
            RelayMsg::SourceInfo {
                channel,
                source,
                identity,
            } => {
                let Some(at) = self.admit(&channel, link) else {
                    return;
                };
                let (k, from_origin) = (at.k, at.from_origin);
                let leaving = identity.is_empty();
                if leaving && !from_origin {
                    // Only a voice this link brought in can leave over it.
                    let known = self
                        .channels
                        .get(k)
                        .is_some_and(|ch| ch.remote.get(&source) == Some(&link));
                    if !known {
                        self.fx.stats.dropped_relay += 1;
                        return;
                    }
                } else if !self.admit_voice(&at, source) {
                    return;
                }
                let Some(ch) = self.channels.get_mut(k) else {
                    return;
                };
                if leaving {
                    ch.identities.remove(&source);
                    // A subscriber's voice left: release it here as well.
                    if !from_origin && self.forget_voice(k, source) {
                        self.release_voice(k, source);
                    }
                } else {
                    ch.identities.insert(source, identity.clone());
                }
                // The origin passes it on to its other subscribers.
                let msg = RelayMsg::SourceInfo {
                    channel: channel.clone(),
                    source,
                    identity: identity.clone(),
                };
                let others: Vec<LinkId> = match self.channels.get(k) {
                    Some(ch) if !from_origin => ch
                        .subscribers
                        .iter()
                        .copied()
                        .filter(|l| *l != link)
                        .collect(),
                    _ => Vec::new(),
                };
                for l in others {
                    self.fx.relay(l, msg.clone());
                }
                self.fx.emit(Event::RemoteSource {
                    channel,
                    source,
                    identity,
                });
            }
        }
    }

    pub(super) fn set_upstream(
        &mut self,
        now: Instant,
        channel: String,
        link: Option<LinkId>,
    ) -> Result<(), Error> {
        if channel.is_empty() {
            return Err(Error::InvalidChannel("empty"));
        }
        let k = self.channel_or_create(channel, now);
        let Some(ch) = self.channels.get_mut(k) else {
            return Ok(());
        };
        // The same link again means "re-subscribe" (the link was rebuilt
        // after a failure): the origin treats a repeated subscribe as one.
        let old = ch.upstream;
        ch.upstream = link;
        let name = ch.name.clone();
        if let Some(old) = old.filter(|o| Some(*o) != link) {
            self.fx.relay(
                old,
                RelayMsg::Unsubscribe {
                    channel: name.clone(),
                },
            );
        }
        if let Some(new) = link {
            self.fx.relay(new, RelayMsg::Subscribe { channel: name });
            // Our local voices, so that the origin (and its other subscribers) can
            // name them.
            let speakers: Vec<PeerKey> = self
                .channels
                .get(k)
                .map(|ch| ch.members.clone())
                .unwrap_or_default();
            for key in speakers {
                self.announce_voice(key);
            }
        }
        Ok(())
    }

    /// `Command::LinkOpened`: messages over `link` count from now on.
    pub(super) fn link_opened(&mut self, link: LinkId, engine: EngineId) -> Result<(), Error> {
        let taken = engine == self.config.engine_id
            || self
                .links
                .iter()
                .any(|(l, state)| *l != link && state.engine == engine);
        if taken {
            return Err(Error::EngineIdInUse(engine));
        }
        match self.links.get(&link) {
            Some(state) if state.engine == engine => return Ok(()),
            Some(_) => self.link_closed(link),
            None => {}
        }
        self.links.insert(
            link,
            LinkState {
                engine,
                voices: 0,
                channels: 0,
            },
        );
        Ok(())
    }

    /// `Command::LinkClosed`: the link's subscriptions and the voices it
    /// brought in are forgotten; messages over it are dropped until it is
    /// opened again.
    pub(super) fn link_closed(&mut self, link: LinkId) {
        let keys: Vec<u32> = self
            .channel_keys
            .values()
            .copied()
            .filter(|k| {
                self.channels
                    .get(*k)
                    .is_some_and(|ch| ch.subscribers.contains(&link))
            })
            .collect();
        for k in keys {
            self.drop_subscriber(k, link);
            self.remove_if_unused(k);
        }
        self.links.remove(&link);
    }

    /// Forgets a subscriber and the voices that came over it.
    fn drop_subscriber(&mut self, k: u32, link: LinkId) {
        let Some(ch) = self.channels.get_mut(k) else {
            return;
        };
        let before = ch.subscribers.len();
        ch.subscribers.retain(|l| *l != link);
        if ch.subscribers.len() < before {
            if let Some(state) = self.links.get_mut(&link) {
                state.channels = state.channels.saturating_sub(1);
            }
        }
        let gone: Vec<SourceId> = ch
            .remote
            .iter()
            .filter(|(_, l)| **l == link)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.forget_voice(k, s);
            if let Some(ch) = self.channels.get_mut(k) {
                ch.identities.remove(&s);
            }
            self.release_voice(k, s);
        }
    }

    /// A voice is gone from a channel: unselected, undominant, its slots freed.
    pub(super) fn release_voice(&mut self, k: u32, source: SourceId) {
        let Some(ch) = self.channels.get_mut(k) else {
            return;
        };
        let was_dominant = ch.dominant.dominant() == Some(source);
        ch.dominant.remove_source(source);
        if ch.selector.remove(source) {
            self.fx.stats.speaker_switches += 1;
        }
        ch.release_voice(source, &mut self.peers, &mut self.fx.events);
        ch.reassign_all(&mut self.peers, &mut self.fx.events);
        if was_dominant {
            ch.last_dominant = None;
            self.fx.events.push(Event::DominantSpeaker {
                channel: ch.name.clone(),
                speaker: None,
            });
        }
        self.speakers_dirty.push(k);
        self.fx.flush_events();
    }

    /// Tells the channel's origin and subscribers who a local speaker is.
    pub(super) fn announce_voice(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        if peer.role != Role::Speaker {
            return;
        }
        let (source, identity, k) = (peer.source, peer.identity.clone(), peer.channel);
        let Some(ch) = self.channels.get_mut(k) else {
            return;
        };
        ch.identities.insert(source, identity.clone());
        let msg = RelayMsg::SourceInfo {
            channel: ch.name.clone(),
            source,
            identity,
        };
        self.relay_to_all(k, msg);
    }

    /// Sends the origin's selection to one subscriber, or to all when `None`.
    fn send_speakers(&mut self, k: u32, to: Option<LinkId>) {
        let Some(ch) = self.channels.get(k) else {
            return;
        };
        if ch.upstream.is_some() || ch.subscribers.is_empty() {
            return;
        }
        let msg = RelayMsg::Speakers {
            channel: ch.name.clone(),
            selected: ch.selector.selected().to_vec(),
            active: ch.active.clone(),
            dominant: ch.dominant.dominant(),
        };
        let links: Vec<LinkId> = match to {
            Some(l) => vec![l],
            None => ch.subscribers.clone(),
        };
        for l in links {
            self.fx.relay(l, msg.clone());
        }
    }

    /// After an input: every origin channel whose selection changed tells
    /// its subscribers, once.
    pub(super) fn flush_speakers(&mut self) {
        if self.speakers_dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.speakers_dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for k in dirty {
            self.send_speakers(k, None);
        }
    }
}
