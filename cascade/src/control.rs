//! Reading the control stream, sans-IO: what a link does with the bytes its
//! reliable control stream delivers, in whatever pieces QUIC hands them over.
//!
//! [`ControlReader::push`] each piece read, then [`ControlReader::poll`]
//! until it returns `None`. Every complete frame gives one
//! [`ControlItem`]: a message, or a frame whose body did not decode
//! (dropped, counted, the stream goes on). A length prefix over
//! [`MAX_FRAME`] loses the framing for good ([`ControlItem::Lost`], once):
//! the link must be closed, and the reader ignores whatever follows.
//!
//! The link's receive task (`link/conn.rs`) is a loop around this reader;
//! the `control_stream` fuzz target drives the same reader with arbitrary
//! bytes cut at arbitrary places ([`fuzz_control_stream`]).
//!
//! Memory: after `poll` returned `None` the reader holds at most one
//! incomplete frame, fewer than [`FRAME_HEADER_LEN`] + [`MAX_FRAME`] bytes,
//! so a link holds at most that plus one read.

use bytes::Bytes;
use media_core::RelayMsg;

use crate::wire::{decode_datagram, FrameDecoder, WireError, FRAME_HEADER_LEN, MAX_FRAME};

/// What one complete frame of the control stream gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlItem {
    /// A message to deliver.
    Message(RelayMsg),
    /// A frame whose body did not decode: dropped; the next frame follows.
    Malformed(WireError),
    /// The framing is lost (a length prefix over [`MAX_FRAME`]): nothing
    /// more can be read from this stream; close the link. Given once.
    Lost(WireError),
}

/// Splits the control stream into [`ControlItem`]s. See the module
/// documentation.
#[derive(Debug, Default)]
pub struct ControlReader {
    frames: FrameDecoder,
    lost: bool,
}

impl ControlReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream (ignored once the framing is lost).
    pub fn push(&mut self, bytes: &[u8]) {
        self.frames.push(bytes);
    }

    /// The next item, or `None` when no complete frame is buffered (or the
    /// framing was lost and that was already said).
    pub fn poll(&mut self) -> Option<ControlItem> {
        if self.lost {
            return None;
        }
        match self.frames.next() {
            Ok(Some(msg)) => Some(ControlItem::Message(msg)),
            Ok(None) => None,
            Err(e) if self.frames.is_failed() => {
                self.lost = true;
                Some(ControlItem::Lost(e))
            }
            Err(e) => Some(ControlItem::Malformed(e)),
        }
    }

    /// Bytes held and not yet given out.
    pub fn buffered(&self) -> usize {
        self.frames.buffered()
    }

    /// Whether the framing was lost.
    pub fn is_lost(&self) -> bool {
        self.lost
    }
}

/// Fuzz body (what `fuzz/fuzz_targets/control_stream.rs` runs; the tests run
/// it too). The first byte chooses how the rest, the stream, is cut into
/// reads: `0` in one read, `n` in reads of 1 to `n` bytes (a fixed
/// pseudo-random sequence). It must never panic, and it asserts:
///
/// - the items are exactly those of the stream parsed whole by the plain
///   model below (length, limit check, body decode), however it was cut;
/// - after each read is drained, the reader holds fewer than
///   [`FRAME_HEADER_LEN`] + [`MAX_FRAME`] bytes, and no more than the frame
///   it waits for needs;
/// - once the framing is lost the reader holds nothing, takes nothing, and
///   gives nothing more.
#[doc(hidden)]
pub fn fuzz_control_stream(data: &[u8]) {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    let (expected, left_over) = parse_whole(stream);
    let mut reader = ControlReader::new();
    let mut items = Vec::new();
    let mut cuts = Cuts::new(shape, stream.len());
    let mut pushed = 0;
    while pushed < stream.len() {
        let read = &stream[pushed..(pushed + cuts.next_len()).min(stream.len())];
        pushed += read.len();
        let before = reader.buffered();
        reader.push(read);
        if reader.is_lost() {
            assert_eq!(reader.buffered(), 0, "a lost reader holds bytes");
        } else {
            assert_eq!(
                reader.buffered(),
                before + read.len(),
                "a read was not kept whole"
            );
        }
        while let Some(item) = reader.poll() {
            items.push(item);
        }
        check_holding(&reader, &stream[..pushed]);
    }
    assert_eq!(
        items, expected,
        "the items depend on how the stream was cut"
    );
    if reader.is_lost() {
        assert_eq!(reader.poll(), None, "a lost reader gave more");
    } else {
        assert_eq!(reader.buffered(), left_over, "bytes lost or invented");
    }
}

/// What the reader may hold after a drain of what was `pushed`: the tail of
/// it, an incomplete header or an allowed length with less than its body.
fn check_holding(reader: &ControlReader, pushed: &[u8]) {
    let held = reader.buffered();
    if reader.is_lost() {
        assert_eq!(held, 0, "a lost reader holds bytes");
        return;
    }
    assert!(held < FRAME_HEADER_LEN + MAX_FRAME, "holds {held} bytes");
    assert!(held <= pushed.len(), "holds more than it was given");
    let pending = &pushed[pushed.len() - held..];
    if let Some(header) = pending.first_chunk::<FRAME_HEADER_LEN>() {
        let len = u32::from_be_bytes(*header) as usize;
        assert!(len <= MAX_FRAME, "kept a frame over the limit");
        assert!(held < FRAME_HEADER_LEN + len, "kept a complete frame");
    }
}

