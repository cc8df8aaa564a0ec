//! The wire codec: round trips, hostile input, framing.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cascade::wire::{
    decode_datagram, encode_datagram, encode_frame, fuzz_roundtrip, FrameDecoder, WireError,
    FRAME_HEADER_LEN, MAX_CHANNEL, MAX_FRAME, VERSION,
};
use media_core::{RelayMsg, SourceId};

fn media(channel: &str, seq: u64, level: u8, vad: Option<bool>, payload: &[u8]) -> RelayMsg {
    RelayMsg::Media {
        channel: channel.into(),
        source: SourceId(u32::MAX),
        seq,
        rtp_ts: u32::MAX - 1,
        level,
        vad,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Every variant, with edge values.
fn samples() -> Vec<RelayMsg> {
    let long: String = "c".repeat(MAX_CHANNEL);
    vec![
        media("room", 1, 0, None, &[0xfc, 0xff, 0xfe]),
        media("room", u64::MAX, 127, Some(true), &[]),
        media("r", u64::MAX - 1, 64, Some(false), &[0; 1200]),
        media(&long, 0, 127, None, b"x"),
        // 64 four-byte characters: exactly 256 bytes.
        media(&"🎙".repeat(64), 1 << 32, 1, Some(true), b"opus"),
        RelayMsg::Subscribe {
            channel: "room".into(),
        },
        RelayMsg::Subscribe {
            channel: long.as_str().into(),
        },
        RelayMsg::Unsubscribe {
            channel: "ü".into(),
        },
        RelayMsg::Speakers {
            channel: "room".into(),
            selected: vec![SourceId(1), SourceId(u32::MAX), SourceId(0)],
            active: vec![SourceId(u32::MAX), SourceId(1)],
            dominant: Some(SourceId(u32::MAX)),
        },
        RelayMsg::Speakers {
            channel: "room".into(),
            selected: vec![],
            active: vec![],
            dominant: None,
        },
        RelayMsg::Speakers {
            channel: long.as_str().into(),
            selected: (0..1000).map(SourceId).collect(),
            active: vec![SourceId(7)],
            dominant: Some(SourceId(0)),
        },
        RelayMsg::SourceInfo {
            channel: "room".into(),
            source: SourceId(42),
            identity: "Zoë 🎙️ 张伟".into(),
        },
        RelayMsg::SourceInfo {
            channel: "room".into(),
            source: SourceId(0),
            identity: "".into(),
        },
    ]
}

fn datagram(msg: &RelayMsg) -> Bytes {
    let mut buf = BytesMut::new();
    encode_datagram(msg, &mut buf).expect("encodes");
    buf.freeze()
}

fn frame(msg: &RelayMsg) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf).expect("encodes");
    buf.freeze()
}

/// Every message the decoder gives until it needs more input.
fn drain(decoder: &mut FrameDecoder) -> Vec<RelayMsg> {
    let mut out = Vec::new();
    while let Some(msg) = decoder.next().expect("valid frames") {
        out.push(msg);
    }
    out
}

#[test]
fn every_variant_round_trips_as_a_datagram() {
    for msg in samples() {
        let bytes = datagram(&msg);
        assert_eq!(bytes[0], VERSION);
        let decoded = decode_datagram(bytes.clone()).expect("decodes");
        assert_eq!(decoded, msg);
        assert_eq!(datagram(&decoded), bytes, "encoding is canonical");
        fuzz_roundtrip(&bytes);
    }
}

#[test]
fn every_variant_round_trips_as_a_frame() {
    let msgs = samples();
    let mut stream = BytesMut::new();
    for msg in &msgs {
        let f = frame(msg);
        let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(len, f.len() - FRAME_HEADER_LEN);
        assert_eq!(
            &f[FRAME_HEADER_LEN..],
            &datagram(msg)[..],
            "same body layout"
        );
        encode_frame(msg, &mut stream).expect("encodes");
    }
    let mut decoder = FrameDecoder::new();
    decoder.push(&stream);
    assert_eq!(drain(&mut decoder), msgs);
    assert_eq!(decoder.buffered(), 0);
    fuzz_roundtrip(&stream);
}

#[test]
fn frames_split_at_every_offset_decode_the_same() {
    let msgs = samples();
    let mut stream = BytesMut::new();
    for msg in &msgs {
        encode_frame(msg, &mut stream).expect("encodes");
    }
    for at in 0..=stream.len() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&stream[..at]);
        let mut got = drain(&mut decoder);
        decoder.push(&stream[at..]);
        got.extend(drain(&mut decoder));
        assert_eq!(got, msgs, "split at {at}");
        assert_eq!(decoder.buffered(), 0);
    }
    // One byte at a time.
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    for byte in stream.iter() {
        decoder.push(std::slice::from_ref(byte));
        got.extend(drain(&mut decoder));
    }
    assert_eq!(got, msgs);
}

