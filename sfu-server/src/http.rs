//! HTTP routes: WHIP/WHEP, the demo page and client, metrics and health.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use media_core::{PeerId, Role};
use tower_http::cors::{Any, CorsLayer};

use crate::media_request;
use crate::metrics::Refusal;
use crate::protocol::ServerMsg;
use crate::state::{unix_now, AppState, JoinAsk, Need, Resource};
use crate::worker::{JoinError, JoinRequest};

const INDEX_HTML: &str = include_str!("../web/index.html");
const CLIENT_JS: &str = include_str!("../web/sfu-client.js");

/// All routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    // Browsers on other origins may publish and play (RFC 9725 §4.1 asks
    // WHIP endpoints to support CORS).
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION, HeaderName::from_static("link")]);
    let media = Router::new()
        .route("/whip/{channel}", post(whip))
        .route("/whep/{channel}", post(whep))
        .route(
            "/resources/{id}",
            axum::routing::delete(delete_resource).patch(patch_resource),
        )
        .layer(cors)
        .layer(DefaultBodyLimit::max(limit));
    Router::new()
        .route("/", get(index))
        .route("/sfu-client.js", get(client_js))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ws", get(crate::ws::upgrade))
        .merge(media)
        .with_state(state)
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT_JS,
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot().await;
    let mut body = crate::metrics::render(&snapshot, state.is_draining());
    crate::metrics::render_refusals(&mut body, &state.refusals);
    crate::metrics::render_health(&mut body, state.health.workers_up());
    if let Some(https) = &state.https {
        crate::metrics::render_tls(&mut body, https.stats());
    }
    crate::metrics::render_process(&mut body, crate::process::ProcessStats::read().as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Alive unless the node failed (a media worker died): then the process is
/// about to exit, and a supervisor that probes must see it too.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.health.failure() {
        Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("failed: {reason}")),
        None => "ok\n".into_response(),
    }
}

/// Takes new members: not while draining, nor once the node failed.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Some(reason) = state.health.failure() {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("failed: {reason}"))
    } else if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// A plain-text error response.
fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut m = message.into();
    m.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

/// A fresh unguessable resource id (128 bits from the OS), so that nobody can
/// end someone else's session by counting.
fn resource_id() -> String {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // The OS RNG failing is not recoverable in any useful way; fall back
        // to the clock so the server stays up (ids remain unique).
        let t = unix_now() as u128 ^ (std::process::id() as u128) << 64;
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn whip(
    state: State<Arc<AppState>>,
    remote: ConnectInfo<SocketAddr>,
    channel: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    media_session(state, remote, channel, headers, body, Role::Speaker).await
}

async fn whep(
    state: State<Arc<AppState>>,
    remote: ConnectInfo<SocketAddr>,
    channel: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    media_session(state, remote, channel, headers, body, Role::Listener).await
}

/// WHIP (publish) or WHEP (listen): offer in, answer out, as RFC 9725 §4.2.
/// TURN credentials (`Link` headers) go out only with a `201`, to a client
/// whose token was verified.
async fn media_session(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    role: Role,
) -> Response {
    if state.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    if let Err(denied) = state.check_origin(&headers) {
        return denied.into_response();
    }
    let request = match media_request::parse(
        &channel,
        headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        &body,
        state.config.max_body_bytes,
    ) {
        Ok(r) => r,
        Err(refused) => {
            if refused.bad_name {
                state.refusals.count(Refusal::BadName);
            }
            let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST);
            return text(status, refused.message);
        }
    };
    let need = match role {
        Role::Speaker => Need::Publish,
        Role::Listener => Need::Subscribe,
    };
    let ask = JoinAsk {
        remote,
        token: request.token.as_deref(),
        channel: &request.channel,
        need,
        dev_identity: None,
    };
    let grants = match state.admit(&ask) {
        Ok(g) => g,
        Err(denied) => return denied.into_response(),
    };
    let worker = state.workers.for_channel(&request.channel).clone();
    // The session's own events tell when it ends without a DELETE (the
    // client vanished), so that its resource id is forgotten too.
    let (events, rx) = crate::worker::member_events(crate::worker::Signaling::Http);
    let joined = worker
        .join(JoinRequest {
            channel: request.channel.clone(),
            identity: grants.sub.clone(),
            role,
            offer: request.offer,
            can_publish: grants.can_publish,
            can_moderate: false,
            events: Some(events),
        })
        .await;
    let joined = match joined {
        Ok(j) => j,
        Err(JoinError::Full(full)) => return state.room_full(full).into_response(),
        Err(JoinError::Draining) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        }
        Err(e @ JoinError::Refused(_)) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let id = resource_id();
    state.resources.lock().await.insert(
        id.clone(),
        Resource {
            peer: joined.peer,
            channel: request.channel,
        },
    );
    tokio::spawn(watch_resource(
        state.clone(),
        worker,
        joined.peer,
        id.clone(),
        rx,
        grants.exp,
    ));
    let mut response = (StatusCode::CREATED, joined.answer).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/resources/{id}")) {
        h.insert(header::LOCATION, v);
    }
    let servers = crate::turn::ice_servers(&state.config, &grants.sub, unix_now());
    for link in crate::turn::link_headers(&servers) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(HeaderName::from_static("link"), v);
        }
    }
    response
}

/// Forgets a WHIP/WHEP resource when its member leaves, and removes the
/// member when its token expires (`exp`, Unix seconds): a session lives no
/// longer than the token that opened it.
async fn watch_resource(
    state: Arc<AppState>,
    worker: crate::worker::Worker,
    peer: PeerId,
    id: String,
    mut events: crate::worker::MemberEvents,
    exp: u64,
) {
    let left = Duration::from_secs(exp.saturating_sub(unix_now()));
    let expiry = async {
        match tokio::time::Instant::now().checked_add(left) {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            msg = events.recv() => match msg {
                Some(ServerMsg::MemberLeft { peer: p, .. }) if p == peer.0 => break,
                Some(_) => {}
                None => break,
            },
            () = &mut expiry => {
                state.refusals.count(Refusal::SessionExpired);
                worker.leave(peer).await;
                break;
            }
        }
    }
    state.resources.lock().await.remove(&id);
}

async fn delete_resource(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(r) = state.resources.lock().await.remove(&id) else {
        return text(StatusCode::NOT_FOUND, "no such session");
    };
    state.workers.for_channel(&r.channel).leave(r.peer).await;
    StatusCode::OK.into_response()
}

/// Trickle ICE and ICE restarts are not supported: RFC 9725 §4.3 has such a
/// resource answer `405 Method Not Allowed`. The engine is ICE-lite with
/// host candidates in the answer, so clients need not trickle.
async fn patch_resource(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if !state.resources.lock().await.contains_key(&id) {
        return text(StatusCode::NOT_FOUND, "no such session");
    }
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE and ICE restart are not supported by this server",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("DELETE"));
    r
}
