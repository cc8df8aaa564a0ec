//! A WebRTC client in the simulation: a real str0m peer (full ICE, DTLS,
//! SRTP) that sends a tone encoded with real Opus and decodes what it hears.
//!
//! Speakers talk continuously or in talk spurts and pauses
//! ([`TalkPattern`]), optionally with Opus DTX ([`ClientSpec::dtx`]), and
//! stamp every packet with the `abs-capture-time` header extension when
//! given a wall clock ([`ClientSpec::capture_clock`]). Listeners keep per
//! stream RFC 3550 statistics ([`StreamStats`]: loss, interarrival jitter)
//! and a histogram of one-way latency from `abs-capture-time`
//! ([`Client::latency`]). A count-only listener can skip str0m for media
//! ([`ClientSpec::raw_media`]): it reads the plain RTP header of each
//! datagram as it arrives ([`parse_rtp_header`]). With [`ClientSpec::red`]
//! a client offers RFC 2198 RED as Chromium does, sends each frame with the
//! one before it, and fills a single lost packet from the next one's
//! redundancy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{
    AbsCaptureTime, Extension, ExtensionValues, RedDecoder, RedEncoder, RedundantBlock, RtpWrite,
};
use str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};

use media_core::{ntp, DatagramKind};

use crate::audio::{
    DtxGate, TalkPattern, TalkSchedule, ToneListener, ToneSpeaker, FRAME_SAMPLES, TONES,
};
use crate::latency::LatencyHistogram;
use crate::net::Datagram;
use crate::rtp::{extend_seq, parse_rtp_header, ExtIds};
use crate::stream_stats::StreamStats;

/// The RTP header extension id test clients offer for `abs-capture-time`
/// (str0m's standard map leaves 5 free).
pub const ABS_CAPTURE_TIME_ID: u8 = 5;

/// One RTP packet a client received, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Simulated arrival time.
    pub at: Instant,
    /// Extended sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload type (Opus, or RED when both ends negotiated it).
    pub pt: u8,
    /// First CSRC, if any.
    pub csrc: Option<u32>,
    /// RFC 6464 level from the extension (0 loudest .. 127), if present.
    pub level: Option<u8>,
    /// The tone the decoded frame carries (index into the sim's tones).
    pub tone: Option<usize>,
    /// The 20 ms frames it carried, as decoded (2 in a 40 ms packet); 1
    /// when it was not decoded.
    pub frames: u8,
    /// The stream's sender has sent an RTCP sender report by now.
    pub after_sender_report: bool,
    /// One-way latency from the packet's `abs-capture-time` to its
    /// arrival, when it carried one and the client has a capture clock.
    pub latency: Option<Duration>,
}

/// Everything a client received on one incoming stream (one slot).
#[derive(Debug)]
pub struct StreamLog {
    /// The stream's SSRC.
    pub ssrc: u32,
    /// Packets in arrival order.
    pub packets: Vec<Received>,
    /// The decoder of this stream: one for the stream's whole life, as a
    /// browser has; `None` when the client does not decode.
    pub decoder: Option<ToneListener>,
    /// RFC 3550 statistics of the stream (kept also when `packets` is not).
    pub stats: StreamStats,
    /// Lost packets whose frame was decoded from the next packet's RED
    /// redundancy instead of being concealed.
    pub recovered: u64,
}

impl StreamLog {
    /// Packets missing between the first and the highest sequence number
    /// of the packet log (see [`StreamStats::lost`] when packets are not
    /// logged).
    pub fn lost(&self) -> u64 {
        let seqs: BTreeSet<u64> = self.packets.iter().map(|p| p.seq).collect();
        match (seqs.first(), seqs.last()) {
            (Some(a), Some(b)) => (b - a + 1) - seqs.len() as u64,
            _ => 0,
        }
    }
}

/// What a client sends.
#[derive(Debug)]
struct Uplink {
    mid: Mid,
    pt: Option<Pt>,
    speaker: ToneSpeaker,
    /// Amplitude while talking ([`Client::set_talking`]); the schedule
    /// decides, frame by frame, whether it talks.
    amplitude: f32,
    schedule: TalkSchedule,
    /// Present when DTX is on.
    dtx: Option<DtxGate>,
    /// The previous frame was not sent (the next sent one starts a
    /// talkspurt: RTP marker bit, RFC 3551 §4.1).
    gap: bool,
    seq: u64,
    ts: u32,
    next_frame: Instant,
    /// Whether to put the RFC 6464 extension on packets.
    audio_level: bool,
    /// The V bit on every packet, whatever the level ([`ClientSpec::voice_activity`]).
    voice_activity: Option<bool>,
    /// The last frame sent (RTP timestamp, Opus payload): the redundant
    /// block of the next one, when RED was negotiated.
    previous: Option<(u32, Vec<u8>)>,
}

/// What a received packet gives the decoder: its Opus frame, and the frame
/// before it when the packet was RED with redundancy.
struct Payload<'a> {
    opus: &'a [u8],
    previous: Option<&'a [u8]>,
}

