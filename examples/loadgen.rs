//! Load generator: speakers and listeners as real WebRTC clients (str0m, real
//! ICE, DTLS and SRTP, real Opus) joining running `sfu-server`s over their
//! WebSocket protocol on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p examples --bin loadgen -- \
//!     --url http://127.0.0.1:8080 [--url http://127.0.0.1:8081 ...] \
//!     --speakers 3 --listeners 100 --seconds 10 \
//!     [--pattern continuous|conversation] [--seed N] [--no-dtx] \
//!     [--threads N] [--full-srtp] [--join-parallel N] \
//!     [--pid PID | --pid NAME=PID ...] [--decode | --decode-every N]
//! ```
//!
//! Speakers join the first URL; listeners are spread round-robin over all
//! URLs (`--url` repeated, or `--edges URL,URL,...`), so one run can load a
//! core and its edges (`scripts/cluster-demo.sh`).
//!
//! **Speakers** send a tone each, encoded with real Opus (20 ms frames).
//! `--pattern continuous` (the default) talks all the time;
//! `--pattern conversation` alternates talk spurts and pauses of
//! exponentially distributed lengths, 1.0 s and 1.5 s on average, from a
//! SplitMix64 seeded with `--seed` and the speaker's index: a given seed
//! gives each speaker the same frame-by-frame schedule on every run. During
//! pauses conversation speakers use Opus DTX as WebRTC does (libopus DTX;
//! of the frames of at most 2 bytes only the first after a real frame is sent),
//! so after a 200 ms hangover a pause costs two small packets per 400 ms
//! instead of twenty; silent packets carry RFC 6464 level 127 with the VAD
//! bit clear (`--no-dtx` sends every frame). Every packet carries the
//! `abs-capture-time` header extension.
//!
//! **Listeners.** Every `--decode-every N`th listener (or all, `--decode`)
//! decodes what it hears and is checked to hear exactly the speakers' tones;
//! it runs on a thread of its own. The others count only. A count-only
//! listener does real ICE (with consent keepalives) and DTLS in str0m, but
//! once connected it gives no media to str0m: SRTP leaves the RTP header in
//! the clear, so it reads sequence number, timestamp, SSRC and header
//! extensions from the datagram and drops it (`--full-srtp`: give media to
//! str0m, which decrypts it, as before). Count-only listeners run as tasks
//! on a pool of `--threads N` threads (default 1), each on its own UDP
//! socket; `--threads 0` gives each its own thread.
//!
//! **Report** (JSON on stdout; a progress line on stderr about once a
//! second: joined, connected, receiving, packets/s, loss so far). Over the
//! measurement window of `--seconds`, after every listener joined and heard
//! its first packet (or the join timeout passed):
//!
//! - `listeners`, `listeners_connected` (ICE + DTLS up at the end),
//!   `listeners_without_audio`, `listeners_stalled_at_end` (no packet in the
//!   last second although speakers sent);
//! - join time, from sending `join` to the listener's first RTP packet:
//!   `join_to_first_audio_ms_p50` / `_p95` / `_max`;
//! - `packets_per_second` received by all listeners, `delivered_of_due`
//!   (received over what the speakers sent times listeners, when there are
//!   no more speakers than slots), `loss`: RFC 3550 per stream (expected
//!   from the sequence numbers minus received), summed over streams;
//! - `jitter_ms_mean` / `jitter_ms_p95`: RFC 3550 interarrival jitter of
//!   each listener stream at the end of the window, mean and 95th
//!   percentile over the streams;
//! - `latency_ms_p50` / `_p99` / `_mean`: one-way latency per packet,
//!   listener receive time minus the `abs-capture-time` the speaker stamped.
//!   Both are read from the same clock in this process. The capture time is
//!   when the speaker hands the encoded frame to str0m (just before SRTP
//!   and `sendto`); the receive time is when the listener's loop reads the
//!   datagram from its socket. So latency includes the speaker's SRTP and
//!   send, loopback UDP both ways, the server's receive, forwarding and
//!   send queues, and the listener's wake-up delay; it excludes audio
//!   capture and packetization, encoding, jitter buffering, decoding and
//!   playout. `null` with `latency_unavailable` saying why when no packet
//!   carried the extension (a server that does not negotiate or forward
//!   it): never estimated;
//! - `mos`: the E-model (ITU-T G.107, simplified, see `quality.rs`) with
//!   effective delay = latency p50 + 2 × mean jitter (jitter buffer) +
//!   20 ms (one Opus frame), loss as above, Ie = 0, Bpl = 10; `null`
//!   without latency (then `mos_without_network_latency` leaves the latency
//!   out of the delay, labelled as such);
//! - CPU of each `--pid` (user + system from /proc over the window), their
//!   sum and the sum per listener, the load generator's own CPU, and how
//!   busy each CPU of the machine was (`machine_cpu_busy`, all processes:
//!   on a shared machine a pinned server can be starved, not saturated).
//!
//! **Steps** (`--steps 500,1000,2000 [--stop-loss 0.001] [--stop-cpu 0.95]`):
//! listeners join up to each count in turn, and each step is measured and
//! reported on its own line of JSON (join times of that step's listeners);
//! the ramp stops after the first step with more loss than `--stop-loss` or
//! more server CPU (the `--pid`s together) than `--stop-cpu` cores, and
//! says so in `stopped_because`. With `--pid`, each report also has the
//! processes' resident memory (`memory_by_process`) and its growth since
//! before the first listener per listener (`server_rss_kib_per_listener`).
//! `scripts/bench-node.sh` ramps a pinned server this way.
//!
//! Bounded: every join waits at most `--join-timeout`, the first audio of all
//! listeners at most `--join-timeout` more, each measurement lasts
//! `--seconds` (at most 64 steps), leaving at most 5 s; then the process
//! exits.

