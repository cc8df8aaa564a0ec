//! The sans-IO wire codec of [`RelayMsg`]: no sockets, no clocks, no
//! randomness; bytes in, messages out (and back).
//!
//! # Body layout
//!
//! Every message body starts with a version byte ([`VERSION`]) and a type
//! byte. All integers are big-endian and fixed-width, and every field has
//! exactly one valid encoding, so `encode(decode(bytes)) == bytes` whenever
//! the decode succeeds.
//!
//! | field        | encoding                                                     |
//! |--------------|--------------------------------------------------------------|
//! | version      | `u8`, [`VERSION`] (= 1)                                      |
//! | type         | `u8`: 1 `Media`, 2 `Subscribe`, 3 `Unsubscribe`, 4 `Speakers`, 5 `SourceInfo` |
//! | channel      | `u8` holding *length − 1*, then 1..=256 bytes of UTF-8       |
//! | **Media**    | channel, source `u32`, seq `u64`, rtp_ts `u32`, level `u8` (0..=127), vad `u8` (0 absent, 1 false, 2 true), payload = the rest |
//! | **Subscribe** / **Unsubscribe** | channel                                  |
//! | **Speakers** | channel, selected: `u16` count + count × `u32`, active: `u16` count + count × `u32`, dominant: `u8` (0 none, 1 some) [+ `u32`] |
//! | **SourceInfo** | channel, source `u32`, identity: `u16` length + UTF-8 bytes |
//!
//! A `Media` message with a 10-byte channel and an 80-byte Opus frame is
//! 2 + 11 + 4 + 8 + 4 + 1 + 1 + 80 = 111 bytes.
//!
//! # Framings
//!
//! - **Datagram** ([`encode_datagram`], [`decode_datagram`]): one body per
//!   QUIC DATAGRAM; nothing may follow a message whose length is implied
//!   (anything but `Media`, whose payload is the rest).
//! - **Stream** ([`encode_frame`], [`FrameDecoder`]): on the reliable control
//!   stream each body is prefixed by its length as a big-endian `u32`; a body
//!   is at most [`MAX_FRAME`] bytes.
//!
//! Decoding never panics and never allocates more than the input it was
//! given: lengths and counts are checked against what is left before anything
//! is read or allocated. A `Media` payload is a zero-copy slice of the input.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use media_core::{RelayMsg, SourceId};

/// The version byte every message starts with.
pub const VERSION: u8 = 1;

/// The largest frame body on the control stream, in bytes (64 KiB). A longer
/// length prefix is [`WireError::FrameTooLarge`]: a peer cannot make the
/// decoder buffer more than this per frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// The length of a frame's length prefix, in bytes.
pub const FRAME_HEADER_LEN: usize = 4;

/// The longest channel name, in bytes (the engine's limit). Channel names are
/// 1 to `MAX_CHANNEL` bytes.
pub const MAX_CHANNEL: usize = 256;

/// The longest identity, in bytes (its length is a `u16`).
pub const MAX_IDENTITY: usize = u16::MAX as usize;

/// The most entries in each of `Speakers.selected` and `Speakers.active` (the
/// count is a `u16`).
pub const MAX_LIST: usize = u16::MAX as usize;

const TYPE_MEDIA: u8 = 1;
const TYPE_SUBSCRIBE: u8 = 2;
const TYPE_UNSUBSCRIBE: u8 = 3;
const TYPE_SPEAKERS: u8 = 4;
const TYPE_SOURCE_INFO: u8 = 5;

/// The highest RFC 6464 level (silence).
const MAX_LEVEL: u8 = 127;