impl Uplink {
    /// `opus` (the frame at RTP time `ts`) as an RFC 2198 RED payload with
    /// the frame sent before it as the one redundant block, as Chromium
    /// sends it (none when that is out of the 14-bit offset's reach).
    fn wrap_red(&mut self, opus_pt: Pt, ts: u32, opus: Vec<u8>) -> Vec<u8> {
        let redundant: Vec<RedundantBlock> = self
            .previous
            .take()
            .map(|(at, payload)| RedundantBlock {
                pt: *opus_pt,
                timestamp_offset: ts.wrapping_sub(at),
                payload,
            })
            .filter(RedundantBlock::fits)
            .into_iter()
            .collect();
        let red = RedEncoder::encode(*opus_pt, &opus, &redundant);
        self.previous = Some((ts, opus));
        red
    }
}

/// A simulated WebRTC client.
pub struct Client {
    /// Test-facing name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    pub(crate) rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    uplink: Option<Uplink>,
    /// Whether received audio is decoded (costly; off for large crowds).
    pub decode: bool,
    tones: Vec<f32>,
    /// Incoming streams by SSRC.
    pub streams: BTreeMap<u32, StreamLog>,
    /// ICE + DTLS completed.
    pub connected: bool,
    /// The client's str0m instance closed or failed.
    pub closed: bool,
    pub(crate) timeout: Instant,
    /// Datagrams the client wants sent.
    pub(crate) outbox: Vec<Datagram>,
    /// Arrival times of received packets are measured from here (jitter).
    epoch: Instant,
    /// Maps the client's `Instant`s to wall-clock time (abs-capture-time).
    capture_clock: Option<(Instant, SystemTime)>,
    /// Keep every received packet in [`StreamLog::packets`].
    log_packets: bool,
    /// Read media from the RTP header instead of giving it to str0m.
    raw_media: bool,
    /// Header extension ids of the session (from the answer).
    pub ext_ids: ExtIds,
    /// The RED payload type, when the answer negotiated RED.
    pub red_pt: Option<Pt>,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// 20 ms frames encoded but not sent (DTX).
    pub frames_suppressed: u64,
    /// 20 ms frames encoded with the tone on (in a talk spurt, amplitude
    /// above 0).
    pub frames_talked: u64,
    /// One-way latency (abs-capture-time to arrival) of received packets
    /// that carried the extension, on all streams.
    pub latency: LatencyHistogram,
    /// Received packets without abs-capture-time.
    pub packets_without_capture_time: u64,
    /// Datagrams that looked like RTP but did not parse (raw media mode),
    /// and RED payloads that did not parse.
    pub malformed_rtp: u64,
    /// Local candidates not yet taken for trickling (SDP attribute values).
    local_candidates: Vec<String>,
    /// The address of an ICE restart not answered yet.
    restart_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("connected", &self.connected)
            .finish()
    }
}

/// How a client is set up.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Offer an m-line to send on, with a tone of this frequency (Hz).
    pub tone: Option<f32>,
    /// Amplitude of the tone when talking (0..=1).
    pub amplitude: f32,
    /// Receive-only m-lines (slots) to offer.
    pub slots: usize,
    /// Put the RFC 6464 audio level extension on sent packets.
    pub audio_level: bool,
    /// The extension's voice-activity (V) bit: `None` sets it from the
    /// level, as a browser's VAD does (louder than -60 dBov); `Some(v)`
    /// sends `v` on every packet, as stacks without a VAD do (aiortc, SIP
    /// gateways: always 0).
    pub voice_activity: Option<bool>,
    /// Decode received audio.
    pub decode: bool,
    /// When a speaker talks (while its amplitude is above 0).
    pub talk: TalkPattern,
    /// Opus DTX: during silence send only what WebRTC sends ([`DtxGate`]);
    /// the RTP timestamp advances 20 ms per frame, sent or not, the
    /// sequence number only per packet sent.
    pub dtx: bool,
    /// Offer RFC 2198 RED for Opus (`red/48000/2`, as Chromium does). When
    /// the answer has it, a speaker sends every frame as RED with the frame
    /// before it, and received RED fills a single lost packet.
    pub red: bool,
    /// Maps the client's `Instant`s to wall-clock time: speakers stamp every
    /// packet with `abs-capture-time` (the time it is handed to str0m), and
    /// listeners measure one-way latency from it. Give every client of a
    /// process the same pair: latency is then exact on one clock. `None`:
    /// no stamps, no latency.
    pub capture_clock: Option<(Instant, SystemTime)>,
    /// Keep every received packet in [`StreamLog::packets`] (off for large
    /// crowds: [`StreamLog::stats`] is kept anyway).
    pub log_packets: bool,
    /// Trickle ICE (RFC 8838): the host candidate is not written into the
    /// offer or answer; [`Client::take_local_candidates`] gives it to be
    /// sent on its own, as a browser's `icecandidate` event does, and the
    /// other side's arrive through [`Client::add_remote_candidate`].
    pub trickle: bool,
    /// Count-only fast path (ignored when `decode`): once connected, RTP
    /// datagrams are not given to str0m (no SRTP decryption, no str0m
    /// receive state); their plaintext header is read for statistics and
    /// they are dropped. STUN, DTLS and RTCP still go to str0m.
    pub raw_media: bool,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            tone: None,
            amplitude: 0.5,
            slots: 3,
            audio_level: true,
            voice_activity: None,
            decode: true,
            talk: TalkPattern::Continuous,
            dtx: false,
            red: false,
            capture_clock: None,
            log_packets: true,
            raw_media: false,
            trickle: false,
        }
    }
}

impl ClientSpec {
    /// A speaker that sends tone `tone` (index into [`TONES`]) and hears 3 slots.
    pub fn speaker(tone: usize) -> Self {
        ClientSpec {
            tone: Some(TONES[tone % TONES.len()]),
            ..Default::default()
        }
    }

