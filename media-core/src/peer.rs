//! One member's WebRTC connection: a str0m `Rtc` in RTP mode, ICE-lite.
//!
//! The peer knows nothing of channels or selection. It turns an offer into an
//! answer and a set of slots, feeds datagrams and timeouts to str0m, writes
//! rewritten frames into its slots, and reports what str0m says
//! ([`Signal`]s) for the engine to act on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Output as RtcOutput, Rtc};

use crate::config::EngineConfig;
use crate::engine::{Output, Transmit};
use crate::frame::SourceFrame;
use crate::level::OpusLevelMeter;
use crate::rng::Rng;
use crate::slot::SlotRewriter;
use crate::stats::EngineStats;
use crate::{Error, PeerId, Role, SourceId};

/// What a peer's str0m instance reported that the engine must act on.
#[derive(Debug)]
// The signal queue is reused across calls; boxing the packet would instead
// allocate once per received packet.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Signal {
    Connected,
    Disconnected,
    Failed,
    Rtp(RtpPacket),
}

/// One receive slot of a listener: an m-line the engine sends on.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) mid: Mid,
    pub(crate) ssrc: Ssrc,
    pub(crate) source: Option<SourceId>,
    /// When the slot last carried a packet (least recently active is reused first).
    pub(crate) last_active: Option<Instant>,
    pub(crate) rewriter: SlotRewriter,
}

pub(crate) struct Peer {
    pub(crate) id: PeerId,
    pub(crate) gen: u32,
    pub(crate) rtc: Rtc,
    pub(crate) channel: u32,
    pub(crate) identity: Arc<str>,
    pub(crate) role: Role,
    pub(crate) muted: bool,
    pub(crate) source: SourceId,
    /// The payload type of Opus the client sends (None: it sends no audio).
    pub(crate) uplink_pt: Option<Pt>,
    /// The payload type of Opus the client receives on its slots.
    pub(crate) slot_pt: Option<Pt>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) connected: bool,
    /// str0m reported an error; the peer is about to be removed.
    pub(crate) failed: bool,
    pub(crate) connect_deadline: Instant,
    /// Created on the first packet without an audio-level extension.
    pub(crate) level_meter: Option<OpusLevelMeter>,
    /// The deadline this peer has in the engine's timer heap.
    pub(crate) timer: Option<Instant>,
    /// str0m's own next timeout.
    pub(crate) rtc_timeout: Instant,
    pub(crate) ufrag: String,
    pub(crate) ice_pass: String,
    pub(crate) tuples: Vec<(SocketAddr, SocketAddr)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("source", &self.source)
            .field("slots", &self.slots.len())
            .field("connected", &self.connected)
            .finish()
    }
}

/// What joining needs from the engine.
pub(crate) struct PeerSetup<'a> {
    pub(crate) id: PeerId,
    pub(crate) gen: u32,
    pub(crate) channel: u32,
    pub(crate) identity: Arc<str>,
    pub(crate) role: Role,
    pub(crate) source: SourceId,
    pub(crate) offer: &'a str,
    pub(crate) dtls_cert: &'a str0m::config::DtlsCert,
}