/// Why bytes could not be decoded, or a message could not be encoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The input ended inside a field.
    #[error("truncated: need {need} more bytes, have {have}")]
    Truncated {
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The version byte is not [`VERSION`] (a newer or foreign peer).
    #[error("unknown wire version {0} (this node speaks version {VERSION})")]
    UnknownVersion(u8),
    /// The message-type byte is not one this version knows.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// An audio level above 127.
    #[error("audio level {0} out of range 0..=127")]
    BadLevel(u8),
    /// A voice-activity byte other than 0 (absent), 1 (false) or 2 (true).
    #[error("bad voice-activity byte {0} (expected 0, 1 or 2)")]
    BadVad(u8),
    /// A dominant-speaker flag other than 0 (none) or 1 (some).
    #[error("bad dominant-speaker flag {0} (expected 0 or 1)")]
    BadDominant(u8),
    /// A channel name of zero bytes (encoding only: the wire cannot express one).
    #[error("empty channel name")]
    EmptyChannel,
    /// A field longer than the wire allows (encoding only).
    #[error("{what} is {len} long, at most {max} allowed")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length (bytes or entries).
        len: usize,
        /// The most the wire allows.
        max: usize,
    },
    /// A string field that is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        what: &'static str,
    },
    /// A frame body longer than [`MAX_FRAME`]. On decoding, the stream can no
    /// longer be framed: the [`FrameDecoder`] stays failed.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    /// Bytes after a complete message (a datagram or frame holds exactly one).
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A [`RelayMsg`] variant this version of the codec does not know.
    #[error("relay message variant not supported by wire version {VERSION}")]
    Unsupported,
}

/// Appends `msg` to `buf` as one datagram body.
///
/// On error `buf` is left as it was.
pub fn encode_datagram(msg: &RelayMsg, buf: &mut BytesMut) -> Result<(), WireError> {
    let start = buf.len();
    encode_body(msg, buf).inspect_err(|_| buf.truncate(start))
}

/// Decodes one datagram body. A `Media` payload is a slice of `bytes` (no
/// copy).
pub fn decode_datagram(bytes: Bytes) -> Result<RelayMsg, WireError> {
    decode_body(bytes)
}

/// Appends `msg` to `buf` as one stream frame: a `u32` big-endian body length,
/// then the body.
///
/// A body over [`MAX_FRAME`] bytes is [`WireError::FrameTooLarge`]. On error
/// `buf` is left as it was.
pub fn encode_frame(msg: &RelayMsg, buf: &mut BytesMut) -> Result<(), WireError> {
    let start = buf.len();
    buf.put_u32(0);
    let result = encode_body(msg, buf).and_then(|()| {
        let len = buf.len() - start - FRAME_HEADER_LEN;
        if len > MAX_FRAME {
            return Err(WireError::FrameTooLarge(len));
        }
        // `len <= MAX_FRAME` fits a u32.
        let prefix = (len as u32).to_be_bytes();
        buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&prefix);
        Ok(())
    });
    result.inspect_err(|_| buf.truncate(start))
}

/// Splits the control stream into frames and decodes them.
///
/// [`push`](Self::push) what the stream delivers, then call
/// [`next`](Self::next) until it returns `Ok(None)`. The decoder holds at most
/// one incomplete frame (at most [`FRAME_HEADER_LEN`] + [`MAX_FRAME`] bytes)
/// plus whatever was pushed since the last `Ok(None)`.
///
/// A frame whose body does not decode is consumed and its error returned; the
/// next call goes on with the following frame. A length prefix over
/// [`MAX_FRAME`] loses the framing: the decoder drops what it holds, ignores
/// further input, and returns that error from every later `next`; the link
/// should be closed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: Option<WireError>,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received on the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next message: `Ok(None)` when no complete frame is buffered.
    ///
    /// A `Media` payload shares the decoder's buffer (no copy).
    #[allow(clippy::should_implement_trait)] // not an Iterator: it returns a Result
    pub fn next(&mut self) -> Result<Option<RelayMsg>, WireError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let Some(header) = self.buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let mut prefix = [0; FRAME_HEADER_LEN];
        prefix.copy_from_slice(header);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME {
            let err = WireError::FrameTooLarge(len);
            self.failed = Some(err.clone());
            self.buf = BytesMut::new();
            return Err(err);
        }
        if self.buf.len() - FRAME_HEADER_LEN < len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        decode_body(body).map(Some)
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the framing was lost (a length prefix over [`MAX_FRAME`]).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }
}

