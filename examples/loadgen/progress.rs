//! The progress line on stderr, about once a second: joined, connected,
//! receiving, packets/s and loss so far.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pool::lock;
use testkit::client::Client;

/// What the progress line reads, shared with the joins.
#[derive(Debug)]
pub(crate) struct Progress {
    listeners: Mutex<Vec<Arc<Mutex<Client>>>>,
    requested: usize,
    failed: AtomicUsize,
    done: AtomicBool,
}

impl Progress {
    pub(crate) fn new(requested: usize) -> Progress {
        Progress {
            listeners: Mutex::new(Vec::new()),
            requested,
            failed: AtomicUsize::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// A listener joined.
    pub(crate) fn joined(&self, client: Arc<Mutex<Client>>) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client);
    }

    /// A listener's join failed.
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// No more lines.
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Prints a progress line to stderr about once a second until `finish`.
pub(crate) async fn print_every_second(p: Arc<Progress>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    while !p.done.load(Ordering::Relaxed) {
        tick.tick().await;
        let clients = p
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = Instant::now();
        let (mut connected, mut receiving, mut received, mut lost, mut expected) = (0, 0, 0, 0, 0);
        for c in &clients {
            let c = lock(c);
            connected += usize::from(c.is_connected());
            let mut recent = false;
            for s in c.streams.values() {
                received += s.stats.received;
                lost += s.stats.lost();
                expected += s.stats.expected();
                recent |= s
                    .stats
                    .last_at
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
            }
            receiving += usize::from(recent);
        }
        let pps = received.saturating_sub(last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, received);
        eprintln!(
            "loadgen: {:>6.1} s  joined {}/{} (failed {})  connected {}  receiving {}  {:.0} packets/s  loss so far {:.3}% ({lost} of {expected})",
            (now - start).as_secs_f64(),
            clients.len(),
            p.requested,
            p.failed.load(Ordering::Relaxed),
            connected,
            receiving,
            pps,
            if expected > 0 { lost as f64 * 100.0 / expected as f64 } else { 0.0 },
        );
    }
}
