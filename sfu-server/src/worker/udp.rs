//! The worker's datagram I/O, batched: the engine's transmits are queued in
//! an [`Outbox`] and leave `BATCH` at a time in one `sendmmsg` call; incoming
//! datagrams are read up to `BATCH` at a time with one `recvmmsg` call
//! ([`Inbox`]). Elsewhere than Linux the same types fall back to one system
//! call per datagram.
//!
//! Real-time audio is never queued behind newer audio: a datagram the socket
//! cannot take now is dropped and counted, by reason ([`SendDrops`]).

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::metrics::{Histogram, SendDrops};

/// Datagrams per `sendmmsg` / `recvmmsg` call.
pub(super) const BATCH: usize = 32;

/// Largest datagram read; a longer one is cut to this (as `recv_from` into a
/// buffer of this size would), and the engine then refuses it.
pub(super) const DATAGRAM_MAX: usize = 2048;

/// The receive buffer asked of the kernel for the media socket. The
/// default (about 200 KiB: a hundred or so datagrams as the kernel counts
/// them) overflows within a millisecond of a flood while the worker is off
/// the CPU, and the kernel then drops members' audio with the garbage; 4 MiB
/// absorbs tens of milliseconds. Linux caps it at `net.core.rmem_max`.
pub(super) const RECV_BUFFER: usize = 4 << 20;

/// Asks the kernel for a receive buffer of `bytes` (at most
/// `net.core.rmem_max`); returns what it granted.
#[cfg(target_os = "linux")]
pub(super) fn set_recv_buffer(socket: &std::net::UdpSocket, bytes: usize) -> io::Result<usize> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    setsockopt(socket, sockopt::RcvBuf, &bytes).map_err(io::Error::from)?;
    getsockopt(socket, sockopt::RcvBuf).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn set_recv_buffer(_socket: &std::net::UdpSocket, _bytes: usize) -> io::Result<usize> {
    Ok(0)
}

/// Transmits waiting for the next `sendmmsg`.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: Vec<(SocketAddr, Vec<u8>)>,
    /// System calls made to send.
    pub(super) calls: u64,
    /// What was dropped.
    pub(super) drops: SendDrops,
    /// RTP datagrams queued so far (the n-th one queued is number n): the
    /// forwarded copies (what else the engine sends is RTCP, STUN, DTLS).
    pub(super) rtp_queued: u64,
    /// When each flush since the last [`Outbox::observe_forwarded`] was done,
    /// and how many RTP datagrams had been handed to the kernel (or
    /// dropped) by then: what a forwarded packet's latency is read from.
    flushes: Vec<(u64, std::time::Instant)>,
}

impl Outbox {
    /// Queues one datagram; sends the batch once it is full.
    pub(super) fn push(&mut self, socket: &UdpSocket, to: SocketAddr, datagram: Vec<u8>) {
        if self.queue.capacity() == 0 {
            self.queue.reserve_exact(BATCH);
        }
        if is_rtp(&datagram) {
            self.rtp_queued += 1;
        }
        self.queue.push((to, datagram));
        if self.queue.len() >= BATCH {
            self.flush(socket);
        }
    }

    /// Sends everything queued (or drops and counts what the socket refuses).
    pub(super) fn flush(&mut self, socket: &UdpSocket) {
        let had = !self.queue.is_empty();
        let mut start = 0;
        while start < self.queue.len() {
            self.calls += 1;
            match send_batch(socket, &self.queue[start..]) {
                // The kernel took a prefix; the rest goes in the next call
                // (which reports the error that stopped this one, if any).
                Ok(n) if n > 0 => start += n,
                Ok(_) => {
                    // Nothing taken and no error: never seen; do not spin.
                    self.drops.failed += (self.queue.len() - start) as u64;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: so it is for the rest too.
                    self.drops.buffer_full += (self.queue.len() - start) as u64;
                    break;
                }
                Err(e) => {
                    // The first datagram of the slice failed for a reason of
                    // its own (its destination): skip it, send the others.
                    tracing::debug!(to = %self.queue[start].0, error = %e, "datagram not sent");
                    self.drops.failed += 1;
                    start += 1;
                }
            }
        }
        // Keeps the capacity: no allocation per batch.
        self.queue.clear();
        if had {
            self.flushes
                .push((self.rtp_queued, std::time::Instant::now()));
        }
    }

    /// Puts each datagram in `forwarded` (which it empties) in the latency
    /// histograms by the flushes since the last call: the one that handed
    /// its last copy to the kernel in `last_copy`, the one of each copy in
    /// `each_copy`.
    pub(super) fn observe_forwarded(
        &mut self,
        forwarded: &mut Vec<Forwarded>,
        last_copy: &mut Histogram,
        each_copy: &mut Histogram,
    ) {
        observe_forwarded(forwarded, &self.flushes, last_copy, each_copy);
        forwarded.clear();
        self.flushes.clear();
    }
}