#[path = "loadgen/limits.rs"]
mod limits;
#[path = "loadgen/pool.rs"]
mod pool;
#[path = "loadgen/quality.rs"]
mod quality;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use media_core::str0m::config::DtlsCert;
use serde_json::{json, Value};
use testkit::audio::{TalkPattern, TONES};
use testkit::client::{Client, ClientSpec};
use testkit::latency::LatencyHistogram;
use testkit::udp::UdpPeer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use pool::{lock, PooledPeer};

const USAGE: &str =
    "usage: loadgen [--url URL]... [--edges URL,URL,...] [--channel C] [--speakers N] \
[--listeners M] [--seconds S] [--join-timeout S] [--pattern continuous|conversation] [--seed N] \
[--no-dtx] [--threads N] [--full-srtp] [--join-parallel N] [--pid [NAME=]PID]... \
[--decode | --decode-every N] [--steps N,N,... [--stop-loss F] [--stop-cpu CORES]]";

/// Joins that may fail in a row before the ramp stops (each may take the
/// join timeout).
const MAX_FAILED_JOINS_IN_A_ROW: usize = 5;

/// Most listeners (the open-file limit is checked too).
const MAX_LISTENERS: usize = 20_000;

/// Most listeners with a thread each (`--threads 0`, decoding listeners).
const MAX_THREADED: usize = 5_000;

/// A speaker must have talked this many frames in the window for a
/// decoding listener to be expected to hear it (0.5 s).
const MIN_TALKED_FRAMES: u64 = 25;

/// Frames of a tone that make it "heard" when it is not expected (one or
/// two transitional frames after a switch may decode as anything).
const STRAY_FRAMES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Continuous,
    Conversation,
}

#[derive(Debug)]
struct Args {
    /// Speakers join `urls[0]`; listener `i` joins `urls[i % urls.len()]`.
    urls: Vec<String>,
    channel: String,
    speakers: usize,
    listeners: usize,
    seconds: u64,
    join_timeout: u64,
    /// Processes whose CPU is measured: (label, pid).
    pids: Vec<(String, u32)>,
    /// Every listener decodes and is checked.
    decode: bool,
    /// Every Nth listener decodes and is checked (0: none).
    decode_every: usize,
    pattern: Pattern,
    seed: u64,
    dtx: bool,
    /// Pool threads for count-only listeners; 0: a thread per listener.
    threads: usize,
    /// Count-only listeners give media to str0m (SRTP decryption).
    full_srtp: bool,
    /// Joins in flight at once.
    join_parallel: usize,
    /// Listener counts to measure at, in turn (empty: just `listeners`).
    steps: Vec<usize>,
    /// With steps: stop after a step with more loss than this (0..=1).
    stop_loss: f64,
    /// With steps: stop after a step where the `--pid`s used more cores.
    stop_cpu: f64,
}