#[test]
fn truncation_at_every_offset_is_an_error_never_a_panic() {
    for msg in samples() {
        let bytes = datagram(&msg);
        // Where a Media payload starts: anything from there on is a valid,
        // shorter payload.
        let payload_at = match &msg {
            RelayMsg::Media { payload, .. } => Some(bytes.len() - payload.len()),
            _ => None,
        };
        for len in 0..bytes.len() {
            let result = decode_datagram(bytes.slice(..len));
            match payload_at {
                Some(at) if len >= at => match &result {
                    Ok(RelayMsg::Media { payload, .. }) => {
                        assert_eq!(&payload[..], &bytes[at..len])
                    }
                    other => panic!("{msg:?} cut at {len}: {other:?}"),
                },
                _ => assert!(
                    matches!(result, Err(WireError::Truncated { .. })),
                    "{msg:?} cut at {len}: {result:?}"
                ),
            }

            // The same body as a complete frame of the shorter length.
            let mut f = BytesMut::new();
            f.extend_from_slice(&(len as u32).to_be_bytes());
            f.extend_from_slice(&bytes[..len]);
            let mut decoder = FrameDecoder::new();
            decoder.push(&f);
            let framed = decoder.next();
            assert_eq!(framed, result.map(Some), "{msg:?} cut at {len} in a frame");
            assert_eq!(decoder.next(), Ok(None), "the bad frame is consumed");
        }

        // A frame cut anywhere is just incomplete.
        let f = frame(&msg);
        for len in 0..f.len() {
            let mut decoder = FrameDecoder::new();
            decoder.push(&f[..len]);
            assert_eq!(decoder.next(), Ok(None), "{msg:?} frame cut at {len}");
            assert_eq!(decoder.buffered(), len);
        }
    }
}

/// The offset of the byte after the channel in a datagram body.
fn after_channel(msg: &RelayMsg) -> usize {
    2 + 1 + msg.channel().len()
}

fn with_byte(bytes: &Bytes, at: usize, value: u8) -> Bytes {
    let mut v = bytes.to_vec();
    v[at] = value;
    v.into()
}

/// Decodes `body` both as a datagram and as a frame; both must agree.
fn decode_both(body: &Bytes) -> Result<RelayMsg, WireError> {
    let dgram = decode_datagram(body.clone());
    let mut decoder = FrameDecoder::new();
    let mut f = BytesMut::new();
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    decoder.push(&f);
    let framed = decoder.next().map(|m| m.expect("a complete frame"));
    assert_eq!(framed, dgram);
    dgram
}

#[test]
fn flipped_bytes_give_the_right_error() {
    let m = media("room", 5, 30, Some(true), b"opus");
    let bytes = datagram(&m);
    for v in [0, 2, 0x7f, 0xff] {
        assert_eq!(
            decode_both(&with_byte(&bytes, 0, v)),
            Err(WireError::UnknownVersion(v))
        );
    }
    for t in [0, 6, 0x80, 0xff] {
        assert_eq!(
            decode_both(&with_byte(&bytes, 1, t)),
            Err(WireError::UnknownType(t))
        );
    }
    let level_at = after_channel(&m) + 4 + 8 + 4;
    assert_eq!(bytes[level_at], 30);
    for level in [128, 200, 0xff] {
        assert_eq!(
            decode_both(&with_byte(&bytes, level_at, level)),
            Err(WireError::BadLevel(level))
        );
    }
    assert!(decode_both(&with_byte(&bytes, level_at, 127)).is_ok());
    let vad_at = level_at + 1;
    assert_eq!(bytes[vad_at], 2);
    for vad in [3, 0x80, 0xff] {
        assert_eq!(
            decode_both(&with_byte(&bytes, vad_at, vad)),
            Err(WireError::BadVad(vad))
        );
    }
    for (vad, want) in [(0, None), (1, Some(false)), (2, Some(true))] {
        match decode_both(&with_byte(&bytes, vad_at, vad)) {
            Ok(RelayMsg::Media { vad, .. }) => assert_eq!(vad, want),
            other => panic!("{other:?}"),
        }
    }
    // Invalid UTF-8 in the channel.
    assert_eq!(
        decode_both(&with_byte(&bytes, 3, 0xff)),
        Err(WireError::BadUtf8 { what: "channel" })
    );

    // The dominant-speaker flag is the last byte of a Speakers with none.
    let s = RelayMsg::Speakers {
        channel: "room".into(),
        selected: vec![SourceId(1)],
        active: vec![],
        dominant: None,
    };
    let bytes = datagram(&s);
    for flag in [2, 0xff] {
        assert_eq!(
            decode_both(&with_byte(&bytes, bytes.len() - 1, flag)),
            Err(WireError::BadDominant(flag))
        );
    }
    // A list count larger than what follows: truncated, nothing allocated
    // for it.
    let mut huge = bytes.to_vec();
    let count_at = after_channel(&s);
    huge[count_at..count_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        decode_both(&huge.into()),
        Err(WireError::Truncated {
            need: 4 * u16::MAX as usize,
            have: 4 + 2 + 1
        })
    );

    // Invalid UTF-8 in an identity (a lone continuation byte).
    let i = RelayMsg::SourceInfo {
        channel: "room".into(),
        source: SourceId(3),
        identity: "ab".into(),
    };
    let bytes = datagram(&i);
    assert_eq!(
        decode_both(&with_byte(&bytes, bytes.len() - 1, 0x80)),
        Err(WireError::BadUtf8 { what: "identity" })
    );
    // An identity length beyond the input.
    let mut long = bytes.to_vec();
    let len_at = after_channel(&i) + 4;
    long[len_at..len_at + 2].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(
        decode_both(&long.into()),
        Err(WireError::Truncated {
            need: 1000,
            have: 2
        })
    );

    // Trailing bytes after a self-delimited message.
    for msg in samples()
        .into_iter()
        .filter(|m| !matches!(m, RelayMsg::Media { .. }))
    {
        let mut v = datagram(&msg).to_vec();
        v.extend_from_slice(&[0, 1, 2]);
        assert_eq!(decode_both(&v.into()), Err(WireError::TrailingBytes(3)));
    }

    // Messages are readable.
    assert_eq!(
        WireError::UnknownVersion(2).to_string(),
        "unknown wire version 2 (this node speaks version 1)"
    );
}

