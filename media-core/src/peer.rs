//! One member's WebRTC connection: a str0m `Rtc` in RTP mode, ICE-lite.
//!
//! The peer knows nothing of channels or selection. It turns an offer into an
//! answer and a set of slots, feeds datagrams and timeouts to str0m, writes
//! rewritten frames into its slots, and reports what str0m says
//! ([`Signal`]s) for the engine to act on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Mid, Pt};
use str0m::rtp::{Extension, ExtensionValues, RtpWrite, Ssrc};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Output as RtcOutput, Rtc};

use crate::api::Transmit;
use crate::config::EngineConfig;
use crate::datagram::DatagramKind;
use crate::demux::PeerKey;
use crate::effects::{Effects, Signal};
use crate::frame::VoiceFrame;
use crate::level::OpusLevelMeter;
use crate::rng::Rng;
use crate::rtp_writer::{self, HeaderExtIds, SlotPacket, SlotReport, SlotStream};
use crate::slot::SlotRewriter;
use crate::srtp::tap::{self, KeyCell};
use crate::srtp::SrtpTx;
use crate::timer::TimerKey;
use crate::{Error, PeerId, Role, SourceId};

/// One receive slot of a listener: an m-line the engine sends on.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) mid: Mid,
    pub(crate) ssrc: Ssrc,
    pub(crate) source: Option<SourceId>,
    /// When the slot last carried a packet (least recently active is reused first).
    pub(crate) last_active: Option<Instant>,
    pub(crate) rewriter: SlotRewriter,
    /// The header extensions the listener negotiated on this m-line.
    exts: HeaderExtIds,
    /// Sender-report state when the engine sends on this slot itself.
    report: SlotReport,
}

