//! A complete single-node voice SFU on plain `std`: one [`UdpSocket`] driven by
//! a `media_core::Engine` on its own thread, and WHIP-like signaling over a
//! hand-rolled HTTP/1.1 server. `embed.rs` runs it; `tests/embed.rs` drives it
//! with real WebRTC clients over loopback.
//!
//! Everything binds to 127.0.0.1: the example accepts loopback clients only.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use media_core::{Command, Engine, EngineConfig, Event, Input, Output, PeerId, Role, SourceId};

/// The engine thread checks for signaling commands at least this often while it
/// waits for a datagram. It bounds join/leave latency, not media timing: the
/// engine's own deadlines are honoured exactly. A real server would wake on
/// either source with a poller (epoll, mio) instead.
const COMMAND_POLL: Duration = Duration::from_millis(20);
/// Largest request body (an SDP offer is a few KiB).
const MAX_BODY: usize = 64 * 1024;
/// Largest request line plus headers.
const MAX_HEAD: usize = 8 * 1024;
/// Concurrent HTTP connections; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 64;
/// A client that is this slow to send its request, or a join the engine does
/// not answer in this time, gets an error rather than holding a thread.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the server listens (port 0 picks any free port), and the engine's
/// seed.
#[derive(Clone, Copy)]
pub struct Config {
    /// UDP port for media (ICE, DTLS, SRTP) on 127.0.0.1.
    pub udp_port: u16,
    /// HTTP port for signaling and the web page on 127.0.0.1.
    pub http_port: u16,
    /// Key of the engine's random generator (`EngineConfig::seed`): from the
    /// operating system's secure generator, since every ICE password the
    /// engine hands out derives from it; fixed bytes in tests.
    pub seed: [u8; 32],
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("udp_port", &self.udp_port)
            .field("http_port", &self.http_port)
            .finish_non_exhaustive()
    }
}

/// A running server. Dropping it stops the engine and HTTP threads.
#[derive(Debug)]
pub struct Handle {
    udp: SocketAddr,
    http: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    /// The bound media address (the ICE host candidate in every answer).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The bound signaling address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Blocks until the server stops (in practice: until the process is killed).
    pub fn wait(mut self) {
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // `accept` has no timeout: wake it with a connection it will then drop.
        let _ = TcpStream::connect(self.http);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What signaling threads ask of the engine thread.
enum Request {
    Join {
        channel: String,
        identity: String,
        role: Role,
        offer: String,
        /// The new peer and the SDP answer, or why the engine refused.
        reply: Sender<Result<(PeerId, String), String>>,
    },
    Leave {
        peer: PeerId,
        reply: Sender<Result<(), String>>,
    },
}

/// Binds both sockets and starts the engine and HTTP threads.
pub fn serve(config: Config) -> io::Result<Handle> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, config.udp_port))?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.http_port))?;
    let (udp, http) = (socket.local_addr()?, listener.local_addr()?);
    let engine = Engine::new(
        EngineConfig {
            host_candidates: vec![udp],
            // For the NTP times of RTCP sender reports.
            wallclock_at_start: Some(std::time::SystemTime::now()),
            ..EngineConfig::new(config.seed)
        },
        Instant::now(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let engine_stop = stop.clone();
    let threads = vec![
        thread::Builder::new()
            .name("engine".into())
            .spawn(move || run_engine(engine, socket, rx, &engine_stop))?,
        thread::Builder::new().name("http".into()).spawn({
            let stop = stop.clone();
            move || accept_loop(listener, tx, &stop)
        })?,
    ];
    Ok(Handle {
        udp,
        http,
        stop,
        threads,
    })
}

/// Who a peer is, for logs and for the pending join reply.
struct PeerInfo {
    channel: String,
    identity: String,
    source: Option<SourceId>,
    reply: Option<Sender<Result<(PeerId, String), String>>>,
}

/// The run loop of `media_core`'s contract: after every `handle_input`, drain
/// `poll_output` until `Output::Timeout`, then wait for a datagram or that
/// deadline, whichever comes first.
fn run_engine(mut engine: Engine, socket: UdpSocket, rx: Receiver<Request>, stop: &AtomicBool) {
    let local = engine.config().host_candidates[0];
    let mut peers: HashMap<PeerId, PeerInfo> = HashMap::new();
    let mut next_peer = 1;
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let deadline = drain(&mut engine, &socket, &mut peers);
        // Commands go first: a join should not wait behind a media burst.
        if let Ok(request) = rx.try_recv() {
            let now = Instant::now();
            match request {
                Request::Join {
                    channel,
                    identity,
                    role,
                    offer,
                    reply,
                } => {
                    let peer = PeerId(next_peer);
                    next_peer += 1;
                    let command = Command::Join {
                        peer,
                        channel: channel.clone(),
                        identity: identity.clone(),
                        role,
                        offer,
                    };
                    match engine.handle_input(Input::Command { now, command }) {
                        // The answer is already queued: `drain` sends the reply.
                        Ok(()) => {
                            let reply = Some(reply);
                            let info = PeerInfo {
                                channel,
                                identity,
                                source: None,
                                reply,
                            };
                            peers.insert(peer, info);
                        }
                        Err(e) => drop(reply.send(Err(e.to_string()))),
                    }
                }
                Request::Leave { peer, reply } => {
                    let res = engine.handle_input(Input::Command {
                        now,
                        command: Command::Leave { peer },
                    });
                    let _ = reply.send(res.map_err(|e| e.to_string()));
                }
            }
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = engine.handle_input(Input::Timeout(now));
            continue;
        }
        // std's read timeout has microsecond resolution, so this wakes at the
        // deadline (or at the next command poll), never late by a tick.
        let _ = socket.set_read_timeout(Some((deadline - now).min(COMMAND_POLL)));
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                let datagram = &buf[..n];
                let (now, destination) = (Instant::now(), local);
                let input = Input::Receive {
                    now,
                    source,
                    destination,
                    datagram,
                };
                // Bad datagrams are dropped and counted, never errors.
                let _ = engine.handle_input(input);
            }
            // Timed out: loop round to feed the timeout or poll commands.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors of earlier sends surface here on some platforms.
            Err(e) => tracing::debug!(error = %e, "recv_from"),
        }
    }
}

