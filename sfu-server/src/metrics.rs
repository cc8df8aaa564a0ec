//! Prometheus text exposition (format 0.0.4) of the workers' counters.
//!
//! The counters a worker reports ([`Snapshot`], with its [`Histogram`] and
//! [`SendDrops`]) are defined here and filled by the worker: the worker
//! depends on this file, never the other way round.

use std::fmt::Write;
use std::ops::AddAssign;
use std::time::Duration;

use media_core::EngineStats;

use crate::process::ProcessStats;
use crate::rooms::HybridCounters;

mod hybrid;
use crate::tls::TlsStats;

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
        self.observe_n(d, 1);
    }

    /// Records the same duration `n` times.
    pub fn observe_n(&mut self, d: Duration, n: u64) {
        let s = d.as_secs_f64();
        self.count += n;
        self.sum += s * n as f64;
        if let Some(i) = B::BOUNDS.iter().position(|b| s <= *b) {
            self.counts[i] += n;
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum, in seconds.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Writes the histogram as `name_bucket`, `name_sum`, `name_count`.
    fn render(&self, o: &mut String, name: &str, help: &str) {
        metric(o, name, "histogram", help);
        self.render_series(o, name, "");
    }

    /// Writes the histogram's series, each with `labels` (`k="v",` each,
    /// or empty) before `le`.
    fn render_series(&self, o: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (b, c) in B::BOUNDS.iter().zip(self.counts.iter()) {
            cum += c;
            let _ = writeln!(o, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(o, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(o, "{name}_count{braces} {}", self.count);
    }
}

impl<B: Buckets> AddAssign<&Histogram<B>> for Histogram<B> {
    /// Adds another worker's observations (same buckets).
    fn add_assign(&mut self, other: &Histogram<B>) {
        for (x, y) in self.counts.iter_mut().zip(other.counts.iter()) {
            *x += y;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// Datagrams the socket did not take, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendDrops {
    /// The socket's send buffer was full (`EAGAIN`/`EWOULDBLOCK`).
    pub buffer_full: u64,
    /// Any other error of the send call (`ENOBUFS`, unreachable network,
    /// refused by a firewall rule, …).
    pub failed: u64,
}

/// What `/metrics` reports of a worker.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Engine counters (joins accepted are its `peers_joined`).
    pub stats: EngineStats,
    /// Channels with members.
    pub channels: usize,
    /// Members by role.
    pub speakers: usize,
    /// Members by role.
    pub listeners: usize,
    /// Joins refused by the engine (bad offer…).
    pub joins_refused: u64,
    /// Datagrams the socket did not take, by reason.
    pub send_drops: SendDrops,
    /// System calls that sent datagrams (`sendmmsg`, up to a batch each).
    pub send_calls: u64,
    /// System calls that returned datagrams (`recvmmsg`).
    pub recv_calls: u64,
    /// Time from a datagram's arrival to the last forwarded copy handed to
    /// the socket, for datagrams that were forwarded.
    pub forward_latency: Histogram,
    /// Time from a datagram's arrival to each of its forwarded copies
    /// handed to the socket: what each listener waits.
    pub forward_copy_latency: Histogram,
    /// Time from a join request to the member's media connected.
    pub join_time: Histogram<JoinBuckets>,
    /// Members still joined (for the drain).
    pub members: usize,
    /// Members joined over a WebSocket: those a drain waits for (WHIP/WHEP
    /// members cannot be told to move).
    pub websocket_members: usize,
    /// Cluster links up (each with its send queue).
    pub links: usize,
    /// Relay media from links dropped: the worker's relay queue was full.
    pub relay_in_dropped: u64,
    /// Links closed: their relay control overflowed the worker's queue.
    pub relay_in_overflows: u64,
    /// Relay media for a link dropped: the link's send queue was full.
    pub relay_out_dropped: u64,
    /// Links closed: relay control for them overflowed their send queue.
    pub relay_out_overflows: u64,
    /// Members dropped because their event queue was full (they do not
    /// read their messages).
    pub members_dropped_slow: u64,
    /// Parts of a spread channel's room that found another worker's queue
    /// full (sent again at the next flush).
    pub parts_not_sent: u64,
    /// CPU time of the worker's thread in seconds (`None`: the worker runs
    /// as a task on a shared thread, or there is no `/proc`).
    pub cpu_seconds: Option<f64>,
    /// Hybrid channels: modes, switches, signals.
    pub hybrid: HybridCounters,
    /// Hybrid switches completed, from the mode change to every member
    /// switched: [to the SFU, to P2P].
    pub switch_time: [Histogram<JoinBuckets>; 2],
}

impl AddAssign<&Snapshot> for Snapshot {
    /// Adds another worker's snapshot (several workers of one node).
    fn add_assign(&mut self, rhs: &Snapshot) {
        // Destructured without `..`: a field added to the snapshot and
        // forgotten here is a compile error, not a metric silently missing.
        let Snapshot {
            stats,
            channels,
            speakers,
            listeners,
            joins_refused,
            send_drops:
                SendDrops {
                    buffer_full,
                    failed,
                },
            send_calls,
            recv_calls,
            forward_latency,
            forward_copy_latency,
            join_time,
            members,
            websocket_members,
            links,
            relay_in_dropped,
            relay_in_overflows,
            relay_out_dropped,
            relay_out_overflows,
            members_dropped_slow,
            parts_not_sent,
            cpu_seconds,
            hybrid,
            switch_time: [up, down],
        } = rhs;
        self.hybrid += hybrid;
        self.switch_time[0] += up;
        self.switch_time[1] += down;
        self.stats += stats;
        self.channels += channels;
        self.speakers += speakers;
        self.listeners += listeners;
        self.joins_refused += joins_refused;
        self.send_drops.buffer_full += buffer_full;
        self.send_drops.failed += failed;
        self.send_calls += send_calls;
        self.recv_calls += recv_calls;
        self.forward_latency += forward_latency;
        self.forward_copy_latency += forward_copy_latency;
        self.join_time += join_time;
        self.members += members;
        self.websocket_members += websocket_members;
        self.links += links;
        self.relay_in_dropped += relay_in_dropped;
        self.relay_in_overflows += relay_in_overflows;
        self.relay_out_dropped += relay_out_dropped;
        self.relay_out_overflows += relay_out_overflows;
        self.members_dropped_slow += members_dropped_slow;
        self.parts_not_sent += parts_not_sent;
        self.cpu_seconds = match (self.cpu_seconds, *cpu_seconds) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
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
    let _ = writeln!(o, "sfu_joins_total{{outcome=\"ok\"}} {}", st.peers_joined);
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
        "sfu_dtls_released_total",
        "counter",
        "Members whose DTLS state was let go once both ends had the SRTP keys (their first media after the handshake).",
    );
    let _ = writeln!(o, "sfu_dtls_released_total {}", st.dtls_released);

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
        "sfu_level_decode_errors_total",
        "counter",
        "Opus payloads without an audio-level extension that failed to decode when their level was measured.",
    );
    let _ = writeln!(
        o,
        "sfu_level_decode_errors_total {}",
        st.level_decode_errors
    );
    metric(
        &mut o,
        "sfu_relay_messages_total",
        "counter",
        "Relay messages (media and control) exchanged with other nodes of the cluster, by direction.",
    );
    let _ = writeln!(
        o,
        "sfu_relay_messages_total{{direction=\"in\"}} {}",
        st.relay_in
    );
    let _ = writeln!(
        o,
        "sfu_relay_messages_total{{direction=\"out\"}} {}",
        st.relay_out
    );

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
        ("relay_rejected", st.dropped_relay),
        ("relay_limit", st.dropped_relay_limit),
        ("send_buffer_full", s.send_drops.buffer_full),
        ("send_failed", s.send_drops.failed),
        ("relay_in_queue_full", s.relay_in_dropped),
        ("relay_out_queue_full", s.relay_out_dropped),
    ] {
        let _ = writeln!(o, "sfu_dropped_total{{reason=\"{reason}\"}} {n}");
    }
    metric(
        &mut o,
        "sfu_cascade_links",
        "gauge",
        "Cluster links up (a core: one per edge; an edge: its core).",
    );
    let _ = writeln!(o, "sfu_cascade_links {}", s.links);
    metric(
        &mut o,
        "sfu_relay_overflows_total",
        "counter",
        "Cluster links closed because their relay control messages overflowed a bounded queue: in, the worker's input queue stayed full (a link flooding it); out, the link's send queue (a link that does not read).",
    );
    let _ = writeln!(
        o,
        "sfu_relay_overflows_total{{direction=\"in\"}} {}",
        s.relay_in_overflows
    );
    let _ = writeln!(
        o,
        "sfu_relay_overflows_total{{direction=\"out\"}} {}",
        s.relay_out_overflows
    );
    metric(
        &mut o,
        "sfu_members_dropped_total",
        "counter",
        "Members the server removed, by reason (too_slow: its event queue was full, the client does not read).",
    );
    let _ = writeln!(
        o,
        "sfu_members_dropped_total{{reason=\"too_slow\"}} {}",
        s.members_dropped_slow
    );
    metric(
        &mut o,
        "sfu_room_parts_resent_total",
        "counter",
        "A worker's part of a channel spread over the workers (members, listed members, raised hands) that found another worker's request queue full; it goes again at the next wake-up.",
    );
    let _ = writeln!(o, "sfu_room_parts_resent_total {}", s.parts_not_sent);
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
    s.forward_copy_latency.render(
        &mut o,
        "sfu_forward_copy_latency_seconds",
        "From a datagram's arrival to each of its forwarded copies handed to the socket (one observation per copy: what each listener waits).",
    );
    s.join_time.render(
        &mut o,
        "sfu_join_seconds",
        "From a join request to the member's media connected (ICE and DTLS done).",
    );
    hybrid::render(&mut o, &s.hybrid);
    hybrid::render_switch_time(&mut o, &s.switch_time);
    o
}

/// Appends each worker's own series, by index: channels and members it
/// carries and the CPU time of its thread (how evenly a node's channels
/// spread, and which worker is close to a full core).
pub fn render_workers(o: &mut String, workers: &[Snapshot]) {
    metric(
        o,
        "sfu_worker_channels",
        "gauge",
        "Channels with members on the media worker.",
    );
    for (i, s) in workers.iter().enumerate() {
        let _ = writeln!(o, "sfu_worker_channels{{worker=\"{i}\"}} {}", s.channels);
    }
    metric(
        o,
        "sfu_worker_members",
        "gauge",
        "Members on the media worker.",
    );
    for (i, s) in workers.iter().enumerate() {
        let _ = writeln!(o, "sfu_worker_members{{worker=\"{i}\"}} {}", s.members);
    }
    if workers.iter().any(|s| s.cpu_seconds.is_some()) {
        metric(
            o,
            "sfu_worker_cpu_seconds_total",
            "counter",
            "CPU time of the media worker's thread (a worker near 1 core/s is saturated, whatever the node's other cores do).",
        );
        for (i, s) in workers.iter().enumerate() {
            if let Some(cpu) = s.cpu_seconds {
                let _ = writeln!(o, "sfu_worker_cpu_seconds_total{{worker=\"{i}\"}} {cpu}");
            }
        }
    }
}

/// Appends the node's standing in its fleet (with `redis_url`).
pub fn render_fleet(
    o: &mut String,
    degraded: bool,
    failures: u64,
    placer: Option<&crate::fleet::Placer>,
) {
    metric(
        o,
        "sfu_fleet_degraded",
        "gauge",
        "1 while the fleet's Redis cannot be reached (the node serves what it has).",
    );
    let _ = writeln!(o, "sfu_fleet_degraded {}", u8::from(degraded));
    metric(
        o,
        "sfu_fleet_registry_failures_total",
        "counter",
        "Refreshes of the node's record in Redis that failed.",
    );
    let _ = writeln!(o, "sfu_fleet_registry_failures_total {failures}");
    let Some(placer) = placer else {
        return;
    };
    let stats = placer.stats();
    let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for (name, kind, help, value) in [
        (
            "sfu_fleet_core_channels",
            "gauge",
            "Channels whose lease this node holds (it is their core).",
            placer.held_count() as u64,
        ),
        (
            "sfu_fleet_edge_channels",
            "gauge",
            "Channels this node serves as an edge of another node (at the last lease check).",
            read(&stats.edge_channels),
        ),
        (
            "sfu_fleet_takeovers_total",
            "counter",
            "Channels this node became the core of after their core's lease ran out.",
            read(&stats.takeovers),
        ),
        (
            "sfu_fleet_rehomes_total",
            "counter",
            "Channels this node, as their edge, moved to a new core.",
            read(&stats.rehomes),
        ),
    ] {
        metric(o, name, kind, help);
        let _ = writeln!(o, "{name} {value}");
    }
}

/// Appends whether each media worker runs (`workers_up`, by index).
pub fn render_health(o: &mut String, workers_up: impl Iterator<Item = bool>) {
    metric(
        o,
        "sfu_worker_up",
        "gauge",
        "1 while the media worker runs; 0 once it stopped (the node then fails its health checks and exits).",
    );
    for (i, up) in workers_up.enumerate() {
        let _ = writeln!(o, "sfu_worker_up{{worker=\"{i}\"}} {}", u8::from(up));
    }
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

/// Appends `sfu_config_reloads_total{outcome}`: [applied, refused].
pub fn render_config_reloads(o: &mut String, reloads: &[std::sync::atomic::AtomicU64; 2]) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        o,
        "sfu_config_reloads_total",
        "counter",
        "Configuration reloads on SIGHUP (the hybrid keys), by outcome; a failed one keeps the settings in force.",
    );
    let _ = writeln!(
        o,
        "sfu_config_reloads_total{{outcome=\"ok\"}} {}",
        get(&reloads[0])
    );
    let _ = writeln!(
        o,
        "sfu_config_reloads_total{{outcome=\"failed\"}} {}",
        get(&reloads[1])
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

/// Why a request, connection or session was refused or ended by a limit or
/// a rule of the server (`sfu_refusals_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A token that is missing, malformed, badly signed or expired.
    Unauthorized,
    /// A valid token without the grant or for another channel.
    Forbidden,
    /// A client address over `joins_per_ip_per_minute`.
    RateAddress,
    /// A token over `joins_per_token_per_minute`.
    RateToken,
    /// The join-rate table full of active keys.
    RateTableFull,
    /// A channel at `max_members_per_channel`.
    ChannelFull,
    /// The node at `max_channels`.
    Channels,
    /// A connection over `max_http_connections`.
    HttpConnections,
    /// A WebSocket over `max_ws_connections`.
    WsConnections,
    /// A connection that did not send its request headers in time.
    HeaderTimeout,
    /// A WebSocket session that did not join in time.
    WsJoinTimeout,
    /// A WebSocket message over `ws_max_message_bytes`.
    WsTooLarge,
    /// A page of an origin that may not use the server.
    Origin,
    /// Development mode reached through a proxy.
    Proxied,
    /// A member whose token expired, removed.
    SessionExpired,
    /// A channel name or identity that is empty, too long or has control
    /// characters.
    BadName,
    /// A hand raised in a channel whose queue of hands is full.
    HandsFull,
    /// A member over `ice_restarts_per_minute`.
    RestartRate,
    /// A `resume` with a token that is unknown, used or past its grace.
    Resume,
    /// (fleet) A join for a channel whose core died, before its lease ran
    /// out.
    ChannelMoving,
}

impl Refusal {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Refusal; 20] = [
        Refusal::Unauthorized,
        Refusal::Forbidden,
        Refusal::RateAddress,
        Refusal::RateToken,
        Refusal::RateTableFull,
        Refusal::ChannelFull,
        Refusal::Channels,
        Refusal::HttpConnections,
        Refusal::WsConnections,
        Refusal::HeaderTimeout,
        Refusal::WsJoinTimeout,
        Refusal::WsTooLarge,
        Refusal::Origin,
        Refusal::Proxied,
        Refusal::SessionExpired,
        Refusal::BadName,
        Refusal::HandsFull,
        Refusal::RestartRate,
        Refusal::Resume,
        Refusal::ChannelMoving,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::RateAddress => "rate_address",
            Refusal::RateToken => "rate_token",
            Refusal::RateTableFull => "rate_table_full",
            Refusal::ChannelFull => "channel_full",
            Refusal::Channels => "max_channels",
            Refusal::HttpConnections => "http_connections",
            Refusal::WsConnections => "ws_connections",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::WsJoinTimeout => "ws_join_timeout",
            Refusal::WsTooLarge => "ws_too_large",
            Refusal::Origin => "origin",
            Refusal::Proxied => "proxied",
            Refusal::SessionExpired => "session_expired",
            Refusal::BadName => "bad_name",
            Refusal::HandsFull => "hands_full",
            Refusal::RestartRate => "ice_restart_rate",
            Refusal::Resume => "resume",
            Refusal::ChannelMoving => "channel_moving",
        }
    }
}

/// Refusals counted by reason, shared by the listeners and the handlers.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [std::sync::atomic::AtomicU64; Refusal::ALL.len()],
}

