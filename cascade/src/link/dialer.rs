//! Keeping a link to the first reachable of a list of nodes.

use std::net::SocketAddr;
use std::time::Duration;

use media_core::RelayMsg;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::{Link, LinkHandle};
use super::{CloseReason, LinkConfig, LinkError, LinkEvent, Shared};

/// Events buffered between the dialer task and its owner.
const EVENT_QUEUE: usize = 1024;

/// What a [`Dialer`] reports.
#[derive(Debug, Clone)]
pub enum DialerEvent {
    /// A link is up (to [`LinkHandle::remote_addr`]). Every subscription
    /// made on an earlier link is gone: re-send `Subscribe` for each channel
    /// needed.
    Connected(LinkHandle),
    /// A message on the current link.
    Message(RelayMsg),
    /// The current link ended; the dialer is reconnecting.
    Disconnected(CloseReason),
}

/// Keeps one link to the first reachable of a list of nodes (primary first,
/// then standbys), reconnecting with exponential backoff between
/// [`LinkConfig::reconnect_min`] and [`LinkConfig::reconnect_max`].
///
/// Each round tries every address in order; one attempt takes at most
/// [`LinkConfig::connect_timeout`] (an unreachable node never answers). After a
/// failed round it waits (100 ms, 200 ms, ... up to 2 s). After a link ends it
/// starts again from the primary, after `reconnect_min` if the link had been
/// up for at least `reconnect_max`, after the growing backoff otherwise (a
/// link that keeps failing right away does not spin).
///
/// It does not move back from a standby to the primary while the standby
/// link is healthy: a failover costs the owner a re-subscription and a short
/// audio gap, so it happens only when the current link fails.
///
/// The dialer stops, and closes its link, when it is dropped.
#[derive(Debug)]
pub struct Dialer {
    events: mpsc::Receiver<DialerEvent>,
    task: JoinHandle<()>,
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dialer {
    /// Starts dialing `addrs` (in order of preference). Must be called within
    /// a tokio runtime. An empty list or an invalid `config` is
    /// [`LinkError::Config`].
    pub fn spawn(addrs: Vec<SocketAddr>, config: LinkConfig) -> Result<Dialer, LinkError> {
        if addrs.is_empty() {
            return Err(LinkError::Config("no address to dial".into()));
        }
        let shared = Shared::new(config)?;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(run(addrs, shared, tx));
        Ok(Dialer { events, task })
    }

    /// The next event. Never `None` while the dialer runs. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<DialerEvent> {
        self.events.recv().await
    }
}

async fn run(addrs: Vec<SocketAddr>, shared: Shared, events: mpsc::Sender<DialerEvent>) {
    let min = shared.config.reconnect_min;
    let max = shared.config.reconnect_max;
    let mut backoff = min;
    // Where the next round starts: the primary, except right after a node
    // died (timed out), when its successor is tried first: a dead address
    // costs a whole connect timeout, a restarted one resets our link and is
    // worth trying again at once.
    let mut first = 0;
    loop {
        let mut link = None;
        for i in 0..addrs.len() {
            let (idx, addr) = ((first + i) % addrs.len(), addrs[(first + i) % addrs.len()]);
            match Link::dial_shared(addr, &shared).await {
                Ok(l) => {
                    link = Some((idx, l));
                    break;
                }
                // A configuration error that retrying will not fix.
                Err(e @ LinkError::NodeIdInUse(_)) => {
                    tracing::warn!(%addr, error = %e, "cascade dial refused");
                }
                Err(e) => tracing::info!(%addr, error = %e, "cascade dial failed"),
            }
        }
        first = 0;
        let Some((idx, mut link)) = link else {
            wait(&events, backoff).await;
            backoff = (backoff * 2).min(max);
            continue;
        };
        tracing::info!(remote = %link.remote_addr(), "cascade link up");
        let up_since = Instant::now();
        if events
            .send(DialerEvent::Connected(link.handle()))
            .await
            .is_err()
        {
            return;
        }
        let reason = loop {
            let event = tokio::select! {
                () = events.closed() => return,
                event = link.recv_event() => event,
            };
            let event = match event {
                Some(LinkEvent::Message(msg)) => DialerEvent::Message(msg),
                Some(LinkEvent::Closed(reason)) => break reason,
                None => break CloseReason::Local,
            };
            if events.send(event).await.is_err() {
                return;
            }
        };
        tracing::info!(remote = %link.remote_addr(), %reason, "cascade link down");
        drop(link);
        if reason == CloseReason::TimedOut {
            first = (idx + 1) % addrs.len();
        }
        if events
            .send(DialerEvent::Disconnected(reason))
            .await
            .is_err()
        {
            return;
        }
        if up_since.elapsed() >= max {
            backoff = min;
        }
        wait(&events, backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

/// Sleeps `delay`, or until the owner is gone.
async fn wait(events: &mpsc::Sender<DialerEvent>, delay: Duration) {
    tokio::select! {
        () = events.closed() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