/// Drains the engine: sends datagrams, answers joins, logs events. Returns
/// the engine's next deadline.
fn drain(
    engine: &mut Engine,
    socket: &UdpSocket,
    peers: &mut HashMap<PeerId, PeerInfo>,
) -> Instant {
    let name = |peers: &HashMap<PeerId, PeerInfo>, s: &SourceId| {
        let info = peers.values().find(|p| p.source == Some(*s));
        info.map_or_else(|| s.to_string(), |p| p.identity.clone())
    };
    loop {
        match engine.poll_output() {
            Output::Transmit(t) => {
                if let Err(e) = socket.send_to(&t.contents, t.destination) {
                    tracing::debug!(to = %t.destination, error = %e, "send_to");
                }
            }
            // A single node has no relay links: it never sets an upstream
            // and nobody subscribes to it.
            Output::Relay { .. } => {}
            Output::Event(Event::Answer {
                peer,
                source,
                slots,
                sdp,
            }) => {
                let Some(info) = peers.get_mut(&peer) else {
                    continue;
                };
                info.source = Some(source);
                let (channel, identity) = (&info.channel, &info.identity);
                tracing::info!(%peer, %source, slots, channel, identity, "joined");
                if let Some(reply) = info.reply.take() {
                    let _ = reply.send(Ok((peer, sdp)));
                }
            }
            Output::Event(Event::PeerConnected { peer }) => tracing::info!(%peer, "connected"),
            Output::Event(Event::PeerLeft { peer, reason }) => {
                peers.remove(&peer);
                tracing::info!(%peer, ?reason, "left");
            }
            Output::Event(Event::ActiveSpeakers { channel, speakers }) => {
                let speakers: Vec<_> = speakers.iter().map(|s| name(peers, s)).collect();
                tracing::info!(%channel, ?speakers, "active speakers");
            }
            Output::Event(Event::DominantSpeaker { channel, speaker }) => {
                let speaker = speaker.map(|s| name(peers, &s));
                tracing::info!(%channel, ?speaker, "dominant speaker");
            }
            Output::Event(e) => tracing::debug!(event = ?e),
            Output::Timeout(t) => return t,
        }
    }
}

fn accept_loop(listener: TcpListener, tx: Sender<Request>, stop: &AtomicBool) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        // A thread per connection, bounded so that a flood cannot exhaust them.
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            let _ = text(503, "too many connections").write_to(&mut stream);
            continue;
        }
        let (tx, open) = (tx.clone(), open.clone());
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                if let Err(e) = handle_connection(stream, &tx) {
                    tracing::debug!(error = %e, "http connection");
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            tracing::warn!("could not spawn an HTTP thread");
        }
    }
}

/// One request per connection (`Connection: close`): enough for signaling.
fn handle_connection(mut stream: TcpStream, tx: &Sender<Request>) -> io::Result<()> {
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    // Read the head line by line, never past MAX_HEAD bytes.
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        let left = (MAX_HEAD - head.len()) as u64;
        if left == 0 || (&mut reader).take(left).read_until(b'\n', &mut head)? == 0 {
            return text(400, "incomplete or oversized request head").write_to(&mut stream);
        }
    }
    let response = match std::str::from_utf8(&head) {
        Ok(head) => route(head, &mut reader, tx)?,
        Err(_) => text(400, "request head is not UTF-8"),
    };
    response.write_to(&mut stream)
}