/// How the engine sends a connected peer's slots itself.
pub(crate) struct Direct {
    tx: SrtpTx,
    local: SocketAddr,
    remote: SocketAddr,
    /// CNAME for the slots' sender reports.
    cname: Box<str>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("tx", &self.tx)
            .field("remote", &self.remote)
            .finish()
    }
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
    /// It receives 40 ms packets (hall mode: [`crate::pack`]).
    pub(crate) packs: bool,
    /// The payload type of Opus the client sends (None: it sends no audio).
    pub(crate) uplink_pt: Option<Pt>,
    /// The payload type of RED (RFC 2198, Opus inside) the client may send
    /// instead of plain Opus, when negotiated.
    pub(crate) uplink_red_pt: Option<Pt>,
    /// The payload type of Opus the client receives on its slots.
    pub(crate) slot_pt: Option<Pt>,
    /// The payload type of RED on its slots, when negotiated: a sender's RED
    /// is forwarded whole under it.
    slot_red_pt: Option<Pt>,
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
    /// Filled by the DTLS handshake (`None`: the engine does not send itself).
    keys: Option<Arc<KeyCell>>,
    /// When its DTLS instance may go ([`tap::DtlsRelease`]), until it went.
    dtls: Option<tap::DtlsRelease>,
    /// Set once connected when the engine sends the slots itself.
    direct: Option<Direct>,
    /// The addresses str0m last sent a non-STUN datagram between: the
    /// nominated candidate pair (local, remote).
    send_addr: Option<(SocketAddr, SocketAddr)>,
    /// CNAME for the slots' sender reports.
    cname: Box<str>,
    /// The m-line layout of the offer joined with (kind, mid, direction of
    /// each m-section): a restart offer must have the same.
    layout: Vec<MLine>,
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
        let layout = m_lines(setup.offer);
        let offer =
            SdpOffer::from_sdp_string(setup.offer).map_err(|e| offer_error(&e.to_string()))?;
        let creds = IceCreds {
            ufrag: rng.ice_string(8),
            pass: rng.ice_string(24),
        };
        let (ufrag, ice_pass) = (creds.ufrag.clone(), creds.pass.clone());
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(creds)
            .set_dtls_cert(setup.dtls_cert.clone())
            .clear_codecs()
            .enable_opus(true, config.red)
            // Forwarded unchanged, so listeners can measure end-to-end delay.
            .set_extension(ABS_CAPTURE_TIME_ID, Extension::AbsoluteCaptureTime);
        if config.direct_srtp {
            builder = builder.set_crypto_provider(tap::tapped_provider());
        }
        let (mut rtc, keys) = tap::build_tapped(builder, now);
        for addr in &config.host_candidates {
            let c = Candidate::host(*addr, "udp")
                .map_err(|e| Error::InvalidOffer(format!("host candidate {addr}: {e}")))?;
            rtc.add_local_candidate(c);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| offer_error(&e.to_string()))?;

        let answer = crate::answer::with_candidates_in_every_section(&answer.to_sdp_string());
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
        // str0m folds RED onto the Opus parameters it negotiated: one RED
        // payload type per session, none when the client did not offer it.
        let red_pt = |rtc: &Rtc, opus: Option<Pt>| -> Option<Pt> {
            let opus = opus?;
            rtc.codec_config()
                .iter()
                .find(|p| p.pt() == opus)
                .and_then(|p| p.red())
        };
        let uplink_red_pt = red_pt(&rtc, uplink_pt);
        let mut slots = Vec::new();
        let mut slot_pt = None;
        for (mid, dir) in &medias {
            if !dir.is_sending() || slots.len() >= config.slots_per_listener {
                continue;
            }
            let Some(pt) = opus_pt(&rtc, *mid) else {
                continue;
            };
            let exts = rtc
                .media(*mid)
                .map(|m| HeaderExtIds::of(m.remote_extmap()))
                .unwrap_or_default();
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
                exts,
                report: SlotReport::default(),
            });
        }
        let cname: Box<str> = slots
            .first()
            .and_then(|s| rtc.media(s.mid))
            .map(|m| m.cname().chars().take(64).collect::<String>().into())
            .unwrap_or_else(|| "sfu".into());
        // When the engine will send the slots itself, str0m must not: it
        // would send sender reports for these SSRCs with its own SRTCP
        // index. The streams come back if the engine cannot take over.
        if keys.is_some() {
            let mut api = rtc.direct_api();
            for s in &slots {
                api.remove_stream_tx(s.ssrc);
            }
        }
        let slot_red_pt = red_pt(&rtc, slot_pt);
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
            packs: config.pack_listeners && setup.role == Role::Listener,
            uplink_pt,
            uplink_red_pt,
            slot_pt,
            slot_red_pt,
            slots,
            connected: false,
            failed: false,
            connect_deadline: now + config.connect_timeout,
            level_meter: None,
            timer: None,
            // The engine polls the new peer right after inserting it.
            rtc_timeout: now,
            ufrag,
            ice_pass,
            tuples: Vec::new(),
            dtls: keys.clone().map(tap::DtlsRelease::new),
            keys,
            direct: None,
            send_addr: None,
            cname,
            layout,
        };
        Ok((peer, answer))
    }

    /// Applies a new offer of the member (an ICE restart: new credentials,
    /// another address) to its session. Returns the answer and the local
    /// ICE username fragment it replaced (for the demultiplexer); the
    /// peer's new credentials are in `ufrag`/`ice_pass`.
    ///
    /// The offer must have the session's m-line layout (the same mids, in
    /// the same order, with the same kinds and directions) and ICE
    /// credentials; anything else is refused before str0m sees it, so the
    /// session goes on as it was. Slots keep their SSRCs.
    pub(crate) fn restart(&mut self, offer: &str) -> Result<(String, String), Error> {
        let layout = m_lines(offer);
        if layout != self.layout {
            return Err(Error::UnusableOffer(
                "a restart offer must have the session's m-lines (same mids, kinds, directions)",
            ));
        }
        let has = |attr: &str| offer.lines().any(|l| l.trim_start().starts_with(attr));
        if !has("a=ice-ufrag:") || !has("a=ice-pwd:") {
            return Err(Error::InvalidOffer("missing a=ice-ufrag/pwd".into()));
        }
        if offer.lines().any(|l| l.trim() == "a=ice-lite") {
            return Err(Error::UnusableOffer("an ICE-lite client cannot restart"));
        }
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| offer_error(&e.to_string()))?;
        // When the engine sends the slots itself their str0m streams are
        // gone; declared again (same SSRCs) for the negotiation, str0m
        // neither makes new ones nor announces other SSRCs in the answer.
        let direct = self.keys.is_some() || self.direct.is_some();
        if direct {
            let mut api = self.rtc.direct_api();
            for s in &self.slots {
                api.declare_stream_tx(s.ssrc, None, s.mid, None);
            }
        }
        let result = self.rtc.sdp_api().accept_offer(offer);
        if direct {
            let mut api = self.rtc.direct_api();
            for s in &self.slots {
                api.remove_stream_tx(s.ssrc);
            }
        }
        let answer = result.map_err(|e| offer_error(&e.to_string()))?;
        let answer = crate::answer::with_candidates_in_every_section(&answer.to_sdp_string());
        let attr = |name: &str| {
            answer
                .lines()
                .find_map(|l| l.trim().strip_prefix(name).map(str::to_string))
        };
        let old = self.ufrag.clone();
        if let (Some(ufrag), Some(pass)) = (attr("a=ice-ufrag:"), attr("a=ice-pwd:")) {
            self.ufrag = ufrag;
            self.ice_pass = pass;
        }
        Ok((answer, old))
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

    /// Called once the peer is connected: takes over sending its slots with
    /// the SRTP keys of its handshake, or gives them back to str0m when that
    /// cannot be done. Returns whether the engine now sends them itself.
    pub(crate) fn start_direct(&mut self) -> bool {
        let Some(keys) = self.keys.take() else {
            return false;
        };
        let started = match (keys.get(), self.send_addr) {
            (Some(exported), Some((local, remote))) => SrtpTx::new(exported)
                .map(|tx| Direct {
                    tx,
                    local,
                    remote,
                    cname: self.cname.clone(),
                })
                .map_err(|e| format!("{e:?}")),
            (None, _) => Err("the handshake exported no keying material".to_string()),
            (_, None) => Err("no nominated candidate pair seen".to_string()),
        };
        match started {
            Ok(direct) => {
                self.direct = Some(direct);
                true
            }
            Err(reason) => {
                tracing::warn!(peer = %self.id, %reason, "forwarding through str0m's send path");
                let mut api = self.rtc.direct_api();
                for s in &self.slots {
                    api.declare_stream_tx(s.ssrc, None, s.mid, None);
                }
                false
            }
        }
    }

    /// The member's media came from `remote` to `local` (the engine's
    /// address): the slots the engine sends itself go there from now on.
    /// Only authenticated tuples get here (learnt from a STUN request with
    /// the member's ICE password), and str0m accepted the datagram.
    /// Returns true when this let the member's DTLS instance go.
    pub(crate) fn follow(&mut self, local: SocketAddr, remote: SocketAddr, now: Instant) -> bool {
        let released = self.dtls.as_mut().is_some_and(|d| d.media(now));
        if released {
            self.dtls = None;
        }
        if let Some(d) = &mut self.direct {
            d.local = local;
            d.remote = remote;
        }
        released
    }

    /// Whether the engine sends this peer's slots itself (no str0m work
    /// per forwarded packet).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes a frame into slot `slot`. Returns false when the rewrite drops
    /// it (it predates the slot's switch to this voice). When the engine
    /// sends for this peer itself, the datagram goes to `fx` at once;
    /// otherwise it is queued in str0m and leaves on the next [`settle`].
    ///
    /// [`settle`]: Peer::settle
    pub(crate) fn write_slot(
        &mut self,
        slot: usize,
        frame: &VoiceFrame,
        now: Instant,
        fx: &mut Effects,
    ) -> bool {
        let (Some(opus_pt), Some(s)) = (self.slot_pt, self.slots.get_mut(slot)) else {
            return false;
        };
        // The sender's RED whole where this listener negotiated RED with the
        // same Opus payload type inside; plain Opus otherwise.
        let (pt, payload) = match (&frame.red, self.slot_red_pt) {
            (Some(red), Some(red_pt)) if red.opus_pt == *opus_pt => (red_pt, &red.payload),
            _ => (opus_pt, &frame.payload),
        };
        let samples = crate::frame::opus_samples(&frame.payload);
        let Some(rw) = s
            .rewriter
            .rewrite(frame.source, frame.seq, frame.rtp_ts, samples, now)
        else {
            return false;
        };
        s.last_active = Some(now);
        if let Some(direct) = &mut self.direct {
            let packet = SlotPacket { pt, payload, rw };
            direct.send(s, packet, frame, now, fx);
            return true;
        }
        let ssrc = s.ssrc;
        let ext = ExtensionValues {
            audio_level: Some(-(frame.level.min(127) as i8)),
            voice_activity: frame.vad,
            abs_capture_time: frame.capture,
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&ssrc) else {
            return false;
        };
        // Not nackable: audio is not retransmitted (a late voice packet is
        // useless; RED, where negotiated, fills single losses), so str0m
        // keeps no per-listener copy of it.
        stream.write_rtp(
            RtpWrite::new(pt, rw.seq.into(), rw.ts, now, payload.clone())
                .marker(rw.marker)
                .ext_vals(ext)
                .csrc(&[frame.source.0]),
        );
        true
    }

    /// Polls str0m, and when it asks to be woken right away (its pacer
    /// releases queued packets only on a timeout), wakes it at once instead
    /// of a round trip through the embedder's timer: a forwarded packet
    /// leaves in the same `handle_input` that brought it. Then puts the
    /// peer's next deadline in the timer heap.
    pub(crate) fn settle(&mut self, key: PeerKey, now: Instant, fx: &mut Effects) {
        self.wake_rtc(key, now, fx);
        fx.timers.schedule(
            TimerKey::Peer(key, self.gen),
            self.deadline(),
            &mut self.timer,
        );
    }

    fn wake_rtc(&mut self, key: PeerKey, now: Instant, fx: &mut Effects) {
        self.poll_rtc(key, fx);
        // Twice is enough: the first wake sends what was queued; a second is
        // only needed when the first queued more (an RTCP report).
        for _ in 0..2 {
            if self.rtc_timeout > now || self.failed {
                return;
            }
            if self.rtc.handle_input(str0m::Input::Timeout(now)).is_err() {
                self.failed = true;
                fx.signals.push_back((key, self.gen, Signal::Failed));
                return;
            }
            self.poll_rtc(key, fx);
        }
    }

    /// Polls str0m until it asks for a timeout: transmits go out through
    /// `fx`, what the engine must act on becomes a signal.
    fn poll_rtc(&mut self, key: PeerKey, fx: &mut Effects) {
        loop {
            match self.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    self.rtc_timeout = t;
                    return;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    // str0m sends STUN, DTLS, RTP and RTCP; all but STUN go
                    // to the nominated pair.
                    if matches!(
                        DatagramKind::of(&t.contents),
                        DatagramKind::Dtls | DatagramKind::Rtp | DatagramKind::Rtcp
                    ) {
                        self.send_addr = Some((t.source, t.destination));
                        // The nominated pair moved (an ICE restart): the
                        // slots the engine sends itself follow it.
                        if let Some(d) = &mut self.direct {
                            d.local = t.source;
                            d.remote = t.destination;
                        }
                    }
                    fx.transmit(Transmit::new(t.source, t.destination, t.contents.into()));
                }
                Ok(RtcOutput::Event(e)) => {
                    let signal = match e {
                        RtcEvent::Connected => Signal::Connected,
                        RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            Signal::Disconnected
                        }
                        RtcEvent::RtpPacket(p) => Signal::Rtp(p),
                        _ => continue,
                    };
                    fx.signals.push_back((key, self.gen, signal));
                }
                Err(e) => {
                    tracing::debug!(peer = %self.id, error = %e, "peer failed");
                    self.failed = true;
                    fx.signals.push_back((key, self.gen, Signal::Failed));
                    return;
                }
            }
        }
    }
}

