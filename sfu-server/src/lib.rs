//! `sfu-server`: the thin server around [`media_core`]. UDP media I/O on a
//! worker task, WebSocket and WHIP/WHEP signaling, JWT grants, ICE servers,
//! Prometheus metrics, graceful drain.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | defaults ← TOML file ← `SFU_*` env ← CLI |
//! | [`config_check`] | `--check-config FILE`: the key at fault and why |
//! | [`auth`] | JWT (HS256) grants |
//! | [`turn`] | ICE servers, ephemeral TURN credentials |
//! | [`rooms`] | the room layer: members, listing, member counts, moderation rules (sans-IO) |
//! | [`worker`] | one engine + its UDP socket on a task, carrying the rooms' messages |
//! | [`cluster`] | core/edge: cascade links ⇄ the worker's relay messages |
//! | [`state`] | what the handlers share: workers, drain flag, resources, `authorize` |
//! | [`server`] | start-up, HTTP listener, drain, exit when the node failed |
//! | [`health`] | the node's essential tasks watched: a dead worker fails the node |
//! | [`http`] | WHIP/WHEP, demo page, metrics, health |
//! | [`ws`] | the WebSocket room protocol |
//! | [`protocol`] | its JSON messages |
//! | [`metrics`] | Prometheus text |
//! | [`process`] | the process's CPU, memory, file descriptors (`process_*`) |
//! | [`tls`] | HTTPS/WSS: PEM certificate, reload on SIGHUP, handshakes off the accept loop |
//! | [`logging`] | log filter and format (text or JSON lines) |

#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod config_check;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod state;
pub mod tls;
pub mod turn;
pub mod worker;
pub mod ws;

pub use config::Config;
pub use server::{serve, Server};
