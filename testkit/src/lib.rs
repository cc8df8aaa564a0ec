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
//! - [`udp::UdpPeer`]: a client on a real loopback socket and real time, on
//!   its own thread, for tests against a running server.
//! - [`flood::Flood`]: garbage and bogus STUN at a media port from a thread,
//!   as fast as it can send.
//! - `fuzz` (feature `fuzz`): the bodies of the fuzz targets.
//!
//! Like quinn-proto's `Pair` and str0m's `TestRtc`, the simulation always
//! advances to whichever comes first: a datagram's arrival, an engine's
//! timeout, a client's timeout, or a speaker's next 20 ms frame.

pub mod audio;
pub mod client;
pub mod flood;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod latency;
pub mod net;
pub mod rtp;
pub mod sim;
pub mod stream_stats;
pub mod udp;

pub use sim::{link_to, node_addr, Node, Sim, ENGINE_ADDR};

use std::time::Instant;

/// An origin for a test's simulated time: the one clock read a simulated
/// test makes (std has no other way to make an `Instant`). Nothing in a
/// simulation reads the clock after it.
pub fn epoch() -> Instant {
    Instant::now()
}
