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
//! ([`ClientSpec::raw_media`]): SRTP authenticates the RTP header but does
//! not encrypt it, so sequence number, timestamp, SSRC and header
//! extensions are read from the datagram as it arrives
//! ([`parse_rtp_header`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{AbsCaptureTime, Extension, ExtensionValues, RtpWrite};
use str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};

use super::audio::{DtxGate, TalkPattern, TalkSchedule, ToneListener, ToneSpeaker, FRAME_SAMPLES};
use super::net::Datagram;

/// The RTP header extension id harness clients offer for
/// `abs-capture-time` (str0m's standard map leaves 5 free).
pub const ABS_CAPTURE_TIME_ID: u8 = 5;

/// `abs-capture-time`'s URI, as in SDP `a=extmap`.
pub const ABS_CAPTURE_TIME_URI: &str =
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

/// The RFC 6464 audio level extension's URI.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Opus's RTP clock rate (RFC 7587), the unit of RTP timestamps here.
const OPUS_CLOCK_HZ: f64 = 48_000.0;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

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
    /// One-way latency from the packet's `abs-capture-time` to its
    /// arrival, when it carried one and the client has a capture clock.
    pub latency: Option<Duration>,
}

/// RFC 3550 receiver statistics of one incoming stream, kept as packets
/// arrive (constant memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Packets received (duplicates included, as RFC 3550 counts them).
    pub received: u64,
    /// Lowest extended sequence number received.
    pub first_seq: u64,
    /// Highest extended sequence number received.
    pub highest_seq: u64,
    /// First and last arrival.
    pub first_at: Option<Instant>,
    /// Last arrival.
    pub last_at: Option<Instant>,
    /// Interarrival jitter estimate (RFC 3550 §6.4.1, A.8), in RTP
    /// timestamp units.
    jitter: f64,
    /// Arrival (timestamp units since the client's epoch) and RTP timestamp
    /// of the previous packet.
    previous: Option<(f64, u32)>,
}

impl StreamStats {
    /// Counts a packet with extended sequence number `seq` and RTP
    /// timestamp `ts` that arrived `arrival` after the client's epoch.
    fn on_packet(&mut self, at: Instant, arrival: Duration, seq: u64, ts: u32) {
        if self.received == 0 {
            self.first_seq = seq;
            self.highest_seq = seq;
            self.first_at = Some(at);
        }
        self.received += 1;
        self.first_seq = self.first_seq.min(seq);
        self.highest_seq = self.highest_seq.max(seq);
        self.last_at = Some(at);
        // J(i) = J(i-1) + (|D(i-1,i)| - J(i-1))/16, D = (Rj - Ri) - (Sj - Si),
        // in timestamp units, for packets in arrival order.
        let r = arrival.as_secs_f64() * OPUS_CLOCK_HZ;
        if let Some((r0, s0)) = self.previous {
            let d = (r - r0) - f64::from(ts.wrapping_sub(s0) as i32);
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.previous = Some((r, ts));
    }

    /// Packets expected: highest minus lowest sequence number, plus one.
    pub fn expected(&self) -> u64 {
        if self.received == 0 {
            0
        } else {
            self.highest_seq - self.first_seq + 1
        }
    }

    /// Packets lost: expected minus received (RFC 3550 §6.4.1; duplicates
    /// offset losses), at least 0.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The interarrival jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter / OPUS_CLOCK_HZ * 1e3
    }
}

/// The extended sequence number of `seq` given the highest extended one so
/// far (RFC 3550 A.1: the closest value with those low 16 bits). The first
/// packet starts one cycle up, so a packet reordered before it still fits.
pub fn extend_seq(highest: Option<u64>, seq: u16) -> u64 {
    match highest {
        None => (1 << 16) + u64::from(seq),
        Some(h) => {
            let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
            (h as i64).saturating_add(delta).max(0) as u64
        }
    }
}

