//! Resume: a member whose WebSocket dropped (a train through a tunnel, a
//! laptop lid, a proxy restarting) is kept as it was, for
//! `resume_grace_secs`, for its client to take over on a new socket with
//! the secret `resume_token` it got in `joined`. Its peer id, voice, role,
//! slots and place in speaker selection stay; its media goes on if its path
//! still works; the others see nothing (no `member_left`, no
//! `member_joined`).
//!
//! While the member is away a task holds its event stream ([`Resumes::park`]):
//! it keeps what the member misses ([`Missed`]: the newest of each message
//! where only the newest matters, in order otherwise, at most
//! [`MAX_MISSED`]), and makes the member leave when the grace period ends,
//! when what it missed overflows, or never if the member leaves on its own
//! (ICE lost, kicked, the node stopping). A `resume` with the token takes
//! the member and what it missed ([`Resumes::take`]); each token works once.
//!
//! A client often comes back before the server noticed its old socket is
//! dead (no FIN or RST reached it). The session holding the token is then
//! told to give the member up ([`Resumes::hold_live`]): it parks it as if
//! its socket had dropped, and the `resume` takes it. Without that the
//! client would be refused, join afresh, and show twice until the grace
//! period of the first ran out.
//!
//! The registry holds at most one entry per member, and members are
//! limited; tokens are 128 bits from the OS.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use media_core::PeerId;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::ice_restart::RestartBudget;
use crate::metrics::ResumeStats;
use crate::protocol::ServerMsg;
use crate::worker::{EventSink, MemberEvents, PlacedWorker, MEMBER_EVENT_QUEUE};

/// Messages kept for a member while it is away, at most: past that it
/// leaves (its client would be told more than a fresh join tells it).
pub const MAX_MISSED: usize = MEMBER_EVENT_QUEUE;

/// A WebSocket session's member: who it is and where it lives.
#[derive(Debug)]
pub struct Membership {
    /// Its peer id.
    pub peer: PeerId,
    /// Its voice (CSRC).
    pub source: u32,
    /// Its channel.
    pub channel: String,
    /// The worker that carries it (holding its channel there).
    pub worker: PlacedWorker,
    /// Its ICE restarts in the last minute.
    pub restarts: RestartBudget,
}

/// A member whose socket dropped, with its event stream.
#[derive(Debug)]
pub struct Away {
    /// The member.
    pub membership: Membership,
    /// The sender its worker pushes to (a new join after a leave uses it).
    pub events_tx: EventSink,
    /// Its event stream.
    pub events_rx: MemberEvents,
    /// When its token expires.
    pub expires: Option<Instant>,
    /// What it missed, oldest first (filled when it is taken).
    pub missed: Vec<ServerMsg>,
}

/// What a member missed while away.
#[derive(Debug, Default)]
pub struct Missed(VecDeque<ServerMsg>);

impl Missed {
    /// Keeps `msg`, replacing an older message it makes stale (speakers,
    /// the dominant speaker, counts, the hand queue, the same slot); false
    /// when [`MAX_MISSED`] are kept already.
    pub fn push(&mut self, msg: ServerMsg) -> bool {
        let stale = |old: &ServerMsg| match (old, &msg) {
            (ServerMsg::Slot { slot: a, .. }, ServerMsg::Slot { slot: b, .. }) => a == b,
            (ServerMsg::ActiveSpeakers { .. }, ServerMsg::ActiveSpeakers { .. })
            | (ServerMsg::DominantSpeaker { .. }, ServerMsg::DominantSpeaker { .. })
            | (ServerMsg::MemberCount { .. }, ServerMsg::MemberCount { .. })
            | (ServerMsg::Hands { .. }, ServerMsg::Hands { .. })
            | (ServerMsg::Hand { .. }, ServerMsg::Hand { .. }) => true,
            _ => false,
        };
        self.0.retain(|old| !stale(old));
        if self.0.len() >= MAX_MISSED {
            return false;
        }
        self.0.push_back(msg);
        true
    }

    /// The messages, oldest first.
    pub fn into_vec(self) -> Vec<ServerMsg> {
        self.0.into()
    }
}

type Claim = oneshot::Sender<oneshot::Sender<Away>>;

/// How long a `resume` waits for a live session to give its member up.
const DISPLACE_WAIT: Duration = Duration::from_secs(2);

/// The members away, by resume token.
#[derive(Debug, Default)]
pub struct Resumes {
    parked: Mutex<HashMap<String, Claim>>,
    /// The sessions holding a member now, by its token: told to give it up
    /// when a `resume` comes with the token.
    live: Mutex<HashMap<String, Arc<Notify>>>,
    /// Woken whenever a member is parked.
    parked_changed: Notify,
    /// Outcomes, for `/metrics`.
    pub stats: ResumeStats,
}

impl Resumes {
    /// A session holds the member of `token`: the returned notice fires
    /// when a `resume` with the token wants the member (the session must
    /// then [`park`](Self::park) it).
    pub fn hold_live(&self, token: &str) -> Arc<Notify> {
        let notice = Arc::new(Notify::new());
        if let Ok(mut live) = self.live.lock() {
            live.insert(token.to_owned(), notice.clone());
        }
        notice
    }

