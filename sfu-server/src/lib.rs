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
//! | [`rooms`] | the room layer: members, listing, member counts, moderation rules, hybrid P2P ⇄ SFU (sans-IO) |
//! | [`worker`] | one engine + its UDP socket on a task, carrying the rooms' messages |
//! | [`cluster`] | core/edge: cascade links ⇄ the worker's relay messages |
//! | [`fleet`] | nodes coordinated through Redis: registry, channel leases with fencing, choice of a core |
//! | [`state`] | what the handlers share: workers, drain flag, resources, refusal counters; `check_origin`, `authorize`, `admit` |
//! | [`names`] | channel names and identities: length, no control characters |
//! | [`origin`] | which pages may use the server (`Origin`), proxies in development mode |
//! | [`join_rate`] | joins per client address and per token per minute (sans-IO token buckets) |
//! | [`server`] | start-up, HTTP listener, drain, exit when the node failed |
//! | [`health`] | the node's essential tasks watched: a dead worker fails the node |
//! | [`connections`] | HTTP/1.1 connections: limit with `503`, header-read timeout, `ConnectInfo` |
//! | [`http`] | WHIP/WHEP, demo page, metrics, health |
//! | [`admin`] | `/admin/hybrid`: the hybrid settings at runtime, behind `admin_token` |
//! | [`media_request`] | a WHIP/WHEP `POST` checked (body, type, channel, `Authorization`), pure |
//! | [`ws`] | the WebSocket room protocol |
//! | [`protocol`] | its JSON messages |
//! | [`client_request`] | a client's message decoded and checked, pure |
//! | [`metrics`] | Prometheus text |
//! | [`process`] | the process's CPU, memory, file descriptors (`process_*`) |
//! | [`tls`] | HTTPS/WSS: PEM certificate, reload on SIGHUP, handshakes off the accept loop |
//! | [`logging`] | log filter and format (text or JSON lines) |

#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod client_request;
pub mod cluster;
pub mod config;
pub mod config_check;
pub mod connections;
pub mod fleet;
#[cfg(any(test, feature = "_internal_fuzz"))]
pub mod fuzz;
pub mod health;
pub mod http;
pub mod ice_restart;
pub mod join_rate;
pub mod logging;
pub mod media_request;
pub mod metrics;
pub mod names;
pub mod origin;
pub mod process;
pub mod protocol;
pub mod resume;
pub mod rooms;
pub mod server;
pub mod state;
pub mod tls;
pub mod turn;
pub mod worker;
pub mod ws;

pub use config::Config;
pub use server::{serve, Server};