fn route(head: &str, body: &mut impl Read, tx: &Sender<Request>) -> io::Result<Response> {
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    Ok(match (method, path) {
        ("GET", "/") => Response {
            status: 200,
            headers: "Content-Type: text/html; charset=utf-8\r\n".into(),
            body: PAGE.into(),
        },
        ("POST", p) if p.starts_with("/channels/") => {
            let len = match header("content-length").map(str::parse::<usize>) {
                Some(Ok(len)) => len,
                _ => return Ok(text(411, "Content-Length required")),
            };
            // Refuse before reading: the body never reaches memory.
            if len > MAX_BODY {
                return Ok(text(413, "the offer is over 64 KiB"));
            }
            // Read it even when refusing it: closing on unread data would
            // reset the connection before the client reads our answer.
            let mut offer = vec![0; len];
            body.read_exact(&mut offer)?;
            if !header("content-type").is_some_and(|t| t.starts_with("application/sdp")) {
                return Ok(text(415, "Content-Type must be application/sdp"));
            }
            join(&p["/channels/".len()..], query, offer, tx)
        }
        ("DELETE", p) if p.starts_with("/peers/") => leave(&p["/peers/".len()..], tx),
        (_, "/") => not_allowed("GET"),
        (_, p) if p.starts_with("/channels/") => not_allowed("POST"),
        (_, p) if p.starts_with("/peers/") => not_allowed("DELETE"),
        _ => text(404, "not found"),
    })
}

/// `POST /channels/{name}?role=…&identity=…`: the engine thread joins the
/// peer and replies with its answer.
fn join(channel: &str, query: &str, offer: Vec<u8>, tx: &Sender<Request>) -> Response {
    let mut params = HashMap::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let Some(v) = percent_decode(v) else {
            return text(400, "bad percent-encoding in the query");
        };
        params.insert(k, v);
    }
    let role = match params.get("role").map(String::as_str) {
        None | Some("speaker") => Role::Speaker,
        Some("listener") => Role::Listener,
        Some(_) => return text(400, "role must be speaker or listener"),
    };
    let identity = params.remove("identity").unwrap_or_default();
    let Some(channel) = percent_decode(channel) else {
        return text(400, "bad percent-encoding in the channel name");
    };
    let Ok(offer) = String::from_utf8(offer) else {
        return text(400, "the offer is not UTF-8");
    };
    let (reply, answer) = mpsc::channel();
    let request = Request::Join {
        channel,
        identity,
        role,
        offer,
        reply,
    };
    match tx
        .send(request)
        .ok()
        .and_then(|()| answer.recv_timeout(HTTP_TIMEOUT).ok())
    {
        Some(Ok((peer, sdp))) => Response {
            status: 201,
            headers: format!(
                "Content-Type: application/sdp\r\nLocation: /peers/{}\r\n",
                peer.0
            ),
            body: sdp,
        },
        Some(Err(e)) => text(400, e),
        None => text(503, "engine unavailable"),
    }
}

/// `DELETE /peers/{id}`.
fn leave(id: &str, tx: &Sender<Request>) -> Response {
    let Ok(peer) = id.parse().map(PeerId) else {
        return text(404, "no such peer");
    };
    let (reply, done) = mpsc::channel();
    match tx
        .send(Request::Leave { peer, reply })
        .ok()
        .and_then(|()| done.recv_timeout(HTTP_TIMEOUT).ok())
    {
        Some(Ok(())) => Response {
            status: 204,
            headers: String::new(),
            body: String::new(),
        },
        Some(Err(e)) => text(404, e),
        None => text(503, "engine unavailable"),
    }
}

struct Response {
    status: u16,
    /// Extra header lines, each ending in CRLF.
    headers: String,
    body: String,
}

fn text(status: u16, msg: impl std::fmt::Display) -> Response {
    let headers = "Content-Type: text/plain; charset=utf-8\r\n".into();
    Response {
        status,
        headers,
        body: format!("{msg}\n"),
    }
}

fn not_allowed(allow: &str) -> Response {
    let mut r = text(405, format!("use {allow}"));
    r.headers += &format!("Allow: {allow}\r\n");
    r
}

impl Response {
    fn write_to(&self, stream: &mut TcpStream) -> io::Result<()> {
        let reason = match self.status {
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            411 => "Length Required",
            413 => "Content Too Large",
            415 => "Unsupported Media Type",
            _ => "Service Unavailable",
        };
        let (status, headers, body) = (self.status, &self.headers, &self.body);
        let len = body.len();
        write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
        )?;
        stream.flush()
    }
}

/// `%XX` decoding (what `encodeURIComponent` produces); `None` when invalid.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    let hex = |b: Option<u8>| char::from(b?).to_digit(16);
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => (hex(bytes.next())? * 16 + hex(bytes.next())?) as u8,
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// The browser client: mic up, three slots down, WHIP-like signaling.
const PAGE: &str = include_str!("../embed/index.html");