/// A flag's numeric value.
fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{flag}: {e}"))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        urls: Vec::new(),
        channel: "load".into(),
        speakers: 3,
        listeners: 20,
        seconds: 10,
        join_timeout: 20,
        pids: Vec::new(),
        decode: false,
        decode_every: 0,
        pattern: Pattern::Continuous,
        seed: 1,
        dtx: true,
        threads: 1,
        full_srtp: false,
        join_parallel: 1,
        steps: Vec::new(),
        stop_loss: 1.0,
        stop_cpu: f64::INFINITY,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.urls.push(val()?),
            "--edges" => a.urls.extend(
                val()?
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from),
            ),
            "--channel" => a.channel = val()?,
            "--speakers" => a.speakers = num(&flag, val()?)?,
            "--listeners" => a.listeners = num(&flag, val()?)?,
            "--seconds" => a.seconds = num(&flag, val()?)?,
            "--join-timeout" => a.join_timeout = num(&flag, val()?)?,
            "--pid" => {
                let v = val()?;
                let (label, pid) = match v.split_once('=') {
                    Some((label, pid)) => (label.to_owned(), pid),
                    None => (v.clone(), v.as_str()),
                };
                let pid = pid.parse().map_err(|e| format!("--pid {v}: {e}"))?;
                a.pids.push((label, pid));
            }
            "--decode" => a.decode = true,
            "--decode-every" => {
                a.decode_every = num(&flag, val()?)?;
                if a.decode_every == 0 {
                    return Err("--decode-every must be at least 1".into());
                }
            }
            "--pattern" => {
                a.pattern = match val()?.as_str() {
                    "continuous" => Pattern::Continuous,
                    "conversation" => Pattern::Conversation,
                    other => return Err(format!("--pattern: {other}? continuous or conversation")),
                }
            }
            "--seed" => a.seed = num(&flag, val()?)?,
            "--no-dtx" => a.dtx = false,
            "--threads" => a.threads = num(&flag, val()?)?,
            "--full-srtp" => a.full_srtp = true,
            "--join-parallel" => a.join_parallel = num(&flag, val()?)?,
            "--steps" => {
                a.steps = val()?
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| num(&flag, v.to_string()))
                    .collect::<Result<_, _>>()?;
                if a.steps.is_empty() || a.steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("--steps: increasing listener counts, e.g. 100,200,400".into());
                }
            }
            "--stop-loss" => a.stop_loss = num(&flag, val()?)?,
            "--stop-cpu" => a.stop_cpu = num(&flag, val()?)?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.urls.is_empty() {
        a.urls.push("http://127.0.0.1:8080".into());
    }
    if let Some(&last) = a.steps.last() {
        a.listeners = last;
    }
    let threaded = if a.threads == 0 || a.decode {
        a.listeners
    } else if a.decode_every > 0 {
        a.listeners.div_ceil(a.decode_every)
    } else {
        0
    };
    if a.seconds == 0
        || a.seconds > 3600
        || a.join_timeout == 0
        || a.join_timeout > 600
        || a.listeners > MAX_LISTENERS
        || threaded > MAX_THREADED
        || a.speakers > 16
        || a.urls.len() > 64
        || a.pids.len() > 64
        || a.threads > 64
        || a.join_parallel == 0
        || a.join_parallel > 256
        || a.steps.len() > 64
        || !(0.0..=1.0).contains(&a.stop_loss)
        || a.stop_cpu.is_nan()
        || a.stop_cpu <= 0.0
    {
        return Err(format!(
            "bounds: 1..=3600 s, join timeout 1..=600 s, at most {MAX_LISTENERS} listeners \
             ({MAX_THREADED} with a thread each: decoding, or --threads 0), 16 speakers, \
             64 URLs, 64 pids, 64 threads, join-parallel 1..=256, 64 steps, \
             stop-loss 0..=1, stop-cpu above 0"
        ));
    }
    Ok(a)
}

/// CPU time (user + system) a process has used, from /proc (`self` for this
/// process).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A client's peer: its own thread, or a task of the pool.
#[derive(Debug)]
enum Peer {
    Thread(UdpPeer),
    Pooled(PooledPeer),
}

/// One member: its signaling socket stays open for its lifetime (closing it
/// leaves the channel); what the server says is read and dropped.
#[derive(Debug)]
struct Member {
    peer: Peer,
    client: Arc<Mutex<Client>>,
    ws: WsSink,
    reader: tokio::task::JoinHandle<()>,
    join_sent: Instant,
    /// Whether it decodes and is checked.
    checked: bool,
}

/// How a member's client is made.
struct Setup<'a> {
    cert: &'a DtlsCert,
    /// Run it on the pool (else on a thread of its own).
    pooled: bool,
}

async fn join(
    a: &Args,
    url: &str,
    name: &str,
    spec: ClientSpec,
    role: &str,
    setup: &Setup<'_>,
) -> Result<Member, String> {
    let ws_url = format!("{}/ws", url.replacen("http://", "ws://", 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.join_timeout);
    let (mut ws, _) = tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(ws_url))
        .await
        .map_err(|_| "websocket: no connection in time".to_string())?
        .map_err(|e| format!("websocket: {e}"))?;
    let checked = spec.decode;
    let (mut peer, offer) = if setup.pooled {
        let (p, offer) = PooledPeer::new(name, &spec, setup.cert).map_err(|e| e.to_string())?;
        (Peer::Pooled(p), offer)
    } else {
        let (p, offer) = UdpPeer::new(name, &spec).map_err(|e| e.to_string())?;
        (Peer::Thread(p), offer)
    };
    let join_sent = Instant::now();
    let msg = json!({"type": "join", "channel": a.channel, "offer": offer, "role": role, "identity": name});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "no answer in time".to_string())?
            .ok_or("socket closed")?
            .map_err(|e| e.to_string())?;
        let Message::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            Some("joined") => {
                let answer = v["answer"].as_str().ok_or("joined without an answer")?;
                let client = match &mut peer {
                    Peer::Pooled(p) => {
                        p.start(answer)?;
                        p.client.clone()
                    }
                    Peer::Thread(p) => {
                        p.try_start(answer)?;
                        p.client()
                    }
                };
                let (sink, mut stream) = ws.split();
                // Read and drop room events so that they do not queue up in
                // the server; ends when the socket closes.
                let reader =
                    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
                return Ok(Member {
                    peer,
                    client,
                    ws: sink,
                    reader,
                    join_sent,
                    checked,
                });
            }
            Some("error") => return Err(format!("refused: {}", v["message"])),
            _ => {}
        }
    }
}

/// Counters of one listener at one moment.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Per stream (SSRC): packets received, packets expected.
    streams: BTreeMap<u32, (u64, u64)>,
    latency: LatencyHistogram,
    without_capture_time: u64,
}