/// A histogram of durations with 1 µs resolution below 100 µs and 2%
/// relative resolution above (up to about 12 minutes), in constant memory:
/// per-packet latencies of long runs and many listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Counts per bucket; empty until the first sample.
    counts: Vec<u32>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl LatencyHistogram {
    const EXACT_US: u64 = 100;
    const LOG_BUCKETS: usize = 800;
    const GROWTH: f64 = 1.02;

    fn bucket(us: u64) -> usize {
        if us < Self::EXACT_US {
            return us as usize;
        }
        let i = ((us as f64 / Self::EXACT_US as f64).ln() / Self::GROWTH.ln()) as usize;
        Self::EXACT_US as usize + i.min(Self::LOG_BUCKETS - 1)
    }

    /// A representative value of bucket `i` (its geometric middle).
    fn value_us(i: usize) -> f64 {
        if i < Self::EXACT_US as usize {
            i as f64
        } else {
            let k = (i - Self::EXACT_US as usize) as f64 + 0.5;
            Self::EXACT_US as f64 * Self::GROWTH.powf(k)
        }
    }

    /// Adds a sample.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if self.counts.is_empty() {
            self.counts = vec![0; Self::EXACT_US as usize + Self::LOG_BUCKETS];
        }
        let b = &mut self.counts[Self::bucket(us)];
        *b = b.saturating_add(1);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean of the samples.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_us / self.count))
    }

    /// Largest sample (exact; of everything recorded, see
    /// [`since`](Self::since)).
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.max_us))
    }

    /// The `q` quantile (0..=1), within the bucket resolution.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let rank = ((total.saturating_sub(1)) as f64 * q.clamp(0.0, 1.0)).round() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen > rank {
                return Some(Duration::from_nanos((Self::value_us(i) * 1e3) as u64));
            }
        }
        self.max()
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; other.counts.len()];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The samples recorded since `earlier` (a clone of this histogram
    /// taken before). The maximum is that of all samples.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = self.clone();
        for (a, b) in d.counts.iter_mut().zip(&earlier.counts) {
            *a = a.saturating_sub(*b);
        }
        d.count = d.count.saturating_sub(earlier.count);
        d.sum_us = d.sum_us.saturating_sub(earlier.sum_us);
        d
    }
}

/// Header extension ids negotiated for a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtIds {
    /// `abs-capture-time`.
    pub abs_capture_time: Option<u8>,
    /// RFC 6464 audio level.
    pub audio_level: Option<u8>,
}

impl ExtIds {
    /// The ids an SDP (offer or answer) maps the two extensions to (the
    /// first `a=extmap` of each).
    pub fn from_sdp(sdp: &str) -> ExtIds {
        let mut ids = ExtIds::default();
        for line in sdp.lines() {
            let Some(rest) = line.trim().strip_prefix("a=extmap:") else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            let (Some(id), Some(uri)) = (parts.next(), parts.next()) else {
                continue;
            };
            // "5" or "5/sendonly".
            let Ok(id) = id.split('/').next().unwrap_or("").parse::<u8>() else {
                continue;
            };
            if uri == ABS_CAPTURE_TIME_URI {
                ids.abs_capture_time.get_or_insert(id);
            } else if uri == AUDIO_LEVEL_URI {
                ids.audio_level.get_or_insert(id);
            }
        }
        ids
    }
}

/// What [`parse_rtp_header`] reads from an RTP packet (plain or SRTP: the
/// header is not encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// SSRC.
    pub ssrc: u32,
    /// First CSRC, if any.
    pub csrc: Option<u32>,
    /// `abs-capture-time`: the 64-bit NTP timestamp (Q32.32).
    pub abs_capture_ntp: Option<u64>,
    /// RFC 6464 level (0 loudest .. 127) and voice activity bit.
    pub audio_level: Option<(u8, bool)>,
}

/// Whether a datagram is RTP rather than RTCP, STUN or DTLS (RFC 7983 first
/// byte 128..=191; RFC 5761: RTCP packet types 192..=223 in the second).
pub fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= 12 && (128..=191).contains(&buf[0]) && !(192..=223).contains(&buf[1])
}