    /// A listener with 3 slots that decodes what it hears.
    pub fn listener() -> Self {
        ClientSpec::default()
    }
}

impl Client {
    /// A client that makes an offer at `now`. Returns the client and its offer.
    pub fn new(
        name: &str,
        addr: SocketAddr,
        spec: &ClientSpec,
        tones: &[f32],
        cert: &str0m::config::DtlsCert,
        now: Instant,
    ) -> (Client, String) {
        let mut rtc = build_rtc(spec, cert, now);
        if !spec.trickle {
            rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        }
        let mut api = rtc.sdp_api();
        let send_mid = spec
            .tone
            .map(|_| api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        for _ in 0..spec.slots {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().expect("offer has m-lines");
        let mut client = Client::with_rtc(name, addr, rtc, spec, tones, send_mid, now);
        client.pending = Some(pending);
        (client, offer.to_sdp_string())
    }

    /// A client that answers `offer` at `now`, as the other end of a
    /// peer-to-peer link does: full ICE (controlled), the offer's m-lines
    /// with their directions reversed; with a tone it sends on the first
    /// m-line it may send on. Returns the client, connecting as soon as
    /// the offerer's candidates are known, and its answer; an error when
    /// the offer does not parse or cannot be answered.
    pub fn answer(
        name: &str,
        addr: SocketAddr,
        spec: &ClientSpec,
        tones: &[f32],
        cert: &str0m::config::DtlsCert,
        offer: &str,
        now: Instant,
    ) -> Result<(Client, String), String> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| format!("offer: {e}"))?;
        let mut rtc = build_rtc(spec, cert, now);
        if !spec.trickle {
            rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("offer not accepted: {e}"))?
            .to_sdp_string();
        let send_mid = spec.tone.and_then(|_| {
            answer
                .lines()
                .filter_map(|l| l.trim().strip_prefix("a=mid:"))
                .map(Mid::from)
                .find(|m| rtc.media(*m).is_some_and(|m| m.direction().is_sending()))
        });
        let mut client = Client::with_rtc(name, addr, rtc, spec, tones, send_mid, now);
        client.negotiated(&answer, now);
        Ok((client, answer))
    }

    /// The client around a built `rtc`, sending on `send_mid` (when it has
    /// a tone); the local candidate is made here when it trickles.
    fn with_rtc(
        name: &str,
        addr: SocketAddr,
        mut rtc: Rtc,
        spec: &ClientSpec,
        tones: &[f32],
        send_mid: Option<Mid>,
        now: Instant,
    ) -> Client {
        let mut local_candidates = Vec::new();
        if spec.trickle {
            let host = Candidate::host(addr, "udp").expect("host candidate");
            if let Some(c) = rtc.add_local_candidate(host) {
                local_candidates.push(c.to_sdp_string());
            }
        }
        let uplink = send_mid.zip(spec.tone).map(|(mid, f)| {
            let mut speaker = ToneSpeaker::new(f, 0.0);
            let dtx = (spec.dtx && speaker.set_dtx(true)).then(DtxGate::default);
            Uplink {
                mid,
                pt: None,
                speaker,
                amplitude: 0.0,
                schedule: TalkSchedule::new(spec.talk),
                dtx,
                gap: false,
                seq: 1,
                ts: 0,
                next_frame: now,
                audio_level: spec.audio_level,
                voice_activity: spec.voice_activity,
                previous: None,
            }
        });
        Client {
            name: name.to_string(),
            addr,
            rtc,
            pending: None,
            uplink,
            decode: spec.decode,
            tones: tones.to_vec(),
            streams: BTreeMap::new(),
            connected: false,
            closed: false,
            timeout: now,
            outbox: Vec::new(),
            epoch: now,
            capture_clock: spec.capture_clock,
            log_packets: spec.log_packets,
            raw_media: spec.raw_media && !spec.decode,
            ext_ids: ExtIds::default(),
            red_pt: None,
            packets_sent: 0,
            frames_suppressed: 0,
            frames_talked: 0,
            latency: LatencyHistogram::default(),
            packets_without_capture_time: 0,
            malformed_rtp: 0,
            local_candidates,
            restart_addr: None,
        }
    }

    /// The local candidates not taken yet, as SDP `candidate` attribute
    /// values (empty unless [`ClientSpec::trickle`]).
    pub fn take_local_candidates(&mut self) -> Vec<String> {
        std::mem::take(&mut self.local_candidates)
    }

    /// Adds a candidate of the other side (an SDP `candidate` attribute
    /// value, with or without `a=`/`candidate:`'s prefix as browsers give
    /// it); an error when it does not parse.
    pub fn add_remote_candidate(&mut self, candidate: &str, now: Instant) -> Result<(), String> {
        let c = candidate.trim().trim_start_matches("a=");
        let c = Candidate::from_sdp_string(c).map_err(|e| format!("candidate {c:?}: {e}"))?;
        self.rtc.add_remote_candidate(c);
        self.poll_rtc(now);
        Ok(())
    }

    /// Applies the engine's answer.
    ///
    /// # Panics
    /// If the answer does not parse or does not fit the offer (the simulated
    /// engine's answers always do); see [`try_accept_answer`](Self::try_accept_answer).
    pub fn accept_answer(&mut self, sdp: &str, now: Instant) {
        if let Err(e) = self.try_accept_answer(sdp, now) {
            panic!("engine answer: {e}");
        }
    }