fn encode_body(msg: &RelayMsg, buf: &mut BytesMut) -> Result<(), WireError> {
    buf.put_u8(VERSION);
    match msg {
        RelayMsg::Media {
            channel,
            source,
            seq,
            rtp_ts,
            level,
            vad,
            payload,
        } => {
            if *level > MAX_LEVEL {
                return Err(WireError::BadLevel(*level));
            }
            buf.put_u8(TYPE_MEDIA);
            put_channel(channel, buf)?;
            buf.put_u32(source.0);
            buf.put_u64(*seq);
            buf.put_u32(*rtp_ts);
            buf.put_u8(*level);
            buf.put_u8(match vad {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            });
            buf.put_slice(payload);
        }
        RelayMsg::Subscribe { channel } => {
            buf.put_u8(TYPE_SUBSCRIBE);
            put_channel(channel, buf)?;
        }
        RelayMsg::Unsubscribe { channel } => {
            buf.put_u8(TYPE_UNSUBSCRIBE);
            put_channel(channel, buf)?;
        }
        RelayMsg::Speakers {
            channel,
            selected,
            active,
            dominant,
        } => {
            buf.put_u8(TYPE_SPEAKERS);
            put_channel(channel, buf)?;
            put_list("Speakers.selected", selected, buf)?;
            put_list("Speakers.active", active, buf)?;
            match dominant {
                None => buf.put_u8(0),
                Some(source) => {
                    buf.put_u8(1);
                    buf.put_u32(source.0);
                }
            }
        }
        RelayMsg::SourceInfo {
            channel,
            source,
            identity,
        } => {
            buf.put_u8(TYPE_SOURCE_INFO);
            put_channel(channel, buf)?;
            buf.put_u32(source.0);
            if identity.len() > MAX_IDENTITY {
                return Err(WireError::TooLong {
                    what: "identity",
                    len: identity.len(),
                    max: MAX_IDENTITY,
                });
            }
            // Checked above: fits a u16.
            buf.put_u16(identity.len() as u16);
            buf.put_slice(identity.as_bytes());
        }
        _ => return Err(WireError::Unsupported),
    }
    Ok(())
}

fn put_channel(channel: &str, buf: &mut BytesMut) -> Result<(), WireError> {
    let len = channel.len();
    if len == 0 {
        return Err(WireError::EmptyChannel);
    }
    if len > MAX_CHANNEL {
        return Err(WireError::TooLong {
            what: "channel",
            len,
            max: MAX_CHANNEL,
        });
    }
    // 1..=256 stored as 0..=255.
    buf.put_u8((len - 1) as u8);
    buf.put_slice(channel.as_bytes());
    Ok(())
}

fn put_list(what: &'static str, list: &[SourceId], buf: &mut BytesMut) -> Result<(), WireError> {
    if list.len() > MAX_LIST {
        return Err(WireError::TooLong {
            what,
            len: list.len(),
            max: MAX_LIST,
        });
    }
    // Checked above: fits a u16.
    buf.put_u16(list.len() as u16);
    for source in list {
        buf.put_u32(source.0);
    }
    Ok(())
}

