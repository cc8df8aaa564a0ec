//! What a datagram on a WebRTC port is, from its first bytes: the one
//! classifier of the engine (demux, the nominated-pair rule) and of the tools
//! that talk to it (the test kit's clients and simulated network).

/// The protocol of a datagram on a port shared by STUN, DTLS, RTP and RTCP,
/// told apart by the first byte ([RFC 7983 §7](https://www.rfc-editor.org/rfc/rfc7983#section-7))
/// and, for RTP and RTCP, the second
/// ([RFC 5761 §4](https://www.rfc-editor.org/rfc/rfc5761#section-4)).
///
/// Only the leading bytes are looked at: a datagram of a kind may still not
/// parse as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DatagramKind {
    /// First byte 0..=3.
    Stun,
    /// First byte 20..=63.
    Dtls,
    /// First byte 128..=191 (RTP version 2), second byte not an RTCP packet
    /// type, and at least the 12 bytes of a fixed RTP header.
    Rtp,
    /// First byte 128..=191, second byte an RTCP packet type (192..=223),
    /// and at least the 8 bytes of an RTCP header with its SSRC.
    Rtcp,
    /// Anything else: empty, too short, ZRTP, TURN channel data, unknown.
    Other,
}

impl DatagramKind {
    /// Classifies `datagram` by its first two bytes and its length.
    pub fn of(datagram: &[u8]) -> DatagramKind {
        match *datagram {
            [0..=3, ..] => DatagramKind::Stun,
            [20..=63, ..] => DatagramKind::Dtls,
            [128..=191, 192..=223, ..] if datagram.len() >= 8 => DatagramKind::Rtcp,
            [128..=191, _, ..] if datagram.len() >= 12 => DatagramKind::Rtp,
            _ => DatagramKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DatagramKind;

    #[test]
    fn kinds_by_first_bytes_and_length() {
        let rtp = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(DatagramKind::of(&rtp), DatagramKind::Rtp);
        // A marker bit set does not make it RTCP (111 | 0x80 = 239).
        let marked = [0x80, 0x80 | 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(DatagramKind::of(&marked), DatagramKind::Rtp);
        assert_eq!(DatagramKind::of(&rtp[..11]), DatagramKind::Other);
        let sr = [0x80, 200, 0, 6, 0, 0, 0, 1];
        assert_eq!(DatagramKind::of(&sr), DatagramKind::Rtcp);
        assert_eq!(DatagramKind::of(&sr[..7]), DatagramKind::Other);
        assert_eq!(
            DatagramKind::of(&[0, 1, 0, 0, 0x21, 0x12]),
            DatagramKind::Stun
        );
        // A first byte alone decides STUN: a short one is still STUN (that
        // does not parse), as the demux counts it.
        assert_eq!(DatagramKind::of(&[3]), DatagramKind::Stun);
        assert_eq!(DatagramKind::of(&[22, 0xfe, 0xfd]), DatagramKind::Dtls);
        assert_eq!(DatagramKind::of(&[]), DatagramKind::Other);
        assert_eq!(DatagramKind::of(&[16, 0, 0, 0]), DatagramKind::Other);
        assert_eq!(DatagramKind::of(&[64, 0, 0, 4]), DatagramKind::Other);
        assert_eq!(DatagramKind::of(&[0x40; 20]), DatagramKind::Other);
    }
}
