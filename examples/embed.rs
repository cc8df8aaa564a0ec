//! A complete single-node voice SFU: `media_core::Engine` on one
//! `std::net::UdpSocket`, WHIP-like HTTP signaling and a browser page. No async
//! runtime. The server itself is `examples::serve` (in `src/lib.rs`), so that
//! `tests/embed.rs` can start it in-process.
//!
//! ```sh
//! cargo run --release -p examples --example embed [UDP_PORT [HTTP_PORT]]
//! ```
//!
//! Ports also come from `EMBED_UDP` / `EMBED_HTTP` (UDP defaults to 0: any free
//! port; HTTP to 8080). Logs follow `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut args = std::env::args().skip(1);
    let udp_port = port(args.next(), "EMBED_UDP", 0);
    let http_port = port(args.next(), "EMBED_HTTP", 8080);
    // The engine is deterministic given its seed, and every ICE password it
    // hands out derives from it: take it from the operating system's secure
    // generator, never from the time or the process id.
    let mut seed = [0u8; 32];
    if aws_lc_rs::rand::fill(&mut seed).is_err() {
        eprintln!("embed: the operating system's random generator failed");
        std::process::exit(1);
    }
    let config = examples::Config {
        udp_port,
        http_port,
        seed,
    };
    let handle = match examples::serve(config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("embed: cannot bind: {e}");
            std::process::exit(1);
        }
    };
    println!("media (UDP):  {}", handle.udp_addr());
    println!("open:         http://{}/", handle.http_addr());
    println!("accepts loopback (127.0.0.1) clients only");
    handle.wait();
}

/// A port from the command line, else the environment, else `default`.
fn port(arg: Option<String>, var: &str, default: u16) -> u16 {
    match arg.or_else(|| std::env::var(var).ok()) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("embed: {var}: not a port: {s:?}");
            std::process::exit(2);
        }),
    }
}
