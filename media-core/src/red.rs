//! RFC 2198 redundant audio (RED) for Opus: accepted from senders, passed
//! through to listeners that negotiated it, unwrapped for the others.
//!
//! Chromium offers `red/48000/2` with `fmtp 111/111` on every audio m-line
//! and, once it is answered, sends each Opus frame together with the frame
//! before it. Forwarded unchanged, that lets a listener fill a single lost
//! packet without a retransmission; on our downlinks nothing else does (the
//! speaker's Opus in-band FEC follows the loss its own uplink reports, not
//! a listener's). It costs the redundant block's bytes on every packet, so
//! it goes only to listeners that negotiated RED; everyone else, the level
//! meter, selection and relay links get the primary block, which is plain
//! Opus and is found from the RED header alone (no decoding).

use std::sync::Arc;

use str0m::rtp::RedDecoder;

/// The RED payload a sender wrapped one Opus frame in, as received.
#[derive(Debug, Clone)]
pub(crate) struct RedPayload {
    /// The whole RED payload (str0m's buffer, shared, never copied).
    pub(crate) payload: Arc<[u8]>,
    /// The Opus payload type of its blocks (the sender's).
    pub(crate) opus_pt: u8,
}

/// A RED payload taken apart: its primary block, when that is Opus under
/// the sender's `opus_pt`, and whether every block is (only then may the
/// whole payload go to a listener, whose RED carries Opus alone). `None`
/// when the payload is not well-formed RFC 2198, its primary is empty or is
/// not Opus.
pub(crate) fn opus_primary(red: &[u8], opus_pt: u8) -> Option<(&[u8], bool)> {
    let blocks = RedDecoder::decode(red).ok()?;
    let primary = blocks.last().filter(|b| b.is_primary && b.pt == opus_pt)?;
    if primary.payload.is_empty() {
        return None;
    }
    Some((primary.payload, blocks.iter().all(|b| b.pt == opus_pt)))
}

#[cfg(test)]
mod tests {
    use str0m::rtp::{RedEncoder, RedundantBlock};

    use super::*;

    const OPUS: u8 = 111;

    fn previous(payload: &[u8]) -> RedundantBlock {
        RedundantBlock {
            pt: OPUS,
            timestamp_offset: 960,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn the_primary_is_the_last_block() {
        let red = RedEncoder::encode(OPUS, &[0x78, 1, 2, 3], &[previous(&[0x78, 9, 9])]);
        assert_eq!(opus_primary(&red, OPUS), Some((&[0x78, 1, 2, 3][..], true)));
        // Without redundancy (a talkspurt's first packet): one header byte.
        let red = RedEncoder::encode(OPUS, &[0x78, 4], &[]);
        assert_eq!(red, [OPUS, 0x78, 4]);
        assert_eq!(opus_primary(&red, OPUS), Some((&[0x78, 4][..], true)));
    }

    #[test]
    fn other_payload_types_and_malformed_payloads_are_refused() {
        let red = RedEncoder::encode(OPUS, &[0x78, 1], &[previous(&[0x78, 2])]);
        // The sender's Opus is another payload type than the blocks carry.
        assert_eq!(opus_primary(&red, 109), None);
        // A redundant block of another codec: the Opus primary is good, the
        // whole is not for a listener.
        let mixed = RedEncoder::encode(
            OPUS,
            &[0x78, 1],
            &[RedundantBlock {
                pt: 0,
                timestamp_offset: 960,
                payload: vec![1, 2],
            }],
        );
        assert_eq!(opus_primary(&mixed, OPUS), Some((&[0x78, 1][..], false)));
        // An empty primary, truncated headers and blocks, nothing at all.
        assert_eq!(opus_primary(&[OPUS], OPUS), None);
        assert_eq!(opus_primary(&[], OPUS), None);
        assert_eq!(opus_primary(&red[..3], OPUS), None);
        assert_eq!(opus_primary(&[0x80 | OPUS, 0, 0, 200, OPUS, 1], OPUS), None);
    }

    #[test]
    fn no_input_panics() {
        // Every short input and a spread of longer ones.
        let mut x: u32 = 1;
        for len in 0..64usize {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        (x >> 24) as u8
                    })
                    .collect();
                if let Some((p, _)) = opus_primary(&bytes, OPUS) {
                    assert!(!p.is_empty() && p.len() < bytes.len());
                }
            }
        }
    }
}