/// Checked reads over the input: every read first checks what is left.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        let have = self.buf.remaining();
        if have < n {
            Err(WireError::Truncated { need: n, have })
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn str(&mut self, what: &'static str, len: usize) -> Result<Arc<str>, WireError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(&bytes)
            .map(Arc::from)
            .map_err(|_| WireError::BadUtf8 { what })
    }

    fn channel(&mut self) -> Result<Arc<str>, WireError> {
        let len = usize::from(self.u8()?) + 1;
        self.str("channel", len)
    }

    fn source(&mut self) -> Result<SourceId, WireError> {
        self.u32().map(SourceId)
    }

    fn list(&mut self) -> Result<Vec<SourceId>, WireError> {
        let count = usize::from(self.u16()?);
        // Check the whole list is there before allocating for it.
        self.need(count * 4)?;
        let mut list = Vec::with_capacity(count);
        for _ in 0..count {
            list.push(self.source()?);
        }
        Ok(list)
    }

    fn finish(self, msg: RelayMsg) -> Result<RelayMsg, WireError> {
        match self.buf.remaining() {
            0 => Ok(msg),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

fn decode_body(bytes: Bytes) -> Result<RelayMsg, WireError> {
    let mut r = Reader { buf: bytes };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let msg = match r.u8()? {
        TYPE_MEDIA => {
            let channel = r.channel()?;
            let source = r.source()?;
            let seq = r.u64()?;
            let rtp_ts = r.u32()?;
            let level = r.u8()?;
            if level > MAX_LEVEL {
                return Err(WireError::BadLevel(level));
            }
            let vad = match r.u8()? {
                0 => None,
                1 => Some(false),
                2 => Some(true),
                other => return Err(WireError::BadVad(other)),
            };
            let payload = r.rest();
            RelayMsg::Media {
                channel,
                source,
                seq,
                rtp_ts,
                level,
                vad,
                payload,
            }
        }
        TYPE_SUBSCRIBE => RelayMsg::Subscribe {
            channel: r.channel()?,
        },
        TYPE_UNSUBSCRIBE => RelayMsg::Unsubscribe {
            channel: r.channel()?,
        },
        TYPE_SPEAKERS => {
            let channel = r.channel()?;
            let selected = r.list()?;
            let active = r.list()?;
            let dominant = match r.u8()? {
                0 => None,
                1 => Some(r.source()?),
                other => return Err(WireError::BadDominant(other)),
            };
            RelayMsg::Speakers {
                channel,
                selected,
                active,
                dominant,
            }
        }
        TYPE_SOURCE_INFO => {
            let channel = r.channel()?;
            let source = r.source()?;
            let len = usize::from(r.u16()?);
            let identity = r.str("identity", len)?;
            RelayMsg::SourceInfo {
                channel,
                source,
                identity,
            }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    r.finish(msg)
}

/// Fuzz body (what `fuzz/fuzz_targets/relay_wire.rs` runs; the tests run it
/// too): decodes `data` as a datagram and as a stream of frames pushed in
/// several chunk sizes. It must never panic, and it asserts the codec's
/// properties:
///
/// - a decoded datagram re-encodes to exactly `data` (the encoding is
///   canonical) and decodes again to the same message;
/// - every chunking of the stream yields the same sequence of results;
/// - every message decoded from a frame re-encodes, in both framings, to
///   bytes that decode to the same message.
#[doc(hidden)]
pub fn fuzz_roundtrip(data: &[u8]) {
    if let Ok(msg) = decode_datagram(Bytes::copy_from_slice(data)) {
        let mut buf = BytesMut::new();
        encode_datagram(&msg, &mut buf).expect("a decoded datagram re-encodes");
        assert_eq!(&buf[..], data, "datagram encoding is not canonical");
        let again = decode_datagram(buf.freeze()).expect("a re-encoded datagram decodes");
        assert_eq!(again, msg, "datagram round trip changed the message");
    }

    let whole = decode_stream(data, data.len().max(1));
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(
            decode_stream(data, chunk),
            whole,
            "chunk size {chunk} changed the decoded stream"
        );
    }
    for msg in whole.iter().filter_map(|r| r.as_ref().ok()) {
        let mut buf = BytesMut::new();
        encode_datagram(msg, &mut buf).expect("a decoded frame re-encodes as a datagram");
        let again = decode_datagram(buf.freeze()).expect("a re-encoded datagram decodes");
        assert_eq!(
            &again, msg,
            "frame -> datagram round trip changed the message"
        );

        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf).expect("a decoded frame re-encodes");
        let mut decoder = FrameDecoder::new();
        decoder.push(&buf);
        let again = decoder.next().expect("a re-encoded frame decodes");
        assert_eq!(
            again.as_ref(),
            Some(msg),
            "frame round trip changed the message"
        );
        assert_eq!(
            decoder.next(),
            Ok(None),
            "a re-encoded frame left bytes behind"
        );
        assert_eq!(decoder.buffered(), 0);
    }
}

/// Every result a [`FrameDecoder`] gives for `data` pushed `chunk` bytes at a
/// time, up to and including a framing error.
fn decode_stream(data: &[u8], chunk: usize) -> Vec<Result<RelayMsg, WireError>> {
    let mut decoder = FrameDecoder::new();
    let mut results = Vec::new();
    for piece in data.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(None) => break,
                Ok(Some(msg)) => results.push(Ok(msg)),
                Err(err) if decoder.is_failed() => {
                    // Framing lost: the decoder stays failed and holds nothing.
                    assert_eq!(decoder.next(), Err(err.clone()), "failure is not sticky");
                    decoder.push(piece);
                    assert_eq!(decoder.buffered(), 0, "a failed decoder buffers input");
                    results.push(Err(err));
                    return results;
                }
                Err(err) => results.push(Err(err)),
            }
        }
    }
    results
}