    /// Applies a server's answer; an error when it does not parse, does not
    /// fit the offer, or no offer is pending.
    pub fn try_accept_answer(&mut self, sdp: &str, now: Instant) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("answer: {e}"))?;
        let pending = self.pending.take().ok_or("no offer is pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer not accepted: {e}"))?;
        if let Some(addr) = self.restart_addr.take() {
            let host = Candidate::host(addr, "udp").map_err(|e| e.to_string())?;
            self.rtc.add_local_candidate(host);
        }
        self.negotiated(sdp, now);
        Ok(())
    }

    /// The client's network changed: it now lives at `addr` (its old
    /// address is gone) and restarts ICE (new credentials, its only
    /// candidate the new host one), as `pc.restartIce()` does in a browser.
    /// Returns the new offer; apply the answer with
    /// [`accept_answer`](Self::accept_answer). An error when an offer is
    /// still pending.
    pub fn restart_ice(&mut self, addr: SocketAddr) -> Result<String, String> {
        if self.pending.is_some() {
            return Err("an offer is pending".into());
        }
        self.addr = addr;
        let mut api = self.rtc.sdp_api();
        api.ice_restart(false);
        let (offer, pending) = api.apply().ok_or("no change to offer")?;
        // str0m restarts its agent (dropping its candidates) when the answer
        // is applied; the new host candidate is added then.
        self.restart_addr = Some(addr);
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// What the session's SDP (the answer, made or received) fixed: header
    /// extension ids, RED, the uplink's Opus payload type.
    fn negotiated(&mut self, sdp: &str, now: Instant) {
        self.ext_ids = ExtIds::from_sdp(sdp);
        // str0m folds a negotiated RED onto the Opus parameters.
        self.red_pt = self
            .rtc
            .codec_config()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .and_then(|p| p.red());
        if let Some(up) = &mut self.uplink {
            let remote = self
                .rtc
                .media(up.mid)
                .map(|m| m.remote_pts().to_vec())
                .unwrap_or_default();
            up.pt = self
                .rtc
                .codec_config()
                .iter()
                .find(|p| p.spec().codec == Codec::Opus && remote.contains(&p.pt()))
                .map(|p| p.pt());
            up.next_frame = now;
        }
        self.poll_rtc(now);
    }

    /// The m-line the client sends on and the Opus payload type the answer
    /// agreed for it (`None` before the answer, or without an uplink).
    pub fn uplink(&self) -> Option<(Mid, Pt)> {
        let up = self.uplink.as_ref()?;
        Some((up.mid, up.pt?))
    }

    /// Starts or stops talking (amplitude 0 sends encoded silence, as a
    /// browser without DTX does). With a [`TalkPattern::Conversation`] the
    /// speaker talks at this amplitude during its spurts only.
    pub fn set_talking(&mut self, amplitude: f32) {
        if let Some(up) = &mut self.uplink {
            up.amplitude = if amplitude.is_nan() {
                0.0
            } else {
                amplitude.clamp(0.0, 1.0)
            };
        }
    }

    /// Whether the client is talking now (its amplitude is above 0; with a
    /// conversation pattern it may be in a pause).
    pub fn is_talking(&self) -> bool {
        self.uplink.as_ref().is_some_and(|u| u.amplitude > 0.0)
    }

    /// The client's wall-clock time at `at`, if it has a capture clock.
    fn wall_time(&self, at: Instant) -> Option<SystemTime> {
        let (i0, w0) = self.capture_clock?;
        match at.checked_duration_since(i0) {
            Some(d) => w0.checked_add(d),
            None => w0.checked_sub(i0.saturating_duration_since(at)),
        }
    }

    /// The earliest time the client needs to act.
    pub fn next_wakeup(&self) -> Instant {
        match &self.uplink {
            Some(u) if self.connected && u.pt.is_some() => self.timeout.min(u.next_frame),
            _ => self.timeout,
        }
    }

    /// Sends the frames that are due.
    pub fn send_due_frames(&mut self, now: Instant) {
        if !self.connected || self.closed {
            return;
        }
        loop {
            let Some(up) = &mut self.uplink else { return };
            let Some(pt) = up.pt else { return };
            if up.next_frame > now {
                return;
            }
            let talking = up.schedule.next_frame() && up.amplitude > 0.0;
            up.speaker
                .set_amplitude(if talking { up.amplitude } else { 0.0 });
            self.frames_talked += u64::from(talking);
            let frame = up.speaker.next_frame();
            let wallclock = up.next_frame;
            let ts = up.ts;
            up.ts = up.ts.wrapping_add(FRAME_SAMPLES as u32);
            up.next_frame += Duration::from_millis(20);
            if let Some(gate) = &mut up.dtx {
                if !gate.should_send(frame.payload.len()) {
                    up.gap = true;
                    self.frames_suppressed += 1;
                    continue;
                }
            }
            let marker = std::mem::take(&mut up.gap);
            let mut ext = if up.audio_level {
                ExtensionValues {
                    audio_level: Some(-(frame.level as i8)),
                    voice_activity: Some(up.voice_activity.unwrap_or(frame.voiced)),
                    ..Default::default()
                }
            } else {
                ExtensionValues::default()
            };
            let (seq, mid) = (up.seq, up.mid);
            up.seq += 1;
            let (pt, payload) = match self.red_pt {
                Some(red_pt) => (red_pt, up.wrap_red(pt, ts, frame.payload)),
                None => (pt, frame.payload),
            };
            ext.abs_capture_time = self.wall_time(now).map(|capture_time| AbsCaptureTime {
                capture_time,
                clock_offset: None,
            });
            let mut api = self.rtc.direct_api();
            if let Some(stream) = api.stream_tx_by_mid(mid, None) {
                stream.write_rtp(
                    RtpWrite::new(pt, seq.into(), ts, wallclock, payload)
                        .marker(marker)
                        .ext_vals(ext),
                );
                self.packets_sent += 1;
                // Wake str0m's pacer so the packet leaves now (as the
                // engine does), not at the next timeout.
                let _ = self.rtc.handle_input(RtcInput::Timeout(now));
            }
            self.poll_rtc(now);
        }
    }

    /// Moves the next 20 ms frame to no earlier than `now`, so that the
    /// frames a speaker missed while the simulation was held (a benchmark fed
    /// the engine directly in the meantime) are not sent late in one burst.
    /// Sequence numbers and RTP timestamps continue without a gap.
    pub fn skip_missed_frames(&mut self, now: Instant) {
        if let Some(up) = &mut self.uplink {
            up.next_frame = up.next_frame.max(now);
        }
    }

    /// Takes the datagrams the client wants sent (to put them on a real
    /// socket; [`Sim`](crate::Sim) does this itself).
    pub fn take_outbox(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.outbox)
    }

    /// Feeds a datagram.
    pub fn receive(&mut self, now: Instant, d: &Datagram) {
        self.receive_bytes(now, d.source, d.destination, &d.contents);
    }

    /// Feeds a datagram from `source` to `destination` (the client's
    /// address). With [`ClientSpec::raw_media`], once connected, an RTP
    /// datagram only updates the statistics.
    pub fn receive_bytes(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        if self.closed {
            return;
        }
        if self.raw_media && self.connected && DatagramKind::of(contents) == DatagramKind::Rtp {
            match parse_rtp_header(contents, self.ext_ids) {
                Some(h) => {
                    let highest = self
                        .streams
                        .get(&h.ssrc)
                        .filter(|s| s.stats.received > 0)
                        .map(|s| s.stats.highest_seq);
                    let capture = h.abs_capture_ntp.and_then(ntp::to_system_time);
                    let received = Received {
                        at: now,
                        seq: extend_seq(highest, h.seq),
                        ts: h.ts,
                        marker: h.marker,
                        pt: h.pt,
                        csrc: h.csrc,
                        level: h.audio_level.map(|(l, _)| l),
                        tone: None,
                        frames: 1,
                        after_sender_report: false,
                        latency: None,
                    };
                    self.record(h.ssrc, received, capture, None);
                }
                None => self.malformed_rtp += 1,
            }
            return;
        }
        if let Ok(r) = Receive::new(Protocol::Udp, source, destination, contents) {
            let _ = self.rtc.handle_input(RtcInput::Receive(now, r));
        }
        self.poll_rtc(now);
    }

    /// Logs a received packet: statistics, latency, the packet log, and
    /// the decoder when there is a payload and the client decodes.
    fn record(
        &mut self,
        ssrc: u32,
        mut r: Received,
        capture: Option<SystemTime>,
        payload: Option<Payload<'_>>,
    ) {
        r.latency = capture.and_then(|c| self.wall_time(r.at)?.duration_since(c).ok());
        match (capture, r.latency) {
            (None, _) => self.packets_without_capture_time += 1,
            // Arrived "before" it was captured: clocks differ; not counted.
            (Some(_), None) => {}
            (Some(_), Some(l)) => self.latency.record(l),
        }
        let decode = self.decode;
        let tones = &self.tones;
        let log = self.streams.entry(ssrc).or_insert_with(|| StreamLog {
            ssrc,
            packets: Vec::new(),
            decoder: decode.then(|| ToneListener::new(tones)),
            stats: StreamStats::default(),
            recovered: 0,
        });
        let last = (log.stats.received > 0).then_some(log.stats.highest_seq);
        log.stats.on_packet(
            r.at,
            r.at.saturating_duration_since(self.epoch),
            r.seq,
            r.ts,
        );
        if let (Some(d), Some(payload)) = (log.decoder.as_mut(), payload) {
            // Conceal a gap as a browser's jitter buffer would, so the
            // decoder state stays honest across losses; the frame just
            // before this packet's comes from its RED redundancy if it has
            // some.
            if let Some(last) = last {
                let gap = r.seq.saturating_sub(last + 1).min(10) as usize;
                match payload.previous {
                    Some(previous) if gap > 0 => {
                        d.conceal(gap - 1);
                        if d.decode(previous).is_ok() {
                            log.recovered += 1;
                        }
                    }
                    _ if gap > 0 => d.conceal(gap),
                    _ => {}
                }
            }
            r.tone = d.decode(payload.opus).ok().flatten();
            let frames = d.last_pcm().len() / crate::audio::FRAME_SAMPLES;
            r.frames = u8::try_from(frames.max(1)).unwrap_or(u8::MAX);
        }
        if self.log_packets {
            log.packets.push(r);
        }
    }

    /// Advances str0m's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            self.timeout = now + Duration::from_secs(3600);
            return;
        }
        let _ = self.rtc.handle_input(RtcInput::Timeout(now));
        self.poll_rtc(now);
    }

    fn poll_rtc(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    self.timeout = t;
                    return;
                }
                Ok(RtcOutput::Transmit(t)) => self.outbox.push(Datagram {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.into(),
                }),
                Ok(RtcOutput::Event(e)) => self.on_event(e, now),
                Err(_) => {
                    self.closed = true;
                    self.timeout = now + Duration::from_secs(3600);
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, e: RtcEvent, now: Instant) {
        match e {
            RtcEvent::Connected => self.connected = true,
            RtcEvent::Closed => self.closed = true,
            RtcEvent::RtpPacket(p) => {
                let received = Received {
                    at: now,
                    seq: *p.seq_no,
                    ts: p.header.timestamp,
                    marker: p.header.marker,
                    pt: *p.header.payload_type,
                    csrc: (p.header.csrc_count > 0).then_some(p.header.csrc[0]),
                    level: p
                        .header
                        .ext_vals
                        .audio_level
                        .map(|l| (-(l as i16)).clamp(0, 127) as u8),
                    tone: None,
                    frames: 1,
                    after_sender_report: p.last_sender_info.is_some(),
                    latency: None,
                };
                let capture = p.header.ext_vals.abs_capture_time.map(|a| a.capture_time);
                if Some(p.header.payload_type) != self.red_pt {
                    let payload = Payload {
                        opus: &p.payload,
                        previous: None,
                    };
                    self.record(*p.header.ssrc, received, capture, Some(payload));
                    return;
                }
                // RED: the primary is this packet's frame; the newest
                // redundant block is the frame before it.
                let blocks = RedDecoder::decode(&p.payload).unwrap_or_default();
                let Some((primary, redundant)) = blocks.split_last().filter(|(b, _)| b.is_primary)
                else {
                    self.malformed_rtp += 1;
                    return;
                };
                let payload = Payload {
                    opus: primary.payload,
                    previous: redundant.last().map(|b| b.payload),
                };
                self.record(*p.header.ssrc, received, capture, Some(payload));
            }
            _ => {}
        }
    }

    /// Tones heard (on any stream) in at least `min_frames` frames that
    /// arrived in `[from, to)`.
    pub fn tones_heard(&self, from: Instant, to: Instant, min_frames: usize) -> BTreeSet<usize> {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for s in self.streams.values() {
            for p in &s.packets {
                if p.at >= from && p.at < to {
                    if let Some(t) = p.tone {
                        *counts.entry(t).or_default() += usize::from(p.frames);
                    }
                }
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n >= min_frames)
            .map(|(t, _)| t)
            .collect()
    }

    /// The first arrival of a frame carrying `tone` at or after `from`.
    pub fn first_heard(&self, tone: usize, from: Instant) -> Option<Instant> {
        self.streams
            .values()
            .flat_map(|s| s.packets.iter())
            .filter(|p| p.at >= from && p.tone == Some(tone))
            .map(|p| p.at)
            .min()
    }

    /// Total packets received on all streams.
    pub fn packets_received(&self) -> usize {
        self.streams
            .values()
            .map(|s| s.stats.received as usize)
            .sum()
    }

    /// Whether the client sends audio (it was made with a tone).
    pub fn sends(&self) -> bool {
        self.uplink.is_some()
    }

    /// Whether the client is connected (ICE + DTLS) and not closed.
    pub fn is_connected(&self) -> bool {
        self.connected && !self.closed
    }

    /// Decode errors on all streams.
    pub fn decode_errors(&self) -> u64 {
        self.streams
            .values()
            .filter_map(|s| s.decoder.as_ref())
            .map(|d| d.errors())
            .sum()
    }
}

