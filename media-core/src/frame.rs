//! One audio frame of one voice, as selection and fan-out see it.
//!
//! This is the seam between where audio comes from and where it goes: a frame
//! received from a local peer and a frame relayed from another engine or node
//! look the same, so a channel's selection and fan-out never assume that every
//! member is local.

use std::sync::Arc;

use crate::SourceId;

/// An Opus frame with what routing needs to know about it.
#[derive(Debug, Clone)]
pub(crate) struct VoiceFrame {
    /// The voice it belongs to.
    pub(crate) source: SourceId,
    /// Extended (64-bit, rollover-free) RTP sequence number at the sender.
    pub(crate) seq: u64,
    /// RTP timestamp at the sender (48 kHz).
    pub(crate) rtp_ts: u32,
    /// RFC 6464 level: 0 = 0 dBov (loudest) .. 127 = silence.
    pub(crate) level: u8,
    /// The sender's voice-activity flag, when it sent one.
    pub(crate) vad: Option<bool>,
    /// The Opus payload, shared by every listener it is forwarded to.
    pub(crate) payload: Arc<[u8]>,
    /// The RFC 2198 RED payload the sender wrapped `payload` in, for
    /// listeners that negotiated RED (local senders only: relay messages
    /// carry the Opus payload).
    pub(crate) red: Option<crate::red::RedPayload>,
    /// When the sender captured it (`abs-capture-time`, forwarded unchanged
    /// so that receivers can measure end-to-end delay). Local members only:
    /// relay messages do not carry it.
    pub(crate) capture: Option<str0m::rtp::AbsCaptureTime>,
}

impl VoiceFrame {
    /// The frame as a relay message (the payload is shared, not copied).
    pub(crate) fn to_relay(&self, channel: &std::sync::Arc<str>) -> crate::RelayMsg {
        crate::RelayMsg::Media {
            channel: channel.clone(),
            source: self.source,
            seq: self.seq,
            rtp_ts: self.rtp_ts,
            level: self.level,
            vad: self.vad,
            payload: bytes::Bytes::from_owner(self.payload.clone()),
        }
    }

    /// Whether this frame counts as speech ([`crate::selection::is_speech`]).
    pub(crate) fn is_speech(&self, speech_level: u8) -> bool {
        crate::selection::is_speech(self.level, self.vad, speech_level)
    }
}

/// Converts str0m's audio level (negative dBov, `0` loudest) to RFC 6464 units.
pub(crate) fn level_from_ext(audio_level: i8) -> u8 {
    (-(audio_level as i16)).clamp(0, 127) as u8
}

/// Samples (at 48 kHz) an Opus packet carries, from its TOC byte and frame
/// count (RFC 6716 §3.1). `None` for an empty or malformed packet.
pub(crate) fn opus_samples(payload: &[u8]) -> Option<u32> {
    let toc = *payload.first()?;
    let config = toc >> 3;
    // Frame duration per configuration, in 48 kHz samples (RFC 6716 Table 2).
    let frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][(config % 4) as usize],
        12..=15 => [480, 960][(config % 2) as usize],
        _ => [120, 240, 480, 960][(config % 4) as usize],
    };
    let frames: u32 = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => (*payload.get(1)? & 0x3f) as u32,
    };
    let total = frame * frames;
    // A packet carries at most 120 ms (RFC 6716 §3.2.5).
    (total > 0 && total <= 5760).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_durations_from_toc() {
        // SILK WB 20 ms, one frame.
        assert_eq!(opus_samples(&[(9 << 3), 0xff]), Some(960));
        // CELT FB 10 ms, two frames.
        assert_eq!(opus_samples(&[(30 << 3) | 1]), Some(960));
        // Hybrid 20 ms, code 3 with 3 frames.
        assert_eq!(opus_samples(&[(13 << 3) | 3, 3]), Some(2880));
        // Code 3 with 0 frames or too long: malformed.
        assert_eq!(opus_samples(&[(13 << 3) | 3, 0]), None);
        assert_eq!(opus_samples(&[(3 << 3) | 3, 63]), None);
        assert_eq!(opus_samples(&[]), None);
        assert_eq!(opus_samples(&[(1 << 3) | 3]), None);
    }

    #[test]
    fn levels_from_str0m_extension_values() {
        assert_eq!(level_from_ext(-30), 30);
        assert_eq!(level_from_ext(0), 0);
        assert_eq!(level_from_ext(-128), 127);
        assert_eq!(level_from_ext(5), 0);
    }
}
