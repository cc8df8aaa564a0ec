//! The voice SFU's test kit: what tests, benches, fuzz targets and the load
//! generator use to drive `media-core` engines and servers with real WebRTC
//! clients. Never part of what an embedder links.
//!
//! - [`Sim`] ([`sim`]): engines of a cluster and str0m client peers in one
//!   process, on a simulated clock, over a virtual network ([`net`]) and
//!   relay links with delay, loss and cuts.
//! - [`client`]: a WebRTC client (a real str0m peer: ICE, DTLS, SRTP) that
//!   sends a tone encoded with real Opus and decodes what it hears, with
//!   per-stream RFC 3550 statistics ([`stream_stats`]) and one-way latency
//!   ([`latency`]) from `abs-capture-time`; a header-only mode reads the
//!   plain RTP header ([`rtp`]) without decrypting.
//! - [`audio`]: Opus tone speakers and detectors, talk patterns, DTX.
//! - [`answers`]: many joins against a bare engine, for the voice ids and
//!   ICE credentials its answers hand out.
//! - [`rng`]: the kit's seeded (not cryptographic) generator; engines get
//!   the fixed [`SEED`] so that a test replays the same run.
//! - [`udp::UdpPeer`]: a client on a real loopback socket and real time, on
//!   its own thread, for tests against a running server.
//! - [`mesh::MeshMember`]: a member of a peer-to-peer channel (hybrid mode):
//!   a `UdpPeer` link per other member, signaling as data, and an SFU
//!   session beside them; [`playback`]: what it plays across a switch of
//!   path, the longest gap and voices heard twice.
//! - [`flood::Flood`]: garbage and bogus STUN at a media port from a thread,
//!   as fast as it can send.
//! - `fuzz` (feature `fuzz`): the bodies of the fuzz targets.
//!
//! Like quinn-proto's `Pair` and str0m's `TestRtc`, the simulation always
//! advances to whichever comes first: a datagram's arrival, an engine's
//! timeout, a client's timeout, or a speaker's next 20 ms frame.

pub mod answers;
pub mod audio;
pub mod client;
pub mod flood;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod latency;
pub mod mesh;
pub mod net;
pub mod playback;
pub mod rng;
pub mod rtp;
pub mod sim;
pub mod stream_stats;
pub mod udp;

pub use sim::{link_to, node_addr, Node, Sim, ENGINE_ADDR};

use std::time::Instant;

/// The seed of test engines (`EngineConfig::new(testkit::SEED)`): fixed, so
/// that a test replays the same ICE credentials and slot numbering on every
/// run. Public on purpose; a server fills its seed from the operating system.
pub const SEED: [u8; 32] = *b"voice-sfu test seed, not secret!";

/// An origin for a test's simulated time: the one clock read a simulated
/// test makes (std has no other way to make an `Instant`). Nothing in a
/// simulation reads the clock after it.
pub fn epoch() -> Instant {
    Instant::now()
}
