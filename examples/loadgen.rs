//! Load generator: speakers and listeners as real WebRTC clients (str0m, real
//! DTLS/SRTP, real Opus) joining running `sfu-server`s over their WebSocket
//! protocol on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p examples --bin loadgen -- \
//!     --url http://127.0.0.1:8080 [--url http://127.0.0.1:8081 ...] \
//!     --speakers 3 --listeners 100 --seconds 10 \
//!     [--pid PID | --pid NAME=PID ...] [--decode | --decode-every N]
//! ```
//!
//! Speakers join the first URL; listeners are spread round-robin over all
//! URLs (`--url` repeated, or `--edges URL,URL,...`), so one run can load a
//! core and its edges (`scripts/cluster-demo.sh`).
//!
//! Reports join time (WebSocket join sent → first audio packet), packets
//! received per second, loss (gaps in the streams), what share of the
//! packets due (listeners × voices × 50/s) arrived, listeners that fell
//! silent, and, given the servers' `--pid`s, each one's
//! CPU, their sum and the sum per listener; also the load generator's own
//! CPU (it shares the machine). With `--decode-every N` every Nth listener
//! (listener 0, N, 2N, ...) decodes what it hears and is checked to hear
//! exactly the speakers' tones during the measurement
//! (`listeners_hearing_right_speakers` of `listeners_checked`); the others
//! only count packets. `--decode` decodes and checks every listener.
//!
//! Bounded: every join waits at most `--join-timeout`, the first audio of all
//! listeners at most `--join-timeout` more, the measurement lasts
//! `--seconds`, then everyone leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use media_core::harness::audio::TONES;
use media_core::harness::client::{Client, ClientSpec};
use media_core::harness::udp::UdpPeer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "usage: loadgen [--url URL]... [--edges URL,URL,...] [--channel C] [--speakers N] \
[--listeners M] [--seconds S] [--join-timeout S] [--pid [NAME=]PID]... [--decode | --decode-every N]";

/// Joins that may fail in a row before the ramp stops (each may take the
/// join timeout).
const MAX_FAILED_JOINS_IN_A_ROW: usize = 5;

/// Frames per second of one voice (20 ms Opus frames).
const FRAMES_PER_SECOND: u64 = 50;

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
}

fn parse_args() -> Result<Args, String> {
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
    };
    let mut it = std::env::args().skip(1);
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
            "--speakers" => a.speakers = val()?.parse().map_err(|e| format!("--speakers: {e}"))?,
            "--listeners" => {
                a.listeners = val()?.parse().map_err(|e| format!("--listeners: {e}"))?
            }
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--join-timeout" => {
                a.join_timeout = val()?.parse().map_err(|e| format!("--join-timeout: {e}"))?
            }
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
                a.decode_every = val()?.parse().map_err(|e| format!("--decode-every: {e}"))?;
                if a.decode_every == 0 {
                    return Err("--decode-every must be at least 1".into());
                }
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.urls.is_empty() {
        a.urls.push("http://127.0.0.1:8080".into());
    }
    if a.seconds == 0
        || a.seconds > 3600
        || a.join_timeout == 0
        || a.join_timeout > 600
        || a.listeners > 5000
        || a.speakers > 16
        || a.urls.len() > 64
        || a.pids.len() > 64
    {
        return Err(
            "bounds: 1..=3600 s, join timeout 1..=600 s, at most 5000 listeners, \
                    16 speakers, 64 URLs and 64 pids"
                .into(),
        );
    }
    Ok(a)
}

/// CPU time (user + system) a process has used, from /proc (`self` for this
/// process).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// One member: its signaling socket stays open for its lifetime.
struct Member {
    peer: UdpPeer,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    join_sent: Instant,
    /// Whether it decodes and is checked.
    checked: bool,
}

