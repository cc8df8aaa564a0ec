//! Cost of the cascade's relay codec per message: `cascade::wire`
//! `encode_datagram` / `decode_datagram` of a `Media` message with a 120-byte
//! Opus payload (the form every relayed voice frame takes on a core → edge
//! link) and of a `Speakers` message (3 selected, 3 active, a dominant
//! speaker; sent on selection changes), plus the control-stream framing of
//! the same `Speakers` message (`encode_frame` / `FrameDecoder`).
//!
//! `cargo bench -p benches --bench relay`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cascade::wire::{decode_datagram, encode_datagram, encode_frame, FrameDecoder};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use media_core::{RelayMsg, SourceId};

/// Opus payload of one relayed frame.
const PAYLOAD: usize = 120;

fn media() -> RelayMsg {
    RelayMsg::Media {
        channel: Arc::from("town-hall1"),
        source: SourceId(0x1234_5678),
        seq: 1_000_000,
        rtp_ts: 48_000 * 60,
        level: 30,
        vad: Some(true),
        payload: Bytes::from(vec![0x5a; PAYLOAD]),
    }
}

fn speakers() -> RelayMsg {
    RelayMsg::Speakers {
        channel: Arc::from("town-hall1"),
        selected: vec![SourceId(1), SourceId(2), SourceId(3)],
        active: vec![SourceId(2), SourceId(1), SourceId(3)],
        dominant: Some(SourceId(2)),
    }
}

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (name, msg) in [("media_120b", media()), ("speakers", speakers())] {
        // Encoding into a reused buffer (the codec's own cost) and into a
        // fresh one per message (what `LinkHandle::send_media` does).
        let mut buf = BytesMut::with_capacity(512);
        group.bench_function(format!("encode_datagram/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode_datagram(black_box(&msg), &mut buf).unwrap();
                black_box(buf.len())
            })
        });
        group.bench_function(format!("encode_datagram_alloc/{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::with_capacity(64 + PAYLOAD);
                encode_datagram(black_box(&msg), &mut buf).unwrap();
                black_box(buf.freeze())
            })
        });
        let mut encoded = BytesMut::new();
        encode_datagram(&msg, &mut encoded).unwrap();
        let encoded = encoded.freeze();
        eprintln!("relay/{name}: {} bytes as a datagram", encoded.len());
        // `Bytes::clone` is a reference count; the Media payload comes out as
        // a slice of it (no copy), as from a received QUIC datagram.
        group.bench_function(format!("decode_datagram/{name}"), |b| {
            b.iter(|| black_box(decode_datagram(black_box(encoded.clone())).unwrap()))
        });
    }
    let msg = speakers();
    let mut buf = BytesMut::with_capacity(512);
    group.bench_function("encode_frame/speakers", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(black_box(&msg), &mut buf).unwrap();
            black_box(buf.len())
        })
    });
    let mut frame = BytesMut::new();
    encode_frame(&msg, &mut frame).unwrap();
    group.bench_function("frame_decoder/speakers", |b| {
        let mut decoder = FrameDecoder::new();
        b.iter(|| {
            decoder.push(black_box(&frame));
            black_box(decoder.next().unwrap().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
