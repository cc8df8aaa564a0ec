//! Bounded queues between the worker and the cluster's links, in both
//! directions, each with its overflow policy:
//!
//! - In ([`RelayInput`]): relay messages from every link go to the worker
//!   through two queues. Media that finds its queue full is dropped and
//!   counted (it would be stale by the time the worker got to it). Control
//!   is never dropped nor reordered: the link's reader waits for room (the
//!   link, and only it, is slowed down: QUIC's flow control pushes back on
//!   its sender), and past [`RELAY_CONTROL_WAIT`] the link is closed
//!   ([`RelayOverflow`]); the edge reconnects and subscribes again, which
//!   restores everything that was lost.
//! - Out ([`link_queues`]): each link has its own queues and its own send
//!   task, so a link that stops reading holds up nobody else. The worker
//!   never waits: media for a link whose queue is full is dropped and
//!   counted; control that does not fit makes the worker drop the link's
//!   queues, and its send task then closes the link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use media_core::{LinkId, RelayMsg};
use tokio::sync::{mpsc, oneshot};

/// Relay media messages waiting for the worker at most (from all links):
/// about 20 ms of a core's input at 50,000 messages a second.
pub const RELAY_IN_MEDIA_QUEUE: usize = 1024;

/// Relay control messages waiting for the worker at most (from all links).
pub const RELAY_IN_CONTROL_QUEUE: usize = 4096;

/// How long a link's reader waits for room in the worker's control queue
/// before the link is closed: the worker takes a control message in
/// microseconds, so a full queue that stays full this long is a link
/// flooding it (or a worker that no longer runs).
pub const RELAY_CONTROL_WAIT: Duration = Duration::from_secs(1);

/// Media messages waiting for one link's send task at most.
pub const LINK_MEDIA_QUEUE: usize = 512;

/// Control messages waiting for one link's send task at most. The worker
/// cannot wait, so this absorbs the bursts: an edge subscribing to a few
/// thousand channels at once is answered with a few messages each (names,
/// then the selection). About 1 MiB at most.
pub const LINK_CONTROL_QUEUE: usize = 8192;

/// A relay control message found no room in the worker's queue within
/// [`RELAY_CONTROL_WAIT`]: the link that sent it must be closed (order
/// would be lost otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("relay control messages overflowed the worker's queue")]
pub struct RelayOverflow;

/// Counters of the relay input, written by the links' tasks.
#[derive(Debug, Default)]
pub(super) struct RelayInCounters {
    /// Media dropped: the queue was full.
    pub(super) media_dropped: AtomicU64,
    /// Links closed: their control found no room in time.
    pub(super) overflows: AtomicU64,
}

/// The links' end of the worker's relay input. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct RelayInput {
    media: mpsc::Sender<(LinkId, RelayMsg)>,
    control: mpsc::Sender<(LinkId, RelayMsg)>,
    pub(super) counters: Arc<RelayInCounters>,
}

/// The worker's end of its relay input.
#[derive(Debug)]
pub(super) struct RelayInbox {
    pub(super) media: mpsc::Receiver<(LinkId, RelayMsg)>,
    pub(super) control: mpsc::Receiver<(LinkId, RelayMsg)>,
}

/// The worker's relay input queues.
pub(super) fn relay_input() -> (RelayInput, RelayInbox) {
    let (media_tx, media) = mpsc::channel(RELAY_IN_MEDIA_QUEUE);
    let (control_tx, control) = mpsc::channel(RELAY_IN_CONTROL_QUEUE);
    (
        RelayInput {
            media: media_tx,
            control: control_tx,
            counters: Arc::default(),
        },
        RelayInbox { media, control },
    )
}

impl RelayInput {
    /// Queues a message from `link`: media without waiting, control
    /// waiting at most [`RELAY_CONTROL_WAIT`] for room; see the module
    /// documentation for what happens when a queue is full.
    pub(super) async fn push(&self, link: LinkId, msg: RelayMsg) -> Result<(), RelayOverflow> {
        let counters = &self.counters;
        if matches!(msg, RelayMsg::Media { .. }) {
            if self.media.try_send((link, msg)).is_err() {
                // Full, or the worker is gone (the node is failing anyway).
                counters.media_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        let sent = self.control.send_timeout((link, msg), RELAY_CONTROL_WAIT);
        sent.await.map_err(|_| {
            counters.overflows.fetch_add(1, Ordering::Relaxed);
            RelayOverflow
        })
    }
}

/// The worker's end of one link's outbound queues. Dropping it ends the
/// link's send task, which closes the link.
#[derive(Debug)]
pub struct LinkSender(Target);

#[derive(Debug)]
enum Target {
    /// A link's queues, read by its send task.
    Queues {
        media: mpsc::Sender<RelayMsg>,
        control: mpsc::Sender<RelayMsg>,
        // Dropped with this sender: the send task stops even while it
        // waits for a stalled link.
        _alive: oneshot::Sender<()>,
    },
    /// Another worker of the node, straight into its relay input, where
    /// the messages arrive as from link `link` (no task in between).
    Worker { input: RelayInput, link: LinkId },
}

/// The send task's end of one link's outbound queues.
#[derive(Debug)]
pub struct LinkQueue {
    /// The messages to send.
    pub messages: LinkMessages,
    /// Resolves when the worker dropped the link's [`LinkSender`] (also
    /// while the task waits for a stalled link).
    pub dropped: oneshot::Receiver<()>,
}

/// The messages the worker queued for one link.
#[derive(Debug)]
pub struct LinkMessages {
    media: mpsc::Receiver<RelayMsg>,
    control: mpsc::Receiver<RelayMsg>,
}

/// Outbound queues for one link.
pub fn link_queues() -> (LinkSender, LinkQueue) {
    let (media_tx, media) = mpsc::channel(LINK_MEDIA_QUEUE);
    let (control_tx, control) = mpsc::channel(LINK_CONTROL_QUEUE);
    let (alive, dropped) = oneshot::channel();
    (
        LinkSender(Target::Queues {
            media: media_tx,
            control: control_tx,
            _alive: alive,
        }),
        LinkQueue {
            messages: LinkMessages { media, control },
            dropped,
        },
    )
}

/// What became of a message for a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// In the link's queue.
    Yes,
    /// Media, dropped: the link's queue was full.
    MediaDropped,
    /// Control, not queued: the link's queue was full. Drop the link.
    ControlOverflow,
    /// Control for another worker of the node, lost: its relay input was
    /// full (a worker that stalled). The link stays.
    ControlLost,
    /// The link's send task is gone. Drop the link.
    Gone,
}

impl LinkSender {
    /// A link to another worker of the node: what is pushed arrives in
    /// `input` as from link `link` (the link's id on that worker).
    pub(super) fn to_worker(input: RelayInput, link: LinkId) -> LinkSender {
        LinkSender(Target::Worker { input, link })
    }

