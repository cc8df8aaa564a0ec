//! `cascade`: one channel fanned out from a core node to edge nodes.
//!
//! - [`wire`]: the sans-IO codec of [`media_core::RelayMsg`]: versioned,
//!   length-checked, never panics on any input.
//! - [`control`]: reading the reliable control stream (frames in, messages
//!   out), sans-IO, as the link does it.
//! - [`link`]: the QUIC transport (quinn): media in DATAGRAM frames, control
//!   on one reliable stream, mutual authentication with a cluster secret
//!   bound to the TLS session, keep-alive, idle timeout, reconnect.

#![warn(missing_docs)]

pub mod control;
pub mod link;
pub mod wire;