/// A client's str0m instance: full ICE, RTP mode, Opus (and RED when the
/// spec offers it), `abs-capture-time`, the given DTLS certificate.
fn build_rtc(spec: &ClientSpec, cert: &str0m::config::DtlsCert, now: Instant) -> Rtc {
    Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, spec.red)
        .set_extension(ABS_CAPTURE_TIME_ID, Extension::AbsoluteCaptureTime)
        .set_dtls_cert(cert.clone())
        .build(now)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::rtp::{RtpHeader, ABS_CAPTURE_TIME_URI};

    const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10_000);
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5_000);

    /// A test kit client and a plain str0m peer (ICE-lite, RTP mode, with
    /// abs-capture-time at another id than the client offers) that answers
    /// its offer, on a simulated clock, with a delay towards the client.
    struct Pair {
        now: Instant,
        client: Client,
        peer: Rtc,
        /// The peer's first sending m-line and its Opus payload type.
        peer_tx: Option<(Mid, Pt)>,
        peer_timeout: Instant,
        peer_connected: bool,
        /// Datagrams to the client: (arrival, bytes).
        to_client: Vec<(Instant, Vec<u8>)>,
        /// Datagrams the peer sent so far.
        peer_sent: usize,
        /// RTP packets the peer received.
        heard: Vec<str0m::rtp::RtpPacket>,
        /// Raw RTP datagrams the client sent.
        uplink: Vec<Vec<u8>>,
    }

    impl Pair {
        fn new(spec: &ClientSpec, start: Instant) -> Pair {
            let cert = str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate()
                .unwrap();
            let (client, offer) = Client::new("c", CLIENT, spec, &TONES, &cert, start);
            assert!(offer.contains(ABS_CAPTURE_TIME_URI), "{offer}");
            let mut peer = Rtc::builder()
                .set_ice_lite(true)
                .set_rtp_mode(true)
                .clear_codecs()
                .enable_opus(true, false)
                .set_extension(9, Extension::AbsoluteCaptureTime)
                .build(start);
            peer.add_local_candidate(Candidate::host(PEER, "udp").unwrap());
            let answer = peer
                .sdp_api()
                .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
                .unwrap()
                .to_sdp_string();
            let peer_tx = answer
                .lines()
                .filter_map(|l| l.trim().strip_prefix("a=mid:"))
                .map(Mid::from)
                .find(|m| peer.media(*m).is_some_and(|m| m.direction().is_sending()))
                .and_then(|mid| {
                    let remote = peer.media(mid)?.remote_pts().to_vec();
                    let pt = peer
                        .codec_config()
                        .iter()
                        .find(|p| p.spec().codec == Codec::Opus && remote.contains(&p.pt()))?
                        .pt();
                    Some((mid, pt))
                });
            let mut pair = Pair {
                now: start,
                client,
                peer,
                peer_tx,
                peer_timeout: start,
                peer_connected: false,
                to_client: Vec::new(),
                peer_sent: 0,
                heard: Vec::new(),
                uplink: Vec::new(),
            };
            pair.client.try_accept_answer(&answer, start).unwrap();
            // The answer keeps the offer's id.
            assert_eq!(
                pair.client.ext_ids.abs_capture_time,
                Some(ABS_CAPTURE_TIME_ID)
            );
            pair
        }

        /// Runs 1 ms steps for `d`; the peer's `n`th datagram reaches the
        /// client `delay(n)` after it leaves.
        fn run(&mut self, d: Duration, delay: &dyn Fn(usize) -> Duration) {
            let end = self.now + d;
            while self.now < end {
                self.step(delay);
            }
        }

        fn step(&mut self, delay: &dyn Fn(usize) -> Duration) {
            self.now += Duration::from_millis(1);
            let now = self.now;
            if self.client.next_wakeup() <= now {
                self.client.handle_timeout(now);
                self.client.send_due_frames(now);
            }
            for dg in self.client.take_outbox() {
                if DatagramKind::of(&dg.contents) == DatagramKind::Rtp {
                    self.uplink.push(dg.contents.clone());
                }
                let r = Receive::new(Protocol::Udp, CLIENT, PEER, &dg.contents).unwrap();
                self.peer.handle_input(RtcInput::Receive(now, r)).unwrap();
            }
            if self.peer_timeout <= now {
                self.peer.handle_input(RtcInput::Timeout(now)).unwrap();
            }
            self.poll_peer(delay);
            let (due, later): (Vec<_>, Vec<_>) =
                self.to_client.drain(..).partition(|(at, _)| *at <= now);
            self.to_client = later;
            for (_, bytes) in due {
                self.client.receive_bytes(now, PEER, CLIENT, &bytes);
            }
        }

        fn poll_peer(&mut self, delay: &dyn Fn(usize) -> Duration) {
            loop {
                match self.peer.poll_output().unwrap() {
                    RtcOutput::Timeout(t) => {
                        self.peer_timeout = t;
                        return;
                    }
                    RtcOutput::Transmit(t) => {
                        let at = self.now + delay(self.peer_sent);
                        self.peer_sent += 1;
                        self.to_client.push((at, t.contents.to_vec()));
                    }
                    RtcOutput::Event(RtcEvent::Connected) => self.peer_connected = true,
                    RtcOutput::Event(RtcEvent::RtpPacket(p)) => self.heard.push(p),
                    RtcOutput::Event(_) => {}
                }
            }
        }

        /// The peer sends one Opus frame on its sending m-line, stamped
        /// with abs-capture-time `capture`.
        fn peer_send(&mut self, payload: Vec<u8>, seq: u64, capture: SystemTime) {
            let (mid, pt) = self.peer_tx.unwrap();
            let now = self.now;
            let ext = ExtensionValues {
                abs_capture_time: Some(AbsCaptureTime {
                    capture_time: capture,
                    clock_offset: None,
                }),
                audio_level: Some(-20),
                voice_activity: Some(true),
                ..Default::default()
            };
            let ts = (seq as u32).wrapping_mul(FRAME_SAMPLES as u32);
            let mut api = self.peer.direct_api();
            let stream = api.stream_tx_by_mid(mid, None).unwrap();
            stream.write_rtp(RtpWrite::new(pt, seq.into(), ts, now, payload).ext_vals(ext));
            // Wake the pacer so the packet leaves now, as the engine does.
            self.peer.handle_input(RtcInput::Timeout(now)).unwrap();
        }
    }

    fn wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    #[test]
    fn conversation_speaker_with_dtx_stamps_capture_time() {
        let start = crate::epoch();
        let spec = ClientSpec {
            talk: TalkPattern::conversation(3),
            dtx: true,
            capture_clock: Some((start, wall())),
            ..ClientSpec::speaker(1)
        };
        let mut pair = Pair::new(&spec, start);
        pair.client.set_talking(0.5);
        let none = |_| Duration::ZERO;
        pair.run(Duration::from_secs(2), &none);
        assert!(pair.client.is_connected() && pair.peer_connected);
        let (heard0, sent0) = (pair.heard.len(), pair.client.packets_sent);
        pair.run(Duration::from_secs(10), &none);
        let frames = 500;
        let sent = pair.client.packets_sent - sent0;
        let suppressed = pair.client.frames_suppressed;
        // About 40% talk plus the hangover and DTX frames of the pauses.
        assert!(sent > 100 && sent < 450, "{sent} of {frames} frames sent");
        assert!(suppressed > 50, "{suppressed}");
        let heard = &pair.heard[heard0..];
        // The last packet may still wait for the client's pacer.
        assert!(
            sent - heard.len() as u64 <= 1,
            "{sent} sent, {} heard",
            heard.len()
        );
        // Sequence numbers continuous, timestamps in whole frames with gaps,
        // every packet stamped at the time it was handed to str0m.
        for w in heard.windows(2) {
            assert_eq!(*w[1].seq_no, *w[0].seq_no + 1);
            let dt = w[1].header.timestamp.wrapping_sub(w[0].header.timestamp);
            assert!(dt % FRAME_SAMPLES as u32 == 0 && dt > 0, "{dt}");
            if dt > FRAME_SAMPLES as u32 * 2 {
                assert!(w[1].header.marker, "a talkspurt after a DTX gap is marked");
            }
        }
        let stamped = |p: &str0m::rtp::RtpPacket| p.header.ext_vals.abs_capture_time.unwrap();
        for p in heard {
            let t = stamped(p).capture_time.duration_since(wall()).unwrap();
            let sent_at = p.timestamp.saturating_duration_since(start);
            // Handed to str0m and received in the same 1 ms step.
            assert!(
                t.abs_diff(sent_at) < Duration::from_micros(5),
                "{t:?} {sent_at:?}"
            );
        }
        assert!(heard
            .iter()
            .any(|p| p.header.ext_vals.voice_activity == Some(false)
                && p.header.ext_vals.audio_level == Some(-127)));
        // The same header, read from the SRTP datagram without decrypting.
        let ids = pair.client.ext_ids;
        let raw: Vec<RtpHeader> = pair
            .uplink
            .iter()
            .filter_map(|d| parse_rtp_header(d, ids))
            .collect();
        assert_eq!(raw.len(), pair.uplink.len());
        let last = heard.last().unwrap();
        let r = raw.iter().find(|h| h.seq == *last.seq_no as u16).unwrap();
        assert_eq!(r.ts, last.header.timestamp);
        assert_eq!(r.ssrc, *last.header.ssrc);
        let t = ntp::to_system_time(r.abs_capture_ntp.unwrap()).unwrap();
        let s = stamped(last).capture_time;
        assert!(t.duration_since(s).unwrap_or_else(|e| e.duration()) < Duration::from_micros(2));
        assert_eq!(
            r.audio_level.map(|(_, v)| v),
            last.header.ext_vals.voice_activity
        );
    }

    fn listener_hears(raw_media: bool) -> Client {
        let start = crate::epoch();
        let spec = ClientSpec {
            capture_clock: Some((start, wall())),
            raw_media,
            decode: !raw_media,
            log_packets: !raw_media,
            ..ClientSpec::listener()
        };
        let mut pair = Pair::new(&spec, start);
        // 7 ms, 11 ms, 7 ms, ... one way; RTCP and DTLS alike.
        let delay = |n: usize| Duration::from_millis(if n.is_multiple_of(2) { 7 } else { 11 });
        pair.run(Duration::from_secs(2), &delay);
        assert!(pair.client.is_connected() && pair.peer_connected);
        let mut speaker = ToneSpeaker::new(TONES[2], 0.5);
        for seq in 1..=250u64 {
            let payload = speaker.next_frame().payload;
            // Packet 100 is lost.
            if seq != 100 {
                let capture = pair.client.wall_time(pair.now).unwrap();
                pair.peer_send(payload, seq, capture);
                pair.poll_peer(&delay);
            }
            pair.run(Duration::from_millis(20), &delay);
        }
        pair.run(Duration::from_millis(50), &delay);
        pair.client
    }

    #[test]
    fn raw_media_listener_counts_like_a_decoding_one() {
        for raw in [true, false] {
            let c = listener_hears(raw);
            assert_eq!(c.streams.len(), 1, "raw {raw}");
            let s = &c.streams.values().next().unwrap().stats;
            assert_eq!(s.received, 249, "raw {raw}");
            assert_eq!(s.expected(), 250, "raw {raw}");
            assert_eq!(s.lost(), 1, "raw {raw}");
            assert_eq!(c.malformed_rtp, 0);
            assert_eq!(c.packets_without_capture_time, 0);
            // Packets alternate 7 and 11 ms: |D| is 4 ms per packet
            // (unless RTCP takes a turn), so the estimate approaches 4 ms.
            let j = s.jitter_ms();
            assert!((2.5..=4.5).contains(&j), "raw {raw}: jitter {j} ms");
            let l = &c.latency;
            assert_eq!(l.count(), 249);
            let p50 = l.quantile(0.5).unwrap();
            let p99 = l.quantile(0.99).unwrap();
            let near = |d: Duration, ms: u64| {
                d.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(ms * 20)
            };
            assert!(near(p50, 7) || near(p50, 11), "{p50:?}");
            assert!(near(p99, 11), "{p99:?}");
            assert_eq!(l.max(), Some(Duration::from_millis(11)));
            if raw {
                assert!(c.streams.values().all(|s| s.packets.is_empty()));
            } else {
                assert_eq!(
                    c.tones_heard(c.epoch, c.epoch + Duration::from_secs(60), 200),
                    [2].into()
                );
                assert_eq!(c.decode_errors(), 0);
            }
        }
    }
}
