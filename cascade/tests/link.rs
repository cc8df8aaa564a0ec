//! `cascade::link` over real QUIC on 127.0.0.1: authentication, media and
//! control both ways, idle timeout, dialer failover and reconnect, a datagram
//! burst against the small send buffer.
//!
//! Every wait is bounded by a tokio timeout. A few checks that something does
//! *not* happen wait a bounded quiet period; rebinding a port just released
//! by a closed endpoint is retried until the old socket is gone.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use bytes::{Bytes, BytesMut};
use cascade::link::{
    CloseReason, Dialer, DialerEvent, Link, LinkConfig, LinkError, LinkEvent, Listener,
    CLOSE_AUTH_FAILED, CLOSE_PROTOCOL,
};
use cascade::wire::{encode_datagram, encode_frame};
use media_core::{RelayMsg, SourceId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::time::timeout;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const LOCAL: &str = "127.0.0.1:0";
/// Upper bound of any single wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(10);

fn local() -> SocketAddr {
    LOCAL.parse().unwrap()
}

/// A listener's settings (node 0, the default).
fn config(secret: &[u8]) -> LinkConfig {
    LinkConfig::new(secret.to_vec()).unwrap()
}

/// `cfg` for a dialer: node 1, not the listener's node id.
fn edge(cfg: &LinkConfig) -> LinkConfig {
    LinkConfig {
        node_id: 1,
        ..cfg.clone()
    }
}

fn media(n: u64, len: usize) -> RelayMsg {
    RelayMsg::Media {
        channel: "room-1".into(),
        source: SourceId(7),
        seq: n,
        rtp_ts: (n as u32).wrapping_mul(960),
        level: 30,
        vad: Some(true),
        payload: Bytes::from((0..len).map(|i| (i as u64 + n) as u8).collect::<Vec<u8>>()),
    }
}

fn subscribe(channel: &str) -> RelayMsg {
    RelayMsg::Subscribe {
        channel: channel.into(),
    }
}

async fn next_msg(link: &mut Link) -> RelayMsg {
    timeout(WAIT, link.recv())
        .await
        .expect("message in time")
        .expect("link open")
}

async fn pair(cfg: LinkConfig) -> (Listener, Link, Link) {
    let mut listener = Listener::bind(local(), cfg.clone()).unwrap();
    let addr = listener.local_addr();
    let (client, server) = tokio::join!(
        timeout(WAIT, Link::dial(addr, edge(&cfg))),
        timeout(WAIT, listener.accept())
    );
    let client = client.expect("dial in time").expect("dial ok");
    let server = server.expect("accept in time").expect("a link");
    (listener, client, server)
}

// ---------------------------------------------------------------- raw peers

/// A client verifier that accepts anything (the test peers play attackers).
#[derive(Debug)]
struct AnyCert(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// QUIC client settings of the raw peers: TLS 1.3 with the link's ALPN,
/// any server certificate.
fn raw_client_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = AnyCert(provider.signature_verification_algorithms);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"voice-sfu-cascade/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

/// A bare QUIC connection to a listener, TLS only (no link protocol).
async fn raw_connect(addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let conn = timeout(
        WAIT,
        endpoint
            .connect_with(raw_client_config(), addr, "voice-sfu-cascade")
            .unwrap(),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake");
    (endpoint, conn)
}

/// The documented hello: `MAGIC || node || HMAC-SHA256(secret, "voice-sfu
/// cascade v2 " || role || node || exporter)`, node a big-endian u16,
/// computed independently of the crate.
fn hello(conn: &quinn::Connection, secret: &[u8], role: &[u8], node: u16) -> Vec<u8> {
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, b"voice-sfu-cascade", &[])
        .unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let node = node.to_be_bytes();
    let input = [b"voice-sfu cascade v2 ".as_slice(), role, &node, &exporter].concat();
    [
        b"VSFUCAS2".as_slice(),
        &node,
        hmac::sign(&key, &input).as_ref(),
    ]
    .concat()
}

/// The first datagram of a fresh QUIC connection to `addr` (an Initial
/// with a TLS ClientHello), from a sans-IO client that will never answer:
/// what a flood with forged source addresses sends.
fn initial(addr: SocketAddr) -> Vec<u8> {
    let config = Arc::new(quinn_proto::EndpointConfig::default());
    let mut endpoint = quinn_proto::Endpoint::new(config, None, false, None);
    let now = Instant::now();
    let (_, mut conn) = endpoint
        .connect(now, raw_client_config(), addr, "voice-sfu-cascade")
        .unwrap();
    let mut buf = Vec::new();
    let transmit = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
    buf.truncate(transmit.size);
    buf
}

/// Whether a QUIC v1 datagram is a Retry packet (RFC 9000 §17.2.5: long
/// header, type 3).
fn is_retry(datagram: &[u8]) -> bool {
    datagram.len() > 5 && datagram[0] & 0xf0 == 0xf0 && datagram[1..5] == [0, 0, 0, 1]
}

fn datagram(msg: &RelayMsg) -> Bytes {
    let mut buf = BytesMut::new();
    encode_datagram(msg, &mut buf).unwrap();
    buf.freeze()
}

fn frame(msg: &RelayMsg) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf).unwrap();
    buf.freeze()
}

