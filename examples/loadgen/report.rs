//! The JSON report of one step: its fields, named and explained in the
//! load generator's top-level documentation, from a [`Measurement`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::Args;
use crate::first_audio::JoinFigures;
use crate::listener_stats::ListenerFigures;
use crate::measure::Measurement;
use crate::quality;
use crate::window::Window;

/// A report: field name to value, printed in name order.
pub(crate) type Report = BTreeMap<&'static str, Value>;

/// The report of a measurement; `rss_base` is the `--pid`s' resident
/// memory before the first listener joined.
pub(crate) fn build(a: &Args, m: &Measurement, rss_base: &[Option<u64>]) -> Report {
    let mut r = Report::new();
    settings(&mut r, a, m);
    delivery(&mut r, m);
    join_times(&mut r, &m.joins);
    jitter_latency_and_mos(&mut r, &m.heard, m.latency_unavailable);
    memory(&mut r, a, m, rss_base);
    cpu(&mut r, a, m);
    machine(&mut r, &m.window);
    r
}

/// Milliseconds of a duration.
fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// What was asked for, and how many joined.
fn settings(r: &mut Report, a: &Args, m: &Measurement) {
    r.insert("urls", json!(a.urls.len()));
    r.insert("speakers", json!(m.speakers));
    r.insert("pattern", json!(a.pattern.name()));
    r.insert("seed", json!(a.seed));
    let mode = if a.full_srtp { "srtp" } else { "raw-header" };
    r.insert("listener_mode", json!(mode));
    r.insert("threads", json!(a.threads));
    r.insert("listeners", json!(m.listeners));
    r.insert("listeners_requested", json!(a.listeners));
}

/// What the speakers sent and the listeners received, and who heard whom.
fn delivery(r: &mut Report, m: &Measurement) {
    let (heard, secs) = (&m.heard, m.window.seconds());
    let sent = m.spoken.packets_sent;
    r.insert("listeners_connected", json!(heard.connected));
    r.insert("listeners_without_audio", json!(m.joins.without_audio));
    r.insert("seconds", json!(secs));
    r.insert("packets_per_second", json!(heard.received as f64 / secs));
    r.insert(
        "speaker_packets_per_second",
        json!(sent as f64 / secs / m.speakers.max(1) as f64),
    );
    r.insert(
        "speaker_frames_suppressed_dtx",
        json!(m.spoken.frames_suppressed),
    );
    r.insert("loss", json!(heard.loss()));
    r.insert("packets_lost", json!(heard.lost));
    // What the listeners should have received: every packet of every
    // speaker, when each listener has a slot per speaker.
    let due = (m.speakers <= m.listener_slots).then_some(m.listeners as f64 * sent as f64);
    r.insert(
        "delivered_of_due",
        json!(due.map(|d| if d > 0.0 {
            heard.received as f64 / d
        } else {
            0.0
        })),
    );
    r.insert("listeners_stalled_at_end", json!(heard.stalled));
    r.insert("listeners_checked", json!(m.hearing.checked));
    r.insert("listeners_hearing_right_speakers", json!(m.hearing.right));
    r.insert("malformed_rtp", json!(heard.malformed_rtp));
}

/// Join to first audio of the step's new listeners.
fn join_times(r: &mut Report, joins: &JoinFigures) {
    let join_ms = |p: f64| ms(quality::percentile(&joins.join_times, p));
    r.insert("join_to_first_audio_ms_p50", json!(join_ms(0.5)));
    r.insert("join_to_first_audio_ms_p95", json!(join_ms(0.95)));
    r.insert("join_to_first_audio_ms_max", json!(join_ms(1.0)));
}

/// Jitter, one-way latency (or why there is none) and the E-model's MOS.
fn jitter_latency_and_mos(r: &mut Report, heard: &ListenerFigures, unavailable: Option<&str>) {
    let jitter_mean = heard.jitter_mean();
    r.insert("jitter_streams", json!(heard.jitters.len()));
    r.insert("jitter_ms_mean", json!(jitter_mean));
    r.insert(
        "jitter_ms_p95",
        json!(quality::percentile(&heard.jitters, 0.95)),
    );
    let latency = &heard.latency;
    let latency_p50 = ms(latency.quantile(0.5));
    r.insert("latency_samples", json!(latency.count()));
    r.insert(
        "latency_packets_without_capture_time",
        json!(heard.without_capture_time),
    );
    r.insert("latency_ms_p50", json!(latency_p50));
    r.insert("latency_ms_p99", json!(ms(latency.quantile(0.99))));
    r.insert("latency_ms_mean", json!(ms(latency.mean())));
    r.insert("latency_unavailable", json!(unavailable));

    let mos_json = |m: quality::Mos| {
        json!({"mos": m.mos, "r": m.r, "delay_ms": m.delay_ms, "loss_percent": m.loss_percent,
               "id": m.id, "ie_eff": m.ie_eff, "ie": quality::IE_OPUS, "bpl": quality::BPL_OPUS})
    };
    let jitter_for_mos = jitter_mean.unwrap_or(0.0);
    let received = heard.received > 0;
    match latency_p50 {
        Some(l) if received => {
            let m = quality::estimate(l, jitter_for_mos, heard.loss());
            r.insert("mos", json!(m.mos));
            r.insert("mos_model", mos_json(m));
        }
        _ => {
            r.insert("mos", Value::Null);
            if received {
                let m = quality::estimate(0.0, jitter_for_mos, heard.loss());
                r.insert("mos_without_network_latency", mos_json(m));
            }
        }
    }
}

