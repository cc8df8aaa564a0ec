//! Added latency of one core → edge hop of the cascade, in one process on
//! 127.0.0.1: a `cascade::link::Listener` (the core) accepts a `Link::dial`
//! (the edge), both with a random cluster secret; the core sends `--count`
//! `RelayMsg::Media` messages with a `--payload`-byte payload, one every
//! `--interval-us`, each carrying its send time (nanoseconds since the start,
//! in `seq`), and the edge records the one-way delay of each as it comes out
//! of `Link::recv_event`. Three paths, one after the other:
//!
//! - `datagram`: `send_media` (QUIC DATAGRAM, as the server sends media);
//! - `control`: `send_control` (the reliable, ordered control stream);
//! - `udp_baseline`: a bare tokio `UdpSocket` pair carrying the same bytes,
//!   for what loopback and the runtime cost without QUIC.
//!
//! ```sh
//! cargo run --release -p examples --example hop_latency [-- --count 5000 --interval-us 1000 --payload 120]
//! ```
//!
//! Prints one JSON object per path (delays in microseconds). Bounded: each
//! path sends exactly `--warmup` + `--count` messages and waits at most 2 s
//! after the last one for stragglers.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cascade::link::{Link, LinkConfig, LinkEvent, Listener};
use cascade::wire::{decode_datagram, encode_datagram};
use media_core::{RelayMsg, SourceId};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

const USAGE: &str =
    "usage: hop_latency [--count N] [--warmup N] [--interval-us U] [--payload BYTES]";

/// How long the receiver waits after the last send for late messages.
const GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
struct Args {
    count: usize,
    warmup: usize,
    interval: Duration,
    payload: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        count: 5000,
        warmup: 100,
        interval: Duration::from_millis(1),
        payload: 120,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> Result<u64, String> {
            it.next()
                .ok_or(format!("{flag} needs a value"))?
                .parse()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--count" => a.count = num()? as usize,
            "--warmup" => a.warmup = num()? as usize,
            "--interval-us" => a.interval = Duration::from_micros(num()?),
            "--payload" => a.payload = num()? as usize,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(1..=100_000).contains(&a.count)
        || a.warmup > 10_000
        || a.interval < Duration::from_micros(100)
        || a.interval > Duration::from_secs(1)
        || a.payload > 1000
        || (a.count + a.warmup) as u128 * a.interval.as_micros() > 300_000_000
    {
        return Err(
            "bounds: 1..=100000 messages, at most 10000 warm-up, interval 100 us..1 s, \
                    payload at most 1000 bytes, at most 300 s in all"
                .into(),
        );
    }
    Ok(a)
}

/// The message the core sends: the send time in `seq`, the index in `rtp_ts`.
fn media(start: Instant, index: usize, payload: &Bytes) -> RelayMsg {
    RelayMsg::Media {
        channel: Arc::from("load"),
        source: SourceId(1),
        seq: start.elapsed().as_nanos() as u64,
        rtp_ts: index as u32,
        level: 30,
        vad: Some(true),
        payload: payload.clone(),
    }
}

/// Sends `warmup + count` messages one `interval` apart with `send`.
async fn send_all<F, Fut>(a: Args, start: Instant, payload: &Bytes, mut send: F)
where
    F: FnMut(RelayMsg) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(a.interval);
    // A late tick delays the next ones instead of bursting to catch up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for i in 0..a.warmup + a.count {
        tick.tick().await;
        send(media(start, i, payload)).await;
    }
}

/// What one path measured.
#[derive(Default)]
struct Delays {
    /// One-way delays of the measured (non-warm-up) messages, in ns.
    ns: Vec<u64>,
    /// Measured messages that arrived out of order.
    reordered: usize,
}

impl Delays {
    /// Records a received message; returns whether all have arrived.
    fn record(&mut self, a: Args, start: Instant, msg: &RelayMsg, last: &mut Option<u32>) -> bool {
        let RelayMsg::Media { seq, rtp_ts, .. } = msg else {
            return false;
        };
        let now = start.elapsed().as_nanos() as u64;
        if *rtp_ts as usize >= a.warmup {
            self.ns.push(now.saturating_sub(*seq));
            if last.is_some_and(|l| *rtp_ts < l) {
                self.reordered += 1;
            }
            *last = Some(*rtp_ts);
        }
        *rtp_ts as usize + 1 == a.warmup + a.count
    }

