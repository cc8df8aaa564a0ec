//! The hybrid channels' series (docs/HYBRID.md, "Metrics").

use std::fmt::Write;

use super::{metric, Histogram, JoinBuckets};
use crate::rooms::mode::Mode;
use crate::rooms::HybridCounters;

/// Appends the hybrid series of `h` (all workers, summed).
pub(super) fn render(o: &mut String, h: &HybridCounters) {
    let c = &h.census;
    metric(
        o,
        "sfu_hybrid_channels",
        "gauge",
        "Channels by media mode: p2p (the server relays signaling only), sfu, or switching.",
    );
    for (state, n) in [
        ("p2p", c.p2p_channels),
        ("sfu", c.sfu_channels),
        ("switching_up", c.switching_up),
        ("switching_down", c.switching_down),
    ] {
        let _ = writeln!(o, "sfu_hybrid_channels{{state=\"{state}\"}} {n}");
    }
    metric(
        o,
        "sfu_hybrid_members",
        "gauge",
        "Members by their channel's mode.",
    );
    for (mode, n) in [
        ("p2p", c.p2p_members),
        ("sfu", c.sfu_members),
        ("switching", c.switching_members),
    ] {
        let _ = writeln!(o, "sfu_hybrid_members{{mode=\"{mode}\"}} {n}");
    }
    metric(
        o,
        "sfu_hybrid_switches_total",
        "counter",
        "Mode changes of channels, by direction (up: to the SFU) and reason.",
    );
    for ((to, reason), n) in &h.stats.switches {
        let dir = to.direction();
        let _ = writeln!(
            o,
            "sfu_hybrid_switches_total{{direction=\"{dir}\",reason=\"{reason}\"}} {n}"
        );
    }
    metric(
        o,
        "sfu_hybrid_switch_timeouts_total",
        "counter",
        "Switches completed (up) or turned back (down) at the switch timeout, by direction.",
    );
    for mode in [Mode::Sfu, Mode::P2p] {
        let n = h.stats.completed.get(&(mode, true)).copied().unwrap_or(0);
        let dir = mode.direction();
        let _ = writeln!(
            o,
            "sfu_hybrid_switch_timeouts_total{{direction=\"{dir}\"}} {n}"
        );
    }
    metric(
        o,
        "sfu_hybrid_fallbacks_total",
        "counter",
        "Peer-to-peer channels moved to the SFU because P2P failed, by reason.",
    );
    for (reason, n) in &h.stats.fallbacks {
        let _ = writeln!(o, "sfu_hybrid_fallbacks_total{{reason=\"{reason}\"}} {n}");
    }
    metric(
        o,
        "sfu_hybrid_signals_total",
        "counter",
        "Signaling messages relayed between members of peer-to-peer channels, by kind.",
    );
    for kind in ["offer", "answer", "candidate"] {
        let n = h.signals.get(kind).copied().unwrap_or(0);
        let _ = writeln!(o, "sfu_hybrid_signals_total{{kind=\"{kind}\"}} {n}");
    }
    metric(
        o,
        "sfu_hybrid_signals_dropped_total",
        "counter",
        "Signaling messages refused, by reason.",
    );
    for (reason, n) in &h.signals_dropped {
        let _ = writeln!(
            o,
            "sfu_hybrid_signals_dropped_total{{reason=\"{reason}\"}} {n}"
        );
    }
    metric(
        o,
        "sfu_hybrid_reports_ignored_total",
        "counter",
        "Member reports (switched, p2p_failed) ignored: stale epoch, wrong mode, unknown peer.",
    );
    let _ = writeln!(
        o,
        "sfu_hybrid_reports_ignored_total {}",
        h.stats.reports_ignored
    );
    metric(
        o,
        "sfu_hybrid_sfu_joins_total",
        "counter",
        "SFU sessions members of hybrid channels opened during a switch to the SFU.",
    );
    let _ = writeln!(o, "sfu_hybrid_sfu_joins_total {}", h.sfu_joins);
    metric(
        o,
        "sfu_hybrid_p2p_sessions",
        "gauge",
        "SFU sessions of members of channels steady in P2P: must be 0 (the server carries no P2P media).",
    );
    let _ = writeln!(o, "sfu_hybrid_p2p_sessions {}", h.p2p_sessions);
}

/// Appends `sfu_hybrid_switch_seconds{direction}`: [to the SFU, to P2P].
pub(super) fn render_switch_time(o: &mut String, h: &[Histogram<JoinBuckets>; 2]) {
    metric(
        o,
        "sfu_hybrid_switch_seconds",
        "histogram",
        "From a mode change to every member switched (or the switch timeout), by direction.",
    );
    for (mode, h) in [Mode::Sfu, Mode::P2p].into_iter().zip(h) {
        let labels = format!("direction=\"{}\",", mode.direction());
        h.render_series(o, "sfu_hybrid_switch_seconds", &labels);
    }
}