/// The application close code a raw peer's connection ended with.
async fn close_code(conn: &quinn::Connection) -> u64 {
    match timeout(WAIT, conn.closed()).await.expect("closed in time") {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("unexpected close: {other:?}"),
    }
}

/// Nothing is accepted during a quiet period.
async fn assert_no_accept(listener: &mut Listener, quiet: Duration) {
    if let Ok(link) = timeout(quiet, listener.accept()).await {
        panic!("unexpected accept: {link:?}");
    }
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_secret_is_refused() {
    let cfg = LinkConfig::default();
    assert!(cfg.cluster_secret.is_empty());
    let err = Listener::bind(local(), cfg.clone()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = Link::dial("127.0.0.1:9".parse().unwrap(), cfg.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Config(_)), "{err}");
    assert!(matches!(
        Dialer::spawn(vec![local()], cfg),
        Err(LinkError::Config(_))
    ));
    assert!(matches!(
        LinkConfig::new(Vec::new()),
        Err(LinkError::Config(_))
    ));
}

/// (1) Same secret: media datagrams and control messages flow both ways,
/// bytes intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_and_control_flow_both_ways() {
    let (listener, mut client, mut server) = pair(config(SECRET)).await;
    assert_eq!(client.remote_addr(), listener.local_addr());
    assert_eq!(listener.stats().accepted, 1);

    // Control: ordered, both ways.
    let speakers = RelayMsg::Speakers {
        channel: "room-1".into(),
        selected: vec![SourceId(7), SourceId(9)],
        active: vec![SourceId(9), SourceId(7), SourceId(3)],
        dominant: Some(SourceId(9)),
    };
    let info = RelayMsg::SourceInfo {
        channel: "room-1".into(),
        source: SourceId(7),
        identity: "alice".into(),
    };
    client.send_control(&subscribe("room-1")).await.unwrap();
    client.send_control(&subscribe("room-2")).await.unwrap();
    assert_eq!(next_msg(&mut server).await, subscribe("room-1"));
    assert_eq!(next_msg(&mut server).await, subscribe("room-2"));
    server.send_control(&speakers).await.unwrap();
    server.send_control(&info).await.unwrap();
    assert_eq!(next_msg(&mut client).await, speakers);
    assert_eq!(next_msg(&mut client).await, info);

    // Media: one at a time (datagrams may reorder), both ways, every byte.
    for n in 0..20 {
        let up = media(n, 80 + n as usize);
        assert!(client.send_media(&up));
        assert_eq!(next_msg(&mut server).await, up);
        let down = media(1000 + n, 1000);
        assert!(server.send_media(&down));
        assert_eq!(next_msg(&mut client).await, down);
    }

    // A datagram larger than the path allows is dropped and counted.
    let max = client.handle().max_datagram_size().expect("datagrams on");
    assert!(max >= 1000, "max datagram size {max}");
    assert!(!client.send_media(&media(99, max + 1)));

    let c = client.stats();
    assert_eq!((c.media_sent, c.media_dropped, c.control_sent), (20, 1, 2));
    assert_eq!((c.received, c.malformed), (22, 0));
    let s = server.stats();
    assert_eq!((s.media_sent, s.media_dropped, s.control_sent), (20, 0, 2));
    assert_eq!((s.received, s.malformed), (22, 0));

    // Closing: the peer sees Closed with the peer's code, then None.
    client.close();
    let event = timeout(WAIT, server.recv_event()).await.unwrap().unwrap();
    assert!(
        matches!(event, LinkEvent::Closed(CloseReason::Peer { code: 0, .. })),
        "{event:?}"
    );
    assert!(server.recv_event().await.is_none());
    assert!(server.send_control(&subscribe("x")).await.is_err());
    assert!(!server.send_media(&media(1, 10)));
}