    fn report(mut self, path: &str, a: Args, wire_bytes: usize) -> serde_json::Value {
        self.ns.sort_unstable();
        let us = |p: f64| -> f64 {
            if self.ns.is_empty() {
                return 0.0;
            }
            self.ns[((self.ns.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
        };
        let mean = if self.ns.is_empty() {
            0.0
        } else {
            self.ns.iter().sum::<u64>() as f64 / self.ns.len() as f64 / 1e3
        };
        json!({
            "path": path,
            "sent": a.count,
            "received": self.ns.len(),
            "lost": a.count.saturating_sub(self.ns.len()),
            "reordered": self.reordered,
            "message_bytes": wire_bytes,
            "interval_us": a.interval.as_micros() as u64,
            "p50_us": us(0.5),
            "p90_us": us(0.9),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "max_us": self.ns.last().copied().unwrap_or(0) as f64 / 1e3,
            "mean_us": mean,
        })
    }
}

/// One link path: the core (`tx`) sends, the edge (`rx`) receives.
async fn over_link(a: Args, tx: &Link, rx: &mut Link, control: bool) -> Delays {
    let payload = Bytes::from(vec![0x5a; a.payload]);
    let start = Instant::now();
    let give_up = start + a.interval * (a.warmup + a.count) as u32 + GRACE;
    let send = send_all(a, start, &payload, |m| async move {
        if control {
            if let Err(e) = tx.send_control(&m).await {
                eprintln!("hop_latency: control send failed: {e}");
            }
        } else {
            tx.send_media(&m);
        }
    });
    let receive = async {
        let mut d = Delays::default();
        let mut last = None;
        while let Ok(Some(ev)) = tokio::time::timeout_at(give_up, rx.recv_event()).await {
            match ev {
                LinkEvent::Message(m) => {
                    if d.record(a, start, &m, &mut last) {
                        break;
                    }
                }
                LinkEvent::Closed(reason) => {
                    eprintln!("hop_latency: link closed: {reason}");
                    break;
                }
            }
        }
        d
    };
    let ((), d) = tokio::join!(send, receive);
    d
}

/// The same bytes over a bare UDP socket pair.
async fn over_udp(a: Args) -> std::io::Result<Delays> {
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    tx.connect(rx.local_addr()?).await?;
    let payload = Bytes::from(vec![0x5a; a.payload]);
    let start = Instant::now();
    let give_up = start + a.interval * (a.warmup + a.count) as u32 + GRACE;
    let tx = &tx;
    let send = send_all(a, start, &payload, |m| async move {
        let mut buf = BytesMut::new();
        if encode_datagram(&m, &mut buf).is_ok() {
            let _ = tx.send(&buf).await;
        }
    });
    let receive = async {
        let mut d = Delays::default();
        let mut last = None;
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok(n)) = tokio::time::timeout_at(give_up, rx.recv(&mut buf)).await {
            if let Ok(m) = decode_datagram(Bytes::copy_from_slice(&buf[..n])) {
                if d.record(a, start, &m, &mut last) {
                    break;
                }
            }
        }
        d
    };
    let ((), d) = tokio::join!(send, receive);
    Ok(d)
}

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .is_err()
    {
        // Not security-relevant here: both ends are this process.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        secret = format!("hop-latency-{}-{}", t.as_nanos(), std::process::id()).into_bytes();
    }
    secret
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("hop_latency: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let config = match LinkConfig::new(random_secret()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hop_latency: {e}");
            std::process::exit(1);
        }
    };
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut listener = match Listener::bind(any, config.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hop_latency: bind: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr();
    // The edge needs a node id of its own: the core refuses its own.
    let edge_config = LinkConfig {
        node_id: 1,
        ..config
    };
    let (edge, core) = tokio::join!(
        Link::dial(addr, edge_config),
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
    );
    let (mut edge, core) = match (edge, core) {
        (Ok(edge), Ok(Some(core))) => (edge, core),
        (edge, core) => {
            eprintln!(
                "hop_latency: no link: dial {:?}, accept {}",
                edge.err(),
                if matches!(core, Ok(Some(_))) {
                    "ok"
                } else {
                    "failed"
                }
            );
            std::process::exit(1);
        }
    };
    let mut sample = BytesMut::new();
    let bytes = match encode_datagram(
        &media(Instant::now(), 0, &Bytes::from(vec![0; a.payload])),
        &mut sample,
    ) {
        Ok(()) => sample.len(),
        Err(_) => 0,
    };
    eprintln!(
        "hop_latency: {} messages ({} warm-up) of {bytes} bytes every {:?} per path",
        a.count, a.warmup, a.interval
    );

    let datagram = over_link(a, &core, &mut edge, false).await;
    println!("{}", datagram.report("datagram", a, bytes));
    let control = over_link(a, &core, &mut edge, true).await;
    // A stream frame is the datagram body plus its 4-byte length.
    println!("{}", control.report("control", a, bytes + 4));
    match over_udp(a).await {
        Ok(udp) => println!("{}", udp.report("udp_baseline", a, bytes)),
        Err(e) => eprintln!("hop_latency: udp baseline: {e}"),
    }
    let stats = core.stats();
    eprintln!(
        "hop_latency: core link: {} media sent, {} dropped, {} control sent",
        stats.media_sent, stats.media_dropped, stats.control_sent
    );
    core.close();
}