fn snapshot(c: &Client) -> Snapshot {
    Snapshot {
        streams: c
            .streams
            .iter()
            .map(|(ssrc, s)| (*ssrc, (s.stats.received, s.stats.expected())))
            .collect(),
        latency: c.latency.clone(),
        without_capture_time: c.packets_without_capture_time,
    }
}

/// Received and lost between two snapshots (RFC 3550 interval loss per
/// stream: expected minus received in the interval, at least 0).
fn received_and_lost(before: &Snapshot, after: &Snapshot) -> (u64, u64) {
    let (mut received, mut lost) = (0, 0);
    for (ssrc, (r1, e1)) in &after.streams {
        let (r0, e0) = before.streams.get(ssrc).copied().unwrap_or_default();
        let r = r1.saturating_sub(r0);
        received += r;
        lost += e1.saturating_sub(e0).saturating_sub(r);
    }
    (received, lost)
}

/// Frames per heard tone, in packets that arrived in `[from, to)`.
fn tone_counts(c: &Client, from: Instant, to: Instant) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for p in c.streams.values().flat_map(|s| &s.packets) {
        if p.at >= from && p.at < to {
            if let Some(t) = p.tone {
                *counts.entry(t).or_default() += 1;
            }
        }
    }
    counts
}

/// Whether a decoding listener heard exactly the speakers: no tone but
/// theirs (in more than a few frames), and every speaker that talked at
/// least [`MIN_TALKED_FRAMES`] in the window in at least half the frames it
/// talked; of those, as many as the listener has slots.
fn hears_right_speakers(
    heard: &BTreeMap<usize, usize>,
    talked: &BTreeMap<usize, u64>,
    slots: usize,
) -> bool {
    let stray = heard
        .iter()
        .any(|(t, n)| *n >= STRAY_FRAMES && !talked.contains_key(t));
    let due: Vec<(&usize, &u64)> = talked
        .iter()
        .filter(|(_, f)| **f >= MIN_TALKED_FRAMES)
        .collect();
    let heard_enough = due
        .iter()
        .filter(|(t, f)| heard.get(t).is_some_and(|n| *n as u64 * 2 >= **f))
        .count();
    !stray && heard_enough == due.len().min(slots)
}

/// What the progress line reads.
struct Progress {
    listeners: Mutex<Vec<Arc<Mutex<Client>>>>,
    requested: usize,
    failed: AtomicUsize,
    done: AtomicBool,
}

/// Prints a progress line to stderr about once a second until `done`.
async fn progress(p: Arc<Progress>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    while !p.done.load(Ordering::Relaxed) {
        tick.tick().await;
        let clients = p
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = Instant::now();
        let (mut connected, mut receiving, mut received, mut lost, mut expected) = (0, 0, 0, 0, 0);
        for c in &clients {
            let c = lock(c);
            connected += usize::from(c.is_connected());
            let mut recent = false;
            for s in c.streams.values() {
                received += s.stats.received;
                lost += s.stats.lost();
                expected += s.stats.expected();
                recent |= s
                    .stats
                    .last_at
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
            }
            receiving += usize::from(recent);
        }
        let pps = received.saturating_sub(last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, received);
        eprintln!(
            "loadgen: {:>6.1} s  joined {}/{} (failed {})  connected {}  receiving {}  {:.0} packets/s  loss so far {:.3}% ({lost} of {expected})",
            (now - start).as_secs_f64(),
            clients.len(),
            p.requested,
            p.failed.load(Ordering::Relaxed),
            connected,
            receiving,
            pps,
            if expected > 0 { lost as f64 * 100.0 / expected as f64 } else { 0.0 },
        );
    }
}

