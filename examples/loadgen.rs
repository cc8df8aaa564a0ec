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
//!     [--pid PID | --pid NAME=PID ...] [--decode | --decode-every N] \
//!     [--churn PER_SEC [--churn-stay S]] [--idle-ws N]
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
//! **Churn and idle members** (`--churn PER_SEC [--churn-stay S]`,
//! `--idle-ws N`, `churn.rs`): from the end of the first step's joins,
//! listeners join at that rate, stay S seconds and leave (every other one
//! without a word), and N members join and never read their WebSocket
//! again; both are reported apart (`churn`, `idle_ws`), the listener
//! figures stay the stable listeners'. `scripts/soak.sh` runs this for
//! half an hour.
//!
//! Bounded: every join waits at most `--join-timeout`, the first audio of all
//! listeners at most `--join-timeout` more, each measurement lasts
//! `--seconds` (at most 64 steps), leaving at most 5 s; then the process
//! exits.

//!
//! `--help` lists every flag with its default and bounds.
//!
//! The parts, a file each under `loadgen/`: `cli` (flags), `joins` (who
//! joins where), `member` (one member's join and leave), `churn` (members
//! that come and go, members that stop reading), `pool` (count-only
//! listeners as tasks), `first_audio` (join times), `window` (counters at
//! the start and end of a window), `listener_stats` and `hearing` (what the
//! listeners got), `proc_stats` (CPU and memory from /proc), `measure` (one
//! step's figures), `report` (its JSON), `quality` (E-model), `progress`,
//! `limits` (open files).

#[path = "loadgen/churn.rs"]
mod churn;
#[path = "loadgen/cli.rs"]
mod cli;
#[path = "loadgen/first_audio.rs"]
mod first_audio;
#[path = "loadgen/hearing.rs"]
mod hearing;
#[path = "loadgen/joins.rs"]
mod joins;
#[path = "loadgen/limits.rs"]
mod limits;
#[path = "loadgen/listener_stats.rs"]
mod listener_stats;
#[path = "loadgen/measure.rs"]
mod measure;
#[path = "loadgen/member.rs"]
mod member;
#[path = "loadgen/pool.rs"]
mod pool;
#[path = "loadgen/proc_stats.rs"]
mod proc_stats;
#[path = "loadgen/progress.rs"]
mod progress;
#[path = "loadgen/quality.rs"]
mod quality;
#[path = "loadgen/report.rs"]
mod report;
#[path = "loadgen/window.rs"]
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use cli::Args;
use joins::{JoinTally, Joins};
use pool::lock;
use progress::Progress;
use report::Report;

fn main() {
    let a = cli::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    // A UDP socket and a WebSocket per member, and some to spare.
    let members = a.speakers + a.listeners + a.max_churners() + a.idle_ws;
    let fds = 2 * members as u64 + 64;
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

/// Joins the speakers, then ramps the listeners step by step, measuring and
/// reporting each step; leaves. The process's exit status.
async fn run(a: Args) -> i32 {
    let start = Instant::now();
    let Some(cert) = media_core::str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
    else {
        eprintln!("loadgen: DTLS certificate generation failed");
        return 1;
    };
    let joins = Joins {
        args: &a,
        cert: &cert,
        capture_clock: Some((Instant::now(), SystemTime::now())),
    };
    let speakers = match joins.speakers().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 1;
        }
    };
    for s in &speakers {
        lock(&s.client).set_talking(0.5);
    }
    // Memory of the measured processes before any listener joined.
    let rss_base = proc_stats::rss_kib_of(&a.pids);

    let progress = Arc::new(Progress::new(a.listeners));
    let progress_task = tokio::spawn(progress::print_every_second(progress.clone(), start));
    let steps = a.step_targets();
    let mut listeners = Vec::new();
    let mut tally = JoinTally::new(a.urls.len());
    let mut churn = None;
    let mut idle = Vec::new();
    for (step, &target) in steps.iter().enumerate() {
        let ramp = Instant::now();
        let first_new = listeners.len();
        joins
            .listeners_up_to(target, &mut listeners, &mut tally, &progress)
            .await;
        let join_ramp = ramp.elapsed();
        if step == 0 {
            churn = churn::Churn::start(&a, &cert);
            idle = churn::join_idle(&a, &cert).await;
        }
        let first_audio_by = Instant::now() + Duration::from_secs(a.join_timeout);
        let m = measure::measure(&a, &speakers, &listeners, first_new, first_audio_by).await;
        let mut report = report::build(&a, &m, &rss_base);
        report.insert("listeners_per_url", json!(tally.per_url));
        report.insert("join_ramp_seconds", json!(join_ramp.as_secs_f64()));
        report.insert("dtx", json!(a.uses_dtx()));
        if let Some(c) = &churn {
            report.insert("churn", c.figures());
        }
        if a.idle_ws > 0 {
            report.insert("idle_ws", churn::idle_report(&a, &idle));
        }
        let stop = stop_reason(&a, &tally, &report);
        report.insert("step", json!(step));
        report.insert("stopped_because", json!(stop));
        print_report(&a, &report, stop.as_deref(), listeners.len());
        if stop.is_some() || step + 1 == steps.len() {
            break;
        }
    }
    progress.finish();
    progress_task.abort();
    if let Some(c) = churn {
        c.stop();
    }
    let everyone = speakers.into_iter().chain(listeners).chain(idle);
    member::leave(everyone.collect()).await;
    0
}

/// Why the ramp ends after this step (`None`: go on, if steps are left).
fn stop_reason(a: &Args, tally: &JoinTally, report: &Report) -> Option<String> {
    let value = |k: &str| report.get(k).and_then(serde_json::Value::as_f64);
    if tally.gave_up() {
        Some(format!("{} joins failed in a row", tally.failed_in_a_row))
    } else if value("loss").unwrap_or(1.0) > a.stop_loss {
        Some(format!("loss above {}", a.stop_loss))
    } else if value("server_cpu_cores").is_some_and(|c| c > a.stop_cpu) {
        Some(format!("server CPU above {} cores", a.stop_cpu))
    } else {
        None
    }
}

/// Prints a step's report on stdout: pretty JSON for a single measurement,
/// one line per step (NDJSON, as soon as the step is measured) with
/// `--steps`.
fn print_report(a: &Args, report: &Report, stop: Option<&str>, listeners: usize) {
    if a.steps.is_none() {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        if let Some(why) = stop {
            eprintln!("loadgen: stopping after {listeners} listeners: {why}");
        }
    }
}