/// Whether a datagram is RTP (RFC 7983: first byte 128–191; RFC 5761: not
/// an RTCP packet type, 192–223, in the second).
fn is_rtp(d: &[u8]) -> bool {
    matches!(d, [128..=191, b, ..] if !(192..=223).contains(b))
}

/// A forwarded datagram: when it arrived, and the outbox numbers of its
/// copies: the RTP datagrams after `first` up to `last` (the n-th RTP
/// datagram queued is number n).
#[derive(Debug, Clone, Copy)]
pub(super) struct Forwarded {
    pub(super) at: std::time::Instant,
    pub(super) first: u64,
    pub(super) last: u64,
}

/// Each flush in `flushes` (in order: datagrams handed over by then, and
/// when) handed over the datagrams numbered after the previous flush's up
/// to its own; a copy waited from its datagram's arrival to that flush.
fn observe_forwarded(
    forwarded: &[Forwarded],
    flushes: &[(u64, std::time::Instant)],
    last_copy: &mut Histogram,
    each_copy: &mut Histogram,
) {
    // The first flush that may hold copies of the datagram at hand (both
    // lists are in outbox order).
    let mut k = 0;
    for f in forwarded {
        while k < flushes.len() && flushes[k].0 <= f.first {
            k += 1;
        }
        let mut before = if k == 0 { 0 } else { flushes[k - 1].0 };
        for &(handed, when) in &flushes[k..] {
            let copies = handed.min(f.last).saturating_sub(before.max(f.first));
            if copies > 0 {
                let waited = when.saturating_duration_since(f.at);
                each_copy.observe_n(waited, copies);
                if handed >= f.last {
                    last_copy.observe(waited);
                }
            }
            if handed >= f.last {
                break;
            }
            before = handed;
        }
    }
}

/// Sends a prefix of `batch`; returns how many datagrams the kernel took.
/// An error means the first one was not sent.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

    let batch = &batch[..batch.len().min(BATCH)];
    let iovs: [[IoSlice<'_>; 1]; BATCH] =
        std::array::from_fn(|i| [IoSlice::new(batch.get(i).map_or(&[][..], |d| &d.1))]);
    let addrs: [Option<SockaddrStorage>; BATCH] =
        std::array::from_fn(|i| batch.get(i).map(|d| SockaddrStorage::from(d.0)));
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    // Not through tokio's readiness: nothing ever waits for this socket to
    // become writable (a full buffer drops), so the kernel is always asked.
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &iovs[..batch.len()],
        &addrs[..batch.len()],
        [],
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    let Some((to, datagram)) = batch.first() else {
        return Ok(0);
    };
    socket.try_send_to(datagram, *to)?;
    Ok(1)
}

/// Receive buffers for one `recvmmsg` call, reused.
pub(super) struct Inbox {
    buf: Vec<u8>,
    /// `(buffer index, length, source)` of each datagram of the last batch.
    got: Vec<(usize, usize, SocketAddr)>,
    /// System calls that returned datagrams.
    pub(super) calls: u64,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        Inbox {
            buf: vec![0; BATCH * DATAGRAM_MAX],
            got: Vec::with_capacity(BATCH),
            calls: 0,
        }
    }

    /// Reads what the socket has queued, up to `BATCH` datagrams, without
    /// waiting. `Ok(None)`: nothing was queued (tokio's readiness is
    /// cleared, so the next `readable().await` waits for new data).
    pub(super) fn recv(&mut self, socket: &UdpSocket) -> io::Result<Option<usize>> {
        self.got.clear();
        let Inbox { buf, got, .. } = self;
        match socket.try_io(Interest::READABLE, || recv_batch(socket, buf, got)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        self.calls += 1;
        Ok(Some(self.got.len()))
    }

    /// The `i`th datagram of the last batch and its source.
    pub(super) fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let (chunk, len, source) = *self.got.get(i)?;
        let at = chunk * DATAGRAM_MAX;
        Some((source, self.buf.get(at..at + len.min(DATAGRAM_MAX))?))
    }
}

