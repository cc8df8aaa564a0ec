//! Prometheus text exposition (format 0.0.4) of the workers' counters.

use std::fmt::Write;
use std::time::Duration;

use crate::process::ProcessStats;
use crate::tls::TlsStats;
use crate::worker::Snapshot;

/// The bucket bounds of a kind of histogram, in seconds.
pub trait Buckets {
    /// Upper bounds, ascending (`+Inf` is implied).
    const BOUNDS: &'static [f64];
}

/// Forwarding latency: tens of microseconds (one listener) to tens of
/// milliseconds (thousands of copies in series).
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardBuckets;

impl Buckets for ForwardBuckets {
    const BOUNDS: &'static [f64] = &[
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.05,
    ];
}

/// Join time: tens of milliseconds on a LAN to seconds through TURN or
/// behind a slow link; 30 s is where ICE gives up.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinBuckets;

impl Buckets for JoinBuckets {
    const BOUNDS: &'static [f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
}

/// A fixed-bucket histogram of durations.
#[derive(Debug, Clone)]
pub struct Histogram<B: Buckets = ForwardBuckets> {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    kind: std::marker::PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            counts: vec![0; B::BOUNDS.len()],
            count: 0,
            sum: 0.0,
            kind: std::marker::PhantomData,
        }
    }
}