impl Refusals {
    /// Counts one refusal.
    pub fn count(&self, r: Refusal) {
        self.counts[r as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refusals of `r` so far.
    pub fn get(&self, r: Refusal) -> u64 {
        self.counts[r as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Appends `sfu_refusals_total`, every reason (zeros included, so that a
/// rate over it has data from the first scrape).
pub fn render_refusals(o: &mut String, r: &Refusals) {
    metric(
        o,
        "sfu_refusals_total",
        "counter",
        "Requests, connections and sessions refused or ended by a limit or a rule, by reason.",
    );
    for reason in Refusal::ALL {
        let _ = writeln!(
            o,
            "sfu_refusals_total{{reason=\"{}\"}} {}",
            reason.label(),
            r.get(reason)
        );
    }
}

/// How resumes went (`sfu_resumes_total`, `sfu_members_away`).
#[derive(Debug, Default)]
pub struct ResumeStats {
    /// Members taken over by a new socket.
    pub resumed: std::sync::atomic::AtomicU64,
    /// Members that left at the end of their grace period.
    pub expired: std::sync::atomic::AtomicU64,
    /// Members that left because they missed too much.
    pub overflowed: std::sync::atomic::AtomicU64,
    /// Members away now.
    pub away: std::sync::atomic::AtomicU64,
}

/// Resumes of members whose WebSocket dropped (`crate::resume`).
pub fn render_resumes(o: &mut String, r: &ResumeStats) {
    use std::sync::atomic::Ordering::Relaxed;
    metric(
        o,
        "sfu_resumes_total",
        "counter",
        "Members whose WebSocket dropped, by outcome: taken over by a new socket, left at the end of the grace period, left having missed too much.",
    );
    for (outcome, n) in [
        ("resumed", &r.resumed),
        ("expired", &r.expired),
        ("overflowed", &r.overflowed),
    ] {
        let _ = writeln!(
            o,
            "sfu_resumes_total{{outcome=\"{outcome}\"}} {}",
            n.load(Relaxed)
        );
    }
    metric(
        o,
        "sfu_members_away",
        "gauge",
        "Members whose WebSocket dropped, waiting for a resume.",
    );
    let _ = writeln!(o, "sfu_members_away {}", r.away.load(Relaxed));
}

/// Sums snapshots of several workers.
pub fn sum(snapshots: &[Snapshot]) -> Snapshot {
    let mut total = Snapshot::default();
    for s in snapshots {
        total += s;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid Prometheus text")
    }

    /// `"name"` or `"name label=value"`: that sample's value in `scrape`.
    fn series(scrape: &prometheus_parse::Scrape, spec: &str) -> f64 {
        let (name, label) = match spec.split_once(' ') {
            Some((name, label)) => (name, label.split_once('=')),
            None => (spec, None),
        };
        let found = scrape
            .samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)));
        match found.map(|x| &x.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            other => panic!("{spec}: {other:?}"),
        }
    }

    /// Every engine counter is rendered, each under its own series: the
    /// counters get distinct values and each value must come out where it
    /// belongs. A counter added to `EngineStats` fails the field count
    /// (from its `Debug` form) until it is rendered and listed here.
    #[test]
    fn every_engine_counter_is_rendered() {
        let mut st = EngineStats::default();
        let fields: [(&mut u64, &str); 28] = [
            (&mut st.datagrams_in, "sfu_datagrams_total direction=in"),
            (&mut st.bytes_in, "sfu_bytes_total direction=in"),
            (&mut st.datagrams_out, "sfu_datagrams_total direction=out"),
            (&mut st.bytes_out, "sfu_bytes_total direction=out"),
            (&mut st.rtp_in, "sfu_rtp_received_total"),
            (&mut st.rtp_forwarded, "sfu_rtp_forwarded_total"),
            (
                &mut st.dropped_unknown_source,
                "sfu_dropped_total reason=unknown_source",
            ),
            (
                &mut st.dropped_malformed,
                "sfu_dropped_total reason=malformed",
            ),
            (
                &mut st.dropped_rejected,
                "sfu_dropped_total reason=rejected",
            ),
            (
                &mut st.dropped_address_limit,
                "sfu_dropped_total reason=address_limit",
            ),
            (
                &mut st.dropped_not_allowed,
                "sfu_dropped_total reason=not_allowed",
            ),
            (
                &mut st.dropped_wrong_codec,
                "sfu_dropped_total reason=wrong_codec",
            ),
            (&mut st.not_selected, "sfu_rtp_not_selected_total"),
            (&mut st.dropped_stale, "sfu_dropped_total reason=stale"),
            (&mut st.level_decode_errors, "sfu_level_decode_errors_total"),
            (&mut st.relay_in, "sfu_relay_messages_total direction=in"),
            (&mut st.relay_out, "sfu_relay_messages_total direction=out"),
            (
                &mut st.dropped_relay,
                "sfu_dropped_total reason=relay_rejected",
            ),
            (
                &mut st.dropped_relay_limit,
                "sfu_dropped_total reason=relay_limit",
            ),
            (&mut st.speaker_switches, "sfu_speaker_switches_total"),
            (&mut st.peers_joined, "sfu_joins_total outcome=ok"),
            (&mut st.peers_connected, "sfu_peers_connected_total"),
            (&mut st.peers_failed, "sfu_peers_failed_total"),
            (
                &mut st.peers_direct,
                "sfu_peers_send_path_total path=direct",
            ),
            (
                &mut st.peers_str0m_send,
                "sfu_peers_send_path_total path=str0m",
            ),
            (&mut st.sender_reports, "sfu_sender_reports_total"),
            (&mut st.dtls_released, "sfu_dtls_released_total"),
            (&mut st.dropped_seal, "sfu_dropped_total reason=seal_failed"),
        ];
        let mut expected = Vec::new();
        for (i, (field, spec)) in fields.into_iter().enumerate() {
            *field = 1000 + i as u64;
            expected.push((spec, 1000 + i as u64));
        }
        let debug = format!("{st:?}");
        assert_eq!(
            debug.matches(": ").count(),
            expected.len(),
            "EngineStats has a counter this test does not know: render it, then list it here: {debug}"
        );
        let snapshot = Snapshot {
            stats: st,
            ..Snapshot::default()
        };
        let scrape = parse(&render(&snapshot, false));
        for (spec, value) in expected {
            assert_eq!(series(&scrape, spec), value as f64, "{spec}");
        }
    }

    /// The server's own counters next to the engine's.
    #[test]
    fn server_counters_and_gauges_are_rendered() {
        let mut snapshot = Snapshot {
            channels: 2,
            speakers: 3,
            listeners: 4,
            members: 7,
            joins_refused: 5,
            send_drops: SendDrops {
                buffer_full: 6,
                failed: 8,
            },
            send_calls: 9,
            recv_calls: 10,
            websocket_members: 6,
            links: 11,
            relay_in_dropped: 12,
            relay_in_overflows: 13,
            relay_out_dropped: 14,
            relay_out_overflows: 15,
            members_dropped_slow: 16,
            ..Snapshot::default()
        };
        snapshot.forward_latency.observe(Duration::from_micros(30));
        snapshot.forward_latency.observe(Duration::from_millis(3));
        let scrape = parse(&render(&snapshot, true));
        for (spec, value) in [
            ("sfu_channels", 2.0),
            ("sfu_members role=speaker", 3.0),
            ("sfu_members role=listener", 4.0),
            ("sfu_draining", 1.0),
            ("sfu_joins_total outcome=refused", 5.0),
            ("sfu_dropped_total reason=send_buffer_full", 6.0),
            ("sfu_dropped_total reason=send_failed", 8.0),
            ("sfu_udp_syscalls_total direction=out", 9.0),
            ("sfu_udp_syscalls_total direction=in", 10.0),
            ("sfu_cascade_links", 11.0),
            ("sfu_dropped_total reason=relay_in_queue_full", 12.0),
            ("sfu_relay_overflows_total direction=in", 13.0),
            ("sfu_dropped_total reason=relay_out_queue_full", 14.0),
            ("sfu_relay_overflows_total direction=out", 15.0),
            ("sfu_members_dropped_total reason=too_slow", 16.0),
        ] {
            assert_eq!(series(&scrape, spec), value, "{spec}");
        }
        let hist = scrape
            .samples
            .iter()
            .find(|x| x.metric == "sfu_forward_latency_seconds")
            .expect("histogram");
        let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
            panic!("not a histogram: {:?}", hist.value);
        };
        let le = |bound: f64| buckets.iter().find(|b| b.less_than == bound).unwrap().count;
        let mut health = String::new();
        render_health(&mut health, [true, false].into_iter());
        let workers = [
            Snapshot {
                channels: 2,
                members: 5,
                cpu_seconds: Some(1.5),
                ..Snapshot::default()
            },
            Snapshot {
                channels: 1,
                members: 3,
                cpu_seconds: None,
                ..Snapshot::default()
            },
        ];
        render_workers(&mut health, &workers);
        render_fleet(&mut health, true, 3, None);
        assert_eq!(sum(&workers).cpu_seconds, Some(1.5));
        let health = parse(&health);
        assert_eq!(series(&health, "sfu_worker_up worker=0"), 1.0);
        assert_eq!(series(&health, "sfu_worker_up worker=1"), 0.0);
        assert_eq!(series(&health, "sfu_worker_members worker=0"), 5.0);
        assert_eq!(series(&health, "sfu_fleet_degraded"), 1.0);
        assert_eq!(series(&health, "sfu_fleet_registry_failures_total"), 3.0);
        assert_eq!(series(&health, "sfu_worker_channels worker=1"), 1.0);
        assert_eq!(
            series(&health, "sfu_worker_cpu_seconds_total worker=0"),
            1.5
        );
        assert_eq!(le(0.000_025), 0.0);
        assert_eq!(le(0.000_05), 1.0);
        assert_eq!(le(0.005), 2.0);
        assert_eq!(le(f64::INFINITY), 2.0);
    }

    /// Every reason has its own series, in the order of `Refusal::ALL`,
    /// which lists each variant once.
    #[test]
    fn every_refusal_is_rendered() {
        let r = Refusals::default();
        for (i, reason) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?} is out of order in ALL");
            for _ in 0..=i {
                r.count(reason);
            }
        }
        let mut text = String::new();
        render_refusals(&mut text, &r);
        let scrape = parse(&text);
        for (i, reason) in Refusal::ALL.into_iter().enumerate() {
            let spec = format!("sfu_refusals_total reason={}", reason.label());
            assert_eq!(series(&scrape, &spec), (i + 1) as f64, "{spec}");
        }
    }