impl Direct {
    /// Writes, seals and queues one RTP packet of a slot, and the slot's
    /// sender report when one is due.
    fn send(
        &mut self,
        slot: &mut Slot,
        packet: SlotPacket<'_>,
        frame: &VoiceFrame,
        now: Instant,
        fx: &mut Effects,
    ) {
        let stream = SlotStream {
            ssrc: slot.ssrc,
            mid: &slot.mid,
            exts: slot.exts,
        };
        let (rw, payload_len) = (packet.rw, packet.payload.len());
        let (mut pkt, header_len) = rtp_writer::rtp_packet(stream, packet, frame);
        if self.tx.seal_rtp(&mut pkt, header_len, rw.seq).is_err() {
            fx.stats.dropped_seal += 1;
            return;
        }
        fx.transmit(Transmit::new(self.local, self.remote, pkt));
        if !slot.report.count(payload_len, now) {
            return;
        }
        let mut sr = rtp_writer::sender_report(
            slot.ssrc,
            fx.ntp.q32(now),
            slot.rewriter.last_ts(),
            &slot.report,
            &self.cname,
        );
        if self.tx.seal_rtcp(&mut sr).is_err() {
            fx.stats.dropped_seal += 1;
            return;
        }
        fx.stats.sender_reports += 1;
        fx.transmit(Transmit::new(self.local, self.remote, sr));
    }
}

/// The id the engine offers `abs-capture-time` under (an answer takes the
/// offer's id).
const ABS_CAPTURE_TIME_ID: u8 = 7;

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

/// One m-section of an SDP as far as a restart must keep it: kind, mid,
/// direction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MLine {
    kind: String,
    mid: String,
    direction: &'static str,
}

/// The m-sections of an SDP, in order (bounded by the SDP's size).
fn m_lines(sdp: &str) -> Vec<MLine> {
    let mut out: Vec<MLine> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(m) = line.strip_prefix("m=") {
            let kind = m.split(' ').next().unwrap_or("").chars().take(16).collect();
            out.push(MLine {
                kind,
                mid: String::new(),
                direction: "sendrecv",
            });
            continue;
        }
        let Some(cur) = out.last_mut() else {
            continue;
        };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            cur.mid = mid.chars().take(32).collect();
        } else {
            for d in ["sendrecv", "sendonly", "recvonly", "inactive"] {
                if line.strip_prefix("a=") == Some(d) {
                    cur.direction = d;
                }
            }
        }
    }
    out
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
