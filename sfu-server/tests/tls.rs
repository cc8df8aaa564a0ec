//! HTTPS and WSS on the HTTP address: requests and the room protocol over
//! TLS, the certificate replaced on reload (in-process and by SIGHUP to the
//! binary) while established connections keep theirs, a broken reload that
//! keeps the old certificate, and the bound on handshakes in progress.

mod binary;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, ServerName};
use sfu_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Everything a test waits for must happen by then.
const LIMIT: Duration = Duration::from_secs(15);

/// A self-signed certificate for `localhost`: PEM files and the DER.
struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn test_cert() -> TestCert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    TestCert {
        cert_pem: c.cert.pem(),
        key_pem: c.signing_key.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces a file the way certificate tools do (write aside, rename), so a
/// reload never reads a half-written file.
fn replace(path: &Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Writes `cert` as `dir/cert.pem` and `dir/key.pem`.
fn install(dir: &Path, cert: &TestCert) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    replace(&c, &cert.cert_pem);
    replace(&k, &cert.key_pem);
    (c, k)
}

/// A TLS client that trusts exactly `roots` and never resumes a session.
fn connector(roots: &[&CertificateDer<'static>]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    // A resumed session is served no certificate (the client remembers the
    // old one): every connection here does a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects over TLS; returns the stream and the certificate it was served.
async fn connect(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
) -> std::io::Result<(TlsStream<TcpStream>, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((stream, served))
}

/// One HTTP/1.1 request on a kept-alive connection; returns the body.
async fn get(stream: &mut TlsStream<TcpStream>, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        if body.len() >= length {
            return body[..length].to_owned();
        }
    }
}

async fn https_server(cert: &Path, key: &Path) -> Server {
    let config = Config {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        ..Config::default()
    };
    Server::start(config).await.expect("server starts")
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_serve_the_room_protocol() {
    let dir = temp_dir("serve");
    let a = test_cert();
    let (cert, key) = install(&dir, &a);
    let server = https_server(&cert, &key).await;
    let tls = connector(&[&a.der]);

    let (mut stream, served) = connect(server.http_addr(), &tls).await.unwrap();
    assert_eq!(served, a.der);
    assert_eq!(get(&mut stream, "/healthz").await, "ok\n");

    // The room protocol over WSS: the server's first message is `hello`.
    let (stream, _) = connect(server.http_addr(), &tls).await.unwrap();
    let url = format!("wss://localhost:{}/ws", server.http_addr().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let hello = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let hello: serde_json::Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["type"], "hello", "{hello}");

    // Plain HTTP on the TLS port gets no answer but a closed connection.
    let mut plain = TcpStream::connect(server.http_addr()).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(LIMIT, plain.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&reply).contains("ok"), "{reply:?}");

    let (mut stream, _) = connect(server.http_addr(), &tls).await.unwrap();
    let metrics = get(&mut stream, "/metrics").await;
    assert!(
        metric(&metrics, "sfu_tls_handshakes_total{outcome=\"ok\"}") >= 3,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "sfu_tls_handshakes_total{outcome=\"failed\"}") >= 1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let dir = temp_dir("reload");
    let (a, b) = (test_cert(), test_cert());
    let (cert, key) = install(&dir, &a);
    let server = https_server(&cert, &key).await;
    let https = server.state().https.clone().expect("https");
    let tls = connector(&[&a.der, &b.der]);

    let (mut before, served) = connect(server.http_addr(), &tls).await.unwrap();
    assert_eq!(served, a.der);
    assert_eq!(get(&mut before, "/healthz").await, "ok\n");

    install(&dir, &b);
    https.reload().unwrap();
    let (mut after, served) = connect(server.http_addr(), &tls).await.unwrap();
    assert_eq!(served, b.der, "a new connection gets the new certificate");
    assert_eq!(get(&mut after, "/healthz").await, "ok\n");
    // The connection made before the reload goes on with its session.
    assert_eq!(get(&mut before, "/healthz").await, "ok\n");

    // A broken key: the reload fails, names the key file, and B stays.
    replace(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let err = https.reload().unwrap_err();
    assert_eq!(err.config_key(), "tls_key", "{err}");
    // A key that is not the certificate's: refused as well.
    replace(&key, &test_cert().key_pem);
    let err = https.reload().unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    let (mut again, served) = connect(server.http_addr(), &tls).await.unwrap();
    assert_eq!(served, b.der);
    let metrics = get(&mut again, "/metrics").await;
    assert_eq!(metric(&metrics, "sfu_tls_reloads_total{outcome=\"ok\"}"), 1);
    assert_eq!(
        metric(&metrics, "sfu_tls_reloads_total{outcome=\"failed\"}"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_limit_are_refused_and_counted() {
    let dir = temp_dir("limit");
    let a = test_cert();
    let (cert, key) = install(&dir, &a);
    let server = https_server(&cert, &key).await;
    let addr = server.http_addr();
    let tls = connector(&[&a.der]);

    // Connections that never send a ClientHello hold a handshake each.
    let mut stalled = Vec::new();
    for _ in 0..sfu_server::tls::MAX_HANDSHAKES {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    // The next one is closed at once, before any handshake.
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(LIMIT, refused.read(&mut buf))
        .await
        .expect("the refused connection is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Once the stalled ones go, handshakes succeed again.
    drop(stalled);
    let deadline = Instant::now() + LIMIT;
    let mut stream = loop {
        match connect(addr, &tls).await {
            Ok((stream, _)) => break stream,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no handshake after the limit: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let metrics = get(&mut stream, "/metrics").await;
    assert!(
        metric(&metrics, "sfu_tls_handshakes_total{outcome=\"refused\"}") >= 1,
        "{metrics}"
    );
}

/// The binary re-reads the files on SIGHUP.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    use std::io::BufRead;

    let dir = temp_dir("sighup");
    let (a, b) = (test_cert(), test_cert());
    let (cert, key) = install(&dir, &a);
    let mut child = binary::sfu_server_on_free_ports()
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // "sfu-server: open https://127.0.0.1:PORT/ in a browser ..."
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = lines
        .find_map(|l| {
            let l = l.ok()?;
            let rest = l.split_once("open https://")?.1;
            rest.split_once('/')?.0.parse().ok()
        })
        .expect("the server prints its https address");

    let tls = connector(&[&a.der, &b.der]);
    assert_eq!(connect(addr, &tls).await.unwrap().1, a.der);
    install(&dir, &b);
    binary::signal(&child, nix::sys::signal::Signal::SIGHUP);
    // The reload happens on the server's own time: poll new connections.
    let deadline = Instant::now() + LIMIT;
    loop {
        let served = connect(addr, &tls).await.unwrap().1;
        if served == b.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGHUP did not stop it: it still serves, and stops on SIGTERM.
    assert!(child.try_wait().unwrap().is_none());
    binary::signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The limits of the HTTP address hold over TLS too: a connection that
/// completed its handshake and then sends half a request head is closed
/// after the header-read timeout, and a connection past
/// `max_http_connections` is answered 503 (over TLS) and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_have_the_header_timeout_and_the_connection_limit() {
    let dir = temp_dir("limits");
    let cert = test_cert();
    let (c, k) = install(&dir, &cert);
    let server = Server::start(Config {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(c),
        tls_key: Some(k),
        http_header_timeout_secs: 1,
        max_http_connections: 1,
        ..Config::default()
    })
    .await
    .expect("server starts");
    let tls = connector(&[&cert.der]);
    let (mut slow, _) = connect(server.http_addr(), &tls).await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    // The slow connection holds the one slot: the next is refused.
    let (mut extra, _) = connect(server.http_addr(), &tls).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, extra.read_to_end(&mut answer))
        .await
        .expect("the refused connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 5"), "{answer}");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, slow.read_to_end(&mut rest))
        .await
        .expect("the slow connection is closed");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert!(started.elapsed() < LIMIT);
    // Its slot is free again.
    let (mut next, _) = connect(server.http_addr(), &tls).await.unwrap();
    assert_eq!(get(&mut next, "/healthz").await, "ok\n");
}