fn main() {
    let a = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    // A UDP socket and a WebSocket per member, and some to spare.
    let fds = 2 * (a.speakers + a.listeners) as u64 + 64;
    if let Err(e) = limits::ensure_open_files(fds) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .thread_name("loadgen-pool")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(a));
    // Pool tasks are aborted with their members; do not wait for stragglers.
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(a: Args) -> i32 {
    let start = Instant::now();
    // One wall clock for every client: latency is exact on it.
    let capture_clock = Some((Instant::now(), SystemTime::now()));
    let Some(cert) = media_core::str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
    else {
        eprintln!("loadgen: DTLS certificate generation failed");
        return 1;
    };
    let talk = |i: usize| match a.pattern {
        Pattern::Continuous => TalkPattern::Continuous,
        Pattern::Conversation => {
            TalkPattern::conversation(a.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
    };
    let dtx = a.dtx && a.pattern == Pattern::Conversation;

    let mut speakers = Vec::new();
    for i in 0..a.speakers {
        let spec = ClientSpec {
            talk: talk(i),
            dtx,
            capture_clock,
            ..ClientSpec::speaker(i)
        };
        let setup = Setup {
            cert: &cert,
            pooled: false,
        };
        match join(
            &a,
            &a.urls[0],
            &format!("speaker-{i}"),
            spec,
            "speaker",
            &setup,
        )
        .await
        {
            Ok(m) => speakers.push(m),
            Err(e) => {
                eprintln!("loadgen: speaker {i} at {}: {e}", a.urls[0]);
                return 1;
            }
        }
    }
    for s in &speakers {
        lock(&s.client).set_talking(0.5);
    }
    // Memory of the measured processes before any listener joined.
    let rss_base: Vec<Option<u64>> = a.pids.iter().map(|(_, p)| rss_kib(*p)).collect();

    let prog = Arc::new(Progress {
        listeners: Mutex::new(Vec::new()),
        requested: a.listeners,
        failed: AtomicUsize::new(0),
        done: AtomicBool::new(false),
    });
    let progress_task = tokio::spawn(progress(prog.clone(), start));

    let steps = if a.steps.is_empty() {
        vec![a.listeners]
    } else {
        a.steps.clone()
    };
    let mut listeners: Vec<Member> = Vec::new();
    let mut per_url = vec![0usize; a.urls.len()];
    let mut failed_in_a_row = 0;
    for (step, &target) in steps.iter().enumerate() {
        // Listeners up to `target`: `join_parallel` joins in flight,
        // stopped after too many failures in a row.
        let ramp = Instant::now();
        let first_new = listeners.len();
        let mut joined: Vec<(usize, Member)> = Vec::new();
        {
            let (a, cert) = (&a, &cert);
            let mut joins = futures_util::stream::iter(first_new..target)
                .map(|i| async move {
                    let decode = a.decode || (a.decode_every > 0 && i % a.decode_every == 0);
                    let spec = ClientSpec {
                        decode,
                        log_packets: decode,
                        raw_media: !decode && !a.full_srtp,
                        capture_clock,
                        ..ClientSpec::listener()
                    };
                    let setup = Setup {
                        cert,
                        pooled: !decode && a.threads > 0,
                    };
                    let u = i % a.urls.len();
                    let name = format!("listener-{i}");
                    let r = join(a, &a.urls[u], &name, spec, "listener", &setup).await;
                    (i, u, r)
                })
                .buffer_unordered(a.join_parallel);
            while let Some((i, u, r)) = joins.next().await {
                match r {
                    Ok(m) => {
                        prog.listeners
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(m.client.clone());
                        joined.push((i, m));
                        per_url[u] += 1;
                        failed_in_a_row = 0;
                    }
                    Err(e) => {
                        eprintln!("loadgen: listener {i} at {}: {e}", a.urls[u]);
                        prog.failed.fetch_add(1, Ordering::Relaxed);
                        failed_in_a_row += 1;
                        if failed_in_a_row >= MAX_FAILED_JOINS_IN_A_ROW {
                            break;
                        }
                    }
                }
            }
        }
        joined.sort_by_key(|(i, _)| *i);
        listeners.extend(joined.into_iter().map(|(_, m)| m));
        let join_ramp = ramp.elapsed();
        let mut report = measure(
            &a,
            &speakers,
            &listeners,
            first_new,
            &rss_base,
            Instant::now() + Duration::from_secs(a.join_timeout),
        )
        .await;
        report.insert("listeners_per_url", json!(per_url));
        report.insert("join_ramp_seconds", json!(join_ramp.as_secs_f64()));
        report.insert("dtx", json!(dtx));
        let value = |k: &str| report.get(k).and_then(Value::as_f64);
        let stop = if failed_in_a_row >= MAX_FAILED_JOINS_IN_A_ROW {
            Some(format!("{failed_in_a_row} joins failed in a row"))
        } else if value("loss").unwrap_or(1.0) > a.stop_loss {
            Some(format!("loss above {}", a.stop_loss))
        } else if value("server_cpu_cores").is_some_and(|c| c > a.stop_cpu) {
            Some(format!("server CPU above {} cores", a.stop_cpu))
        } else {
            None
        };
        report.insert("step", json!(step));
        report.insert("stopped_because", json!(stop));
        if a.steps.is_empty() {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            // One line per step (NDJSON), as soon as the step is measured.
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if let Some(why) = &stop {
                eprintln!(
                    "loadgen: stopping after {} listeners: {why}",
                    listeners.len()
                );
            }
        }
        let last = stop.is_some() || step + 1 == steps.len();
        if last {
            break;
        }
    }
    prog.done.store(true, Ordering::Relaxed);
    progress_task.abort();
    leave(speakers.into_iter().chain(listeners).collect()).await;
    0
}

/// Busy and total time of each CPU (clock ticks), from /proc/stat.
fn cpu_ticks() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let total: u64 = f.iter().take(8).sum();
            // idle and iowait
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total.saturating_sub(idle), total)
        })
        .collect()
}

