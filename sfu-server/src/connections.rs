//! Serving HTTP/1.1 connections (plain TCP or TLS) with the limits a public
//! server needs and `axum::serve` does not have:
//!
//! - at most `max_http_connections` at once, WebSockets included (a
//!   connection holds its slot until it closes, upgraded or not); one past
//!   that is answered `503` with `Retry-After` and closed;
//! - a header-read timeout: a client that does not send a complete request
//!   head within `http_header_timeout_secs` (slowloris), or an idle
//!   keep-alive connection that sends no next request within it, is closed
//!   (counted as a refusal when the connection never sent a request);
//! - request heads of at most [`MAX_HEAD_BYTES`] (past it: `431`, closed).
//!
//! The handlers get the client's address as axum's `ConnectInfo`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Refusal, Refusals};
use crate::state::RETRY_AFTER_SECS;

/// Largest request head (request line and headers) read, in bytes. A
/// browser's headers are a few KiB, a token at most 4 KiB; hyper's default
/// (about 400 KiB) would let each slow connection hold that much.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Connections being refused at once at most; past that a refused
/// connection is closed without an answer (a flood gets no 503s).
const REFUSING_AT_ONCE: usize = 256;

/// How long a refused connection is given to take its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Time to send a request head.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `stopped`. Connections already open
/// keep being served.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    limits: ConnectionLimits,
    refusals: Arc<Refusals>,
    stopped: Arc<Notify>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped.notified() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.count(Refusal::HttpConnections);
            if let Ok(refusing) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(io).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let io = TokioIo::new(Held { _slot: slot, io });
        let app = app.clone();
        // Whether a request came: a connection that times out before its
        // first one is a refusal; an idle keep-alive one is not.
        let served = Arc::new(AtomicBool::new(false));
        let seen = served.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            seen.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo(remote));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        });
        let connection = http.serve_connection(io, service).with_upgrades();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                if e.is_timeout() && !served.load(Ordering::Relaxed) {
                    refusals.count(Refusal::HeaderTimeout);
                } else {
                    tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
                }
            }
        });
    }
}

/// Answers `503 Service Unavailable` with `Retry-After` on a connection
/// over the limit, then closes it. What the client sent is read and
/// dropped for a moment, so that closing does not reset the connection
/// before the client read the answer.
async fn refuse<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    const BODY: &str = "the server has too many connections; try again shortly\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECS}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match io.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// A connection and its slot: the slot is free again when the connection
/// is dropped, which for a WebSocket is when the socket closes.
struct Held<Io> {
    // Dropped first (fields drop in order): the slot is free by the time
    // the client sees the connection close.
    _slot: OwnedSemaphorePermit,
    io: Io,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Held<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Held<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
