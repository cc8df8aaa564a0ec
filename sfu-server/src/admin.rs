//! The admin endpoints: the hybrid settings at runtime (`GET` and `PUT
//! /admin/hybrid`), for a gradual rollout of peer-to-peer channels and an
//! instant rollback, without a restart and without dropping anyone.
//!
//! Guarded by `admin_token` (`Authorization: Bearer …`, compared in
//! constant time); without one configured the endpoints do not exist (404).
//! In development mode (no `auth_secret`) they answer loopback clients
//! only. A change is checked as the configuration file's keys are, then
//! applied to every worker: a P2P channel no longer allowed moves to the
//! SFU with the usual make-before-break switch; an SFU channel allowed
//! again returns under the usual hysteresis. It lasts until the process
//! restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::rooms::mode::HybridSettings;
use crate::state::AppState;

/// A change of the hybrid settings: the keys given replace the ones in
/// force, as the configuration file names them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridChange {
    /// `hybrid`.
    pub enabled: Option<bool>,
    /// `p2p_max`.
    pub p2p_max: Option<usize>,
    /// `p2p_return_at`.
    pub p2p_return_at: Option<usize>,
    /// `p2p_return_after_secs`.
    pub p2p_return_after_secs: Option<u64>,
    /// `p2p_rollout_percent`.
    pub rollout_percent: Option<f64>,
    /// `p2p_switch_timeout_secs`.
    pub switch_timeout_secs: Option<u64>,
    /// `p2p_disabled_channels`.
    pub disabled_channels: Option<Vec<String>>,
}

/// `GET /admin/hybrid`: the settings in force and the channels by mode.
pub async fn get_hybrid(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, remote, &headers) {
        return *r;
    }
    let settings = state.hybrid_settings();
    let workers = state.worker_snapshots().await;
    let census = crate::metrics::sum(&workers).hybrid.census;
    let channels = BTreeMap::from([
        ("p2p", census.p2p_channels),
        ("sfu", census.sfu_channels),
        ("switching_up", census.switching_up),
        ("switching_down", census.switching_down),
    ]);
    Json(json!({"settings": view(&settings), "channels": channels})).into_response()
}

/// `PUT /admin/hybrid`: new settings (a JSON object of the keys to change).
pub async fn put_hybrid(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = authorize(&state, remote, &headers) {
        return *r;
    }
    let change: HybridChange = match serde_json::from_str(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    // The change over the settings in force, checked as the file's keys.
    let mut keys = state.config.clone();
    keys.set_hybrid_keys(&state.hybrid_settings());
    if let Some(v) = change.enabled {
        keys.hybrid = v;
    }
    if let Some(v) = change.p2p_max {
        keys.p2p_max = v;
    }
    if let Some(v) = change.p2p_return_at {
        keys.p2p_return_at = v;
    }
    if let Some(v) = change.p2p_return_after_secs {
        keys.p2p_return_after_secs = v;
    }
    if let Some(v) = change.rollout_percent {
        keys.p2p_rollout_percent = v;
    }
    if let Some(v) = change.switch_timeout_secs {
        keys.p2p_switch_timeout_secs = v;
    }
    if let Some(v) = change.disabled_channels {
        keys.p2p_disabled_channels = v;
    }
    let settings = match keys.validate_hybrid().and_then(|()| keys.hybrid_settings()) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", &e.to_string()),
    };
    tracing::info!(
        enabled = settings.enabled,
        p2p_max = settings.p2p_max,
        rollout_percent = settings.rollout.percent(),
        "hybrid settings changed at runtime"
    );
    state.set_hybrid(settings.clone()).await;
    Json(json!({"settings": view(&settings)})).into_response()
}

/// The settings as the configuration names them.
fn view(s: &HybridSettings) -> Value {
    json!({
        "enabled": s.enabled,
        "p2p_max": s.p2p_max,
        "p2p_return_at": s.p2p_return_at,
        "p2p_return_after_secs": s.p2p_return_after.as_secs(),
        "rollout_percent": s.rollout.percent(),
        "switch_timeout_secs": s.switch_timeout.as_secs(),
        "disabled_channels": s.disabled_channels,
    })
}

/// 404 without an admin token; 403 from beyond loopback in development
/// mode; 401 without the right bearer token.
fn authorize(
    state: &AppState,
    remote: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    let Some(token) = state.config.admin_token.as_deref() else {
        return Err(Box::new(StatusCode::NOT_FOUND.into_response()));
    };
    if state.config.dev_mode() && !remote.ip().is_loopback() {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "development mode: the admin endpoints answer loopback clients only",
        )));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give Authorization: Bearer <admin_token>",
        )));
    }
    Ok(())
}

/// Equal without a time that depends on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}
