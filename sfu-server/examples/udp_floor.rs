//! The kernel's share of forwarding on loopback, without the engine: one
//! thread sends 130-byte datagrams (the size of a forwarded Opus packet) to
//! R sockets, in bursts of one datagram per socket as the worker does for a
//! speaker's packet, at a given total rate. It prints the sending thread's
//! CPU time per datagram for one `sendto` per datagram and for `sendmmsg`
//! with 32 datagrams per call (the worker's batch), against receivers that
//! block in `recv` (one thread each, like the load generator's clients: every
//! datagram wakes one) or one thread that polls all sockets (no wake-ups).
//!
//! ```text
//! cargo run --release -p sfu-server --example udp_floor -- [RECEIVERS] [DATAGRAMS_PER_S] [SECONDS]
//! ```
//!
//! Defaults: 100 receivers, 15,000 datagrams/s, 4 s per case (4 cases). The
//! sender runs on CPU 0 and the receivers on CPU 1 when there are two CPUs,
//! as in `scripts/bench-node.sh`. Linux only.

#[cfg(target_os = "linux")]
fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| {
        args.next()
            .and_then(|a| a.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let receivers = arg(100).min(4096) as usize;
    let rate = arg(15_000);
    let seconds = arg(4).min(60);
    println!("receivers {receivers}, {rate} datagrams/s, {seconds} s per case");
    println!("receivers  send       sender CPU per datagram  datagrams/s  received");
    for blocking in [true, false] {
        for batched in [false, true] {
            match floor::run(receivers, rate, seconds, blocking, batched) {
                Ok(r) => println!(
                    "{:<10} {:<10} {:>10.2} µs            {:>11.0}  {:>6.1} %",
                    if blocking { "blocking" } else { "polling" },
                    if batched { "sendmmsg" } else { "sendto" },
                    r.cpu_per_datagram_us,
                    r.sent_per_second,
                    r.received_percent,
                ),
                Err(e) => {
                    eprintln!("udp_floor: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("udp_floor: Linux only (sendmmsg)");
}

#[cfg(target_os = "linux")]
mod floor {
    use std::io::{self, IoSlice};
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use nix::unistd::Pid;

    const BATCH: usize = 32;
    const DATAGRAM: [u8; 130] = [0x80; 130];

    pub(crate) struct Result {
        pub(crate) cpu_per_datagram_us: f64,
        pub(crate) sent_per_second: f64,
        pub(crate) received_percent: f64,
    }

    /// Pins the calling thread to `cpu` when the machine has it.
    fn pin(cpu: usize) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            return;
        }
        let mut set = CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = sched_setaffinity(Pid::from_raw(0), &set);
        }
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_nanos)
    }

    pub(crate) fn run(
        receivers: usize,
        rate: u64,
        seconds: u64,
        blocking: bool,
        batched: bool,
    ) -> io::Result<Result> {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicU64::new(0));
        let mut addrs = Vec::with_capacity(receivers);
        let mut polled = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..receivers {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            addrs.push(socket.local_addr()?);
            if blocking {
                socket.set_read_timeout(Some(Duration::from_millis(100)))?;
                let (stop, got) = (stop.clone(), got.clone());
                threads.push(std::thread::spawn(move || {
                    pin(1);
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        if socket.recv(&mut buf).is_ok() {
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            } else {
                socket.set_nonblocking(true)?;
                polled.push(socket);
            }
        }
        if !blocking {
            let (stop, got) = (stop.clone(), got.clone());
            threads.push(std::thread::spawn(move || {
                pin(1);
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    for s in &polled {
                        while s.recv(&mut buf).is_ok() {
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        pin(0);
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        sender.set_nonblocking(true)?;
        let every = Duration::from_secs_f64(receivers as f64 / rate as f64);
        let (t0, cpu0) = (Instant::now(), thread_cpu());
        let mut next = t0;
        let mut sent = 0u64;
        while t0.elapsed() < Duration::from_secs(seconds) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
            next += every;
            if batched {
                for chunk in addrs.chunks(BATCH) {
                    sent += send_batch(&sender, chunk) as u64;
                }
            } else {
                for a in &addrs {
                    if sender.send_to(&DATAGRAM, a).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        let (wall, cpu) = (t0.elapsed(), thread_cpu().saturating_sub(cpu0));
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let sent_f = sent.max(1) as f64;
        Ok(Result {
            cpu_per_datagram_us: cpu.as_secs_f64() * 1e6 / sent_f,
            sent_per_second: sent as f64 / wall.as_secs_f64(),
            received_percent: got.load(Ordering::Relaxed) as f64 * 100.0 / sent_f,
        })
    }

    fn send_batch(sender: &UdpSocket, to: &[SocketAddr]) -> usize {
        let to = &to[..to.len().min(BATCH)];
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|_| [IoSlice::new(&DATAGRAM)]);
        let addrs: [Option<SockaddrStorage>; BATCH] =
            std::array::from_fn(|i| to.get(i).map(|a| SockaddrStorage::from(*a)));
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(to.len(), None);
        sendmmsg(
            sender.as_raw_fd(),
            &mut headers,
            &iovs[..to.len()],
            &addrs[..to.len()],
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map_or(0, |r| r.count())
    }
}
