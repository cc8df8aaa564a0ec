//! Cost of the cascade's relay codec per message: `cascade::wire`
//! `encode_datagram` / `decode_datagram` of a `Media` message with a 120-byte
//! Opus payload (the form every relayed voice frame takes on a core → edge
//! link) and of a `Speakers` message (3 selected, 3 active, a dominant
//! speaker; sent on selection changes), plus the control-stream framing of
//! the same `Speakers` message (`encode_frame` / `FrameDecoder`); and the
//! engine's side of the same frame at the origin (`relay/engine_in/media`):
//! a `Media` message over a subscriber's link through `Engine::handle_input`
//! (admission, selection) and `poll_output` until the engine waits, which
//! hands the frame to the channel's other subscriber.
//!
//! `cargo bench -p benches --bench relay`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cascade::wire::{decode_datagram, encode_datagram, encode_frame, FrameDecoder};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use media_core::{
    Command, Engine, EngineConfig, EngineId, Input, LinkId, Output, RelayMsg, SourceId,
};

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

/// The `relay` group: per message, short runs (the costs are stable).
fn relay_group(c: &mut Criterion) -> BenchmarkGroup<'_, WallTime> {
    let mut group = c.benchmark_group("relay");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group
}

fn relay(c: &mut Criterion) {
    let mut group = relay_group(c);
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

/// An origin engine whose channel `town-hall1` has two subscriber links;
/// returns it with the link a voice comes over and that voice's id.
fn origin(now: Instant) -> (Engine, LinkId, SourceId) {
    let mut engine = Engine::new(EngineConfig::new(testkit::SEED), now);
    let (from, other) = (LinkId(1), LinkId(2));
    for (link, n) in [(from, 1), (other, 2)] {
        let engine_at_end = EngineId::new(n).unwrap();
        let command = Command::LinkOpened {
            link,
            engine: engine_at_end,
        };
        engine
            .handle_input(Input::Command { now, command })
            .unwrap();
        let msg = RelayMsg::Subscribe {
            channel: Arc::from("town-hall1"),
        };
        engine
            .handle_input(Input::Relay { now, link, msg })
            .unwrap();
    }
    drain(&mut engine);
    // A voice of the engine at the other end of `from` (engine 1).
    (engine, from, SourceId(1 << 20 | 0x5678))
}

/// Takes the engine's outputs until it waits; returns how many relay
/// messages it sent.
fn drain(engine: &mut Engine) -> usize {
    let mut relayed = 0;
    loop {
        match engine.poll_output() {
            Output::Timeout(_) => return relayed,
            Output::Relay { msg, .. } => {
                black_box(msg);
                relayed += 1;
            }
            other => drop(black_box(other)),
        }
    }
}

/// The origin's cost per relayed voice frame: admission of the frame from a
/// subscriber, speaker selection, the copy into str0m's payload type, and
/// the frame handed to the other subscriber.
fn engine_in(c: &mut Criterion) {
    let mut group = relay_group(c);
    let start = Instant::now();
    let (mut engine, link, source) = origin(start);
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);
    let mut seq = 0u64;
    group.bench_function("engine_in/media", |b| {
        b.iter(|| {
            seq += 1;
            // 20 ms per frame of simulated time, so selection sees a voice
            // that keeps speaking.
            let now = start + Duration::from_millis(20 * seq);
            let msg = RelayMsg::Media {
                channel: Arc::from("town-hall1"),
                source,
                seq,
                rtp_ts: (seq as u32).wrapping_mul(960),
                level: 30,
                vad: Some(true),
                payload: payload.clone(),
            };
            engine
                .handle_input(Input::Relay { now, link, msg })
                .unwrap();
            black_box(drain(&mut engine))
        })
    });
    // The frame reached the other subscriber: the bench measured the path.
    assert!(engine.stats().relay_out >= seq, "{:?}", engine.stats());
    group.finish();
}

criterion_group!(benches, relay, engine_in);
criterion_main!(benches);
