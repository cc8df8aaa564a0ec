//! A member's room messages on their way from the worker to its session
//! (a WebSocket, or the task that watches a WHIP/WHEP resource).
//!
//! The queue is bounded ([`MEMBER_EVENT_QUEUE`]): the worker never waits
//! for a member and never lets one grow its memory. A member whose queue is
//! full when a message is due reads too slowly to follow its channel; the
//! worker drops it (it leaves the channel, `sfu_members_dropped_total`) and
//! ends its stream with a last message saying why. The stream also ends,
//! with a `shutdown`, when the worker itself stops. A session holds a sender
//! of its own (to join again after leaving), so the end of the stream is a
//! signal of its own, not the channel closing.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::protocol::ServerMsg;

/// Room messages waiting for one member at most. Bursts are what a member
/// must absorb: a listed channel of 100 filling at once is about 100
/// `member_joined` plus slots and speakers; a member 256 messages behind
/// is not reading.
pub const MEMBER_EVENT_QUEUE: usize = 256;

/// A queued message. Boxed: tokio's queue holds its first block of 32
/// slots for the life of the member, and 32 boxes are 256 bytes where 32
/// `ServerMsg` were 3.5 KiB (room messages are rare; the allocation is
/// nothing beside their JSON).
type Queued = Box<ServerMsg>;

/// How a member's session talks to its client: only a WebSocket can be told
/// to move when the server drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signaling {
    /// The room protocol over a WebSocket.
    WebSocket,
    /// WHIP or WHEP: request and answer, nothing pushed afterwards.
    Http,
}

/// Where the worker puts a member's room messages. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Queued>,
    end: Arc<StreamEnd>,
    signaling: Signaling,
}

/// The session's end: the member's room messages, in order.
#[derive(Debug)]
pub struct MemberEvents {
    rx: mpsc::Receiver<Queued>,
    end: Arc<StreamEnd>,
    ended: bool,
}

/// The last message of a stream the worker ended, and the wake-up of a
/// session waiting for messages.
#[derive(Debug, Default)]
struct StreamEnd {
    last: Mutex<Option<ServerMsg>>,
    ended: Notify,
}

/// A bounded event queue for a member whose session signals over
/// `signaling`.
pub fn member_events(signaling: Signaling) -> (EventSink, MemberEvents) {
    let (tx, rx) = mpsc::channel(MEMBER_EVENT_QUEUE);
    let end = Arc::new(StreamEnd::default());
    (
        EventSink {
            tx,
            end: end.clone(),
            signaling,
        },
        MemberEvents {
            rx,
            end,
            ended: false,
        },
    )
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotQueued {
    /// The member is too slow: drop it.
    Full,
    /// Its session is gone.
    Gone,
}

impl EventSink {
    /// How the member's session talks to its client.
    pub fn signaling(&self) -> Signaling {
        self.signaling
    }

    /// Queues `msg` without waiting.
    pub(super) fn try_send(&self, msg: ServerMsg) -> Result<(), NotQueued> {
        self.tx.try_send(Box::new(msg)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotQueued::Full,
            mpsc::error::TrySendError::Closed(_) => NotQueued::Gone,
        })
    }

    /// Ends the stream: the session gets `last` next (what is still queued
    /// is dropped: it is stale by then), then the end.
    pub(super) fn end(&self, last: ServerMsg) {
        if let Ok(mut l) = self.end.last.lock() {
            *l = Some(last);
        }
        // A permit is stored if the session is not waiting right now.
        self.end.ended.notify_one();
    }
}

impl MemberEvents {
    /// The next message; `None` once the worker ended the stream (after its
    /// last message) or dropped every sender.
    pub async fn recv(&mut self) -> Option<ServerMsg> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(last) = self.end.last.lock().ok().and_then(|mut l| l.take()) {
                self.ended = true;
                return Some(last);
            }
            tokio::select! {
                biased;
                () = self.end.ended.notified() => {}
                msg = self.rx.recv() => return msg.map(|m| *m),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_slot_is_far_smaller_than_a_message() {
        assert!(std::mem::size_of::<ServerMsg>() > 4 * std::mem::size_of::<Queued>());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_an_ended_stream_says_why_first() {
        let (sink, mut events) = member_events(Signaling::WebSocket);
        for i in 0..MEMBER_EVENT_QUEUE {
            let msg = ServerMsg::MemberCount { count: i };
            assert_eq!(sink.try_send(msg), Ok(()), "message {i}");
        }
        let one_more = ServerMsg::MemberCount { count: 0 };
        assert_eq!(sink.try_send(one_more), Err(NotQueued::Full));
        assert!(matches!(
            events.recv().await,
            Some(ServerMsg::MemberCount { count: 0 })
        ));
        sink.end(ServerMsg::error("too_slow", "dropped", None));
        // The reason comes before what was still queued, which is dropped.
        assert!(matches!(
            events.recv().await,
            Some(ServerMsg::Error { code, .. }) if code == "too_slow"
        ));
        assert!(events.recv().await.is_none());
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_when_its_stream_ends() {
        let (sink, mut events) = member_events(Signaling::Http);
        // The session keeps a sender of its own: the channel stays open.
        let _own = sink.clone();
        let waiting = tokio::spawn(async move {
            let first = events.recv().await;
            (first, events.recv().await)
        });
        tokio::task::yield_now().await;
        sink.end(ServerMsg::Pong);
        let (first, then) = waiting.await.unwrap();
        assert!(matches!(first, Some(ServerMsg::Pong)));
        assert!(then.is_none());
    }

    #[tokio::test]
    async fn a_stream_whose_senders_are_gone_ends() {
        let (sink, mut events) = member_events(Signaling::Http);
        assert_eq!(sink.try_send(ServerMsg::Pong), Ok(()));
        drop(sink);
        assert!(matches!(events.recv().await, Some(ServerMsg::Pong)));
        assert!(events.recv().await.is_none());
        let (sink, events) = member_events(Signaling::Http);
        drop(events);
        assert_eq!(sink.try_send(ServerMsg::Pong), Err(NotQueued::Gone));
    }
}