impl<B: Buckets> Histogram<B> {
    /// Records one duration.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.count += 1;
        self.sum += s;
        if let Some(i) = B::BOUNDS.iter().position(|b| s <= *b) {
            self.counts[i] += 1;
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the histogram as `name_bucket`, `name_sum`, `name_count`.
    fn render(&self, o: &mut String, name: &str, help: &str) {
        metric(o, name, "histogram", help);
        let mut cum = 0;
        for (b, c) in B::BOUNDS.iter().zip(self.counts.iter()) {
            cum += c;
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(o, "{name}_sum {}", self.sum);
        let _ = writeln!(o, "{name}_count {}", self.count);
    }
}

impl<B: Buckets> std::ops::AddAssign<&Histogram<B>> for Histogram<B> {
    fn add_assign(&mut self, other: &Histogram<B>) {
        for (x, y) in self.counts.iter_mut().zip(other.counts.iter()) {
            *x += y;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the snapshot (of all workers, summed) and the drain state.
pub fn render(s: &Snapshot, draining: bool) -> String {
    let mut o = String::with_capacity(4096);
    let st = &s.stats;

    metric(
        &mut o,
        "sfu_channels",
        "gauge",
        "Channels with at least one member.",
    );
    let _ = writeln!(o, "sfu_channels {}", s.channels);
    metric(&mut o, "sfu_members", "gauge", "Joined members by role.");
    let _ = writeln!(o, "sfu_members{{role=\"speaker\"}} {}", s.speakers);
    let _ = writeln!(o, "sfu_members{{role=\"listener\"}} {}", s.listeners);
    metric(
        &mut o,
        "sfu_draining",
        "gauge",
        "1 while the server drains for shutdown.",
    );
    let _ = writeln!(o, "sfu_draining {}", u8::from(draining));

    metric(&mut o, "sfu_joins_total", "counter", "Joins by outcome.");
    let _ = writeln!(o, "sfu_joins_total{{outcome=\"ok\"}} {}", s.joins_ok);
    let _ = writeln!(
        o,
        "sfu_joins_total{{outcome=\"refused\"}} {}",
        s.joins_refused
    );
    metric(
        &mut o,
        "sfu_peers_connected_total",
        "counter",
        "Peers that completed ICE and DTLS.",
    );
    let _ = writeln!(o, "sfu_peers_connected_total {}", st.peers_connected);
    metric(
        &mut o,
        "sfu_peers_failed_total",
        "counter",
        "Peers that failed, timed out or vanished.",
    );
    let _ = writeln!(o, "sfu_peers_failed_total {}", st.peers_failed);
    metric(
        &mut o,
        "sfu_peers_send_path_total",
        "counter",
        "Connected peers by how their audio is sent: the engine's own SRTP (direct) or str0m's send path (a fallback).",
    );
    let _ = writeln!(
        o,
        "sfu_peers_send_path_total{{path=\"direct\"}} {}",
        st.peers_direct
    );
    let _ = writeln!(
        o,
        "sfu_peers_send_path_total{{path=\"str0m\"}} {}",
        st.peers_str0m_send
    );
    metric(
        &mut o,
        "sfu_sender_reports_total",
        "counter",
        "RTCP sender reports the engine sent on listeners' slots.",
    );
    let _ = writeln!(o, "sfu_sender_reports_total {}", st.sender_reports);

    metric(
        &mut o,
        "sfu_datagrams_total",
        "counter",
        "UDP datagrams by direction.",
    );
    let _ = writeln!(
        o,
        "sfu_datagrams_total{{direction=\"in\"}} {}",
        st.datagrams_in
    );
    let _ = writeln!(
        o,
        "sfu_datagrams_total{{direction=\"out\"}} {}",
        st.datagrams_out
    );
    metric(
        &mut o,
        "sfu_bytes_total",
        "counter",
        "UDP payload bytes by direction.",
    );
    let _ = writeln!(o, "sfu_bytes_total{{direction=\"in\"}} {}", st.bytes_in);
    let _ = writeln!(o, "sfu_bytes_total{{direction=\"out\"}} {}", st.bytes_out);
    metric(
        &mut o,
        "sfu_udp_syscalls_total",
        "counter",
        "System calls that moved datagrams (recvmmsg, sendmmsg: a batch each), by direction.",
    );
    let _ = writeln!(
        o,
        "sfu_udp_syscalls_total{{direction=\"in\"}} {}",
        s.recv_calls
    );
    let _ = writeln!(
        o,
        "sfu_udp_syscalls_total{{direction=\"out\"}} {}",
        s.send_calls
    );
    metric(
        &mut o,
        "sfu_rtp_received_total",
        "counter",
        "Audio packets received from members.",
    );
    let _ = writeln!(o, "sfu_rtp_received_total {}", st.rtp_in);
    metric(
        &mut o,
        "sfu_rtp_forwarded_total",
        "counter",
        "Audio packets forwarded (one per packet and listener).",
    );
    let _ = writeln!(o, "sfu_rtp_forwarded_total {}", st.rtp_forwarded);
    metric(
        &mut o,
        "sfu_rtp_not_selected_total",
        "counter",
        "Audio packets of voices not selected as active speakers.",
    );
    let _ = writeln!(o, "sfu_rtp_not_selected_total {}", st.not_selected);

    metric(
        &mut o,
        "sfu_dropped_total",
        "counter",
        "Input dropped, by reason.",
    );
    for (reason, n) in [
        ("unknown_source", st.dropped_unknown_source),
        ("malformed", st.dropped_malformed),
        ("rejected", st.dropped_rejected),
        ("address_limit", st.dropped_address_limit),
        ("not_allowed", st.dropped_not_allowed),
        ("wrong_codec", st.dropped_wrong_codec),
        ("stale", st.dropped_stale),
        ("seal_failed", st.dropped_seal),
        ("send_buffer_full", s.send_drops.buffer_full),
        ("send_failed", s.send_drops.failed),
    ] {
        let _ = writeln!(o, "sfu_dropped_total{{reason=\"{reason}\"}} {n}");
    }
    metric(
        &mut o,
        "sfu_speaker_switches_total",
        "counter",
        "Changes of the selected speakers of any channel.",
    );
    let _ = writeln!(o, "sfu_speaker_switches_total {}", st.speaker_switches);

    s.forward_latency.render(
        &mut o,
        "sfu_forward_latency_seconds",
        "From a datagram's arrival to its last forwarded copy handed to the socket.",
    );
    s.join_time.render(
        &mut o,
        "sfu_join_seconds",
        "From a join request to the member's media connected (ICE and DTLS done).",
    );
    o
}

/// Appends the process's own counters (`process_*`, the names Prometheus
/// client libraries use) and `sfu_build_info`.
pub fn render_process(o: &mut String, p: Option<&ProcessStats>) {
    metric(
        o,
        "sfu_build_info",
        "gauge",
        "Always 1; the version of the running binary as a label.",
    );
    let _ = writeln!(
        o,
        "sfu_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let Some(p) = p else { return };
    let mut one = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
        metric(o, name, kind, help);
        let _ = writeln!(o, "{name} {value}");
    };
    one(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the process, in seconds.",
        &p.cpu_seconds,
    );
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
        &p.resident_bytes,
    );
    one(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        &p.open_fds,
    );
    if let Some(max) = p.max_fds {
        one(
            "process_max_fds",
            "gauge",
            "Soft limit on open file descriptors.",
            &max,
        );
    }
    one(
        "process_threads",
        "gauge",
        "Threads of the process.",
        &p.threads,
    );
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        &p.start_time_seconds,
    );
}

/// Appends the HTTPS listener's counters.
pub fn render_tls(o: &mut String, t: &TlsStats) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        o,
        "sfu_tls_handshakes_total",
        "counter",
        "TLS handshakes on the HTTPS address, by outcome (refused: too many in progress).",
    );
    for (outcome, n) in [
        ("ok", get(&t.handshakes_ok)),
        ("failed", get(&t.handshakes_failed)),
        ("timeout", get(&t.handshakes_timed_out)),
        ("refused", get(&t.handshakes_refused)),
    ] {
        let _ = writeln!(o, "sfu_tls_handshakes_total{{outcome=\"{outcome}\"}} {n}");
    }
    metric(
        o,
        "sfu_tls_reloads_total",
        "counter",
        "Certificate reloads (SIGHUP), by outcome; a failed one keeps the previous certificate.",
    );
    let _ = writeln!(
        o,
        "sfu_tls_reloads_total{{outcome=\"ok\"}} {}",
        get(&t.reloads_ok)
    );
    let _ = writeln!(
        o,
        "sfu_tls_reloads_total{{outcome=\"failed\"}} {}",
        get(&t.reloads_failed)
    );
}

/// Sums snapshots of several workers.
pub fn sum(snapshots: &[Snapshot]) -> Snapshot {
    let mut total = Snapshot::default();
    for s in snapshots {
        total.stats += &s.stats;
        total.channels += s.channels;
        total.speakers += s.speakers;
        total.listeners += s.listeners;
        total.members += s.members;
        total.joins_ok += s.joins_ok;
        total.joins_refused += s.joins_refused;
        total.send_drops.buffer_full += s.send_drops.buffer_full;
        total.send_drops.failed += s.send_drops.failed;
        total.send_calls += s.send_calls;
        total.recv_calls += s.recv_calls;
        total.forward_latency += &s.forward_latency;
        total.join_time += &s.join_time;
    }
    total
}