/// The documented handshake, done by hand, is accepted; malformed datagrams
/// and frames from an authenticated peer are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_proof_is_accepted_and_malformed_input_counted() {
    let mut listener = Listener::bind(local(), config(SECRET)).unwrap();
    let (_ep, conn) = raw_connect(listener.local_addr()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello(&conn, SECRET, b"client", 7))
        .await
        .unwrap();
    let mut theirs = [0u8; 42];
    timeout(WAIT, recv.read_exact(&mut theirs))
        .await
        .unwrap()
        .unwrap();
    // The listener's node id is the default, 0.
    assert_eq!(theirs.to_vec(), hello(&conn, SECRET, b"server", 0));
    let mut server = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    assert_eq!(server.peer_node_id(), 7);

    conn.send_datagram(Bytes::from_static(b"\x09garbage"))
        .unwrap();
    // A frame with a valid length prefix and a body of an unknown version.
    send.write_all(&[0, 0, 0, 2, 0x09, 0x01]).await.unwrap();
    send.write_all(&frame(&subscribe("ok"))).await.unwrap();
    assert_eq!(next_msg(&mut server).await, subscribe("ok"));
    conn.send_datagram(datagram(&media(5, 50))).unwrap();
    assert_eq!(next_msg(&mut server).await, media(5, 50));
    let stats = server.stats();
    assert_eq!(stats.received, 2);
    assert_eq!(stats.malformed, 2);

    // A length prefix over the limit loses the framing: the link closes.
    send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(close_code(&conn).await, u64::from(CLOSE_PROTOCOL));
    let event = timeout(WAIT, server.recv_event()).await.unwrap().unwrap();
    assert!(
        matches!(event, LinkEvent::Closed(CloseReason::Protocol(_))),
        "{event:?}"
    );
}

/// (2) Wrong secret: the dial fails with an auth error, the listener yields
/// nothing and counts it; a datagram a bad peer sends is never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() {
    let mut listener = Listener::bind(local(), config(SECRET)).unwrap();
    let addr = listener.local_addr();

    let err = timeout(WAIT, Link::dial(addr, edge(&config(b"not the secret"))))
        .await
        .expect("dial ends in time")
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(matches!(err, LinkError::AuthRejected), "{err}");
    // The listener counts before it closes, and the dial saw the close.
    assert_eq!(listener.stats().auth_failed, 1);

    // A bad peer that sends a (wrong) proof and then media right away.
    let (_ep, conn) = raw_connect(addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello(&conn, b"not the secret", b"client", 1))
        .await
        .unwrap();
    let _ = conn.send_datagram(datagram(&media(666, 100)));
    let code = close_code(&conn).await;
    // The proof normally wins; the datagram may arrive first (protocol).
    assert!(
        code == u64::from(CLOSE_AUTH_FAILED) || code == u64::from(CLOSE_PROTOCOL),
        "code {code}"
    );
    let stats = listener.stats();
    assert_eq!(stats.auth_failed + stats.handshake_failed, 2, "{stats:?}");
    assert_eq!(stats.accepted, 0);

    // The next accepted link is the honest one, and it carries only its own
    // messages.
    let (good, server) = tokio::join!(Link::dial(addr, edge(&config(SECRET))), listener.accept());
    let good = good.unwrap();
    let mut server = server.unwrap();
    assert!(good.send_media(&media(1, 100)));
    assert_eq!(next_msg(&mut server).await, media(1, 100));
    assert_no_accept(&mut listener, Duration::from_millis(300)).await;
    eprintln!("listener stats after bad peers: {:?}", listener.stats());
}