/// Parses the RTP header (RFC 3550 §5.1) and its header extensions (RFC
/// 8285, one-byte `0xBEDE` and two-byte `0x100x` forms) of `buf`, reading
/// the extensions with the ids in `ids`. `None` when it is not a
/// well-formed RTP header. Never reads past `buf`.
pub fn parse_rtp_header(buf: &[u8], ids: ExtIds) -> Option<RtpHeader> {
    if !is_rtp(buf) || buf[0] >> 6 != 2 {
        return None;
    }
    let be32 = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let cc = usize::from(buf[0] & 0x0f);
    let mut h = RtpHeader {
        marker: buf[1] & 0x80 != 0,
        pt: buf[1] & 0x7f,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        ts: be32(buf, 4)?,
        ssrc: be32(buf, 8)?,
        csrc: None,
        abs_capture_ntp: None,
        audio_level: None,
    };
    if cc > 0 {
        h.csrc = Some(be32(buf, 12)?);
    }
    let at = 12 + 4 * cc;
    if buf.len() < at {
        return None;
    }
    if buf[0] & 0x10 == 0 {
        return Some(h);
    }
    let profile = u16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?);
    let words = usize::from(u16::from_be_bytes(
        buf.get(at + 2..at + 4)?.try_into().ok()?,
    ));
    let ext = buf.get(at + 4..at + 4 + 4 * words)?;
    let two_byte = match profile {
        0xBEDE => false,
        p if p & 0xfff0 == 0x1000 => true,
        // Another profile's extension: the header is fine, nothing to read.
        _ => return Some(h),
    };
    let mut i = 0;
    while i < ext.len() {
        let (id, len, data_at) = if two_byte {
            let id = ext[i];
            if id == 0 {
                i += 1;
                continue;
            }
            let len = usize::from(*ext.get(i + 1)?);
            (id, len, i + 2)
        } else {
            let id = ext[i] >> 4;
            if id == 0 {
                // Padding.
                i += 1;
                continue;
            }
            if id == 15 {
                break;
            }
            (id, usize::from(ext[i] & 0x0f) + 1, i + 1)
        };
        let data = ext.get(data_at..data_at + len)?;
        if Some(id) == ids.abs_capture_time && len >= 8 {
            h.abs_capture_ntp = Some(u64::from_be_bytes(data[..8].try_into().ok()?));
        } else if Some(id) == ids.audio_level && len >= 1 {
            h.audio_level = Some((data[0] & 0x7f, data[0] & 0x80 != 0));
        }
        i = data_at + len;
    }
    Some(h)
}

