//! `media-core`: a sans-IO voice forwarding engine (selective forwarding unit)
//! on top of [str0m](https://docs.rs/str0m).
//!
//! Every member of a channel sends one Opus stream up. The engine selects the
//! active speakers of each channel and forwards only them to every listener,
//! into a fixed number of receive **slots** per listener, rewriting sequence
//! numbers and timestamps so that browsers see continuous streams while the
//! voice in a slot changes.
//!
//! The engine does no I/O: no sockets, no clock, no threads, no global RNG.
//! Its random choices come from a ChaCha20 generator keyed by
//! [`EngineConfig::seed`], which the embedder fills from the operating
//! system (tests pass fixed bytes and replay the same run).
//! Datagrams, commands and time go in through [`Engine::handle_input`];
//! datagrams to send, events and the next wake-up come out of
//! [`Engine::poll_output`]. It can be embedded in any runtime and tested on a
//! simulated clock.
//!
//! # The run loop
//!
//! The contract: **after every `handle_input`, call `poll_output` until it
//! returns [`Output::Timeout`]**, then wait for a datagram, a command or that
//! time, whichever comes first.
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::{Duration, Instant};
//! use media_core::{Engine, EngineConfig, Input, Output, Command, Event, PeerId, Role};
//!
//! let socket = UdpSocket::bind("127.0.0.1:3478")?;
//! let local = socket.local_addr()?;
//! // The key of the engine's random generator, from the operating system:
//! // every ICE password the engine hands out derives from it.
//! let mut seed = [0u8; 32];
//! aws_lc_rs::rand::fill(&mut seed)?;
//! let mut config = EngineConfig::new(seed);
//! config.host_candidates = vec![local];
//! let mut engine = Engine::new(config, Instant::now());
//!
//! // A member joins (the offer comes from your signaling).
//! let offer: String = todo!("SDP offer from the client");
//! engine.handle_input(Input::Command {
//!     now: Instant::now(),
//!     command: Command::Join {
//!         peer: PeerId(1),
//!         channel: "lobby".into(),
//!         identity: "alice".into(),
//!         role: Role::Speaker,
//!         offer,
//!     },
//! })?;
//!
//! let mut buf = vec![0u8; 2000];
//! loop {
//!     // Everything the engine wants done, until it asks to wait.
//!     let deadline = loop {
//!         match engine.poll_output() {
//!             Output::Transmit(t) => {
//!                 socket.send_to(&t.contents, t.destination)?;
//!             }
//!             Output::Event(Event::Answer { peer, sdp, .. }) => {
//!                 // Send `sdp` to the client of `peer` through your signaling.
//!             }
//!             Output::Event(_other) => {}
//!             // Only with relay links (a cluster): hand it to the link.
//!             Output::Relay { .. } => {}
//!             Output::Timeout(t) => break t,
//!         }
//!     };
//!     // Wait for a datagram or the deadline.
//!     let wait = deadline.saturating_duration_since(Instant::now());
//!     socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
//!     let input = match socket.recv_from(&mut buf) {
//!         Ok((n, source)) => {
//!             engine.handle_input(Input::Receive {
//!                 now: Instant::now(),
//!                 source,
//!                 destination: local,
//!                 datagram: &buf[..n],
//!             })?;
//!             continue;
//!         }
//!         Err(_) => Input::Timeout(Instant::now()),
//!     };
//!     engine.handle_input(input)?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A complete single-node server on `std::net::UdpSocket` is in
//! `examples/embed.rs` of the repository.
//!
//! # What a client offers
//!
//! A client offers one audio m-line it sends on (its microphone: `sendonly`
//! or `sendrecv`) and one `recvonly` audio m-line per slot it wants to hear
//! (up to [`EngineConfig::slots_per_listener`], default 3). The answer comes
//! as [`Event::Answer`]. Roles and mutes change without renegotiation.
//! Opus is the codec; RFC 2198 RED around Opus is accepted where offered
//! ([`EngineConfig::red`]) and forwarded to the listeners that took it.
//!
//! # Speaker selection
//!
//! Two speeds: per packet, the loudest voices by the RFC 6464 audio level
//! (or by decoding the Opus payload when a client sends no level) are routed
//! at once, with hysteresis; every 300 ms, the dominant speaker is decided
//! with Volfin & Cohen's algorithm and always routed. The level decides what
//! is speech; the sender's voice-activity bit only moves the bar
//! ([`EngineConfig::speech_level`]), since many senders (aiortc, SIP
//! gateways, music sources) send it as 0 on every packet. A muted member is never
//! routed, and nobody hears their own voice.
//!
//! # Building blocks
//!
//! A few pieces the engine is made of are public because the tools that talk
//! to it (a load generator, test clients) need the same facts, and one owner
//! per fact is the rule: [`DatagramKind`] (what a datagram on a WebRTC port
//! is), [`ntp`] (NTP timestamps of sender reports and `abs-capture-time`)
//! and [`level_from_pcm`] (RFC 6464 levels).
//!
//! # Words
//!
//! A **member** is a person in a channel; a **peer** is the engine's WebRTC
//! connection of a member joined here ([`PeerId`]). A **voice** is the audio
//! one member sends, named by its [`SourceId`] (numbered by the engine the
//! member joined, unique across engines: each has its own [`EngineId`]). A **slot** is one receive
//! m-line of a listener, carrying one voice at a time. A **link** connects
//! two engines ([`LinkId`]): a channel either is the **origin** (it selects)
//! or a **relay** that follows an origin over its upstream link; the origin
//! knows the links of its relays as its **subscribers**. A link counts from
//! [`Command::LinkOpened`] (which names the engine at its other end) to
//! [`Command::LinkClosed`]; as origin, an engine takes from a link only the
//! voices of the engine at its other end, within
//! [`EngineConfig::max_sources_per_link`].

#![warn(missing_docs)]

mod answer;
mod api;
mod channel;
mod config;
mod datagram;
mod demux;
mod dominant;
mod effects;
mod engine;
mod error;
mod event;
mod frame;
mod ids;
mod level;
pub mod ntp;
mod pack;
mod peer;
mod red;
mod relay;
mod rng;
mod rtp_writer;
mod selection;
mod slab;
mod slot;
mod srtp;
mod stats;
mod timer;

#[cfg(feature = "_internal_test_exports")]
#[doc(hidden)]
pub mod bench_api;

pub use api::{Command, Input, Output, Transmit};
pub use config::EngineConfig;
pub use datagram::DatagramKind;
pub use engine::{Engine, MAX_SLOTS};
pub use error::Error;
pub use event::{Event, LeaveReason};
pub use ids::{EngineId, PeerId, Role, SourceId};
pub use level::level_from_pcm;
pub use relay::{LinkId, RelayMsg};
pub use stats::EngineStats;

/// Re-exported so embedders name str0m types (certificates) without a
/// separate dependency that could drift in version.
pub use str0m;
