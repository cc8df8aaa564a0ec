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
use str0m::rtp::{Extension, ExtensionMap, ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Output as RtcOutput, Rtc};

use crate::config::EngineConfig;
use crate::engine::{Output, Transmit};
use crate::frame::SourceFrame;
use crate::level::OpusLevelMeter;
use crate::rng::Rng;
use crate::slot::SlotRewriter;
use crate::srtp::tap::{self, KeyCell};
use crate::srtp::{SrtpTx, SRTCP_OVERHEAD, SRTP_OVERHEAD};
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
    /// The header extensions the listener negotiated on this m-line.
    exts: SlotExts,
    /// Sender-report state when the engine sends on this slot itself.
    report: SlotReport,
}

/// One-byte header extension ids (RFC 8285) of a slot; `0` = not negotiated.
#[derive(Debug, Clone, Copy, Default)]
struct SlotExts {
    audio_level: u8,
    mid: u8,
    abs_capture_time: u8,
}

impl SlotExts {
    fn of(map: &ExtensionMap) -> SlotExts {
        // The one-byte form carries ids 1..=14 only.
        let id = |e: Extension| map.id_of(e).filter(|id| (1..=14).contains(id)).unwrap_or(0);
        SlotExts {
            audio_level: id(Extension::AudioLevel),
            mid: id(Extension::RtpMid),
            abs_capture_time: id(Extension::AbsoluteCaptureTime),
        }
    }
}

/// What an RTCP sender report about a slot says (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default)]
struct SlotReport {
    packets: u32,
    octets: u32,
    next_report: Option<Instant>,
}

/// How often a slot that is sending gets a sender report.
const SENDER_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The engine's mapping from its clock to NTP time, for sender reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NtpClock {
    pub(crate) at: Instant,
    /// NTP time at `at`, since 1900-01-01.
    pub(crate) ntp: std::time::Duration,
}

impl NtpClock {
    fn q32(&self, now: Instant) -> u64 {
        to_q32(self.ntp + now.saturating_duration_since(self.at))
    }
}

fn to_q32(d: std::time::Duration) -> u64 {
    // NTP seconds wrap in 2036 (era 1); the 32-bit field wraps with them.
    let secs = d.as_secs() as u32 as u64;
    (secs << 32) | (((d.subsec_nanos() as u64) << 32) / 1_000_000_000)
}

/// The NTP timestamp of an `abs-capture-time` value, when representable.
fn capture_q32(t: &str0m::rtp::AbsCaptureTime) -> Option<u64> {
    let since_unix = t.capture_time.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(to_q32(since_unix.checked_add(
        std::time::Duration::from_secs(NTP_UNIX_OFFSET),
    )?))
}

/// How the engine sends a connected peer's slots itself.
pub(crate) struct Direct {
    tx: SrtpTx,
    local: SocketAddr,
    remote: SocketAddr,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("tx", &self.tx)
            .field("remote", &self.remote)
            .finish()
    }
}