/// The stream parsed in one piece, as the wire format says (the model the
/// reader is held to): items, and the bytes of an incomplete last frame.
fn parse_whole(stream: &[u8]) -> (Vec<ControlItem>, usize) {
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        let Some((header, after)) = rest.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return (items, rest.len());
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > MAX_FRAME {
            items.push(ControlItem::Lost(WireError::FrameTooLarge(len)));
            return (items, 0);
        }
        if after.len() < len {
            return (items, rest.len());
        }
        let (body, after) = after.split_at(len);
        items.push(match decode_datagram(Bytes::copy_from_slice(body)) {
            Ok(msg) => ControlItem::Message(msg),
            Err(e) => ControlItem::Malformed(e),
        });
        rest = after;
    }
}

/// Read lengths for the fuzz body: all at once, or 1 to `max` bytes from a
/// xorshift sequence seeded by `max`.
struct Cuts {
    max: usize,
    state: u32,
}

impl Cuts {
    fn new(shape: u8, whole: usize) -> Cuts {
        Cuts {
            max: if shape == 0 {
                whole.max(1)
            } else {
                usize::from(shape)
            },
            state: 0x9E37_79B9 ^ u32::from(shape),
        }
    }

    fn next_len(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + self.state as usize % self.max
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;

    use super::*;
    use crate::wire::encode_frame;

    fn subscribe(channel: &str) -> RelayMsg {
        RelayMsg::Subscribe {
            channel: Arc::from(channel),
        }
    }

    fn frames(msgs: &[RelayMsg]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for m in msgs {
            encode_frame(m, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    fn drain(reader: &mut ControlReader) -> Vec<ControlItem> {
        std::iter::from_fn(|| reader.poll()).collect()
    }

    #[test]
    fn many_frames_in_one_read_and_one_frame_in_many() {
        let msgs: Vec<RelayMsg> = (0..50).map(|i| subscribe(&format!("c{i}"))).collect();
        let bytes = frames(&msgs);
        let mut reader = ControlReader::new();
        reader.push(&bytes);
        let want: Vec<ControlItem> = msgs.iter().cloned().map(ControlItem::Message).collect();
        assert_eq!(drain(&mut reader), want);
        assert_eq!(reader.buffered(), 0);

        let mut reader = ControlReader::new();
        let mut got = Vec::new();
        for b in &bytes {
            reader.push(std::slice::from_ref(b));
            got.extend(drain(&mut reader));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_body_is_skipped_and_the_stream_goes_on() {
        let mut bytes = vec![0, 0, 0, 2, 9, 9];
        bytes.extend(frames(&[subscribe("a")]));
        let mut reader = ControlReader::new();
        reader.push(&bytes);
        assert_eq!(
            drain(&mut reader),
            [
                ControlItem::Malformed(WireError::UnknownVersion(9)),
                ControlItem::Message(subscribe("a")),
            ]
        );
        assert!(!reader.is_lost());
    }

    #[test]
    fn an_oversized_length_loses_the_stream_once() {
        let mut bytes = frames(&[subscribe("a")]);
        let too_long = MAX_FRAME as u32 + 1;
        bytes.extend(too_long.to_be_bytes());
        let header_end = bytes.len();
        bytes.extend(frames(&[subscribe("b")]));
        let mut reader = ControlReader::new();
        // The header alone is enough to know: no body is waited for.
        reader.push(&bytes[..header_end]);
        assert_eq!(
            drain(&mut reader),
            [
                ControlItem::Message(subscribe("a")),
                ControlItem::Lost(WireError::FrameTooLarge(too_long as usize)),
            ]
        );
        assert!(reader.is_lost());
        reader.push(&bytes);
        assert_eq!((reader.poll(), reader.buffered()), (None, 0));
    }

    #[test]
    fn a_partial_frame_waits_for_its_body() {
        let bytes = frames(&[subscribe("abc")]);
        let mut reader = ControlReader::new();
        reader.push(&bytes[..bytes.len() - 1]);
        assert_eq!(reader.poll(), None);
        assert_eq!(reader.buffered(), bytes.len() - 1);
        reader.push(&bytes[bytes.len() - 1..]);
        assert_eq!(reader.poll(), Some(ControlItem::Message(subscribe("abc"))));
        // A frame of the largest allowed length is waited for, not refused.
        reader.push(&(MAX_FRAME as u32).to_be_bytes());
        assert_eq!(reader.poll(), None);
        assert!(!reader.is_lost());
    }

    #[test]
    fn the_fuzz_body_holds_on_shaped_inputs() {
        let mut stream = frames(&[subscribe("a"), subscribe("bb")]);
        stream.extend([0, 0, 0, 3, 1, 2, 0]);
        stream.extend(frames(&[subscribe("c")]));
        stream.extend([0, 0, 0, 40, 1]);
        for shape in [0u8, 1, 2, 3, 7, 255] {
            let mut data = vec![shape];
            data.extend(&stream);
            fuzz_control_stream(&data);
            data.extend(u32::MAX.to_be_bytes());
            data.extend(&stream);
            fuzz_control_stream(&data);
        }
        fuzz_control_stream(&[]);
        fuzz_control_stream(&[5]);
    }
}
