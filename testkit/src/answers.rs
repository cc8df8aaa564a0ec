//! Joins against a bare engine, for what its answers hand out: each
//! member's voice id and the engine's ICE credentials for that member.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use media_core::{Command, Engine, Event, Input, Output, PeerId, Role, SourceId};

use crate::audio::TONES;
use crate::client::{Client, ClientSpec};

/// What one answer gave a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// Its voice.
    pub source: SourceId,
    /// The engine's ICE username fragment for it (`a=ice-ufrag`).
    pub ice_ufrag: String,
    /// The engine's ICE password for it (`a=ice-pwd`): whoever knows it can
    /// sign STUN as the engine expects from this member.
    pub ice_pwd: String,
}

/// The `a=ice-ufrag` and `a=ice-pwd` values of an SDP.
pub fn ice_credentials(sdp: &str) -> Option<(String, String)> {
    let value = |key: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(key))
            .map(str::to_owned)
    };
    Some((value("a=ice-ufrag:")?, value("a=ice-pwd:")?))
}

/// Joins `n` speakers one after the other to channel `room` of `engine`
/// (peer ids from `first_peer`), each leaving right after its answer so
/// that the engine stays small; returns what each answer gave. One test
/// client's offer serves every join.
pub fn join_many(engine: &mut Engine, first_peer: u64, n: usize, now: Instant) -> Vec<Answered> {
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("certificate");
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10_000);
    let (_client, offer) = Client::new("x", addr, &ClientSpec::speaker(0), &TONES, &cert, now);
    let mut answers = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let peer = PeerId(first_peer + i);
        let join = Command::Join {
            peer,
            channel: "room".into(),
            identity: format!("m{i}"),
            role: Role::Speaker,
            offer: offer.clone(),
        };
        engine
            .handle_input(Input::Command { now, command: join })
            .expect("join accepted");
        let mut answered = None;
        loop {
            match engine.poll_output() {
                Output::Event(Event::Answer { source, sdp, .. }) => {
                    let (ice_ufrag, ice_pwd) = ice_credentials(&sdp).expect("ICE credentials");
                    answered = Some(Answered {
                        source,
                        ice_ufrag,
                        ice_pwd,
                    });
                }
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        answers.push(answered.expect("an answer"));
        let leave = Command::Leave { peer };
        engine
            .handle_input(Input::Command {
                now,
                command: leave,
            })
            .expect("leave");
        while !matches!(engine.poll_output(), Output::Timeout(_)) {}
    }
    answers
}