    /// The session no longer holds the member of `token`.
    pub fn release_live(&self, token: &str) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(token);
        }
    }

    /// Keeps `away` for `grace` under `token`, on a task of its own.
    pub fn park(self: &Arc<Self>, token: String, away: Away, grace: Duration) {
        let (claim, claimed) = oneshot::channel();
        if let Ok(mut p) = self.parked.lock() {
            p.insert(token.clone(), claim);
        }
        // Parked before it stops being live: a `resume` finds it in one
        // of the two.
        self.release_live(&token);
        self.parked_changed.notify_waiters();
        self.stats.away.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(self.clone().hold(token, away, claimed, grace));
    }

    /// Takes the member parked under `token` (and what it missed); `None`
    /// when no member is (unknown token, used, or past its grace).
    pub async fn take(&self, token: &str) -> Option<Away> {
        // A session that still holds the member gives it up.
        let live = self.live.lock().ok()?.remove(token);
        if let Some(notice) = &live {
            notice.notify_one();
        }
        let deadline = Instant::now() + DISPLACE_WAIT;
        let claim = loop {
            let changed = self.parked_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(claim) = self.parked.lock().ok()?.remove(token) {
                break claim;
            }
            // Nobody held it live: no member will come.
            live.as_ref()?;
            tokio::time::timeout_at(deadline, changed).await.ok()?;
        };
        let (reply, away) = oneshot::channel();
        claim.send(reply).ok()?;
        let away = away.await.ok()?;
        self.stats.resumed.fetch_add(1, Ordering::Relaxed);
        Some(away)
    }

    /// Forgets `token`; false when a `take` got it first.
    fn forget(&self, token: &str) -> bool {
        self.parked
            .lock()
            .map(|mut p| p.remove(token).is_some())
            .unwrap_or(false)
    }

    async fn hold(
        self: Arc<Self>,
        token: String,
        mut away: Away,
        mut claimed: oneshot::Receiver<oneshot::Sender<Away>>,
        grace: Duration,
    ) {
        let deadline = Instant::now() + grace;
        let mut missed = Missed::default();
        let mut past_grace = false;
        let own = away.membership.peer.0;
        // Whether the member must still be made to leave.
        let leave = loop {
            tokio::select! {
                biased;
                claim = &mut claimed => {
                    let Ok(reply) = claim else { break true };
                    away.missed = missed.into_vec();
                    match reply.send(away) {
                        Ok(()) => {
                            self.stats.away.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                        // The new socket went away meanwhile.
                        Err(back) => {
                            away = back;
                            break true;
                        }
                    }
                }
                msg = away.events_rx.recv() => match msg {
                    // The worker ended the stream (it stopped, or dropped
                    // the member): nothing to resume.
                    None => {
                        self.forget(&token);
                        break false;
                    }
                    Some(ServerMsg::MemberLeft { peer, .. }) if peer == own => {
                        self.forget(&token);
                        break false;
                    }
                    Some(msg) => {
                        if !missed.push(msg) && self.forget(&token) {
                            self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                            break true;
                        }
                    }
                },
                () = tokio::time::sleep_until(deadline), if !past_grace => {
                    past_grace = true;
                    if self.forget(&token) {
                        self.stats.expired.fetch_add(1, Ordering::Relaxed);
                        break true;
                    }
                    // A `take` got the token first: its claim comes next.
                }
            }
        };
        self.stats.away.fetch_sub(1, Ordering::Relaxed);
        if leave {
            let m = &away.membership;
            m.worker.leave(m.peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_member_missed_keeps_the_newest_where_only_the_newest_matters() {
        let mut m = Missed::default();
        let slot = |slot, source| ServerMsg::Slot {
            slot,
            mid: slot.to_string(),
            peer: None,
            source,
        };
        assert!(m.push(slot(0, Some(1))));
        assert!(m.push(ServerMsg::MemberCount { count: 3 }));
        assert!(m.push(slot(1, Some(2))));
        assert!(m.push(ServerMsg::MemberLeft {
            peer: 9,
            reason: "left".into(),
            message: None,
        }));
        assert!(m.push(slot(0, None)));
        assert!(m.push(ServerMsg::MemberCount { count: 2 }));
        assert_eq!(
            m.into_vec(),
            vec![
                slot(1, Some(2)),
                ServerMsg::MemberLeft {
                    peer: 9,
                    reason: "left".into(),
                    message: None
                },
                slot(0, None),
                ServerMsg::MemberCount { count: 2 },
            ]
        );
    }

    #[test]
    fn what_a_member_missed_is_bounded() {
        let mut m = Missed::default();
        for peer in 0..MAX_MISSED as u64 {
            assert!(m.push(ServerMsg::MemberLeft {
                peer,
                reason: "left".into(),
                message: None,
            }));
        }
        assert!(!m.push(ServerMsg::Pong));
        // What replaces a stale message still fits.
        assert_eq!(m.into_vec().len(), MAX_MISSED);
    }
}
