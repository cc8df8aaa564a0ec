//! The engine's side of links to other engines: a channel as origin
//! (subscribers, voices that came over their links) or as relay (following
//! an origin's selection over its upstream link).

use std::sync::Arc;
use std::time::Instant;

use super::Engine;
use crate::demux::PeerKey;
use crate::frame::VoiceFrame;
use crate::{Error, Event, LinkId, RelayMsg, Role, SourceId};

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

    /// The channel a relayed message is for, if `link` may speak for it:
    /// its origin (`Some((k, true))`) or one of its subscribers
    /// (`Some((k, false))`). Anything else is dropped and counted.
    fn admit(&mut self, channel: &str, link: LinkId) -> Option<(u32, bool)> {
        let admitted = self.channel_keys.get(channel).and_then(|&k| {
            let ch = self.channels.get(k)?;
            let from_origin = ch.upstream == Some(link);
            (from_origin || ch.subscribers.contains(&link)).then_some((k, from_origin))
        });
        if admitted.is_none() {
            self.fx.stats.dropped_relay += 1;
        }
        admitted
    }

    /// One message from another engine.
    pub(super) fn on_relay(&mut self, now: Instant, link: LinkId, msg: RelayMsg) {
        self.fx.stats.relay_in += 1;
        match msg {
            RelayMsg::Subscribe { channel } => {
                let k = self.channel_or_create(channel.to_string(), now);
                let Some(ch) = self.channels.get_mut(k) else {
                    return;
                };
                if ch.upstream.is_some() {
                    // A relay cannot serve as origin (no loops in the tree).
                    self.fx.stats.dropped_relay += 1;
                    return;
                }
                if !ch.subscribers.contains(&link) {
                    ch.subscribers.push(link);
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
                let Some((k, from_origin)) = self.admit(&channel, link) else {
                    return;
                };
                if !from_origin {
                    if let Some(ch) = self.channels.get_mut(k) {
                        ch.remote.insert(source, link);
                    }
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
                self.route(k, &frame, now, Some(link));
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
                let Some((k, from_origin)) = self.admit(&channel, link) else {
                    return;
                };
                let Some(ch) = self.channels.get_mut(k) else {
                    return;
                };
                if identity.is_empty() {
                    ch.identities.remove(&source);
                    // A subscriber's voice left: release it here as well.
                    if !from_origin && ch.remote.remove(&source).is_some() {
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
    }

    /// Forgets a subscriber and the voices that came over it.
    fn drop_subscriber(&mut self, k: u32, link: LinkId) {
        let Some(ch) = self.channels.get_mut(k) else {
            return;
        };
        ch.subscribers.retain(|l| *l != link);
        let gone: Vec<SourceId> = ch
            .remote
            .iter()
            .filter(|(_, l)| **l == link)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            if let Some(ch) = self.channels.get_mut(k) {
                ch.remote.remove(&s);
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
