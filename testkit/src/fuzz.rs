//! Fuzz bodies: what `fuzz/fuzz_targets/*.rs` run, kept here so that the
//! targets are three-line shims and `cargo test` (media-core's
//! `tests/malformed.rs`) can run the same bodies over a fixed corpus.
//!
//! `datagrams` reaches the joined peer's WebRTC stack through
//! `Engine::learn_address`, media-core's internal test hook: hence the
//! feature `fuzz`, which turns on media-core's `_internal_test_exports`.
//!
//! The rule they check: **a panic on wire input is a bug**. Bad input is
//! dropped and counted; it never brings the engine down.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use str0m::config::DtlsCert;

use media_core::{Command, Engine, EngineConfig, Input, Output, PeerId, Role};

use crate::audio::TONES;
use crate::client::{Client, ClientSpec};
use crate::sim::ENGINE_ADDR;

fn cert() -> &'static DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("certificate")
    })
}

fn engine(now: Instant) -> Engine {
    let config = EngineConfig {
        host_candidates: vec![ENGINE_ADDR],
        dtls_cert: Some(cert().clone()),
        ..EngineConfig::new(crate::SEED)
    };
    Engine::new(config, now)
}

/// Takes the engine's outputs until it asks to wait; returns until when.
fn poll_until_timeout(engine: &mut Engine) -> Instant {
    loop {
        if let Output::Timeout(t) = engine.poll_output() {
            return t;
        }
    }
}

/// The address of the client whose offer [`datagrams`] joins with.
const CLIENT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10_000);

/// A real browser-like offer (1 send m-line, 3 receive slots), made once.
fn offer(now: Instant) -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(|| {
        let spec = ClientSpec::speaker(0);
        Client::new("fuzz", CLIENT_ADDR, &spec, &TONES, cert(), now).1
    })
}

/// Arbitrary bytes as an SDP offer to join with: refused with an error or
/// answered, never a panic.
///
/// `now` is any instant (the shim passes the current time).
pub fn sdp_offer(data: &[u8], now: Instant) {
    let mut e = engine(now);
    join(&mut e, now, String::from_utf8_lossy(data).into_owned());
    poll_until_timeout(&mut e);
}

/// Member `PeerId(1)` joins channel "fuzz" with `offer` (refusals ignored).
fn join(e: &mut Engine, now: Instant, offer: String) {
    let _ = e.handle_input(Input::Command {
        now,
        command: Command::Join {
            peer: PeerId(1),
            channel: "fuzz".into(),
            identity: "fuzz".into(),
            role: Role::Speaker,
            offer,
        },
    });
}

/// A sequence of datagrams, timeouts and commands against an engine with one
/// joined member. Input format, repeated: one selector byte, then for
/// datagrams a length byte and that many bytes. `start` is any instant.
pub fn datagrams(data: &[u8], start: Instant) {
    let mut now = start;
    let mut e = engine(now);
    join(&mut e, now, offer(start).to_string());
    e.learn_address(PeerId(1), CLIENT_ADDR, ENGINE_ADDR);
    poll_until_timeout(&mut e);
    let stranger: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let mut rest = data;
    while let Some((&sel, tail)) = rest.split_first() {
        rest = tail;
        match sel % 8 {
            // Advance time to the engine's next deadline (at most 1 s).
            0 => {
                let t = poll_until_timeout(&mut e).min(now + Duration::from_secs(1));
                now = now.max(t);
                let _ = e.handle_input(Input::Timeout(now));
            }
            // Commands on the member.
            1 => {
                let command = match tail.first().copied().unwrap_or(0) % 4 {
                    0 => Command::SetMuted {
                        peer: PeerId(1),
                        muted: true,
                    },
                    1 => Command::SetMuted {
                        peer: PeerId(1),
                        muted: false,
                    },
                    2 => Command::SetRole {
                        peer: PeerId(1),
                        role: Role::Listener,
                    },
                    _ => Command::SetRole {
                        peer: PeerId(1),
                        role: Role::Speaker,
                    },
                };
                let _ = e.handle_input(Input::Command { now, command });
            }
            // A datagram from the member's address or a stranger's.
            s => {
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let n = (len as usize).min(tail.len());
                let (datagram, tail) = tail.split_at(n);
                rest = tail;
                let source = if s < 5 { CLIENT_ADDR } else { stranger };
                let _ = e.handle_input(Input::Receive {
                    now,
                    source,
                    destination: ENGINE_ADDR,
                    datagram,
                });
            }
        }
        poll_until_timeout(&mut e);
    }
}