/// Resident memory of a process in KiB (VmRSS), from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (at most until `first_audio_by`) for every listener to hear its
/// first packet, measures one window of `--seconds`, and reports. Join
/// times are of the listeners from `first_new` on (those of this step).
async fn measure(
    a: &Args,
    speakers: &[Member],
    listeners: &[Member],
    first_new: usize,
    rss_base: &[Option<u64>],
    first_audio_by: Instant,
) -> BTreeMap<&'static str, Value> {
    // Join time: until each listener's first audio packet.
    let first_packet = |m: &Member| -> Option<Instant> {
        lock(&m.client)
            .streams
            .values()
            .filter_map(|s| s.stats.first_at)
            .min()
    };
    let new = listeners.get(first_new..).unwrap_or_default();
    while Instant::now() < first_audio_by && !new.iter().all(|m| first_packet(m).is_some()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut join_times: Vec<Duration> = new
        .iter()
        .filter_map(|m| Some(first_packet(m)?.saturating_duration_since(m.join_sent)))
        .collect();
    join_times.sort();
    let without_audio = listeners
        .iter()
        .filter(|m| first_packet(m).is_none())
        .count();

    // The measurement window.
    let cpu = |pids: &[(String, u32)]| -> Vec<Option<Duration>> {
        pids.iter().map(|(_, p)| cpu_time(&p.to_string())).collect()
    };
    let speaker_counts = |ms: &[Member]| -> Vec<(u64, u64, u64)> {
        ms.iter()
            .map(|m| {
                let c = lock(&m.client);
                (c.packets_sent, c.frames_suppressed, c.frames_talked)
            })
            .collect()
    };
    let cpu0 = cpu(&a.pids);
    let self0 = cpu_time("self");
    let machine0 = cpu_ticks();
    let spk0 = speaker_counts(speakers);
    let snaps0: Vec<Snapshot> = listeners
        .iter()
        .map(|m| snapshot(&lock(&m.client)))
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let t1 = Instant::now();
    let snaps1: Vec<Snapshot> = listeners
        .iter()
        .map(|m| snapshot(&lock(&m.client)))
        .collect();
    let spk1 = speaker_counts(speakers);
    let self1 = cpu_time("self");
    let cpu1 = cpu(&a.pids);
    let machine1 = cpu_ticks();
    let rss: Vec<Option<u64>> = a.pids.iter().map(|(_, p)| rss_kib(*p)).collect();
    let secs = (t1 - t0).as_secs_f64();

    let (mut received, mut lost) = (0u64, 0u64);
    let mut latency = LatencyHistogram::default();
    let mut without_capture_time = 0;
    for (s0, s1) in snaps0.iter().zip(&snaps1) {
        let (r, l) = received_and_lost(s0, s1);
        received += r;
        lost += l;
        latency.merge(&s1.latency.since(&s0.latency));
        without_capture_time += s1
            .without_capture_time
            .saturating_sub(s0.without_capture_time);
    }
    let loss = if received + lost > 0 {
        lost as f64 / (received + lost) as f64
    } else {
        0.0
    };
    // Jitter of every listener stream that received in the window.
    let mut jitters: Vec<f64> = Vec::new();
    let (mut connected, mut malformed) = (0, 0);
    for (m, (s0, s1)) in listeners.iter().zip(snaps0.iter().zip(&snaps1)) {
        let c = lock(&m.client);
        connected += usize::from(c.is_connected());
        malformed += c.malformed_rtp;
        for (ssrc, s) in &c.streams {
            let r0 = s0.streams.get(ssrc).map_or(0, |x| x.0);
            if s1.streams.get(ssrc).map_or(0, |x| x.0) > r0 {
                jitters.push(s.stats.jitter_ms());
            }
        }
    }
    jitters.sort_by(f64::total_cmp);
    let jitter_mean =
        (!jitters.is_empty()).then(|| jitters.iter().sum::<f64>() / jitters.len() as f64);

    let sent: u64 = spk1.iter().zip(&spk0).map(|(x, y)| x.0 - y.0).sum();
    let suppressed: u64 = spk1.iter().zip(&spk0).map(|(x, y)| x.1 - y.1).sum();
    let slots = ClientSpec::listener().slots;
    // What the listeners should have received: every packet of every
    // speaker, when each listener has a slot per speaker.
    let due = (speakers.len() <= slots).then_some(listeners.len() as f64 * sent as f64);
    let stalled = listeners
        .iter()
        .filter(|m| {
            let last = lock(&m.client)
                .streams
                .values()
                .filter_map(|s| s.stats.last_at)
                .max();
            last.is_none_or(|at| at + Duration::from_secs(1) < t1)
        })
        .count();

    // Who hears whom, among the decoding listeners.
    let talked: BTreeMap<usize, u64> = spk1
        .iter()
        .zip(&spk0)
        .enumerate()
        .map(|(i, (x, y))| (i % TONES.len(), x.2 - y.2))
        .collect();
    let (mut checked, mut right) = (0usize, 0usize);
    for m in listeners.iter().filter(|m| m.checked) {
        checked += 1;
        let c = lock(&m.client);
        let heard = tone_counts(&c, t0, t1);
        if hears_right_speakers(&heard, &talked, slots) {
            right += 1;
        } else {
            eprintln!(
                "loadgen: {} heard tones (frames) {heard:?}, speakers talked (frames) {talked:?}",
                c.name
            );
        }
    }

    // Latency, and why there is none.
    let speakers_negotiated = speakers
        .iter()
        .all(|m| lock(&m.client).ext_ids.abs_capture_time.is_some());
    let listeners_negotiated = listeners
        .iter()
        .filter(|m| lock(&m.client).ext_ids.abs_capture_time.is_some())
        .count();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let latency_p50 = ms(latency.quantile(0.5));
    let unavailable = if latency.count() > 0 {
        None
    } else if received == 0 {
        Some("unavailable (no packets received)")
    } else if !speakers_negotiated {
        Some("unavailable (server does not negotiate abs-capture-time with speakers)")
    } else if listeners_negotiated == 0 {
        Some("unavailable (server does not negotiate abs-capture-time with listeners)")
    } else {
        Some("unavailable (server does not forward abs-capture-time)")
    };

    let mut report = BTreeMap::new();
    report.insert("urls", json!(a.urls.len()));
    report.insert("speakers", json!(speakers.len()));
    report.insert(
        "pattern",
        json!(match a.pattern {
            Pattern::Continuous => "continuous",
            Pattern::Conversation => "conversation",
        }),
    );
    report.insert("seed", json!(a.seed));
    report.insert(
        "listener_mode",
        json!(if a.full_srtp { "srtp" } else { "raw-header" }),
    );
    report.insert("threads", json!(a.threads));
    report.insert("listeners", json!(listeners.len()));
    report.insert("listeners_requested", json!(a.listeners));
    report.insert("listeners_connected", json!(connected));
    report.insert("listeners_without_audio", json!(without_audio));
    report.insert("seconds", json!(secs));
    report.insert("packets_per_second", json!(received as f64 / secs));
    report.insert(
        "speaker_packets_per_second",
        json!(sent as f64 / secs / speakers.len().max(1) as f64),
    );
    report.insert("speaker_frames_suppressed_dtx", json!(suppressed));
    report.insert("loss", json!(loss));
    report.insert("packets_lost", json!(lost));
    report.insert(
        "delivered_of_due",
        json!(due.map(|d| if d > 0.0 { received as f64 / d } else { 0.0 })),
    );
    report.insert("listeners_stalled_at_end", json!(stalled));
    report.insert("listeners_checked", json!(checked));
    report.insert("listeners_hearing_right_speakers", json!(right));
    report.insert("malformed_rtp", json!(malformed));
    let join_ms = |p: f64| ms(quality::percentile(&join_times, p));
    report.insert("join_to_first_audio_ms_p50", json!(join_ms(0.5)));
    report.insert("join_to_first_audio_ms_p95", json!(join_ms(0.95)));
    report.insert("join_to_first_audio_ms_max", json!(join_ms(1.0)));
    report.insert("jitter_streams", json!(jitters.len()));
    report.insert("jitter_ms_mean", json!(jitter_mean));
    report.insert("jitter_ms_p95", json!(quality::percentile(&jitters, 0.95)));
    report.insert("latency_samples", json!(latency.count()));
    report.insert(
        "latency_packets_without_capture_time",
        json!(without_capture_time),
    );
    report.insert("latency_ms_p50", json!(latency_p50));
    report.insert("latency_ms_p99", json!(ms(latency.quantile(0.99))));
    report.insert("latency_ms_mean", json!(ms(latency.mean())));
    report.insert("latency_unavailable", json!(unavailable));
    let mos_json = |m: quality::Mos| {
        json!({"mos": m.mos, "r": m.r, "delay_ms": m.delay_ms, "loss_percent": m.loss_percent,
               "id": m.id, "ie_eff": m.ie_eff, "ie": quality::IE_OPUS, "bpl": quality::BPL_OPUS})
    };
    let jitter_for_mos = jitter_mean.unwrap_or(0.0);
    match latency_p50 {
        Some(l) if received > 0 => {
            let m = quality::estimate(l, jitter_for_mos, loss);
            report.insert("mos", json!(m.mos));
            report.insert("mos_model", mos_json(m));
        }
        _ => {
            report.insert("mos", Value::Null);
            if received > 0 {
                let m = quality::estimate(0.0, jitter_for_mos, loss);
                report.insert("mos_without_network_latency", mos_json(m));
            }
        }
    }
    let mut by_process = BTreeMap::new();
    let mut rss_by_process = BTreeMap::new();
    let mut total = Duration::ZERO;
    let mut all = !a.pids.is_empty();
    for (i, (((label, _), c0), c1)) in a.pids.iter().zip(&cpu0).zip(&cpu1).enumerate() {
        rss_by_process.insert(
            label.clone(),
            json!({"rss_kib": rss[i], "rss_kib_before_listeners": rss_base.get(i).copied().flatten()}),
        );
        match (c0, c1) {
            (Some(c0), Some(c1)) => {
                let used = c1.saturating_sub(*c0);
                total += used;
                by_process.insert(label.clone(), json!(used.as_secs_f64() / secs));
            }
            _ => {
                all = false;
                eprintln!("loadgen: no CPU time for {label} (process gone?)");
                by_process.insert(label.clone(), Value::Null);
            }
        }
    }
    if !a.pids.is_empty() {
        report.insert("cpu_cores_by_process", json!(by_process));
        report.insert("memory_by_process", json!(rss_by_process));
        let sum = |v: &[Option<u64>]| -> Option<u64> { v.iter().copied().sum() };
        if let (Some(r1), Some(r0)) = (sum(&rss), sum(rss_base)) {
            report.insert("server_rss_kib", json!(r1));
            if !listeners.is_empty() {
                report.insert(
                    "server_rss_kib_per_listener",
                    json!(r1.saturating_sub(r0) as f64 / listeners.len() as f64),
                );
            }
        }
    }
    if all {
        let cpu = total.as_secs_f64() / secs;
        report.insert("server_cpu_cores", json!(cpu));
        if !listeners.is_empty() {
            report.insert(
                "server_cpu_per_listener_percent",
                json!(cpu * 100.0 / listeners.len() as f64),
            );
            if cpu > 0.0 {
                report.insert(
                    "listeners_per_server_core",
                    json!(listeners.len() as f64 / cpu),
                );
            }
        }
        if received > 0 {
            report.insert(
                "server_cpu_us_per_received_packet",
                json!(cpu * 1e6 / (received as f64 / secs)),
            );
        }
    }
    // How busy each CPU of the machine was (every process): on a shared
    // machine a pinned server may be starved rather than saturated.
    let busy: Vec<Value> = machine1
        .iter()
        .zip(&machine0)
        .map(|((b1, t1), (b0, t0))| {
            let total = t1.saturating_sub(*t0);
            json!(if total > 0 {
                b1.saturating_sub(*b0) as f64 / total as f64
            } else {
                0.0
            })
        })
        .collect();
    report.insert("machine_cpu_busy", json!(busy));
    if let (Some(s0), Some(s1)) = (self0, self1) {
        report.insert(
            "loadgen_cpu_cores",
            json!(s1.saturating_sub(s0).as_secs_f64() / secs),
        );
    }
    report
}

