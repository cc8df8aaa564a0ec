//! A WebRTC client in the simulation: a real str0m peer (full ICE, DTLS,
//! SRTP) that sends a tone encoded with real Opus and decodes what it hears.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};

use super::audio::{ToneListener, ToneSpeaker, FRAME_SAMPLES};
use super::net::Datagram;

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
    /// First CSRC, if any.
    pub csrc: Option<u32>,
    /// RFC 6464 level from the extension (0 loudest .. 127), if present.
    pub level: Option<u8>,
    /// The tone the decoded frame carries (index into the sim's tones).
    pub tone: Option<usize>,
    /// The stream's sender has sent an RTCP sender report by now.
    pub after_sender_report: bool,
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
}

impl StreamLog {
    /// Packets missing between the first and the highest sequence number.
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
    seq: u64,
    ts: u32,
    next_frame: Instant,
    /// Whether to put the RFC 6464 extension on packets.
    audio_level: bool,
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
    /// Decode received audio.
    pub decode: bool,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            tone: None,
            amplitude: 0.5,
            slots: 3,
            audio_level: true,
            decode: true,
        }
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
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_dtls_cert(cert.clone())
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        let mut api = rtc.sdp_api();
        let send_mid = spec
            .tone
            .map(|_| api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        for _ in 0..spec.slots {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().expect("offer has m-lines");
        let uplink = send_mid.zip(spec.tone).map(|(mid, f)| Uplink {
            mid,
            pt: None,
            speaker: ToneSpeaker::new(f, 0.0),
            seq: 1,
            ts: 0,
            next_frame: now,
            audio_level: spec.audio_level,
        });
        let client = Client {
            name: name.to_string(),
            addr,
            rtc,
            pending: Some(pending),
            uplink,
            decode: spec.decode,
            tones: tones.to_vec(),
            streams: BTreeMap::new(),
            connected: false,
            closed: false,
            timeout: now,
            outbox: Vec::new(),
        };
        (client, offer.to_sdp_string())
    }

    /// Applies the engine's answer.
    pub fn accept_answer(&mut self, sdp: &str, now: Instant) {
        let answer = SdpAnswer::from_sdp_string(sdp).expect("engine answer parses");
        let pending = self.pending.take().expect("an offer is pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("engine answer accepted");
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
        self.drain(now);
    }

    /// Starts or stops talking (amplitude 0 sends encoded silence, as a
    /// browser without DTX does).
    pub fn set_talking(&mut self, amplitude: f32) {
        if let Some(up) = &mut self.uplink {
            up.speaker.set_amplitude(amplitude);
        }
    }

    /// Whether the client is talking now.
    pub fn is_talking(&self) -> bool {
        self.uplink
            .as_ref()
            .is_some_and(|u| u.speaker.amplitude() > 0.0)
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
            let frame = up.speaker.next_frame();
            let ext = if up.audio_level {
                ExtensionValues {
                    audio_level: Some(-(frame.level as i8)),
                    voice_activity: Some(frame.voiced),
                    ..Default::default()
                }
            } else {
                ExtensionValues::default()
            };
            let wallclock = up.next_frame;
            let (seq, ts, mid) = (up.seq, up.ts, up.mid);
            up.seq += 1;
            up.ts = up.ts.wrapping_add(FRAME_SAMPLES as u32);
            up.next_frame += Duration::from_millis(20);
            let mut api = self.rtc.direct_api();
            if let Some(stream) = api.stream_tx_by_mid(mid, None) {
                stream.write_rtp(
                    RtpWrite::new(pt, seq.into(), ts, wallclock, frame.payload).ext_vals(ext),
                );
            }
            self.drain(now);
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
    /// socket; [`Sim`](super::Sim) does this itself).
    pub fn take_outbox(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.outbox)
    }

    /// Feeds a datagram.
    pub fn receive(&mut self, now: Instant, d: &Datagram) {
        if self.closed {
            return;
        }
        if let Ok(r) = Receive::new(Protocol::Udp, d.source, d.destination, &d.contents) {
            let _ = self.rtc.handle_input(RtcInput::Receive(now, r));
        }
        self.drain(now);
    }

    /// Advances str0m's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            self.timeout = now + Duration::from_secs(3600);
            return;
        }
        let _ = self.rtc.handle_input(RtcInput::Timeout(now));
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
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
                let ssrc = *p.header.ssrc;
                let decode = self.decode;
                let tones = &self.tones;
                let log = self.streams.entry(ssrc).or_insert_with(|| StreamLog {
                    ssrc,
                    packets: Vec::new(),
                    decoder: decode.then(|| ToneListener::new(tones)),
                });
                // Conceal a gap as a browser's jitter buffer would, so the
                // decoder state stays honest across losses.
                let last = log.packets.iter().map(|r| r.seq).max();
                let tone = log.decoder.as_mut().and_then(|d| {
                    if let Some(last) = last {
                        let gap = p.seq_no.saturating_sub(last + 1).min(10) as usize;
                        if gap > 0 {
                            d.conceal(gap);
                        }
                    }
                    d.decode(&p.payload).ok().flatten()
                });
                log.packets.push(Received {
                    at: now,
                    seq: *p.seq_no,
                    ts: p.header.timestamp,
                    marker: p.header.marker,
                    csrc: (p.header.csrc_count > 0).then_some(p.header.csrc[0]),
                    level: p
                        .header
                        .ext_vals
                        .audio_level
                        .map(|l| (-(l as i16)).clamp(0, 127) as u8),
                    tone,
                    after_sender_report: p.last_sender_info.is_some(),
                });
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
                        *counts.entry(t).or_default() += 1;
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
        self.streams.values().map(|s| s.packets.len()).sum()
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