/// Resident memory of each `--pid`, and of them together per listener:
/// its growth since before the first listener joined.
fn memory(r: &mut Report, a: &Args, m: &Measurement, rss_base: &[Option<u64>]) {
    if a.pids.is_empty() {
        return;
    }
    let rss = &m.window.rss_kib;
    let by_process: BTreeMap<String, Value> = a
        .pids
        .iter()
        .enumerate()
        .map(|(i, (label, _))| {
            let before = rss_base.get(i).copied().flatten();
            let v = json!({"rss_kib": rss[i], "rss_kib_before_listeners": before});
            (label.clone(), v)
        })
        .collect();
    r.insert("memory_by_process", json!(by_process));
    let sum = |v: &[Option<u64>]| -> Option<u64> { v.iter().copied().sum() };
    if let (Some(r1), Some(r0)) = (sum(rss), sum(rss_base)) {
        r.insert("server_rss_kib", json!(r1));
        if m.listeners > 0 {
            r.insert(
                "server_rss_kib_per_listener",
                json!(r1.saturating_sub(r0) as f64 / m.listeners as f64),
            );
        }
    }
}

/// CPU of each `--pid`, of them together (per listener, per received
/// packet) when every one was read, and of the load generator.
fn cpu(r: &mut Report, a: &Args, m: &Measurement) {
    let (w, secs) = (&m.window, m.window.seconds());
    let mut by_process = BTreeMap::new();
    let mut total = Duration::ZERO;
    let mut all = !a.pids.is_empty();
    let used = w.processes_before.pids.iter().zip(&w.processes_after.pids);
    for ((label, _), (c0, c1)) in a.pids.iter().zip(used) {
        if let (Some(c0), Some(c1)) = (c0, c1) {
            let used = c1.saturating_sub(*c0);
            total += used;
            by_process.insert(label.clone(), json!(used.as_secs_f64() / secs));
        } else {
            all = false;
            eprintln!("loadgen: no CPU time for {label} (process gone?)");
            by_process.insert(label.clone(), Value::Null);
        }
    }
    if !a.pids.is_empty() {
        r.insert("cpu_cores_by_process", json!(by_process));
    }
    if all {
        let cores = total.as_secs_f64() / secs;
        r.insert("server_cpu_cores", json!(cores));
        if m.listeners > 0 {
            let per_listener = cores * 100.0 / m.listeners as f64;
            r.insert("server_cpu_per_listener_percent", json!(per_listener));
            if cores > 0.0 {
                let per_core = m.listeners as f64 / cores;
                r.insert("listeners_per_server_core", json!(per_core));
            }
        }
        if m.heard.received > 0 {
            let packets_per_second = m.heard.received as f64 / secs;
            let us = cores * 1e6 / packets_per_second;
            r.insert("server_cpu_us_per_received_packet", json!(us));
        }
    }
    if let (Some(s0), Some(s1)) = (w.processes_before.own, w.processes_after.own) {
        let own = s1.saturating_sub(s0).as_secs_f64() / secs;
        r.insert("loadgen_cpu_cores", json!(own));
    }
}

/// How busy each CPU of the machine was (every process): on a shared
/// machine a pinned server may be starved rather than saturated.
fn machine(r: &mut Report, w: &Window) {
    let busy: Vec<Value> = w
        .processes_after
        .machine
        .iter()
        .zip(&w.processes_before.machine)
        .map(|((b1, t1), (b0, t0))| {
            let total = t1.saturating_sub(*t0);
            json!(if total > 0 {
                b1.saturating_sub(*b0) as f64 / total as f64
            } else {
                0.0
            })
        })
        .collect();
    r.insert("machine_cpu_busy", json!(busy));
}