impl Peer {
    /// Accepts an offer. Returns the peer and the SDP answer.
    pub(crate) fn accept(
        setup: PeerSetup<'_>,
        config: &EngineConfig,
        rng: &mut Rng,
        now: Instant,
    ) -> Result<(Peer, String), Error> {
        let offer =
            SdpOffer::from_sdp_string(setup.offer).map_err(|e| offer_error(&e.to_string()))?;
        let creds = IceCreds {
            ufrag: rng.ice_string(8),
            pass: rng.ice_string(24),
        };
        let (ufrag, ice_pass) = (creds.ufrag.clone(), creds.pass.clone());
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(creds)
            .set_dtls_cert(setup.dtls_cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        for addr in &config.host_candidates {
            let c = Candidate::host(*addr, "udp")
                .map_err(|e| Error::InvalidOffer(format!("host candidate {addr}: {e}")))?;
            rtc.add_local_candidate(c);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| offer_error(&e.to_string()))?;

        let answer = answer.to_sdp_string();
        // The audio m-lines, in SDP order, with their negotiated direction.
        // (str0m reports `MediaAdded` only once DTLS is up; the answer it just
        // wrote is the authoritative list now.)
        let medias: Vec<(Mid, Direction)> = audio_mids(&answer)
            .into_iter()
            .filter_map(|mid| rtc.media(mid).map(|m| (mid, m.direction())))
            .collect();

        let opus_pt = |rtc: &Rtc, mid: Mid| -> Option<Pt> {
            let remote = rtc.media(mid)?.remote_pts().to_vec();
            rtc.codec_config()
                .iter()
                .find(|p| p.spec().codec == Codec::Opus && remote.contains(&p.pt()))
                .map(|p| p.pt())
        };

        // The first m-line the client sends on is its voice; every m-line the
        // engine sends on is a slot, up to the configured number.
        let uplink = medias
            .iter()
            .find(|(_, d)| d.is_receiving())
            .map(|(m, _)| *m);
        let uplink_pt = uplink.and_then(|m| opus_pt(&rtc, m));
        let mut slots = Vec::new();
        let mut slot_pt = None;
        for (mid, dir) in &medias {
            if !dir.is_sending() || slots.len() >= config.slots_per_listener {
                continue;
            }
            let Some(pt) = opus_pt(&rtc, *mid) else {
                continue;
            };
            let mut api = rtc.direct_api();
            let Some(ssrc) = api.stream_tx_by_mid(*mid, None).map(|s| s.ssrc()) else {
                continue;
            };
            slot_pt.get_or_insert(pt);
            slots.push(Slot {
                mid: *mid,
                ssrc,
                source: None,
                last_active: None,
                rewriter: SlotRewriter::new(rng.next_u32() as u16, rng.next_u32()),
            });
        }
        if uplink_pt.is_none() && slots.is_empty() {
            return Err(Error::UnusableOffer(
                "no Opus audio m-line the engine can send or receive on",
            ));
        }

        let peer = Peer {
            id: setup.id,
            gen: setup.gen,
            rtc,
            channel: setup.channel,
            identity: setup.identity,
            role: setup.role,
            muted: false,
            source: setup.source,
            uplink_pt,
            slot_pt,
            slots,
            connected: false,
            failed: false,
            connect_deadline: now + config.connect_timeout,
            level_meter: None,
            timer: None,
            // The engine drains the new peer right after inserting it.
            rtc_timeout: now,
            ufrag,
            ice_pass,
            tuples: Vec::new(),
        };
        Ok((peer, answer))
    }

    /// When the engine must next wake this peer.
    pub(crate) fn deadline(&self) -> Instant {
        if self.connected {
            self.rtc_timeout
        } else {
            self.rtc_timeout.min(self.connect_deadline)
        }
    }

    /// Whether this peer's voice may be routed.
    pub(crate) fn may_speak(&self) -> bool {
        self.role == Role::Speaker && !self.muted
    }

    /// Writes a frame into slot `slot`. Returns false when the rewrite drops
    /// it (it predates the slot's switch to this source).
    pub(crate) fn write_slot(&mut self, slot: usize, frame: &SourceFrame, now: Instant) -> bool {
        let (Some(pt), Some(s)) = (self.slot_pt, self.slots.get_mut(slot)) else {
            return false;
        };
        let samples = crate::frame::opus_samples(&frame.payload);
        let Some(rw) = s
            .rewriter
            .rewrite(frame.source, frame.seq, frame.rtp_ts, samples, now)
        else {
            return false;
        };
        s.last_active = Some(now);
        let ssrc = s.ssrc;
        let ext = ExtensionValues {
            audio_level: Some(-(frame.level.min(127) as i8)),
            voice_activity: frame.vad,
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&ssrc) else {
            return false;
        };
        // Not nackable: audio is not retransmitted (a late voice packet is
        // useless, and Opus in-band FEC covers single losses), so str0m keeps
        // no per-listener copy of it.
        stream.write_rtp(
            RtpWrite::new(pt, rw.seq.into(), rw.ts, now, frame.payload.clone())
                .marker(rw.marker)
                .ext_vals(ext)
                .csrc(&[frame.source.0]),
        );
        true
    }

    /// Drains str0m, and when it asks to be woken right away (its pacer
    /// releases queued packets only on a timeout), wakes it at once instead
    /// of a round trip through the embedder's timer: a forwarded packet
    /// leaves in the same `handle_input` that brought it.
    pub(crate) fn settle(
        &mut self,
        key: u32,
        now: Instant,
        outputs: &mut VecDeque<Output>,
        signals: &mut VecDeque<(u32, u32, Signal)>,
        stats: &mut EngineStats,
    ) {
        self.drain(key, outputs, signals, stats);
        // Twice is enough: the first wake sends what was queued; a second is
        // only needed when the first queued more (an RTCP report).
        for _ in 0..2 {
            if self.rtc_timeout > now || self.failed {
                return;
            }
            if self.rtc.handle_input(str0m::Input::Timeout(now)).is_err() {
                self.failed = true;
                signals.push_back((key, self.gen, Signal::Failed));
                return;
            }
            self.drain(key, outputs, signals, stats);
        }
    }

    /// Drains str0m until it asks for a timeout: transmits go to `outputs`,
    /// what the engine must act on goes to `signals`.
    fn drain(
        &mut self,
        key: u32,
        outputs: &mut VecDeque<Output>,
        signals: &mut VecDeque<(u32, u32, Signal)>,
        stats: &mut EngineStats,
    ) {
        loop {
            match self.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    self.rtc_timeout = t;
                    return;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    stats.datagrams_out += 1;
                    stats.bytes_out += t.contents.len() as u64;
                    outputs.push_back(Output::Transmit(Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Ok(RtcOutput::Event(e)) => match e {
                    RtcEvent::Connected => signals.push_back((key, self.gen, Signal::Connected)),
                    RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        signals.push_back((key, self.gen, Signal::Disconnected))
                    }
                    RtcEvent::RtpPacket(p) => signals.push_back((key, self.gen, Signal::Rtp(p))),
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(peer = %self.id, error = %e, "peer failed");
                    self.failed = true;
                    signals.push_back((key, self.gen, Signal::Failed));
                    return;
                }
            }
        }
    }
}

/// The `mid`s of the audio m-lines of an SDP, in order.
fn audio_mids(sdp: &str) -> Vec<Mid> {
    let mut mids = Vec::new();
    let mut in_audio = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio ");
        } else if in_audio {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                mids.push(Mid::from(mid.trim()));
            }
        }
    }
    mids
}

/// A refusal a client can be shown: the first line of str0m's message,
/// without parser internals (pointer offsets, dumps of the input), bounded.
fn offer_error(detail: &str) -> Error {
    let first = detail.lines().next().unwrap_or("").trim();
    let reason = if first.is_empty() || first.contains("PointerOffset") {
        "the SDP does not parse".to_string()
    } else {
        first.chars().take(160).collect()
    };
    Error::InvalidOffer(reason)
}