/// (3) A peer that skips the proof and sends datagrams is closed; one that
/// sends nothing is closed when authentication times out; nothing is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_proof_is_closed() {
    let cfg = LinkConfig {
        idle_timeout: Duration::from_secs(1),
        keep_alive: Duration::from_millis(200),
        ..config(SECRET)
    };
    let mut listener = Listener::bind(local(), cfg).unwrap();
    let addr = listener.local_addr();

    let (_ep, conn) = raw_connect(addr).await;
    for n in 0..5 {
        let _ = conn.send_datagram(datagram(&media(n, 100)));
    }
    assert_eq!(close_code(&conn).await, u64::from(CLOSE_PROTOCOL));
    assert_eq!(listener.stats().handshake_failed, 1);

    // Silent peer: closed after the authentication deadline (idle timeout).
    let started = Instant::now();
    let (_ep2, silent) = raw_connect(addr).await;
    assert_eq!(close_code(&silent).await, u64::from(CLOSE_PROTOCOL));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let stats = listener.stats();
    assert_eq!(
        (stats.handshake_failed, stats.accepted),
        (2, 0),
        "{stats:?}"
    );
    assert_no_accept(&mut listener, Duration::from_millis(300)).await;
}

/// A UDP relay between a dialer and a listener that can be cut (packets
/// silently dropped both ways), like a node that died or a partition.
struct Cuttable {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn start(server: SocketAddr) -> Cuttable {
        let socket = tokio::net::UdpSocket::bind(local()).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if flag.load(Ordering::Relaxed) {
                    continue;
                }
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                let _ = socket.send_to(&buf[..n], to).await;
            }
        });
        Cuttable { addr, cut, task }
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (4) The peer vanishes without closing: both sides see Closed(TimedOut)
/// after the idle timeout (1.5 s), well within 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_is_noticed_by_idle_timeout() {
    let cfg = config(SECRET);
    let mut listener = Listener::bind(local(), cfg.clone()).unwrap();
    let relay = Cuttable::start(listener.local_addr()).await;
    let (client, server) = tokio::join!(Link::dial(relay.addr, edge(&cfg)), listener.accept());
    let (client, mut server) = (client.unwrap(), server.unwrap());
    client.send_control(&subscribe("room-1")).await.unwrap();
    assert_eq!(next_msg(&mut server).await, subscribe("room-1"));

    relay.cut.store(true, Ordering::Relaxed);
    let cut_at = Instant::now();
    let wait_closed = |link: &'static str, mut l: Link| async move {
        loop {
            match timeout(WAIT, l.recv_event()).await.expect("closed in time") {
                Some(LinkEvent::Closed(reason)) => return (link, reason, cut_at.elapsed()),
                Some(LinkEvent::Message(_)) => continue,
                None => panic!("no Closed event"),
            }
        }
    };
    let (a, b) = tokio::join!(wait_closed("client", client), wait_closed("server", server));
    for (side, reason, after) in [a, b] {
        eprintln!("{side}: {reason} after {after:?}");
        assert_eq!(reason, CloseReason::TimedOut, "{side}");
        // The default idle timeout is 1.5 s: not sooner, and not much later.
        assert!(
            after >= Duration::from_millis(1400) && after <= Duration::from_secs(4),
            "{side} noticed after {after:?}"
        );
    }
}

async fn next_dialer_event(dialer: &mut Dialer) -> DialerEvent {
    timeout(WAIT, dialer.next_event())
        .await
        .expect("dialer event in time")
        .expect("dialer running")
}

/// The next `Connected` (skipping messages), with its handle.
async fn connected(dialer: &mut Dialer) -> cascade::link::LinkHandle {
    loop {
        match next_dialer_event(dialer).await {
            DialerEvent::Connected(handle) => return handle,
            DialerEvent::Message(_) => continue,
            other => panic!("expected Connected, got {other:?}"),
        }
    }
}