/// Where a forwarded packet's datagrams go.
pub(crate) struct TxSink<'a> {
    pub(crate) outputs: &'a mut VecDeque<Output>,
    pub(crate) stats: &'a mut EngineStats,
    pub(crate) ntp: NtpClock,
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
    /// Filled by the DTLS handshake (`None`: the engine does not send itself).
    keys: Option<Arc<KeyCell>>,
    /// Set once connected when the engine sends the slots itself.
    direct: Option<Direct>,
    /// The addresses str0m last sent a non-STUN datagram between: the
    /// nominated candidate pair (local, remote).
    send_addr: Option<(SocketAddr, SocketAddr)>,
    /// CNAME for the slots' sender reports.
    cname: Box<str>,
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
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(creds)
            .set_dtls_cert(setup.dtls_cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
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
            let exts = rtc
                .media(*mid)
                .map(|m| SlotExts::of(m.remote_extmap()))
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
            keys,
            direct: None,
            send_addr: None,
            cname,
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

    /// Called once the peer is connected: takes over sending its slots with
    /// the SRTP keys of its handshake, or gives them back to str0m when that
    /// cannot be done. Returns whether the engine now sends them itself.
    pub(crate) fn start_direct(&mut self) -> bool {
        let Some(keys) = self.keys.take() else {
            return false;
        };
        let started = match (keys.get(), self.send_addr) {
            (Some(exported), Some((local, remote))) => SrtpTx::new(exported)
                .map(|tx| Direct { tx, local, remote })
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

    /// Whether the engine sends this peer's slots itself (no str0m work
    /// per forwarded packet).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes a frame into slot `slot`. Returns false when the rewrite drops
    /// it (it predates the slot's switch to this source). When the engine
    /// sends for this peer itself, the datagram goes to `sink` at once;
    /// otherwise it is queued in str0m and leaves on the next [`settle`].
    ///
    /// [`settle`]: Peer::settle
    pub(crate) fn write_slot(
        &mut self,
        slot: usize,
        frame: &SourceFrame,
        now: Instant,
        sink: &mut TxSink<'_>,
    ) -> bool {
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
        if let Some(direct) = &mut self.direct {
            send_direct(direct, s, pt, rw, frame, now, &self.cname, sink);
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
                    // Everything but STUN (first byte 0..=3, RFC 7983) goes
                    // to the nominated pair.
                    if t.contents.first().is_some_and(|b| *b > 3) {
                        self.send_addr = Some((t.source, t.destination));
                    }
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

/// The id the engine offers `abs-capture-time` under (an answer takes the
/// offer's id).
const ABS_CAPTURE_TIME_ID: u8 = 7;

/// Writes, seals and queues one RTP packet of a slot the engine sends
/// itself, and the slot's sender report when one is due.
#[allow(clippy::too_many_arguments)]
fn send_direct(
    direct: &mut Direct,
    s: &mut Slot,
    pt: Pt,
    rw: crate::slot::Rewritten,
    frame: &SourceFrame,
    now: Instant,
    cname: &str,
    sink: &mut TxSink<'_>,
) {
    let payload = &frame.payload[..];
    let mut pkt = Vec::with_capacity(16 + 28 + payload.len() + SRTP_OVERHEAD);
    // RFC 3550 §5.1: V=2, X when there are extensions, one CSRC (the voice).
    pkt.extend_from_slice(&[0x80 | 0x01, (u8::from(rw.marker) << 7) | (*pt & 0x7f)]);
    pkt.extend_from_slice(&(rw.seq as u16).to_be_bytes());
    pkt.extend_from_slice(&rw.ts.to_be_bytes());
    pkt.extend_from_slice(&s.ssrc.to_be_bytes());
    pkt.extend_from_slice(&frame.source.0.to_be_bytes());
    // RFC 8285 one-byte header extensions.
    let ext_start = pkt.len();
    pkt.extend_from_slice(&[0xbe, 0xde, 0, 0]);
    let e = s.exts;
    if e.audio_level != 0 {
        // RFC 6464: V flag, then the level in -dBov.
        let v = if frame.vad == Some(false) { 0 } else { 0x80 };
        pkt.extend_from_slice(&[e.audio_level << 4, v | frame.level.min(127)]);
    }
    let mid = s.mid.as_bytes();
    if e.mid != 0 && (1..=16).contains(&mid.len()) {
        pkt.push((e.mid << 4) | (mid.len() as u8 - 1));
        pkt.extend_from_slice(mid);
    }
    if let (true, Some(c)) = (e.abs_capture_time != 0, &frame.capture) {
        if let Some(q) = capture_q32(c) {
            match c.clock_offset {
                Some(off) => {
                    pkt.push((e.abs_capture_time << 4) | 15);
                    pkt.extend_from_slice(&q.to_be_bytes());
                    pkt.extend_from_slice(&off.to_be_bytes());
                }
                None => {
                    pkt.push((e.abs_capture_time << 4) | 7);
                    pkt.extend_from_slice(&q.to_be_bytes());
                }
            }
        }
    }
    if pkt.len() == ext_start + 4 {
        pkt.truncate(ext_start);
    } else {
        pkt[0] |= 0x10;
        while pkt.len() % 4 != 0 {
            pkt.push(0);
        }
        let words = ((pkt.len() - ext_start - 4) / 4) as u16;
        pkt[ext_start + 2..ext_start + 4].copy_from_slice(&words.to_be_bytes());
    }
    let header_len = pkt.len();
    pkt.extend_from_slice(payload);
    if direct.tx.seal_rtp(&mut pkt, header_len, rw.seq).is_err() {
        sink.stats.dropped_seal += 1;
        return;
    }
    push_transmit(direct, pkt, sink);

    let r = &mut s.report;
    r.packets = r.packets.wrapping_add(1);
    r.octets = r.octets.wrapping_add(payload.len() as u32);
    if r.next_report.is_some_and(|t| t > now) {
        return;
    }
    r.next_report = Some(now + SENDER_REPORT_INTERVAL);
    let sr = sender_report(*s.ssrc, sink.ntp.q32(now), s.rewriter.last_ts(), r, cname);
    let mut pkt = sr;
    if direct.tx.seal_rtcp(&mut pkt).is_err() {
        sink.stats.dropped_seal += 1;
        return;
    }
    sink.stats.sender_reports += 1;
    push_transmit(direct, pkt, sink);
}

fn push_transmit(direct: &Direct, contents: Vec<u8>, sink: &mut TxSink<'_>) {
    sink.stats.datagrams_out += 1;
    sink.stats.bytes_out += contents.len() as u64;
    sink.outputs.push_back(Output::Transmit(Transmit {
        source: direct.local,
        destination: direct.remote,
        contents,
    }));
}

/// A compound RTCP packet: a sender report (RFC 3550 §6.4.1, sent right
/// after a packet, so the RTP timestamp is that packet's) and an SDES with
/// the CNAME (§6.5).
fn sender_report(ssrc: u32, ntp: u64, rtp_ts: u32, r: &SlotReport, cname: &str) -> Vec<u8> {
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let mut p = Vec::with_capacity(28 + 12 + cname.len() + SRTCP_OVERHEAD + 4);
    p.extend_from_slice(&[0x80, 200, 0, 6]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&ntp.to_be_bytes());
    p.extend_from_slice(&rtp_ts.to_be_bytes());
    p.extend_from_slice(&r.packets.to_be_bytes());
    p.extend_from_slice(&r.octets.to_be_bytes());
    let sdes = p.len();
    p.extend_from_slice(&[0x81, 202, 0, 0]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[1, cname.len() as u8]);
    p.extend_from_slice(cname);
    // The item list ends with a null octet, padded to 32 bits.
    p.push(0);
    while p.len() % 4 != 0 {
        p.push(0);
    }
    let words = ((p.len() - sdes) / 4 - 1) as u16;
    p[sdes + 2..sdes + 4].copy_from_slice(&words.to_be_bytes());
    p
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
