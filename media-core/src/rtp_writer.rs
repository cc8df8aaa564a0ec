//! The RTP and RTCP packets of the slots the engine sends itself (direct
//! SRTP, see [`srtp`](crate::srtp)): a rewritten voice frame as an RTP packet
//! with its header extensions, and a slot's sender report. Plain bytes;
//! sealing is the caller's.

use std::time::Instant;

use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, ExtensionMap, Ssrc};

use crate::frame::VoiceFrame;
use crate::ntp;
use crate::slot::Rewritten;
use crate::srtp::{SRTCP_OVERHEAD, SRTP_OVERHEAD};

/// One-byte header extension ids (RFC 8285) a listener negotiated on a
/// slot's m-line; `0` = not negotiated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeaderExtIds {
    audio_level: u8,
    mid: u8,
    abs_capture_time: u8,
}

impl HeaderExtIds {
    pub(crate) fn of(map: &ExtensionMap) -> HeaderExtIds {
        // The one-byte form carries ids 1..=14 only.
        let id = |e: Extension| map.id_of(e).filter(|id| (1..=14).contains(id)).unwrap_or(0);
        HeaderExtIds {
            audio_level: id(Extension::AudioLevel),
            mid: id(Extension::RtpMid),
            abs_capture_time: id(Extension::AbsoluteCaptureTime),
        }
    }
}

/// What an RTCP sender report about a slot says (RFC 3550 §6.4.1), and when
/// the next one is due.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlotReport {
    packets: u32,
    octets: u32,
    next_report: Option<Instant>,
}

/// How often a slot that is sending gets a sender report.
const SENDER_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl SlotReport {
    /// Counts a packet sent with `payload_len` bytes of payload; true when
    /// a sender report is due now (then the next one is 5 s away).
    pub(crate) fn count(&mut self, payload_len: usize, now: Instant) -> bool {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        if self.next_report.is_some_and(|t| t > now) {
            return false;
        }
        self.next_report = Some(now + SENDER_REPORT_INTERVAL);
        true
    }
}

/// What is fixed about one slot's RTP stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotStream<'a> {
    pub(crate) ssrc: Ssrc,
    pub(crate) mid: &'a Mid,
    pub(crate) exts: HeaderExtIds,
}

/// What one packet of a slot carries: a payload type and its bytes (the
/// voice's Opus, or the RED it came in), at the rewritten sequence number
/// and timestamp.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotPacket<'a> {
    pub(crate) pt: Pt,
    pub(crate) payload: &'a [u8],
    pub(crate) rw: Rewritten,
}

/// An RTP packet (RFC 3550 §5.1) of `frame` on a slot's stream, with CSRC =
/// the voice and the negotiated one-byte extensions: audio level, mid, and
/// `abs-capture-time` passed through from the speaker. Returns the packet
/// and its header length; room for the SRTP tag is reserved.
pub(crate) fn rtp_packet(
    stream: SlotStream<'_>,
    packet: SlotPacket<'_>,
    frame: &VoiceFrame,
) -> (Vec<u8>, usize) {
    let SlotPacket { pt, payload, rw } = packet;
    let mut pkt = Vec::with_capacity(16 + 28 + payload.len() + SRTP_OVERHEAD);
    // V=2, X when there are extensions, one CSRC (the voice).
    pkt.extend_from_slice(&[0x80 | 0x01, (u8::from(rw.marker) << 7) | (*pt & 0x7f)]);
    pkt.extend_from_slice(&(rw.seq as u16).to_be_bytes());
    pkt.extend_from_slice(&rw.ts.to_be_bytes());
    pkt.extend_from_slice(&stream.ssrc.to_be_bytes());
    pkt.extend_from_slice(&frame.source.0.to_be_bytes());
    // RFC 8285 one-byte header extensions.
    let ext_start = pkt.len();
    pkt.extend_from_slice(&[0xbe, 0xde, 0, 0]);
    let e = stream.exts;
    if e.audio_level != 0 {
        // RFC 6464: V flag, then the level in -dBov.
        let v = if frame.vad == Some(false) { 0 } else { 0x80 };
        pkt.extend_from_slice(&[e.audio_level << 4, v | frame.level.min(127)]);
    }
    let mid = stream.mid.as_bytes();
    if e.mid != 0 && (1..=16).contains(&mid.len()) {
        pkt.push((e.mid << 4) | (mid.len() as u8 - 1));
        pkt.extend_from_slice(mid);
    }
    if let (true, Some(c)) = (e.abs_capture_time != 0, &frame.capture) {
        if let Some(q) = ntp::from_system_time(c.capture_time) {
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
    (pkt, header_len)
}

/// A compound RTCP packet: a sender report (RFC 3550 §6.4.1, sent right
/// after a packet, so the RTP timestamp is that packet's) and an SDES with
/// the CNAME (§6.5).
pub(crate) fn sender_report(
    ssrc: Ssrc,
    ntp: u64,
    rtp_ts: u32,
    r: &SlotReport,
    cname: &str,
) -> Vec<u8> {
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