/// The next `Disconnected` (skipping messages).
async fn disconnected(dialer: &mut Dialer) -> CloseReason {
    loop {
        match next_dialer_event(dialer).await {
            DialerEvent::Disconnected(reason) => return reason,
            DialerEvent::Message(_) => continue,
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
}

/// Binds a listener on `addr`, retrying while the previous socket on that
/// port is still being released.
async fn rebind(addr: SocketAddr, cfg: LinkConfig) -> Listener {
    timeout(WAIT, async {
        loop {
            match Listener::bind(addr, cfg.clone()) {
                Ok(listener) => return listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
    })
    .await
    .expect("port released in time")
}

/// The owner re-subscribes on a new link and the listener side sees it.
async fn resubscribe(handle: &cascade::link::LinkHandle, listener: &mut Listener) -> Link {
    handle.send_control(&subscribe("room-1")).await.unwrap();
    let mut server = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    assert_eq!(next_msg(&mut server).await, subscribe("room-1"));
    server
}

/// (5) Dialer: primary down → standby; standby restarted on its port →
/// Disconnected then Connected again; primary back → stays on the standby
/// until that fails, then the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_fails_over_and_reconnects() {
    let cfg = LinkConfig {
        idle_timeout: Duration::from_secs(1),
        keep_alive: Duration::from_millis(200),
        ..config(SECRET)
    };
    // The primary: a bound socket that never answers (a dead node).
    let blackhole = StdUdpSocket::bind(local()).unwrap();
    let primary = blackhole.local_addr().unwrap();
    let mut standby = Listener::bind(local(), cfg.clone()).unwrap();
    let standby_addr = standby.local_addr();

    let started = Instant::now();
    let mut dialer = Dialer::spawn(vec![primary, standby_addr], edge(&cfg)).unwrap();
    let handle = connected(&mut dialer).await;
    assert_eq!(handle.remote_addr(), standby_addr);
    eprintln!("primary down: on standby after {:?}", started.elapsed());
    let server = resubscribe(&handle, &mut standby).await;

    // Kill the standby (its process dies: links closed, port released), then
    // restart it on the same port.
    standby.close();
    drop(standby);
    drop(server);
    let reason = disconnected(&mut dialer).await;
    eprintln!("standby killed: Disconnected({reason})");
    assert!(handle.send_control(&subscribe("x")).await.is_err());
    let killed = Instant::now();
    let mut standby = rebind(standby_addr, cfg.clone()).await;
    let handle = connected(&mut dialer).await;
    assert_eq!(handle.remote_addr(), standby_addr);
    eprintln!("standby restarted: Connected after {:?}", killed.elapsed());
    let server = resubscribe(&handle, &mut standby).await;

    // The primary comes back: the dialer stays on the healthy standby.
    drop(blackhole);
    let mut primary_listener = rebind(primary, cfg.clone()).await;
    tokio::select! {
        event = dialer.next_event() => panic!("unexpected dialer event {event:?}"),
        link = primary_listener.accept() => panic!("unexpected primary link {link:?}"),
        () = tokio::time::sleep(Duration::from_millis(1500)) => {}
    }
    assert!(handle.close_reason().is_none());

    // The standby fails: the dialer moves to the primary.
    standby.close();
    drop(server);
    disconnected(&mut dialer).await;
    let handle = connected(&mut dialer).await;
    assert_eq!(handle.remote_addr(), primary);
    let _server = resubscribe(&handle, &mut primary_listener).await;

    // Dropping the dialer closes its link.
    drop(dialer);
    let closed = timeout(WAIT, async {
        loop {
            if handle.close_reason().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "link still open after the dialer was dropped"
    );
}

/// (6) 1000 datagrams of ~120 bytes in one burst against the 32 KiB send
/// buffer: nothing panics or blocks; drops and deliveries are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_burst_with_small_send_buffer() {
    let (_listener, client, mut server) = pair(config(SECRET)).await;
    let msg = media(0, 0);
    let overhead = datagram(&msg).len();
    let payload = 120 - overhead;

    let started = Instant::now();
    let mut accepted = 0u64;
    for n in 0..1000 {
        if client.send_media(&media(n, payload)) {
            accepted += 1;
        }
    }
    let send_time = started.elapsed();
    assert_eq!(datagram(&media(0, payload)).len(), 120);

    // Count what arrives until the link has been quiet for 500 ms.
    let mut delivered = 0u64;
    let mut last_seq = None;
    let mut in_order = true;
    while let Ok(Some(msg)) = timeout(Duration::from_millis(500), server.recv()).await {
        let RelayMsg::Media {
            seq, payload: p, ..
        } = msg
        else {
            panic!("unexpected {msg:?}");
        };
        assert_eq!(
            p,
            match media(seq, payload) {
                RelayMsg::Media { payload, .. } => payload,
                _ => unreachable!(),
            }
        );
        if last_seq.is_some_and(|l| seq <= l) {
            in_order = false;
        }
        last_seq = Some(seq);
        delivered += 1;
    }
    let stats = client.stats();
    eprintln!(
        "burst of 1000 × 120 B: sent in {send_time:?}; handed to QUIC {accepted}, \
         counted dropped {}, delivered {delivered} (last seq {last_seq:?}, in order: {in_order}); \
         server stats {:?}",
        stats.media_dropped,
        server.stats()
    );
    assert_eq!(stats.media_sent, accepted);
    assert!(delivered > 0 && delivered <= 1000);
    assert!(stats.media_dropped <= 1000);
}

/// (5) A flood of connection attempts that never answer (as from forged
/// source addresses): each gets a stateless Retry, none holds one of the 64
/// handshake slots, and a real edge connects right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_initials_get_a_retry_and_hold_no_handshake_slot() {
    let mut listener = Listener::bind(local(), config(SECRET)).unwrap();
    let addr = listener.local_addr();
    let flood = tokio::net::UdpSocket::bind(local()).await.unwrap();
    const ATTEMPTS: usize = 200;
    // In bursts small enough for the sockets' receive buffers (1200-byte
    // Initials): a datagram the kernel drops under a loaded CI machine is
    // no answer, and the test is about the listener, not the buffers.
    const BURST: usize = 20;
    let mut buf = vec![0u8; 2048];
    let mut retries = 0;
    for _ in 0..ATTEMPTS / BURST {
        for _ in 0..BURST {
            flood.send_to(&initial(addr), addr).await.unwrap();
        }
        for _ in 0..BURST {
            let (n, _) = timeout(WAIT, flood.recv_from(&mut buf))
                .await
                .expect("an answer to every attempt")
                .unwrap();
            assert!(
                is_retry(&buf[..n]),
                "answered with something else than a Retry"
            );
            retries += 1;
        }
    }
    assert_eq!(retries, ATTEMPTS);
    let stats = listener.stats();
    assert_eq!(
        (stats.retried, stats.handshake_failed),
        (ATTEMPTS as u64, 0)
    );

    let (client, server) = tokio::join!(
        timeout(WAIT, Link::dial(addr, edge(&config(SECRET)))),
        timeout(WAIT, listener.accept())
    );
    client.expect("dial in time").expect("a real edge connects");
    server.expect("accept in time").expect("a link");
    let stats = listener.stats();
    // The edge's own first attempt was retried too, and it answered.
    assert_eq!((stats.retried, stats.accepted), (ATTEMPTS as u64 + 1, 1));
}

/// (6) Node ids: a dialer with the listener's own id, or with the id of a
/// link the listener holds open, is refused after authentication with
/// [`CLOSE_NODE_ID_IN_USE`] and the reason; once that link closed, the id
/// links again. Each side learns the other's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ids_in_use_are_refused_with_a_reason() {
    let cfg = config(SECRET);
    let mut listener = Listener::bind(local(), cfg.clone()).unwrap();
    let addr = listener.local_addr();
    let node = |n| LinkConfig {
        node_id: n,
        ..cfg.clone()
    };

    let err = timeout(WAIT, Link::dial(addr, node(0)))
        .await
        .expect("refused in time")
        .unwrap_err();
    assert!(
        matches!(&err, LinkError::NodeIdInUse(r) if r.contains("node id 0") && r.contains("own")),
        "{err}"
    );
    assert_eq!(listener.stats().node_id_refused, 1);

    let (first, server) = tokio::join!(Link::dial(addr, node(5)), listener.accept());
    let first = first.expect("node 5 links");
    let mut server = server.expect("a link");
    assert_eq!((first.peer_node_id(), server.peer_node_id()), (0, 5));

    let err = timeout(WAIT, Link::dial(addr, node(5)))
        .await
        .expect("refused in time")
        .unwrap_err();
    assert!(
        matches!(&err, LinkError::NodeIdInUse(r) if r.contains("node id 5 is already linked")),
        "{err}"
    );
    let stats = listener.stats();
    assert_eq!((stats.node_id_refused, stats.accepted), (2, 1));

    // The first link ends; the listener has seen it end; node 5 links again.
    first.close();
    loop {
        match timeout(WAIT, server.recv_event())
            .await
            .expect("closed in time")
        {
            Some(LinkEvent::Closed(_)) | None => break,
            Some(LinkEvent::Message(_)) => {}
        }
    }
    let (again, server) = tokio::join!(Link::dial(addr, node(5)), listener.accept());
    again.expect("node 5 links again");
    server.expect("a link");
    assert_eq!(listener.stats().accepted, 2);
}