#[test]
fn a_bad_frame_is_skipped_and_the_stream_goes_on() {
    let good = RelayMsg::Subscribe {
        channel: "room".into(),
    };
    let mut stream = BytesMut::new();
    encode_frame(&good, &mut stream).unwrap();
    let start = stream.len();
    encode_frame(&good, &mut stream).unwrap();
    stream[start + FRAME_HEADER_LEN] = 9; // version of the 2nd frame
    encode_frame(&good, &mut stream).unwrap();

    let mut decoder = FrameDecoder::new();
    decoder.push(&stream);
    assert_eq!(decoder.next(), Ok(Some(good.clone())));
    assert_eq!(decoder.next(), Err(WireError::UnknownVersion(9)));
    assert!(!decoder.is_failed());
    assert_eq!(decoder.next(), Ok(Some(good)));
    assert_eq!(decoder.next(), Ok(None));
}

#[test]
fn an_oversized_frame_length_fails_without_buffering() {
    let mut decoder = FrameDecoder::new();
    decoder.push(&[0xff; 4]);
    assert_eq!(
        decoder.next(),
        Err(WireError::FrameTooLarge(u32::MAX as usize))
    );
    // The framing is lost: the decoder holds nothing, keeps nothing more and
    // keeps failing.
    assert!(decoder.is_failed());
    assert_eq!(decoder.buffered(), 0);
    decoder.push(&[0; 1 << 16]);
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(
        decoder.next(),
        Err(WireError::FrameTooLarge(u32::MAX as usize))
    );

    // Just over the limit, after a good frame: the good one still comes out.
    let good = RelayMsg::Unsubscribe {
        channel: "room".into(),
    };
    let mut stream = BytesMut::from(&frame(&good)[..]);
    stream.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
    let mut decoder = FrameDecoder::new();
    decoder.push(&stream);
    assert_eq!(decoder.next(), Ok(Some(good)));
    assert_eq!(decoder.next(), Err(WireError::FrameTooLarge(MAX_FRAME + 1)));

    // Exactly the limit is a frame to wait for.
    let mut decoder = FrameDecoder::new();
    decoder.push(&(MAX_FRAME as u32).to_be_bytes());
    assert_eq!(decoder.next(), Ok(None));
}

#[test]
fn the_largest_frame_round_trips_and_one_more_byte_is_refused() {
    let header = datagram(&media("room", 0, 0, None, &[])).len();
    let fits = media("room", 0, 0, None, &vec![7; MAX_FRAME - header]);
    let f = frame(&fits);
    assert_eq!(f.len(), FRAME_HEADER_LEN + MAX_FRAME);
    let mut decoder = FrameDecoder::new();
    decoder.push(&f);
    assert_eq!(decoder.next(), Ok(Some(fits)));

    let over = media("room", 0, 0, None, &vec![7; MAX_FRAME - header + 1]);
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(
        encode_frame(&over, &mut buf),
        Err(WireError::FrameTooLarge(MAX_FRAME + 1))
    );
    assert_eq!(&buf[..], b"kept", "nothing written on error");
    // A datagram has no such limit in the codec (QUIC's is enforced by the
    // link).
    assert!(encode_datagram(&over, &mut buf).is_ok());
}