    /// Queues `msg` for the link without waiting.
    pub(super) fn push(&self, msg: RelayMsg) -> Queued {
        use mpsc::error::TrySendError::{Closed, Full};
        let media = matches!(msg, RelayMsg::Media { .. });
        match &self.0 {
            Target::Queues {
                media: m, control, ..
            } => match (if media { m } else { control }).try_send(msg) {
                Ok(()) => Queued::Yes,
                Err(Full(_)) if media => Queued::MediaDropped,
                Err(Full(_)) => Queued::ControlOverflow,
                Err(Closed(_)) => Queued::Gone,
            },
            Target::Worker { input, link } => {
                let queue = if media { &input.media } else { &input.control };
                match queue.try_send((*link, msg)) {
                    Ok(()) => Queued::Yes,
                    Err(Full(_)) if media => Queued::MediaDropped,
                    Err(Full(_)) => Queued::ControlLost,
                    Err(Closed(_)) => Queued::Gone,
                }
            }
        }
    }
}

impl LinkMessages {
    /// The next message to send, control first; `None` once the worker
    /// dropped the link's sender.
    pub async fn next(&mut self) -> Option<RelayMsg> {
        tokio::select! {
            biased;
            Some(msg) = self.control.recv() => Some(msg),
            Some(msg) = self.media.recv() => Some(msg),
            else => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn media(seq: u64) -> RelayMsg {
        RelayMsg::Media {
            channel: "c".into(),
            source: media_core::SourceId(1),
            seq,
            rtp_ts: 0,
            level: 0,
            vad: Some(true),
            payload: Bytes::from_static(b"opus"),
        }
    }

    fn subscribe(i: usize) -> RelayMsg {
        RelayMsg::Subscribe {
            channel: format!("c{i}").into(),
        }
    }

    /// Nobody takes from the worker's end here (as with a worker that no
    /// longer runs): the refusal comes after the whole wait.
    #[tokio::test]
    async fn relay_input_drops_media_past_its_bound_and_refuses_control_after_waiting() {
        let (input, mut inbox) = relay_input();
        for i in 0..RELAY_IN_MEDIA_QUEUE + 10 {
            assert_eq!(input.push(LinkId(1), media(i as u64)).await, Ok(()));
        }
        for i in 0..RELAY_IN_CONTROL_QUEUE {
            assert_eq!(input.push(LinkId(2), subscribe(i)).await, Ok(()));
        }
        let asked = std::time::Instant::now();
        assert_eq!(
            input.push(LinkId(2), subscribe(0)).await,
            Err(RelayOverflow)
        );
        assert!(
            asked.elapsed() >= RELAY_CONTROL_WAIT,
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(input.counters.media_dropped.load(Ordering::Relaxed), 10);
        assert_eq!(input.counters.overflows.load(Ordering::Relaxed), 1);
        // What was queued comes out in order.
        for i in 0..RELAY_IN_CONTROL_QUEUE {
            let (link, msg) = inbox.control.try_recv().unwrap();
            assert_eq!((link, msg), (LinkId(2), subscribe(i)));
        }
        assert_eq!(inbox.media.try_recv().unwrap(), (LinkId(1), media(0)));
    }

    #[tokio::test]
    async fn a_link_queue_drops_media_loses_the_link_on_control_and_ends_with_its_sender() {
        let (sender, queue) = link_queues();
        let LinkQueue {
            mut messages,
            dropped,
        } = queue;
        for i in 0..LINK_MEDIA_QUEUE {
            assert_eq!(sender.push(media(i as u64)), Queued::Yes);
        }
        assert_eq!(sender.push(media(0)), Queued::MediaDropped);
        for i in 0..LINK_CONTROL_QUEUE {
            assert_eq!(sender.push(subscribe(i)), Queued::Yes);
        }
        assert_eq!(sender.push(subscribe(0)), Queued::ControlOverflow);
        // Control goes first.
        assert_eq!(messages.next().await, Some(subscribe(0)));
        drop(sender);
        assert!(dropped.await.is_err());
        let mut left = 0;
        while messages.next().await.is_some() {
            left += 1;
        }
        assert_eq!(left, LINK_MEDIA_QUEUE + LINK_CONTROL_QUEUE - 1);
    }
}
