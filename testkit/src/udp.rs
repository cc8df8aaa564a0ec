//! The test kit's [`Client`] on a real loopback UDP socket and real time,
//! for end-to-end tests against a running server and for the load
//! generator. Each peer runs on its own thread; it waits until its next
//! deadline, never longer (a sender sleeps to it precisely and then reads
//! its socket; a receiver waits on its socket).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::audio::TONES;
use crate::client::{Client, ClientSpec};

/// A WebRTC client on a real socket bound to 127.0.0.1.
#[derive(Debug)]
pub struct UdpPeer {
    client: Arc<Mutex<Client>>,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    /// Every datagram in or out is dropped (a path that does not work).
    blackhole: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// The socket's address.
    pub addr: SocketAddr,
    /// When the peer was created (for [`Client::tones_heard`] windows).
    pub created: Instant,
}

impl UdpPeer {
    /// Binds a socket on 127.0.0.1 and makes an offer. Returns the peer
    /// (not yet running) and the offer SDP.
    pub fn new(name: &str, spec: &ClientSpec) -> std::io::Result<(UdpPeer, String)> {
        UdpPeer::new_on(Ipv4Addr::LOCALHOST.into(), name, spec)
    }

    /// [`UdpPeer::new`] on a socket bound to `ip` (a load generator
    /// reaching servers in other network namespaces).
    pub fn new_on(ip: IpAddr, name: &str, spec: &ClientSpec) -> std::io::Result<(UdpPeer, String)> {
        UdpPeer::bind(ip, |addr, cert, now| {
            Ok(Client::new(name, addr, spec, &TONES, cert, now))
        })
    }