async fn join(
    a: &Args,
    url: &str,
    name: &str,
    spec: ClientSpec,
    role: &str,
) -> Result<Member, String> {
    let ws_url = format!("{}/ws", url.replacen("http://", "ws://", 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.join_timeout);
    let (mut ws, _) = tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(ws_url))
        .await
        .map_err(|_| "websocket: no connection in time".to_string())?
        .map_err(|e| format!("websocket: {e}"))?;
    let checked = spec.decode;
    let (mut peer, offer) = UdpPeer::new(name, &spec, Instant::now).map_err(|e| e.to_string())?;
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
        let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some("joined") => {
                peer.start(v["answer"].as_str().ok_or("no answer")?);
                return Ok(Member {
                    peer,
                    ws,
                    join_sent,
                    checked,
                });
            }
            Some("error") => return Err(format!("refused: {}", v["message"])),
            _ => {}
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Packets received and lost (gaps between the lowest and the highest
/// sequence number of each stream) so far.
fn received_and_lost(c: &Client) -> (u64, u64) {
    let mut lost = 0;
    let mut seqs = Vec::new();
    for s in c.streams.values() {
        seqs.clear();
        seqs.extend(s.packets.iter().map(|p| p.seq));
        seqs.sort_unstable();
        seqs.dedup();
        if let (Some(a), Some(b)) = (seqs.first(), seqs.last()) {
            lost += (b - a + 1) - seqs.len() as u64;
        }
    }
    (c.packets_received() as u64, lost)
}

/// Whether `c` heard exactly the expected voices in `[from, to)`: every tone
/// it heard in at least `min_frames` frames is a speaker's, it heard as many
/// of them as it has slots for (all of them when there are no more speakers
/// than slots), and no other tone in more than a few frames (one or two
/// transitional frames after a switch may decode as anything).
fn hears_right_speakers(
    c: &Client,
    expected: &BTreeSet<usize>,
    slots: usize,
    from: Instant,
    to: Instant,
    min_frames: usize,
) -> (bool, BTreeSet<usize>) {
    let heard = c.tones_heard(from, to, min_frames);
    let stray = c.tones_heard(from, to, 5);
    let ok = heard.is_subset(expected)
        && stray.is_subset(expected)
        && heard.len() == expected.len().min(slots);
    (ok, stray)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let mut speakers = Vec::new();
    for i in 0..a.speakers {
        match join(
            &a,
            &a.urls[0],
            &format!("speaker-{i}"),
            ClientSpec::speaker(i),
            "speaker",
        )
        .await
        {
            Ok(m) => speakers.push(m),
            Err(e) => {
                eprintln!("loadgen: speaker {i} at {}: {e}", a.urls[0]);
                std::process::exit(1);
            }
        }
    }
    for s in &speakers {
        s.peer.set_talking(true);
    }
    let mut listeners = Vec::new();
    let mut per_url = vec![0usize; a.urls.len()];
    let ramp = Instant::now();
    let mut failed_in_a_row = 0;
    for i in 0..a.listeners {
        if failed_in_a_row >= MAX_FAILED_JOINS_IN_A_ROW {
            eprintln!("loadgen: {failed_in_a_row} joins failed in a row; no more listeners");
            break;
        }
        let spec = ClientSpec {
            decode: a.decode || (a.decode_every > 0 && i % a.decode_every == 0),
            ..ClientSpec::listener()
        };
        let u = i % a.urls.len();
        match join(&a, &a.urls[u], &format!("listener-{i}"), spec, "listener").await {
            Ok(m) => {
                listeners.push(m);
                per_url[u] += 1;
                failed_in_a_row = 0;
            }
            Err(e) => {
                eprintln!("loadgen: listener {i} at {}: {e}", a.urls[u]);
                failed_in_a_row += 1;
            }
        }
        if i % 50 == 49 {
            eprintln!(
                "loadgen: {} listeners joined in {:?}",
                i + 1,
                ramp.elapsed()
            );
        }
    }
    let join_ramp = ramp.elapsed();
    // Join time: until each listener's first audio packet.
    let deadline = Instant::now() + Duration::from_secs(a.join_timeout);
    let mut join_times = Vec::new();
    for m in &listeners {
        let first = m.peer.wait_until(deadline, |c| c.packets_received() > 0);
        if first {
            let c = m.peer.lock();
            let at = c
                .streams
                .values()
                .filter_map(|s| s.packets.first())
                .map(|p| p.at)
                .min();
            if let Some(at) = at {
                join_times.push(at.saturating_duration_since(m.join_sent));
            }
        }
    }
    join_times.sort();

    // Steady state.
    let counts = |ms: &[Member]| -> Vec<(u64, u64)> {
        ms.iter()
            .map(|m| received_and_lost(&m.peer.lock()))
            .collect()
    };
    let packets = |ms: &[Member]| -> u64 {
        ms.iter()
            .map(|m| m.peer.lock().packets_received() as u64)
            .sum()
    };
    let cpu0: Vec<Option<Duration>> = a
        .pids
        .iter()
        .map(|(_, p)| cpu_time(&p.to_string()))
        .collect();
    let self0 = cpu_time("self");
    let before = counts(&listeners);
    let was = packets(&listeners);
    let t0 = Instant::now();
    let mut last_print = t0;
    while t0.elapsed() < Duration::from_secs(a.seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "loadgen: {:>4.1} s  {} listeners  {:.0} packets/s received",
                t0.elapsed().as_secs_f64(),
                listeners.len(),
                (packets(&listeners) - was) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let t1 = Instant::now();
    let elapsed = t1 - t0;
    let cpu1: Vec<Option<Duration>> = a
        .pids
        .iter()
        .map(|(_, p)| cpu_time(&p.to_string()))
        .collect();
    let self1 = cpu_time("self");
    let after = counts(&listeners);
    let received: u64 = after.iter().zip(&before).map(|(x, y)| x.0 - y.0).sum();
    let lost: u64 = after
        .iter()
        .zip(&before)
        .map(|(x, y)| x.1.saturating_sub(y.1))
        .sum();
    let loss = if received + lost > 0 {
        lost as f64 / (received + lost) as f64
    } else {
        0.0
    };

    // Who hears whom, among the decoding listeners.
    let expected: BTreeSet<usize> = (0..speakers.len()).map(|i| i % TONES.len()).collect();
    let slots = ClientSpec::listener().slots;
    // Loss only sees gaps inside streams; a listener the server dropped (or
    // that fell silent) shows here instead.
    let voices = speakers.len().min(slots) as f64;
    let due = listeners.len() as f64 * voices * FRAMES_PER_SECOND as f64 * elapsed.as_secs_f64();
    let stalled = listeners
        .iter()
        .filter(|m| {
            let c = m.peer.lock();
            let last = c
                .streams
                .values()
                .filter_map(|s| s.packets.last())
                .map(|p| p.at)
                .max();
            last.is_none_or(|at| at + Duration::from_secs(1) < t1)
        })
        .count();
    let frames = (elapsed.as_secs_f64() * FRAMES_PER_SECOND as f64) as usize;
    let min_frames = (frames / 2).max(1);
    let (mut checked, mut right) = (0usize, 0usize);
    for m in listeners.iter().filter(|m| m.checked) {
        checked += 1;
        let c = m.peer.lock();
        let (ok, heard) = hears_right_speakers(&c, &expected, slots, t0, t1, min_frames);
        if ok {
            right += 1;
        } else {
            eprintln!(
                "loadgen: {} heard tones {heard:?}, expected {expected:?} ({} packets)",
                c.name,
                c.packets_received()
            );
        }
    }

    let mut report = BTreeMap::new();
    report.insert("urls", json!(a.urls.len()));
    report.insert("speakers", json!(speakers.len()));
    report.insert("listeners", json!(listeners.len()));
    report.insert("listeners_requested", json!(a.listeners));
    report.insert("listeners_per_url", json!(per_url));
    report.insert(
        "listeners_without_audio",
        json!(listeners.len() - join_times.len()),
    );
    report.insert("join_ramp_seconds", json!(join_ramp.as_secs_f64()));
    report.insert("seconds", json!(elapsed.as_secs_f64()));
    report.insert(
        "packets_per_second",
        json!(received as f64 / elapsed.as_secs_f64()),
    );
    report.insert("loss", json!(loss));
    report.insert(
        "delivered_of_due",
        json!(if due > 0.0 {
            received as f64 / due
        } else {
            0.0
        }),
    );
    report.insert("listeners_stalled_at_end", json!(stalled));
    report.insert("listeners_checked", json!(checked));
    report.insert("listeners_hearing_right_speakers", json!(right));
    report.insert(
        "join_to_first_audio_ms_p50",
        json!(percentile(&join_times, 0.5).as_secs_f64() * 1e3),
    );
    report.insert(
        "join_to_first_audio_ms_p95",
        json!(percentile(&join_times, 0.95).as_secs_f64() * 1e3),
    );
    report.insert(
        "join_to_first_audio_ms_max",
        json!(join_times.last().copied().unwrap_or_default().as_secs_f64() * 1e3),
    );
    let mut by_process = BTreeMap::new();
    let mut total = Duration::ZERO;
    let mut all = !a.pids.is_empty();
    for (((label, _), c0), c1) in a.pids.iter().zip(&cpu0).zip(&cpu1) {
        match (c0, c1) {
            (Some(c0), Some(c1)) => {
                let used = c1.saturating_sub(*c0);
                total += used;
                by_process.insert(
                    label.clone(),
                    json!(used.as_secs_f64() / elapsed.as_secs_f64()),
                );
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
    }
    if all {
        let cpu = total.as_secs_f64() / elapsed.as_secs_f64();
        report.insert("server_cpu_cores", json!(cpu));
        if !listeners.is_empty() {
            report.insert(
                "server_cpu_per_listener_percent",
                json!(cpu * 100.0 / listeners.len() as f64),
            );
        }
    }
    if let (Some(s0), Some(s1)) = (self0, self1) {
        report.insert(
            "loadgen_cpu_cores",
            json!(s1.saturating_sub(s0).as_secs_f64() / elapsed.as_secs_f64()),
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    // Leave politely, but spend at most a few seconds on it (a server too
    // busy to read its sockets then notices the peers vanish).
    let leave_by = tokio::time::Instant::now() + Duration::from_secs(5);
    for mut m in speakers.into_iter().chain(listeners) {
        let leave = json!({"type": "leave"}).to_string();
        let _ = tokio::time::timeout_at(leave_by, m.ws.send(Message::Text(leave.into()))).await;
        m.peer.stop();
    }
}
