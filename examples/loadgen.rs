//! Load generator: speakers and listeners as real WebRTC clients (str0m, real
//! DTLS/SRTP, real Opus) joining a running `sfu-server` over its WebSocket
//! protocol on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p examples --bin loadgen -- \
//!     --url http://127.0.0.1:8080 --speakers 3 --listeners 100 --seconds 10 [--pid PID] [--decode]
//! ```
//!
//! Reports join time (WebSocket join sent → first audio packet), packets
//! received per second, loss, and, given the server's `--pid`, the server's
//! CPU time per listener. Bounded: every peer joins within `--join-timeout`,
//! the measurement lasts `--seconds`, then everyone leaves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use media_core::harness::client::ClientSpec;
use media_core::harness::udp::UdpPeer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    url: String,
    channel: String,
    speakers: usize,
    listeners: usize,
    seconds: u64,
    join_timeout: u64,
    pid: Option<u32>,
    decode: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        channel: "load".into(),
        speakers: 3,
        listeners: 20,
        seconds: 10,
        join_timeout: 20,
        pid: None,
        decode: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?,
            "--channel" => a.channel = val()?,
            "--speakers" => a.speakers = val()?.parse().map_err(|e| format!("--speakers: {e}"))?,
            "--listeners" => {
                a.listeners = val()?.parse().map_err(|e| format!("--listeners: {e}"))?
            }
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--join-timeout" => {
                a.join_timeout = val()?.parse().map_err(|e| format!("--join-timeout: {e}"))?
            }
            "--pid" => a.pid = Some(val()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--decode" => a.decode = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.seconds == 0 || a.seconds > 3600 || a.listeners > 5000 || a.speakers > 16 {
        return Err("bounds: 1..=3600 s, at most 5000 listeners and 16 speakers".into());
    }
    Ok(a)
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
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
}

async fn join(a: &Args, name: &str, spec: ClientSpec, role: &str) -> Result<Member, String> {
    let ws_url = format!("{}/ws", a.url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    let (mut peer, offer) = UdpPeer::new(name, &spec).map_err(|e| e.to_string())?;
    let join_sent = Instant::now();
    let msg = json!({"type": "join", "channel": a.channel, "offer": offer, "role": role, "identity": name});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.join_timeout);
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("usage: loadgen [--url URL] [--channel C] [--speakers N] [--listeners M] [--seconds S] [--join-timeout S] [--pid SERVER_PID] [--decode]");
            std::process::exit(2);
        }
    };
    let mut speakers = Vec::new();
    for i in 0..a.speakers {
        match join(
            &a,
            &format!("speaker-{i}"),
            ClientSpec::speaker(i),
            "speaker",
        )
        .await
        {
            Ok(m) => speakers.push(m),
            Err(e) => {
                eprintln!("loadgen: speaker {i}: {e}");
                std::process::exit(1);
            }
        }
    }
    for s in &speakers {
        s.peer.set_talking(true);
    }
    let mut listeners = Vec::new();
    let ramp = Instant::now();
    for i in 0..a.listeners {
        let spec = ClientSpec {
            decode: a.decode,
            ..ClientSpec::listener()
        };
        match join(&a, &format!("listener-{i}"), spec, "listener").await {
            Ok(m) => listeners.push(m),
            Err(e) => eprintln!("loadgen: listener {i}: {e}"),
        }
        if i % 50 == 49 {
            eprintln!(
                "loadgen: {} listeners joined in {:?}",
                i + 1,
                ramp.elapsed()
            );
        }
    }
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
    let counts = |ms: &[Member]| -> Vec<(usize, u64)> {
        ms.iter()
            .map(|m| {
                let c = m.peer.lock();
                let lost: u64 = c.streams.values().map(|s| s.lost()).sum();
                (c.packets_received(), lost)
            })
            .collect()
    };
    let cpu0 = a.pid.and_then(cpu_time);
    let before = counts(&listeners);
    let t0 = Instant::now();
    let mut last_print = t0;
    while t0.elapsed() < Duration::from_secs(a.seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let now: usize = counts(&listeners).iter().map(|x| x.0).sum();
            let was: usize = before.iter().map(|x| x.0).sum();
            eprintln!(
                "loadgen: {:>4.1} s  {} listeners  {:.0} packets/s received",
                t0.elapsed().as_secs_f64(),
                listeners.len(),
                (now - was) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = t0.elapsed();
    let cpu1 = a.pid.and_then(cpu_time);
    let after = counts(&listeners);
    let received: usize = after.iter().zip(&before).map(|(x, y)| x.0 - y.0).sum();
    let lost: u64 = after.iter().zip(&before).map(|(x, y)| x.1 - y.1).sum();
    let loss = if received as u64 + lost > 0 {
        lost as f64 / (received as u64 + lost) as f64
    } else {
        0.0
    };
    let mut report = BTreeMap::new();
    report.insert("speakers", json!(speakers.len()));
    report.insert("listeners", json!(listeners.len()));
    report.insert("seconds", json!(elapsed.as_secs_f64()));
    report.insert(
        "packets_per_second",
        json!(received as f64 / elapsed.as_secs_f64()),
    );
    report.insert("loss", json!(loss));
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
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let cpu = (c1 - c0).as_secs_f64() / elapsed.as_secs_f64();
        report.insert("server_cpu_cores", json!(cpu));
        if !listeners.is_empty() {
            report.insert(
                "server_cpu_per_listener_percent",
                json!(cpu * 100.0 / listeners.len() as f64),
            );
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    for mut m in speakers.into_iter().chain(listeners) {
        let _ =
            m.ws.send(Message::Text(json!({"type": "leave"}).to_string().into()))
                .await;
        m.peer.stop();
    }
}
