//! The WebSocket under a session: the HTTP/1.1 upgrade (RFC 6455 §4.2) and
//! tungstenite's stream, with every message the server sends cut into
//! frames of at most [`FRAGMENT_BYTES`].
//!
//! Why not axum's `WebSocket`: tungstenite's write buffer keeps the
//! capacity of the largest frame it ever wrote, for the life of the
//! socket. A member's largest message is its `joined` (the SDP answer and
//! up to 100 listed members, about 11 KiB), so every listener of a big
//! channel kept 11 KiB it needed once. Sent as a fragmented message
//! (RFC 6455 §5.4; every WebSocket client reassembles it), no frame is
//! over [`FRAGMENT_BYTES`] and neither is the buffer. axum's `Message` has
//! no way to send a frame; tungstenite's does.

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::Message;

/// The largest frame the server sends. A message longer than this goes out
/// in several frames (cut at UTF-8 character boundaries).
pub const FRAGMENT_BYTES: usize = 1024;

/// `GET /ws` asking for a WebSocket: checked, and ready to answer `101`.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake this server takes.
#[derive(Debug, PartialEq, Eq)]
pub struct NotWebSocket {
    status: StatusCode,
    reason: &'static str,
}

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.reason).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            r.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        r
    }
}

/// Checks the handshake's request headers (RFC 6455 §4.2.1); returns the
/// client's `Sec-WebSocket-Key`.
fn check_handshake(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, NotWebSocket> {
    let no = |status, reason| Err(NotWebSocket { status, reason });
    if version != Version::HTTP_11 {
        return no(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "WebSocket over HTTP/1.1 only",
        );
    }
    if method != Method::GET {
        return no(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket opens with GET");
    }
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return no(
            StatusCode::UPGRADE_REQUIRED,
            "this path takes a WebSocket (Connection: upgrade, Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return no(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.clone()),
        _ => no(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotWebSocket;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotWebSocket> {
        let key = check_handshake(&parts.method, parts.version, &parts.headers)?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotWebSocket {
            status: StatusCode::UPGRADE_REQUIRED,
            reason: "this connection cannot be upgraded",
        })?;
        Ok(WsUpgrade { key, on_upgrade })
    }
}

impl WsUpgrade {
    /// Answers `101 Switching Protocols` and runs `session` on the socket
    /// once the connection is upgraded (a task of its own).
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                // The client went before the upgrade: nothing to serve.
                return;
            };
            let inner = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            session(Socket { inner }).await;
        });
        let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }
}

/// A session's WebSocket.
pub struct Socket {
    inner: WebSocketStream<TokioIo<Upgraded>>,
}

impl Socket {
    /// The next message (tungstenite answers pings itself); `None` once the
    /// stream ended.
    pub async fn recv(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        self.inner.next().await
    }

    /// Sends `text` as one message, in frames of at most [`FRAGMENT_BYTES`].
    pub async fn send_text(&mut self, text: String) -> Result<(), tungstenite::Error> {
        if text.len() <= FRAGMENT_BYTES {
            return self.inner.send(Message::Text(text.into())).await;
        }
        for frame in fragments(text) {
            self.inner.feed(Message::Frame(frame)).await?;
        }
        self.inner.flush().await
    }

    /// Sends a close frame.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), tungstenite::Error> {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        self.inner.send(Message::Close(Some(frame))).await
    }
}

/// `text` as the frames of one text message: the first a text frame, the
/// rest continuations, the last final; each at most [`FRAGMENT_BYTES`] and
/// cut at a character boundary (the frames share `text`'s bytes).
fn fragments(text: String) -> Vec<Frame> {
    let mut cuts = Vec::with_capacity(text.len() / FRAGMENT_BYTES + 2);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + FRAGMENT_BYTES).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        cuts.push((start, end));
        start = end;
    }
    let bytes = Bytes::from(text.into_bytes());
    let last = cuts.len().saturating_sub(1);
    cuts.into_iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            Frame::message(bytes.slice(a..b), opcode, i == last)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(frames: &[Frame]) -> String {
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_long_message_goes_in_bounded_frames_cut_between_characters() {
        // 'é' is two bytes: an odd offset puts a boundary inside one.
        let text = format!("x{}", "é".repeat(1500));
        let frames = fragments(text.clone());
        assert_eq!(frames.len(), 3, "3,001 bytes in frames of at most 1,024");
        assert!(frames.iter().all(
            |f| f.payload().len() <= FRAGMENT_BYTES && std::str::from_utf8(f.payload()).is_ok()
        ));
        assert_eq!(frames[0].header().opcode, OpCode::Data(Data::Text));
        assert!(frames[1..]
            .iter()
            .all(|f| f.header().opcode == OpCode::Data(Data::Continue)));
        let finals: Vec<bool> = frames.iter().map(|f| f.header().is_final).collect();
        assert_eq!(finals, [false, false, true]);
        assert_eq!(joined(&frames), text);
    }

    #[test]
    fn a_message_of_exactly_one_fragment_is_one_final_frame() {
        let frames = fragments("a".repeat(FRAGMENT_BYTES));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].header().is_final);
        assert_eq!(frames[0].header().opcode, OpCode::Data(Data::Text));
    }

    #[test]
    fn handshake_headers_are_checked() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(check_handshake(&Method::GET, Version::HTTP_11, &h).is_ok());
        let status =
            |m: &Method, h: &HeaderMap| check_handshake(m, Version::HTTP_11, h).unwrap_err().status;
        assert_eq!(status(&Method::POST, &h), StatusCode::METHOD_NOT_ALLOWED);
        let mut no_upgrade = h.clone();
        no_upgrade.remove(header::UPGRADE);
        assert_eq!(
            status(&Method::GET, &no_upgrade),
            StatusCode::UPGRADE_REQUIRED
        );
        let mut old = h.clone();
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(status(&Method::GET, &old), StatusCode::BAD_REQUEST);
        let mut keyless = h.clone();
        keyless.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(status(&Method::GET, &keyless), StatusCode::BAD_REQUEST);
        // RFC 6455 §1.3's example.
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