    /// Two workers' snapshots add field by field.
    #[test]
    fn snapshots_of_workers_sum() {
        let mut one = Snapshot {
            channels: 1,
            speakers: 2,
            listeners: 3,
            members: 5,
            joins_refused: 1,
            send_drops: SendDrops {
                buffer_full: 2,
                failed: 3,
            },
            send_calls: 4,
            recv_calls: 5,
            websocket_members: 1,
            links: 2,
            relay_in_dropped: 3,
            relay_in_overflows: 4,
            relay_out_dropped: 5,
            relay_out_overflows: 6,
            members_dropped_slow: 7,
            ..Snapshot::default()
        };
        one.stats.relay_in = 7;
        one.forward_latency.observe(Duration::from_micros(20));
        let total = sum(&[one.clone(), one]);
        assert_eq!(
            (
                total.channels,
                total.speakers,
                total.listeners,
                total.members
            ),
            (2, 4, 6, 10)
        );
        assert_eq!(total.joins_refused, 2);
        assert_eq!(
            total.send_drops,
            SendDrops {
                buffer_full: 4,
                failed: 6
            }
        );
        assert_eq!((total.send_calls, total.recv_calls), (8, 10));
        assert_eq!(
            (
                total.websocket_members,
                total.links,
                total.relay_in_dropped,
                total.relay_in_overflows,
                total.relay_out_dropped,
                total.relay_out_overflows,
                total.members_dropped_slow
            ),
            (2, 4, 6, 8, 10, 12, 14)
        );
        assert_eq!(total.stats.relay_in, 14);
        assert_eq!(total.forward_latency.count(), 2);
    }
}
