//! Reading RTP headers as they arrive, without decrypting: SRTP
//! authenticates the header but does not encrypt it, so sequence number,
//! timestamp, SSRC and header extensions of a forwarded packet can be read
//! from the datagram itself (the load generator's count-only listeners).

use media_core::DatagramKind;

/// `abs-capture-time`'s URI, as in SDP `a=extmap`.
pub const ABS_CAPTURE_TIME_URI: &str =
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

/// The RFC 6464 audio level extension's URI.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

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

/// Parses the RTP header (RFC 3550 §5.1) and its header extensions (RFC
/// 8285, one-byte `0xBEDE` and two-byte `0x100x` forms) of `buf`, reading
/// the extensions with the ids in `ids`. `None` when it is not a
/// well-formed RTP header. Never reads past `buf`.
pub fn parse_rtp_header(buf: &[u8], ids: ExtIds) -> Option<RtpHeader> {
    if DatagramKind::of(buf) != DatagramKind::Rtp {
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

#[cfg(test)]
mod tests {
    use crate::rng::SplitMix64;

    use super::*;

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
        let mut rng = SplitMix64::new(0x5EED);
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
    fn ext_ids_from_sdp() {
        let sdp = "v=0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
                   a=extmap:7/sendrecv http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n\
                   a=extmap:x bogus\r\na=extmap:\r\n";
        let ids = ExtIds::from_sdp(sdp);
        assert_eq!(ids.audio_level, Some(1));
        assert_eq!(ids.abs_capture_time, Some(7));
    }
}