/// The wall-clock time of a 64-bit NTP timestamp (Q32.32 seconds since
/// 1900); `None` before 1970.
pub fn ntp_to_system_time(ntp: u64) -> Option<SystemTime> {
    let secs = (ntp >> 32).checked_sub(NTP_UNIX_OFFSET_SECS)?;
    let nanos = ((ntp & 0xffff_ffff) * 1_000_000_000) >> 32;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
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
    /// Datagrams that looked like RTP but did not parse (raw media mode).
    pub malformed_rtp: u64,
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
    /// When a speaker talks (while its amplitude is above 0).
    pub talk: TalkPattern,
    /// Opus DTX: during silence send only what WebRTC sends ([`DtxGate`]);
    /// the RTP timestamp advances 20 ms per frame, sent or not, the
    /// sequence number only per packet sent.
    pub dtx: bool,
    /// Maps the client's `Instant`s to wall-clock time: speakers stamp every
    /// packet with `abs-capture-time` (the time it is handed to str0m), and
    /// listeners measure one-way latency from it. Give every client of a
    /// process the same pair: latency is then exact on one clock. `None`:
    /// no stamps, no latency.
    pub capture_clock: Option<(Instant, SystemTime)>,
    /// Keep every received packet in [`StreamLog::packets`] (off for large
    /// crowds: [`StreamLog::stats`] is kept anyway).
    pub log_packets: bool,
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
            decode: true,
            talk: TalkPattern::Continuous,
            dtx: false,
            capture_clock: None,
            log_packets: true,
            raw_media: false,
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
            .set_extension(ABS_CAPTURE_TIME_ID, Extension::AbsoluteCaptureTime)
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
            }
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
            epoch: now,
            capture_clock: spec.capture_clock,
            log_packets: spec.log_packets,
            raw_media: spec.raw_media && !spec.decode,
            ext_ids: ExtIds::default(),
            packets_sent: 0,
            frames_suppressed: 0,
            frames_talked: 0,
            latency: LatencyHistogram::default(),
            packets_without_capture_time: 0,
            malformed_rtp: 0,
        };
        (client, offer.to_sdp_string())
    }

    /// Applies the engine's answer.
    ///
    /// # Panics
    /// If the answer does not parse or does not fit the offer (the harness
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
        self.ext_ids = ExtIds::from_sdp(sdp);
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
        Ok(())
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
                    voice_activity: Some(frame.voiced),
                    ..Default::default()
                }
            } else {
                ExtensionValues::default()
            };
            let (seq, mid) = (up.seq, up.mid);
            up.seq += 1;
            ext.abs_capture_time = self.wall_time(now).map(|capture_time| AbsCaptureTime {
                capture_time,
                clock_offset: None,
            });
            let mut api = self.rtc.direct_api();
            if let Some(stream) = api.stream_tx_by_mid(mid, None) {
                stream.write_rtp(
                    RtpWrite::new(pt, seq.into(), ts, wallclock, frame.payload)
                        .marker(marker)
                        .ext_vals(ext),
                );
                self.packets_sent += 1;
                // Wake str0m's pacer so the packet leaves now (as the
                // engine does), not at the next timeout.
                let _ = self.rtc.handle_input(RtcInput::Timeout(now));
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
        if self.raw_media && self.connected && is_rtp(contents) {
            match parse_rtp_header(contents, self.ext_ids) {
                Some(h) => {
                    let highest = self
                        .streams
                        .get(&h.ssrc)
                        .filter(|s| s.stats.received > 0)
                        .map(|s| s.stats.highest_seq);
                    let capture = h.abs_capture_ntp.and_then(ntp_to_system_time);
                    let received = Received {
                        at: now,
                        seq: extend_seq(highest, h.seq),
                        ts: h.ts,
                        marker: h.marker,
                        csrc: h.csrc,
                        level: h.audio_level.map(|(l, _)| l),
                        tone: None,
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
        self.drain(now);
    }

    /// Logs a received packet: statistics, latency, the packet log, and
    /// the decoder when there is a payload and the client decodes.
    fn record(
        &mut self,
        ssrc: u32,
        mut r: Received,
        capture: Option<SystemTime>,
        payload: Option<&[u8]>,
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
            // decoder state stays honest across losses.
            if let Some(last) = last {
                let gap = r.seq.saturating_sub(last + 1).min(10) as usize;
                if gap > 0 {
                    d.conceal(gap);
                }
            }
            r.tone = d.decode(payload).ok().flatten();
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
                let received = Received {
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
                    tone: None,
                    after_sender_report: p.last_sender_info.is_some(),
                    latency: None,
                };
                let capture = p.header.ext_vals.abs_capture_time.map(|a| a.capture_time);
                self.record(*p.header.ssrc, received, capture, Some(&p.payload));
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use str0m::change::SdpOffer;

    use super::*;
    use crate::harness::audio::TONES;
    use crate::rng::Rng;

    const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10_000);
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5_000);

    /// A harness client and a plain str0m peer (ICE-lite, RTP mode, with
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
                if is_rtp(&dg.contents) {
                    self.uplink.push(dg.contents.clone());
                }
                let r = Receive::new(Protocol::Udp, CLIENT, PEER, &dg.contents).unwrap();
                self.peer.handle_input(RtcInput::Receive(now, r)).unwrap();
            }
            if self.peer_timeout <= now {
                self.peer.handle_input(RtcInput::Timeout(now)).unwrap();
            }
            self.drain_peer(delay);
            let (due, later): (Vec<_>, Vec<_>) =
                self.to_client.drain(..).partition(|(at, _)| *at <= now);
            self.to_client = later;
            for (_, bytes) in due {
                self.client.receive_bytes(now, PEER, CLIENT, &bytes);
            }
        }

        fn drain_peer(&mut self, delay: &dyn Fn(usize) -> Duration) {
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
        let start = crate::test_epoch();
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
        let t = ntp_to_system_time(r.abs_capture_ntp.unwrap()).unwrap();
        let s = stamped(last).capture_time;
        assert!(t.duration_since(s).unwrap_or_else(|e| e.duration()) < Duration::from_micros(2));
        assert_eq!(
            r.audio_level.map(|(_, v)| v),
            last.header.ext_vals.voice_activity
        );
    }

    fn listener_hears(raw_media: bool) -> Client {
        let start = crate::test_epoch();
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
                pair.drain_peer(&delay);
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

    #[test]
    fn rtp_header_parses_both_extension_forms() {
        let ids = ExtIds {
            abs_capture_time: Some(5),
            audio_level: Some(1),
        };
        // One-byte form: level (1 byte), padding, abs-capture-time (16).
        let mut p = vec![
            0x90 | 1,
            0x80 | 111,
            0x12,
            0x34,
            0,
            0,
            0x03,
            0xC0,
            0xAA,
            0xBB,
            0xCC,
            0xDD,
        ];
        p.extend_from_slice(&7u32.to_be_bytes());
        let mut ext = vec![0x10, 0x80 | 33, 0x00, 0x5F];
        ext.extend_from_slice(&0x0123_4567_89AB_CDEFu64.to_be_bytes());
        ext.extend_from_slice(&[0; 8]);
        while ext.len() % 4 != 0 {
            ext.push(0);
        }
        p.extend_from_slice(&[0xBE, 0xDE]);
        p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&ext);
        p.extend_from_slice(&[1, 2, 3]);
        let h = parse_rtp_header(&p, ids).unwrap();
        assert!(h.marker);
        assert_eq!(
            (h.pt, h.seq, h.ts, h.ssrc, h.csrc),
            (111, 0x1234, 960, 0xAABB_CCDD, Some(7))
        );
        assert_eq!(h.audio_level, Some((33, true)));
        assert_eq!(h.abs_capture_ntp, Some(0x0123_4567_89AB_CDEF));
        // Not asked for: not read.
        assert_eq!(
            parse_rtp_header(&p, ExtIds::default())
                .unwrap()
                .abs_capture_ntp,
            None
        );
        // Truncated anywhere: None or a header without the cut extension,
        // never a panic.
        for n in 0..p.len() {
            if let Some(h) = parse_rtp_header(&p[..n], ids) {
                assert_eq!(h.seq, 0x1234);
            }
        }
        // Two-byte form (0x1000): id, length, data.
        let mut q = vec![0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0x00, 0, 4];
        q.extend_from_slice(&[0, 5, 8]);
        q.extend_from_slice(&42u64.to_be_bytes());
        q.extend_from_slice(&[1, 1, 0x7f, 0, 0]);
        let h = parse_rtp_header(&q, ids).unwrap();
        assert_eq!(h.abs_capture_ntp, Some(42));
        assert_eq!(h.audio_level, Some((127, false)));
        // RTCP, STUN, DTLS and short datagrams are not RTP.
        assert!(parse_rtp_header(&[0x80, 200, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0], ids).is_none());
        assert!(parse_rtp_header(&[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0], ids).is_none());
        assert!(parse_rtp_header(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0], ids).is_none());
        assert!(parse_rtp_header(&[0x80, 111], ids).is_none());
        // Garbage never panics.
        let mut rng = Rng::new(0x5EED);
        let mut buf = [0u8; 64];
        for _ in 0..20_000 {
            let n = (rng.next_u64() % 64) as usize;
            for b in &mut buf[..n] {
                *b = rng.next_u64() as u8;
            }
            buf[0] = 0x80 | (buf[0] & 0x1f);
            let _ = parse_rtp_header(&buf[..n], ids);
        }
    }

    #[test]
    fn sequence_numbers_extend_across_wraps() {
        let mut h = None;
        let mut out = Vec::new();
        for seq in [65_533u16, 65_534, 65_535, 0, 1, 65_535, 2] {
            let e = extend_seq(h, seq);
            h = Some(h.map_or(e, |h: u64| h.max(e)));
            out.push(e);
        }
        let base = (1u64 << 16) + 65_533;
        assert_eq!(
            out,
            [
                base,
                base + 1,
                base + 2,
                base + 3,
                base + 4,
                base + 2,
                base + 5
            ]
        );
        assert_eq!(extend_seq(Some(3), 65_535), 0);
    }

    #[test]
    fn histogram_quantiles_and_windows() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let before = h.clone();
        let close = |d: Option<Duration>, ms: f64| {
            let d = d.unwrap().as_secs_f64() * 1e3;
            assert!((d - ms).abs() <= ms * 0.02 + 0.001, "{d} vs {ms}");
        };
        close(h.quantile(0.5), 50.5);
        close(h.quantile(0.99), 99.0);
        close(h.quantile(0.0), 1.0);
        close(h.mean(), 50.5);
        for _ in 0..100 {
            h.record(Duration::from_micros(40));
        }
        let w = h.since(&before);
        assert_eq!(w.count(), 100);
        assert_eq!(w.quantile(0.5), Some(Duration::from_micros(40)));
        let mut m = LatencyHistogram::default();
        m.merge(&w);
        m.merge(&before);
        assert_eq!(m.count(), 200);
        h.record(Duration::MAX);
        assert!(h.max().is_some());
    }

    #[test]
    fn ext_ids_and_ntp() {
        let sdp = "v=0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
                   a=extmap:7/sendrecv http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n\
                   a=extmap:x bogus\r\na=extmap:\r\n";
        let ids = ExtIds::from_sdp(sdp);
        assert_eq!(ids.audio_level, Some(1));
        assert_eq!(ids.abs_capture_time, Some(7));
        let t = ntp_to_system_time((NTP_UNIX_OFFSET_SECS + 10) << 32 | 0x8000_0000).unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_millis(10_500));
        assert_eq!(ntp_to_system_time(5), None);
    }
}
