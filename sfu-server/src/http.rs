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

use crate::ice_restart::{self, RestartBudget, SdpFrag, SDPFRAG_TYPE};
use crate::media_request;
use crate::metrics::Refusal;
use crate::protocol::ServerMsg;
use crate::state::{secret_id, unix_now, AppState, Denied, JoinAsk, Need, Resource};
use crate::worker::{JoinError, JoinRequest, RestartError};

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
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            HeaderName::from_static("link"),
        ]);
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
        .route(
            "/admin/hybrid",
            get(crate::admin::get_hybrid).put(crate::admin::put_hybrid),
        )
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
    let workers = state.worker_snapshots().await;
    let snapshot = crate::metrics::sum(&workers);
    let mut body = crate::metrics::render(&snapshot, state.is_draining());
    crate::metrics::render_workers(&mut body, &workers);
    crate::metrics::render_refusals(&mut body, &state.refusals);
    crate::metrics::render_resumes(&mut body, &state.resumes.stats);
    crate::metrics::render_health(&mut body, state.health.workers_up());
    crate::metrics::render_config_reloads(&mut body, &state.config_reloads);
    if let Some(fleet) = state.fleet.get() {
        crate::metrics::render_fleet(
            &mut body,
            fleet.is_degraded(),
            fleet.failures(),
            state.placer.get().map(|p| &**p),
        );
    }
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
    } else if state.fleet_degraded() {
        // Media does not depend on Redis: the node serves, degraded.
        "ready (degraded: the fleet's redis cannot be reached)\n".into_response()
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
    let region = grants
        .region
        .clone()
        .unwrap_or_else(|| state.client_region(&headers));
    let upstream = match state.place_join(&request.channel, &region).await {
        Ok(upstream) => upstream,
        // RFC 9725 §4.5: a WHIP/WHEP endpoint may redirect with 307.
        Err(Ok((_, url))) => {
            let kind = match role {
                Role::Speaker => "whip",
                Role::Listener => "whep",
            };
            let location = format!(
                "{}/{kind}/{}",
                url.trim_end_matches('/'),
                crate::names::path_segment(&request.channel)
            );
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            return response;
        }
        Err(Err(denied)) => return denied.into_response(),
    };
    let Some(id) = secret_id() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server has no randomness for a resource id",
        );
    };
    let worker = match state.workers.place(&request.channel) {
        Ok(w) => w,
        Err(full) => return state.room_full(full).into_response(),
    };
    // The session's own events tell when it ends without a DELETE (the
    // client vanished), so that its resource id is forgotten too.
    let (events, rx) = crate::worker::member_events(crate::worker::Signaling::Http);
    let joined = worker
        .join(JoinRequest {
            channel: request.channel.clone(),
            identity: grants.sub.clone(),
            role,
            offer: request.offer.clone(),
            can_publish: grants.can_publish,
            can_moderate: false,
            events: Some(events),
            upstream: upstream.or(worker.upstream),
            capability: crate::rooms::mode::Capability::SfuOnly(crate::rooms::mode::SfuOnly::Http),
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
    state.joined(&request.channel, joined.member_count);
    let etag = etag_of(&joined.answer);
    state.resources.lock().await.insert(
        id.clone(),
        Resource {
            peer: joined.peer,
            worker: worker.clone(),
            offer: request.offer,
            etag: etag.clone(),
            restarts: RestartBudget::new(state.config.ice_restarts_per_minute),
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
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
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
    worker: crate::worker::PlacedWorker,
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
    r.worker.leave(r.peer).await;
    StatusCode::OK.into_response()
}

/// The entity tag of an ICE session: the server's ICE ufrag in `answer`
/// (RFC 9725 §4.3: it changes when ICE restarts).
fn etag_of(answer: &str) -> String {
    format!("\"{}\"", ice_restart::ice_ufrag(answer).unwrap_or("none"))
}

/// `PATCH` on a WHIP/WHEP session (RFC 9725 §4.3), with an
/// `application/trickle-ice-sdpfrag` body. New ICE credentials in it are an
/// ICE restart (`If-Match: "*"` or the session's tag): `200` with the
/// server's new credentials and candidates, and a new `ETag`. Without new
/// credentials it is a trickle of candidates: `204`, and the candidates
/// are not needed (the engine is ICE-lite: it learns the client's
/// addresses from the client's own checks). A tag that is not the
/// session's is `412`; more than `ice_restarts_per_minute` restarts `429`.
async fn patch_resource(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(r) = state.resources.lock().await.get(&id).cloned() else {
        return text(StatusCode::NOT_FOUND, "no such session");
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if content_type != Some(SDPFRAG_TYPE) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a PATCH body is {SDPFRAG_TYPE}"),
        );
    }
    let frag = match SdpFrag::parse(&body) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    let current = ice_restart::ice_ufrag(&r.offer).unwrap_or("");
    let Some((ufrag, pwd)) = frag.restart(current) else {
        // A trickle: only for the session as it is now.
        if if_match.is_some_and(|m| m.trim() != r.etag) {
            return text(
                StatusCode::PRECONDITION_FAILED,
                "the ICE session changed (ETag)",
            );
        }
        return StatusCode::NO_CONTENT.into_response();
    };
    if if_match.is_some_and(|m| m.trim() != "*" && m.trim() != r.etag) {
        return text(
            StatusCode::PRECONDITION_FAILED,
            "the ICE session changed (ETag)",
        );
    }
    // The budget is the session's: take it under the lock.
    let budget = {
        let mut resources = state.resources.lock().await;
        match resources.get_mut(&id) {
            Some(r) => r.restarts.take(std::time::Instant::now()),
            None => return text(StatusCode::NOT_FOUND, "no such session"),
        }
    };
    if let Err(wait) = budget {
        state.refusals.count(Refusal::RestartRate);
        let mut denied = Denied::new(
            429,
            "rate_limited",
            format!(
                "at most {} ICE restarts a minute",
                state.config.ice_restarts_per_minute
            ),
        );
        denied.retry_after = Some(wait);
        return denied.into_response();
    }
    let offer = ice_restart::restart_offer(&r.offer, ufrag, pwd);
    let worker = &r.worker;
    let answer = match worker.restart(r.peer, offer.clone()).await {
        Ok(a) => a,
        Err(e @ RestartError::Refused(_)) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(RestartError::Left) => return text(StatusCode::NOT_FOUND, "no such session"),
        Err(e @ RestartError::WorkerGone) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    };
    let etag = etag_of(&answer);
    if let Some(r) = state.resources.lock().await.get_mut(&id) {
        r.offer = offer;
        r.etag = etag.clone();
    }
    let mut response = (StatusCode::OK, ice_restart::answer_frag(&answer)).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG_TYPE));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}
