//! Many listeners on a few threads: each listener is a test kit `Client`
//! (real str0m: ICE with consent keepalives, DTLS) on its own UDP socket
//! (the server tells members apart by 4-tuple), driven by a tokio task on
//! the load generator's runtime (`--threads N` workers, epoll underneath)
//! instead of a thread of its own. A task waits for a datagram or the
//! client's next str0m deadline, whichever comes first; what the client
//! wants sent leaves with a non-blocking send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use media_core::str0m::config::DtlsCert;
use testkit::audio::TONES;
use testkit::client::{Client, ClientSpec};

/// Datagrams a task reads in a row before it looks at its timers again.
const BURST: usize = 64;

/// Receive errors in a row after which a task gives up on its socket.
const MAX_ERRORS_IN_A_ROW: u32 = 1000;

/// Largest datagram read (an Opus packet is far smaller; a larger datagram
/// is truncated by the kernel and then fails to parse).
const MAX_DATAGRAM: usize = 2048;

/// Locks a client, ignoring poisoning (a panicked task leaves the state
/// readable).
pub(crate) fn lock(c: &Mutex<Client>) -> MutexGuard<'_, Client> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listener driven by a task of the pool.
#[derive(Debug)]
pub(crate) struct PooledPeer {
    pub(crate) client: Arc<Mutex<Client>>,
    socket: Option<tokio::net::UdpSocket>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PooledPeer {
    /// Binds a socket on `ip` and makes an offer (call within the
    /// runtime). Returns the peer (not yet running) and the offer SDP.
    pub(crate) fn new(
        ip: std::net::IpAddr,
        name: &str,
        spec: &ClientSpec,
        cert: &DtlsCert,
    ) -> std::io::Result<(PooledPeer, String)> {
        let std_socket = std::net::UdpSocket::bind((ip, 0))?;
        std_socket.set_nonblocking(true)?;
        let addr = std_socket.local_addr()?;
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        let (client, offer) = Client::new(name, addr, spec, &TONES, cert, Instant::now());
        Ok((
            PooledPeer {
                client: Arc::new(Mutex::new(client)),
                socket: Some(socket),
                addr,
                task: None,
            },
            offer,
        ))
    }

    /// Applies the server's answer and starts the peer's task.
    pub(crate) fn start(&mut self, answer: &str) -> Result<(), String> {
        lock(&self.client).try_accept_answer(answer, Instant::now())?;
        let socket = self.socket.take().ok_or("already started")?;
        self.task = Some(tokio::spawn(drive(self.client.clone(), socket, self.addr)));
        Ok(())
    }
}

impl Drop for PooledPeer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn drive(client: Arc<Mutex<Client>>, socket: tokio::net::UdpSocket, local: SocketAddr) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut armed = Instant::now();
    let sleep = tokio::time::sleep_until(armed.into());
    tokio::pin!(sleep);
    let mut errors_in_a_row = 0u32;
    // Runs until aborted (the load generator is bounded in time), or the
    // socket keeps failing.
    while errors_in_a_row < MAX_ERRORS_IN_A_ROW {
        let (outbox, wake) = {
            let mut c = lock(&client);
            let now = Instant::now();
            if c.next_wakeup() <= now {
                c.handle_timeout(now);
                c.send_due_frames(now);
            }
            (c.take_outbox(), c.next_wakeup())
        };
        // Not `try_send_to`: it refuses (WouldBlock, without trying) until
        // the runtime has seen the new socket writable, which dropped the
        // first ICE checks and delayed every join by a STUN retransmit.
        for d in outbox {
            let _ = socket.send_to(&d.contents, d.destination).await;
        }
        if wake != armed {
            armed = wake;
            sleep.as_mut().reset(wake.into());
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, source)) = r else {
                    errors_in_a_row += 1;
                    continue;
                };
                errors_in_a_row = 0;
                let mut c = lock(&client);
                c.receive_bytes(Instant::now(), source, local, &buf[..n]);
                for _ in 1..BURST {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, source)) => c.receive_bytes(Instant::now(), source, local, &buf[..n]),
                        Err(_) => break,
                    }
                }
            }
            _ = &mut sleep => {}
        }
    }
}
