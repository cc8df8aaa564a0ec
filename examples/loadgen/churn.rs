//! Members that come and go, and members that stop reading: the load a soak
//! keeps on a server besides its stable listeners.
//!
//! - **Churn** (`--churn PER_SEC`, `--churn-stay S`): a listener joins every
//!   1/PER_SEC seconds, on the server its number picks (round-robin over the
//!   URLs, as stable listeners), stays S seconds, then leaves; every other
//!   one leaves without a word (its sockets just close). They count only
//!   packets, on the pool, and are reported apart (`churn`), so the stable
//!   listeners' figures stay theirs. At most [`Args::max_churners`] are
//!   joined or joining at once; a tick that finds them all busy is skipped
//!   and counted.
//! - **Idle WebSockets** (`--idle-ws N`): listeners that join at the first
//!   URL and never read their WebSocket again (a small receive buffer, so
//!   that the server feels it soon). They stay to the end (`idle_ws`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::Args;
use crate::member::{self, Member, Setup};
use crate::pool::lock;
use media_core::str0m::config::DtlsCert;
use testkit::client::ClientSpec;

/// Join failures printed (the rest are only counted).
const PRINTED_FAILURES: u64 = 5;

/// What the churning listeners did.
#[derive(Debug, Default)]
struct Counts {
    joined: AtomicU64,
    failed: AtomicU64,
    /// Ticks with every churner slot busy.
    skipped: AtomicU64,
    left_politely: AtomicU64,
    left_abruptly: AtomicU64,
    /// Churners that heard at least one packet before they left.
    heard_audio: AtomicU64,
}

/// The churn, running until [`Churn::stop`].
#[derive(Debug)]
pub(crate) struct Churn {
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
    per_second: f64,
    stay: u64,
}

/// A count-only listener's client.
fn count_only() -> ClientSpec {
    ClientSpec {
        decode: false,
        log_packets: false,
        raw_media: true,
        ..ClientSpec::listener()
    }
}

impl Churn {
    /// Starts the churn (`--churn` above 0), or `None`.
    pub(crate) fn start(a: &Args, cert: &DtlsCert) -> Option<Churn> {
        if a.churn <= 0.0 {
            return None;
        }
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(run(
            Arc::new(a.clone()),
            Arc::new(cert.clone()),
            counts.clone(),
        ));
        Some(Churn {
            counts,
            task,
            per_second: a.churn,
            stay: a.churn_stay,
        })
    }

    /// What the churn did so far, for the report.
    pub(crate) fn figures(&self) -> Value {
        let c = &self.counts;
        let n = |v: &AtomicU64| v.load(Ordering::Relaxed);
        json!({
            "per_second": self.per_second,
            "stay_seconds": self.stay,
            "joined": n(&c.joined),
            "joins_failed": n(&c.failed),
            "ticks_skipped_all_busy": n(&c.skipped),
            "left_politely": n(&c.left_politely),
            "left_abruptly": n(&c.left_abruptly),
            "heard_audio": n(&c.heard_audio),
        })
    }

    /// Stops joining; the churners still there are dropped (their sockets
    /// close).
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

/// Joins a churner every tick until aborted; each lives in a task of its
/// own, which the abort takes down with it.
async fn run(a: Arc<Args>, cert: Arc<DtlsCert>, counts: Arc<Counts>) {
    let slots = Arc::new(Semaphore::new(a.max_churners().max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.churn));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut churners = JoinSet::new();
    for i in 0u64.. {
        tick.tick().await;
        // Reap the finished ones, so the set stays as small as the churn.
        while churners.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (a, cert, counts) = (a.clone(), cert.clone(), counts.clone());
        churners.spawn(async move {
            let _slot = slot;
            let url = &a.urls[i as usize % a.urls.len()];
            let setup = Setup {
                cert: &cert,
                pooled: a.threads > 0,
                reads_events: true,
            };
            let name = format!("churn-{i}");
            match member::join(&a, url, &name, count_only(), "listener", &setup).await {
                Ok(m) => {
                    counts.joined.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(a.churn_stay)).await;
                    if lock(&m.client).packets_received() > 0 {
                        counts.heard_audio.fetch_add(1, Ordering::Relaxed);
                    }
                    if i % 2 == 0 {
                        member::leave(vec![m]).await;
                        counts.left_politely.fetch_add(1, Ordering::Relaxed);
                    } else {
                        member::vanish(m);
                        counts.left_abruptly.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if counts.failed.fetch_add(1, Ordering::Relaxed) < PRINTED_FAILURES {
                        eprintln!("loadgen: churning listener {i} at {url}: {e}");
                    }
                }
            }
        });
    }
}

/// Joins the `--idle-ws` members at the first URL. Failures are printed and
/// counted in [`idle_report`].
pub(crate) async fn join_idle(a: &Args, cert: &DtlsCert) -> Vec<Member> {
    let mut idle = Vec::new();
    for i in 0..a.idle_ws {
        let setup = Setup {
            cert,
            pooled: a.threads > 0,
            reads_events: false,
        };
        let name = format!("idle-ws-{i}");
        match member::join(a, &a.urls[0], &name, count_only(), "listener", &setup).await {
            Ok(m) => idle.push(m),
            Err(e) => eprintln!("loadgen: idle WebSocket member {i}: {e}"),
        }
    }
    idle
}

/// The idle members' figures, for the report: how many joined, and how many
/// are still connected (ICE + DTLS) and receiving audio: a server that
/// stops sending room events to a member that does not read them may keep
/// or end its session.
pub(crate) fn idle_report(a: &Args, idle: &[Member]) -> Value {
    let connected = idle
        .iter()
        .filter(|m| lock(&m.client).is_connected())
        .count();
    let heard = idle
        .iter()
        .filter(|m| lock(&m.client).packets_received() > 0)
        .count();
    json!({
        "requested": a.idle_ws,
        "joined": idle.len(),
        "connected_at_end": connected,
        "heard_audio": heard,
    })
}
