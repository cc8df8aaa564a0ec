//! Flood: garbage and bogus STUN at a running `sfu-server`'s media port, as
//! fast as one thread can send (`sendmmsg`), for `scripts/flood-test.sh`.
//!
//! ```text
//! flood [--url http://127.0.0.1:8080] [--seconds 10] [--rate N] [--seed 1] [--channel flood]
//! ```
//!
//! It first joins `--channel` as a listener over the WebSocket protocol with
//! a real WebRTC client, which stays connected: the answer names the media
//! address to flood and a server-side ICE ufrag, so that a quarter of the
//! flood is STUN binding requests the server must check the integrity of
//! (the rest: random bytes, RTP-looking and DTLS-looking garbage, STUN with
//! unknown ufrags; `testkit::flood`). Then it floods from another socket for
//! `--seconds` (or until SIGINT or SIGTERM) and prints a JSON line:
//! `target`, `seconds`, `datagrams_sent`, `datagrams_per_second`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use testkit::client::ClientSpec;
use testkit::flood::{Flood, GarbageMaker, EVERY_KIND};
use testkit::udp::UdpPeer;
use tokio_tungstenite::tungstenite::Message;

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "flood")]
struct Args {
    /// The server (its WebSocket protocol tells the media address)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How long to flood at most (1 to 3600; SIGINT or SIGTERM end it sooner)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Datagrams per second at most (default: as fast as one thread can)
    #[arg(long, value_name = "N")]
    rate: Option<u64>,
    /// Seed of the garbage
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The channel the flood's own member joins
    #[arg(long, default_value = "flood")]
    channel: String,
}

/// What the answer tells: the media address and the server's ICE ufrag.
fn media_target(answer: &str) -> Option<(SocketAddr, String)> {
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))?
        .trim()
        .to_string();
    // a=candidate:<foundation> <component> udp <priority> <ip> <port> typ host
    let target = answer.lines().find_map(|l| {
        let f: Vec<&str> = l.strip_prefix("a=candidate:")?.split_whitespace().collect();
        let (ip, port) = (f.get(4)?, f.get(5)?);
        format!("{ip}:{port}").parse().ok()
    })?;
    Some((target, ufrag))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let a = Args::parse();
    let ws_url = format!("{}/ws", a.url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .map_err(|e| format!("flood: websocket: {e}"))?;
    let (mut peer, offer) =
        UdpPeer::new("flood", &ClientSpec::listener()).map_err(|e| format!("flood: {e}"))?;
    let join = json!({"type": "join", "channel": a.channel, "offer": offer,
                      "role": "listener", "identity": "flood"});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .map_err(|e| format!("flood: {e}"))?;
    let answer = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .map_err(|_| "flood: no answer in 20 s".to_string())?;
        let Some(Ok(Message::Text(t))) = msg else {
            return Err("flood: the server closed the socket".into());
        };
        let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some("joined") => break v["answer"].as_str().unwrap_or_default().to_string(),
            Some("error") => return Err(format!("flood: join refused: {v}")),
            _ => {}
        }
    };
    peer.try_start(&answer)?;
    let (target, ufrag) =
        media_target(&answer).ok_or("flood: no candidate or ufrag in the answer")?;
    eprintln!("flood: flooding {target} for {} s", a.seconds);

    let started = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(a.seconds);
    let maker = GarbageMaker::new(a.seed, Some(ufrag));
    let mut flood = Flood::start(target, &EVERY_KIND, maker, a.rate);
    // The server may send the member anything meanwhile: read and drop it,
    // so that its event queue never fills.
    let reading = async {
        while let Some(Ok(_)) = ws.next().await {}
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = reading => {}
        () = tokio::time::sleep_until(until) => {}
        () = stopped() => {}
    }
    let sent = flood.stop();
    let seconds = started.elapsed().as_secs_f64();
    peer.stop();
    let _ = ws.close(None).await;
    println!(
        "{}",
        json!({"target": target.to_string(), "seconds": seconds, "datagrams_sent": sent,
               "datagrams_per_second": sent as f64 / seconds})
    );
    Ok(())
}

/// SIGINT or SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_and_ufrag_come_from_the_answer() {
        let answer = "v=0\r\na=ice-ufrag:Ab3d\r\na=ice-pwd:x\r\n\
                      a=candidate:1 1 udp 2130706431 127.0.0.1 45678 typ host\r\n";
        let (target, ufrag) = media_target(answer).unwrap();
        assert_eq!(target, "127.0.0.1:45678".parse().unwrap());
        assert_eq!(ufrag, "Ab3d");
        assert!(media_target("v=0\r\n").is_none());
    }
}