/// Leaves politely, but spends at most a few seconds on it (a server too
/// busy to read its sockets then notices the peers vanish).
async fn leave(members: Vec<Member>) {
    let leave_by = tokio::time::Instant::now() + Duration::from_secs(5);
    for m in &members {
        if let Peer::Thread(p) = &m.peer {
            p.signal_stop();
        }
    }
    let leave = json!({"type": "leave"}).to_string();
    for mut m in members {
        let _ =
            tokio::time::timeout_at(leave_by, m.ws.send(Message::Text(leave.clone().into()))).await;
        m.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_parse_and_are_bounded() {
        let a = args("--url http://x:1 --listeners 2000 --pattern conversation --seed 9 --threads 2 --join-parallel 8 --decode-every 100").unwrap();
        assert_eq!(a.pattern, Pattern::Conversation);
        assert_eq!(
            (a.seed, a.threads, a.join_parallel, a.listeners),
            (9, 2, 8, 2000)
        );
        assert!(a.dtx && !a.full_srtp);
        let d = args("").unwrap();
        assert_eq!(d.pattern, Pattern::Continuous);
        assert_eq!(d.threads, 1);
        assert_eq!(d.urls, ["http://127.0.0.1:8080"]);
        for bad in [
            "--pattern chatty",
            "--listeners 20001",
            "--threads 0 --listeners 6000",
            "--decode --listeners 6000",
            "--seconds 0",
            "--join-parallel 0",
            "--speakers x",
            "--seed",
            "--bogus",
            "--decode-every 0",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
        assert!(args("--threads 1 --listeners 20000").is_ok());
        let s =
            args("--steps 100,200,400 --listeners 5 --stop-loss 0.001 --stop-cpu 0.95").unwrap();
        assert_eq!((s.steps.clone(), s.listeners), (vec![100, 200, 400], 400));
        assert_eq!((s.stop_loss, s.stop_cpu), (0.001, 0.95));
        for bad in [
            "--steps 200,100",
            "--steps ,",
            "--steps 1,x",
            "--stop-loss 2",
            "--stop-cpu 0",
            "--steps 100,30000",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interval_loss_per_stream() {
        let s = |v: &[(u32, u64, u64)]| Snapshot {
            streams: v.iter().map(|&(k, r, e)| (k, (r, e))).collect(),
            ..Default::default()
        };
        // Stream 1: 100 more expected, 98 more received; stream 2 new with
        // 50 expected, 50 received; stream 3 gone quiet.
        let before = s(&[(1, 10, 10), (3, 5, 6)]);
        let after = s(&[(1, 108, 110), (2, 50, 50), (3, 5, 6)]);
        assert_eq!(received_and_lost(&before, &after), (148, 2));
        // Duplicates never make loss negative.
        assert_eq!(
            received_and_lost(&s(&[(1, 0, 0)]), &s(&[(1, 12, 10)])),
            (12, 0)
        );
    }

    #[test]
    fn right_speakers_check() {
        let talked: BTreeMap<usize, u64> = [(0, 200), (1, 150), (2, 10)].into();
        // Speaker 2 talked too little to be required.
        let heard: BTreeMap<usize, usize> = [(0, 190), (1, 140), (2, 3)].into();
        assert!(hears_right_speakers(&heard, &talked, 3));
        // A stray tone.
        let mut stray = heard.clone();
        stray.insert(5, 20);
        assert!(!hears_right_speakers(&stray, &talked, 3));
        // Speaker 1 heard in too few of its frames.
        let short: BTreeMap<usize, usize> = [(0, 190), (1, 40)].into();
        assert!(!hears_right_speakers(&short, &talked, 3));
        // More talkers than slots: as many as the slots.
        assert!(hears_right_speakers(&[(0, 190)].into(), &talked, 1));
        assert!(!hears_right_speakers(&[(0, 190)].into(), &talked, 2));
    }
}