#[cfg(target_os = "linux")]
fn recv_batch(
    socket: &UdpSocket,
    buf: &mut [u8],
    got: &mut Vec<(usize, usize, SocketAddr)>,
) -> io::Result<()> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

    let mut chunks = buf.chunks_exact_mut(DATAGRAM_MAX);
    let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let msgs = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    for (chunk, m) in msgs.enumerate() {
        let source = m.address.and_then(|a| {
            a.as_sockaddr_in()
                .map(|a| SocketAddr::from(*a))
                .or_else(|| a.as_sockaddr_in6().map(|a| SocketAddr::from(*a)))
        });
        // A datagram without an IP source cannot be answered: skip it.
        if let Some(source) = source {
            got.push((chunk, m.bytes, source));
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn recv_batch(
    socket: &UdpSocket,
    buf: &mut [u8],
    got: &mut Vec<(usize, usize, SocketAddr)>,
) -> io::Result<()> {
    let (n, source) = socket.try_recv_from(&mut buf[..DATAGRAM_MAX])?;
    got.push((0, n, source));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        assert!(is_rtp(&[0x80, 111, 0, 1]));
        assert!(is_rtp(&[0x90, 0x80 | 111, 0, 1])); // marker bit, extension
        assert!(!is_rtp(&[0x80, 200, 0, 6])); // sender report
        assert!(!is_rtp(&[0x81, 205, 0, 4])); // transport feedback
        assert!(!is_rtp(&[0x00, 0x01, 0, 0])); // STUN
        assert!(!is_rtp(&[22, 0xfe, 0xfd])); // DTLS
        assert!(!is_rtp(&[0x80]));
    }

    #[test]
    fn each_copy_waits_until_the_flush_that_handed_it_over() {
        let t0 = std::time::Instant::now();
        let ms = |n: f64| t0 + Duration::from_secs_f64(n / 1000.0);
        // A: copies 1..=40; B (0.5 ms later): 41..=50; C: forwarded to no
        // datagram (a relay link only); D: copies 51..=52, handed over by
        // no flush yet (the socket refused nothing, the wake-up ended).
        let forwarded = [
            Forwarded {
                at: t0,
                first: 0,
                last: 40,
            },
            Forwarded {
                at: ms(0.5),
                first: 40,
                last: 50,
            },
            Forwarded {
                at: ms(0.6),
                first: 50,
                last: 50,
            },
            Forwarded {
                at: ms(0.7),
                first: 50,
                last: 52,
            },
        ];
        // A full batch of 32 at 1 ms, the rest of A and all of B at 3 ms.
        let flushes = [(32, ms(1.0)), (50, ms(3.0))];
        let (mut last, mut each) = (Histogram::default(), Histogram::default());
        observe_forwarded(&forwarded, &flushes, &mut last, &mut each);
        assert_eq!(each.count(), 50);
        // 32 copies of A waited 1 ms, 8 waited 3 ms, B's 10 waited 2.5 ms.
        let want = 32.0 * 0.001 + 8.0 * 0.003 + 10.0 * 0.0025;
        assert!((each.sum() - want).abs() < 1e-9, "{}", each.sum());
        // A's last copy left at 3 ms, B's 2.5 ms after B came.
        assert_eq!(last.count(), 2);
        assert!((last.sum() - 0.0055).abs() < 1e-9, "{}", last.sum());
    }

    /// Reads until `want` datagrams came (or a bound passed).
    async fn read_all(socket: &UdpSocket, inbox: &mut Inbox, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < want {
            let ready = tokio::time::timeout_at(deadline, socket.readable()).await;
            if !matches!(ready, Ok(Ok(()))) {
                break;
            }
            while let Ok(Some(n)) = inbox.recv(socket) {
                for i in 0..n {
                    if let Some((_, d)) = inbox.datagram(i) {
                        got.push(d.to_vec());
                    }
                }
            }
        }
        got
    }

    #[tokio::test]
    async fn batches_arrive_whole_and_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let mut outbox = Outbox::default();
        // Two full batches leave on their own, the rest on flush.
        let n = 2 * BATCH + 5;
        for i in 0..n {
            outbox.push(&tx, to, vec![i as u8; 1 + i]);
        }
        assert_eq!(outbox.calls, 2);
        outbox.flush(&tx);
        assert_eq!(outbox.calls, 3);
        assert_eq!(outbox.drops, SendDrops::default());

        let mut inbox = Inbox::new();
        let got = read_all(&rx, &mut inbox, n).await;
        assert_eq!(got.len(), n);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; 1 + i]);
        }
        // Fewer calls than datagrams: they came in batches.
        assert!(inbox.calls < n as u64, "{} calls", inbox.calls);
    }

    #[tokio::test]
    async fn a_refused_destination_is_counted_and_the_rest_still_go() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket: the kernel refuses it.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let mut outbox = Outbox::default();
        outbox.push(&tx, to, b"first".to_vec());
        outbox.push(&tx, v6, b"refused".to_vec());
        outbox.push(&tx, to, b"last".to_vec());
        outbox.flush(&tx);
        assert_eq!(outbox.drops.failed, 1);
        assert_eq!(outbox.drops.buffer_full, 0);

        let mut inbox = Inbox::new();
        let got = read_all(&rx, &mut inbox, 2).await;
        assert_eq!(got, vec![b"first".to_vec(), b"last".to_vec()]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_receive_buffer_grows_past_the_default() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = nix::sys::socket::getsockopt(&rx, nix::sys::socket::sockopt::RcvBuf).unwrap();
        let granted = set_recv_buffer(&rx, RECV_BUFFER).unwrap();
        // Linux doubles what it grants (for its bookkeeping), up to twice
        // net.core.rmem_max; the default is far below 4 MiB everywhere.
        assert!(granted > before, "{before} → {granted}");
    }

    #[tokio::test]
    async fn an_empty_socket_reads_nothing() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut inbox = Inbox::new();
        assert!(matches!(inbox.recv(&rx), Ok(None)));
        assert!(inbox.datagram(0).is_none());
        let mut outbox = Outbox::default();
        outbox.flush(&rx);
        assert_eq!(outbox.calls, 0);
    }
}
