//! One member of the channel: its client, the peer that drives it, and its
//! signaling socket, which stays open for its lifetime (closing it leaves
//! the channel). Joining and leaving over the WebSocket room protocol:
//! politely (`leave`) or abruptly (the sockets just close).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::Args;
use crate::pool::PooledPeer;
use media_core::str0m::config::DtlsCert;
use testkit::client::{Client, ClientSpec};
use testkit::udp::UdpPeer;

/// Most time the members take to leave, together: a server too busy to
/// read its sockets then notices the peers vanish.
const LEAVE_WITHIN: Duration = Duration::from_secs(5);

/// The TCP receive buffer of a member that stops reading its WebSocket
/// (`--idle-ws`), in bytes: small, so that what the server keeps sending
/// backs up into the server soon, as with a stalled client on a slow link.
const IDLE_RECEIVE_BUFFER: u32 = 4096;

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A client's peer: its own thread, or a task of the pool.
#[derive(Debug)]
enum Peer {
    Thread(UdpPeer),
    Pooled(PooledPeer),
}

/// A member that joined; what the server says to it is read and dropped.
#[derive(Debug)]
pub(crate) struct Member {
    peer: Peer,
    pub(crate) client: Arc<Mutex<Client>>,
    ws: WsSink,
    reader: tokio::task::JoinHandle<()>,
    /// When its `join` left: join time runs from here to its first audio.
    pub(crate) join_sent: Instant,
    /// Whether it decodes and is checked.
    pub(crate) checked: bool,
}

/// How a member's client is made.
pub(crate) struct Setup<'a> {
    pub(crate) cert: &'a DtlsCert,
    /// Run it on the pool (else on a thread of its own).
    pub(crate) pooled: bool,
    /// Read (and drop) what the server says after the answer; `false`: never
    /// read the WebSocket again (`--idle-ws`).
    pub(crate) reads_events: bool,
}

/// Joins `a.channel` at `url` as `role` ("speaker" or "listener"): sends
/// the offer, applies the answer and starts the client, all within
/// `--join-timeout`.
pub(crate) async fn join(
    a: &Args,
    url: &str,
    name: &str,
    spec: ClientSpec,
    role: &str,
    setup: &Setup<'_>,
) -> Result<Member, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.join_timeout);
    let connect = |url: String| async move {
        let ws_url = format!("{}/ws", url.replacen("http://", "ws://", 1));
        let connect = async {
            if setup.reads_events {
                tokio_tungstenite::connect_async(ws_url).await
            } else {
                connect_with_small_buffer(&ws_url).await
            }
        };
        tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| "websocket: no connection in time".to_string())?
            .map_err(|e| format!("websocket: {e}"))
            .map(|(ws, _)| ws)
    };
    let mut ws = connect(url.to_owned()).await?;
    let mut redirects = 0;
    let checked = spec.decode;
    let (mut peer, offer) = if setup.pooled {
        let (p, offer) =
            PooledPeer::new(a.bind, name, &spec, setup.cert).map_err(|e| e.to_string())?;
        (Peer::Pooled(p), offer)
    } else {
        let (p, offer) = UdpPeer::new_on(a.bind, name, &spec).map_err(|e| e.to_string())?;
        (Peer::Thread(p), offer)
    };
    let join_sent = Instant::now();
    let mut msg = json!({"type": "join", "channel": a.channel, "offer": offer, "role": role, "identity": name});
    if let Some(token) = &a.token {
        msg["token"] = json!(token);
    }
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "no answer in time".to_string())?
            .ok_or("socket closed")?
            .map_err(|e| e.to_string())?;
        let Message::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            Some("joined") => {
                let answer = v["answer"].as_str().ok_or("joined without an answer")?;
                let client = match &mut peer {
                    Peer::Pooled(p) => {
                        p.start(answer)?;
                        p.client.clone()
                    }
                    Peer::Thread(p) => {
                        p.try_start(answer)?;
                        p.client()
                    }
                };
                let (sink, mut stream) = ws.split();
                let reader = if setup.reads_events {
                    // Read and drop room events so that they do not queue up
                    // in the server; ends when the socket closes.
                    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} })
                } else {
                    // Hold the socket open and never read it again.
                    tokio::spawn(async move {
                        let _unread = stream;
                        std::future::pending::<()>().await;
                    })
                };
                return Ok(Member {
                    peer,
                    client,
                    ws: sink,
                    reader,
                    join_sent,
                    checked,
                });
            }
            Some("error") => return Err(format!("refused: {}", v["message"])),
            // A fleet's node sends the join to the channel's node (at
            // most twice: the channel's core, then an edge).
            Some("redirect") if redirects < MAX_REDIRECTS => {
                let to = v["url"].as_str().ok_or("redirect without a url")?;
                redirects += 1;
                ws = connect(to.to_owned()).await?;
                ws.send(Message::Text(msg.to_string().into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some("redirect") => return Err("redirected too often".into()),
            _ => {}
        }
    }
}

/// Redirects a join follows at most.
const MAX_REDIRECTS: usize = 2;

/// Leaves politely, but spends at most [`LEAVE_WITHIN`] on it.
pub(crate) async fn leave(members: Vec<Member>) {
    let leave_by = tokio::time::Instant::now() + LEAVE_WITHIN;
    for m in &members {
        if let Peer::Thread(p) = &m.peer {
            p.signal_stop();
        }
    }
    let leave = json!({"type": "leave"}).to_string();
    for mut m in members {
        let _ =
            tokio::time::timeout_at(leave_by, m.ws.send(Message::Text(leave.clone().into()))).await;
        m.reader.abort();
    }
}

/// Leaves without a word: both sockets just close, as when a browser tab
/// crashes or a laptop lid shuts.
pub(crate) fn vanish(m: Member) {
    if let Peer::Thread(p) = &m.peer {
        p.signal_stop();
    }
    m.reader.abort();
    // Dropping the peer closes its UDP socket (a pooled peer's task is
    // aborted), dropping the sink and the reader the WebSocket.
}

/// A WebSocket to `ws_url` (`ws://HOST:PORT/...`) over a TCP socket with a
/// small receive buffer ([`IDLE_RECEIVE_BUFFER`]).
async fn connect_with_small_buffer(
    ws_url: &str,
) -> Result<
    (
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::Error;
    let host_port = ws_url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| {
            Error::Url(tokio_tungstenite::tungstenite::error::UrlError::UnsupportedUrlScheme)
        })?;
    let addr = tokio::net::lookup_host(host_port)
        .await?
        .next()
        .ok_or_else(|| Error::Url(tokio_tungstenite::tungstenite::error::UrlError::NoHostName))?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_recv_buffer_size(IDLE_RECEIVE_BUFFER)?;
    let tcp = socket.connect(addr).await?;
    tokio_tungstenite::client_async(ws_url, MaybeTlsStream::Plain(tcp)).await
}