#[test]
fn unencodable_messages_are_errors_and_write_nothing() {
    let cases: Vec<(RelayMsg, WireError)> = vec![
        (
            media(&"c".repeat(MAX_CHANNEL + 1), 0, 0, None, b""),
            WireError::TooLong {
                what: "channel",
                len: MAX_CHANNEL + 1,
                max: MAX_CHANNEL,
            },
        ),
        (
            RelayMsg::Subscribe { channel: "".into() },
            WireError::EmptyChannel,
        ),
        (media("room", 0, 128, None, b""), WireError::BadLevel(128)),
        (
            RelayMsg::Speakers {
                channel: "room".into(),
                selected: vec![],
                active: vec![SourceId(0); 1 << 16],
                dominant: None,
            },
            WireError::TooLong {
                what: "Speakers.active",
                len: 1 << 16,
                max: u16::MAX as usize,
            },
        ),
        (
            RelayMsg::SourceInfo {
                channel: "room".into(),
                source: SourceId(1),
                identity: Arc::from("i".repeat(1 << 16)),
            },
            WireError::TooLong {
                what: "identity",
                len: 1 << 16,
                max: u16::MAX as usize,
            },
        ),
    ];
    for (msg, want) in cases {
        let mut buf = BytesMut::from(&b"kept"[..]);
        assert_eq!(encode_datagram(&msg, &mut buf), Err(want.clone()));
        assert_eq!(&buf[..], b"kept");
        assert_eq!(encode_frame(&msg, &mut buf), Err(want));
        assert_eq!(&buf[..], b"kept");
    }
}

#[test]
fn a_datagram_payload_is_a_slice_of_the_input() {
    let msg = media("room", 9, 10, Some(true), &[1, 2, 3, 4, 5, 6, 7, 8]);
    let bytes = datagram(&msg);
    let input = bytes.as_ptr_range();
    match decode_datagram(bytes.clone()) {
        Ok(RelayMsg::Media { payload, .. }) => {
            let p = payload.as_ptr_range();
            assert!(input.start <= p.start && p.end == input.end, "zero copy");
            assert_eq!(&payload[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        }
        other => panic!("{other:?}"),
    }
}

/// A fixed-seed xorshift64: reproducible inputs without an RNG dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_inputs_never_panic() {
    let valid: Vec<Vec<u8>> = samples()
        .iter()
        .flat_map(|m| [datagram(m).to_vec(), frame(m).to_vec()])
        .collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut decoded, mut rejected) = (0, 0);
    for _ in 0..100_000 {
        let input: Vec<u8> = match rng.below(4) {
            // Pure noise.
            0 => {
                let len = rng.below(64);
                (0..len).map(|_| rng.next() as u8).collect()
            }
            // Noise behind a valid version and a plausible type (and, half
            // of the time, a small frame length).
            1 => {
                let len = rng.below(48);
                let mut v = Vec::new();
                if rng.below(2) == 0 {
                    v.extend_from_slice(&(len as u32 + 2).to_be_bytes());
                }
                v.extend_from_slice(&[VERSION, rng.below(7) as u8]);
                v.extend((0..len).map(|_| rng.next() as u8));
                v
            }
            // A valid encoding, mutated.
            _ => {
                let mut v = valid[rng.below(valid.len())].clone();
                for _ in 0..1 + rng.below(3) {
                    match rng.below(4) {
                        0 if !v.is_empty() => {
                            let at = rng.below(v.len());
                            v[at] = rng.next() as u8;
                        }
                        1 if !v.is_empty() => {
                            let at = rng.below(v.len());
                            v[at] ^= 1 << rng.below(8);
                        }
                        2 => {
                            let at = rng.below(v.len() + 1);
                            v.truncate(at);
                        }
                        _ => {
                            let at = rng.below(v.len() + 1);
                            v.insert(at, rng.next() as u8);
                        }
                    }
                }
                v
            }
        };
        fuzz_roundtrip(&input);
        match decode_datagram(input.into()) {
            Ok(_) => decoded += 1,
            Err(WireError::UnknownVersion(_)) => {}
            Err(_) => rejected += 1,
        }
    }
    // The inputs reach past the version byte, both ways.
    assert!(decoded > 4_000, "{decoded} decoded");
    assert!(rejected > 20_000, "{rejected} rejected");
}
