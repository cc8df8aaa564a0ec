//! Shared helpers of the server tests: a server on 127.0.0.1 and a
//! WebSocket member with a real WebRTC peer.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sfu_server::{Config, Server};
use testkit::client::ClientSpec;
use testkit::udp::UdpPeer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Everything a test waits for must happen by then.
pub(crate) const LIMIT: Duration = Duration::from_secs(15);

pub(crate) fn config() -> Config {
    Config {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

pub(crate) async fn server(config: Config) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    Server::start(config).await.expect("server starts")
}

/// A WebSocket connection to the room protocol.
pub(crate) struct Ws {
    pub(crate) socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages received that a `recv_until` skipped.
    pub(crate) seen: Vec<Value>,
}

impl Ws {
    pub(crate) async fn connect(server: &Server) -> Ws {
        let url = format!("ws://{}/ws", server.http_addr());
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        let mut ws = Ws {
            socket,
            seen: Vec::new(),
        };
        let hello = ws.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        ws
    }

    pub(crate) async fn connect_addr(base: &str) -> Ws {
        Ws::connect_with(base, &[]).await
    }

    /// [`Ws::connect_addr`] with extra request headers.
    pub(crate) async fn connect_with(base: &str, headers: &[(&'static str, &str)]) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/ws", base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("a ws URL");
        for (k, v) in headers {
            request
                .headers_mut()
                .insert(*k, v.parse().expect("a header value"));
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("ws");
        let mut ws = Ws {
            socket,
            seen: Vec::new(),
        };
        let hello = ws.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        ws
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.socket
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub(crate) async fn send_raw(&mut self, m: Message) {
        self.socket.send(m).await.expect("send");
    }

    /// The next JSON message, at most `LIMIT` away.
    pub(crate) async fn recv(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("a message in time")
                .expect("socket open")
                .expect("no socket error");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                self.seen.push(v.clone());
                return v;
            }
        }
    }

    /// The JSON messages that arrive until none comes for `quiet`, and
    /// whether the socket is still open then.
    pub(crate) async fn pending(&mut self, quiet: std::time::Duration) -> (Vec<Value>, bool) {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(quiet, self.socket.next()).await {
                Err(_) => return (got, true),
                Ok(None | Some(Err(_))) => return (got, false),
                Ok(Some(Ok(Message::Text(t)))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        self.seen.push(v.clone());
                        got.push(v);
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) => return (got, false),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Receives until a message of type `ty` (returns it).
    pub(crate) async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }
}

/// Joins over WebSocket with a fresh WebRTC peer; returns the socket, the
/// running peer and the `joined` message.
pub(crate) async fn ws_member(
    server: &Server,
    channel: &str,
    name: &str,
    spec: ClientSpec,
    extra: Value,
) -> (Ws, UdpPeer, Value) {
    let base = format!("http://{}", server.http_addr());
    ws_member_at(&base, channel, name, spec, extra).await
}

/// [`ws_member`] against a server at `base` (`http://host:port`).
pub(crate) async fn ws_member_at(
    base: &str,
    channel: &str,
    name: &str,
    spec: ClientSpec,
    extra: Value,
) -> (Ws, UdpPeer, Value) {
    let mut ws = Ws::connect_addr(base).await;
    let (mut peer, offer) = UdpPeer::new(name, &spec).expect("peer");
    let mut join = json!({"type": "join", "channel": channel, "offer": offer, "identity": name});
    if let (Some(j), Some(e)) = (join.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            j.insert(k.clone(), v.clone());
        }
    }
    ws.send(join).await;
    let joined = ws.recv().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    peer.start(joined["answer"].as_str().expect("answer"));
    (ws, peer, joined)
}

/// Waits (on real time, bounded) until `peer` heard `tones` for at least
/// `frames` frames each since `from`.
pub(crate) fn hears(peer: &UdpPeer, tones: &[usize], frames: usize) -> bool {
    let from = peer.created;
    let want: std::collections::BTreeSet<usize> = tones.iter().copied().collect();
    peer.wait_until(Instant::now() + LIMIT, |c| {
        c.tones_heard(from, Instant::now() + LIMIT, frames) == want
    })
}

/// `GET /metrics` of the server at `base`, parsed.
pub(crate) async fn scrape(base: &str) -> prometheus_parse::Scrape {
    let body = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

/// The value of the sample `name` (with `label`, if given) of a scrape.
pub(crate) fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a number"),
    }
}

/// The cluster secret of the in-process clusters.
pub(crate) const CLUSTER_SECRET: &str = "in-process-cluster-secret-of-32-bytes";

/// A core and an edge linked to it, both in this process; returns once the
/// core counts the edge's link.
pub(crate) async fn core_and_edge() -> (Server, Server) {
    let mut cfg = config();
    cfg.role = sfu_server::config::NodeRole::Core;
    cfg.cluster_listen = "127.0.0.1:0".parse().unwrap();
    cfg.cluster_secret = Some(CLUSTER_SECRET.into());
    cfg.node_id = Some(1);
    let core = server(cfg).await;
    let mut cfg = config();
    cfg.role = sfu_server::config::NodeRole::Edge;
    cfg.cluster_cores = vec![core.cluster_addr().expect("a core listens")];
    cfg.cluster_secret = Some(CLUSTER_SECRET.into());
    cfg.node_id = Some(2);
    let edge = server(cfg).await;
    let base = format!("http://{}", core.http_addr());
    let linked = until(|| async { value(&scrape(&base).await, "sfu_cascade_links", None) == 1.0 });
    assert!(linked.await, "the edge links to the core");
    (core, edge)
}

/// Checks `cond` until it holds or [`LIMIT`] passed (every 20 ms: for
/// conditions only a poll can see, such as another server's counters).
pub(crate) async fn until<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST {base}{path}` with an SDP offer (WHIP, WHEP).
pub(crate) async fn post_sdp(base: &str, path: &str, offer: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .expect("a response")
}

/// An HTTP request with `headers` and `body`, answered within [`LIMIT`].
pub(crate) async fn http(
    method: reqwest::Method,
    url: String,
    headers: &[(&str, &str)],
    body: String,
) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::time::timeout(LIMIT, req.send())
        .await
        .expect("in time")
        .expect("response")
}
