//! The harness [`Client`] on a real loopback UDP socket and real time, for
//! end-to-end tests against a running server. Each peer runs on its own
//! thread; it waits on its socket until its next deadline, never longer.
//!
//! Even here media-core reads no clock: the caller hands in one
//! (`Instant::now` in tests and the load generator).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::audio::TONES;
use super::client::{Client, ClientSpec};
use super::net::Datagram;

/// A WebRTC client on a real socket bound to 127.0.0.1.
#[derive(Debug)]
pub struct UdpPeer {
    client: Arc<Mutex<Client>>,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// The socket's address.
    pub addr: SocketAddr,
    /// When the peer was created (for [`Client::tones_heard`] windows).
    pub created: Instant,
    clock: fn() -> Instant,
}

impl UdpPeer {
    /// Binds a socket on 127.0.0.1 and makes an offer. Returns the peer
    /// (not yet running) and the offer SDP.
    pub fn new(
        name: &str,
        spec: &ClientSpec,
        clock: fn() -> Instant,
    ) -> std::io::Result<(UdpPeer, String)> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("DTLS certificate generation failed"))?;
        let now = clock();
        let (client, offer) = Client::new(name, addr, spec, &TONES, &cert, now);
        Ok((
            UdpPeer {
                client: Arc::new(Mutex::new(client)),
                socket: Arc::new(socket),
                stop: Arc::new(AtomicBool::new(false)),
                thread: None,
                addr,
                created: now,
                clock,
            },
            offer,
        ))
    }

    /// Applies the server's answer and starts the peer's thread.
    pub fn start(&mut self, answer: &str) {
        let clock = self.clock;
        self.lock().accept_answer(answer, clock());
        let (client, socket, stop) = (self.client.clone(), self.socket.clone(), self.stop.clone());
        let local = self.addr;
        self.thread = Some(thread::spawn(move || {
            run(client, socket, stop, local, clock)
        }));
    }

    /// The client's state (hold the guard briefly: the peer's thread waits).
    pub fn lock(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts or stops talking.
    pub fn set_talking(&self, talking: bool) {
        self.lock().set_talking(if talking { 0.5 } else { 0.0 });
    }

    /// Waits until `cond` holds for the client, at most until `deadline`.
    /// Returns whether it held.
    pub fn wait_until(&self, deadline: Instant, cond: impl Fn(&Client) -> bool) -> bool {
        loop {
            if cond(&self.lock()) {
                return true;
            }
            if (self.clock)() >= deadline {
                return false;
            }
            // The peer's thread makes progress on its own; look again soon.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the peer's thread (the server sees it vanish).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    client: Arc<Mutex<Client>>,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    local: SocketAddr,
    clock: fn() -> Instant,
) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let wake = {
            let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
            let now = clock();
            if c.next_wakeup() <= now {
                c.handle_timeout(now);
                c.send_due_frames(now);
            }
            for d in c.take_outbox() {
                let _ = socket.send_to(&d.contents, d.destination);
            }
            c.next_wakeup()
        };
        // Wait for a datagram or the next deadline; at most 50 ms so that a
        // stop request is noticed.
        let wait = wake
            .saturating_duration_since(clock())
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        let _ = socket.set_read_timeout(Some(wait));
        if let Ok((n, source)) = socket.recv_from(&mut buf) {
            let d = Datagram {
                source,
                destination: local,
                contents: buf[..n].to_vec(),
            };
            let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
            c.receive(clock(), &d);
        }
    }
}