    /// Binds a socket on 127.0.0.1, answers `offer` (the other end of a
    /// peer-to-peer link, see [`Client::answer`]) and starts the peer's
    /// thread. Returns the running peer and the answer SDP; an
    /// `InvalidData` error when the offer cannot be answered.
    pub fn answer(
        name: &str,
        spec: &ClientSpec,
        offer: &str,
    ) -> std::io::Result<(UdpPeer, String)> {
        let (mut peer, answer) = UdpPeer::bind(Ipv4Addr::LOCALHOST.into(), |addr, cert, now| {
            Client::answer(name, addr, spec, &TONES, cert, offer, now)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        peer.spawn();
        Ok((peer, answer))
    }

    /// A socket on `ip`, a DTLS certificate, and the client `make` builds
    /// on them with its SDP.
    fn bind(
        ip: IpAddr,
        make: impl FnOnce(
            SocketAddr,
            &str0m::config::DtlsCert,
            Instant,
        ) -> std::io::Result<(Client, String)>,
    ) -> std::io::Result<(UdpPeer, String)> {
        let socket = UdpSocket::bind((ip, 0))?;
        let addr = socket.local_addr()?;
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("DTLS certificate generation failed"))?;
        let now = Instant::now();
        let (client, sdp) = make(addr, &cert, now)?;
        Ok((
            UdpPeer {
                client: Arc::new(Mutex::new(client)),
                socket: Arc::new(socket),
                stop: Arc::new(AtomicBool::new(false)),
                blackhole: Arc::new(AtomicBool::new(false)),
                thread: None,
                addr,
                created: now,
            },
            sdp,
        ))
    }

    /// Applies the server's answer and starts the peer's thread.
    ///
    /// # Panics
    /// If the answer does not fit the offer; see [`try_start`](Self::try_start).
    pub fn start(&mut self, answer: &str) {
        if let Err(e) = self.try_start(answer) {
            panic!("server answer: {e}");
        }
    }

    /// Applies the server's answer and starts the peer's thread; an error
    /// (and no thread) when the answer does not fit the offer.
    pub fn try_start(&mut self, answer: &str) -> Result<(), String> {
        self.lock().try_accept_answer(answer, Instant::now())?;
        self.spawn();
        Ok(())
    }

    fn spawn(&mut self) {
        let (client, socket) = (self.client.clone(), self.socket.clone());
        let (stop, blackhole) = (self.stop.clone(), self.blackhole.clone());
        let local = self.addr;
        self.thread = Some(thread::spawn(move || {
            run(client, socket, stop, blackhole, local)
        }));
    }

    /// The peer's network changed: its thread stops, its socket closes
    /// (nothing reaches the old address any more), and it binds a new one
    /// on 127.0.0.1 and restarts ICE from there, as `pc.restartIce()` does
    /// ([`Client::restart_ice`]). Returns the new offer; the answer goes to
    /// [`start`](Self::start) / [`try_start`](Self::try_start), which run
    /// the peer again.
    pub fn move_to_new_socket(&mut self) -> std::io::Result<String> {
        self.stop();
        self.stop.store(false, Ordering::Relaxed);
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let offer = self
            .lock()
            .restart_ice(addr)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.socket = Arc::new(socket);
        self.addr = addr;
        Ok(offer)
    }

    /// Adds a trickled candidate of the other side (see
    /// [`Client::add_remote_candidate`]).
    pub fn add_remote_candidate(&self, candidate: &str) -> Result<(), String> {
        self.lock().add_remote_candidate(candidate, Instant::now())
    }

    /// Drops every datagram the peer sends or receives from now on (`true`)
    /// or no longer (`false`): a path that does not work, as a firewall
    /// between two members makes it.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// The client's state (hold the guard briefly: the peer's thread waits).
    pub fn lock(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client, shared with the peer's thread (hold its lock briefly).
    pub fn client(&self) -> Arc<Mutex<Client>> {
        self.client.clone()
    }

    /// Asks the peer's thread to stop without waiting for it (it notices
    /// within 50 ms); [`stop`](Self::stop) or dropping the peer joins it.
    /// Stopping many peers: signal them all first, then drop them.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
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
            if Instant::now() >= deadline {
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

/// Datagrams a sender's thread reads in a row after it woke.
const BURST: usize = 256;

fn run(
    client: Arc<Mutex<Client>>,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    blackhole: Arc<AtomicBool>,
    local: SocketAddr,
) {
    let mut buf = vec![0u8; 2048];
    // A socket read timeout (SO_RCVTIMEO) counts in kernel ticks: on a
    // 250 Hz kernel a 3 ms timeout returns after 8 ms, which would send a
    // speaker's 20 ms frames up to 8 ms late and show as jitter at every
    // listener. A sender therefore sleeps to its deadline (a high-resolution
    // timer) and then reads what arrived meanwhile without blocking; a
    // receiver waits on its socket, to read each datagram the moment it
    // arrives (its own deadlines are str0m's, and lenient).
    let sender = client.lock().unwrap_or_else(|e| e.into_inner()).sends();
    if sender && socket.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let wake = {
            let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if c.next_wakeup() <= now {
                c.handle_timeout(now);
                c.send_due_frames(now);
            }
            let outbox = c.take_outbox();
            if !blackhole.load(Ordering::Relaxed) {
                for d in outbox {
                    let _ = socket.send_to(&d.contents, d.destination);
                }
            }
            c.next_wakeup()
        };
        // Wait for the next deadline, or a datagram; at most 50 ms so that a
        // stop request is noticed.
        let wait = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        if sender {
            thread::sleep(wait);
            let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 0..BURST {
                match socket.recv_from(&mut buf) {
                    Ok(_) if blackhole.load(Ordering::Relaxed) => {}
                    Ok((n, source)) => c.receive_bytes(Instant::now(), source, local, &buf[..n]),
                    Err(_) => break,
                }
            }
            continue;
        }
        let _ = socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        if let Ok((n, source)) = socket.recv_from(&mut buf) {
            if blackhole.load(Ordering::Relaxed) {
                continue;
            }
            let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
            c.receive_bytes(Instant::now(), source, local, &buf[..n]);
        }
    }
}
