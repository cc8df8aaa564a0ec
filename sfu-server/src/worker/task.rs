//! The worker's loop: datagrams, signaling requests, relay messages and the
//! engine's deadline, around the [`Engine`] and the [`Rooms`]. It keeps no
//! rules of its own: the engine decides about media, the rooms about
//! members; this loop carries their inputs and outputs (datagrams to the
//! socket, relay messages to each link's queue, room messages to each
//! member's event queue, join answers to whoever asked).
//!
//! The engine's timeouts are honoured exactly: the task sleeps until the
//! earlier of the engine's deadline and the next member count, unless a
//! datagram, a relay message or a request comes first; and whatever woke it,
//! a deadline that has passed is handed to the engine before it sleeps
//! again, so that a flood of datagrams (the socket always ready) cannot
//! starve connect timeouts, DTLS retransmissions or the speaker tick. There
//! is no periodic tick.
//!
//! Datagrams move in batches (`udp`): one wake-up reads what the socket has
//! queued with `recvmmsg`, and the copies the engine makes of them leave
//! with `sendmmsg`, up to 32 per system call.
//!
//! Nothing outside input waits on this task and nothing it feeds can grow
//! without bound: a member whose event queue is full is dropped, a link whose
//! queue is full loses media or, for control, the link (`events`, `relay`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use media_core::{Command, Engine, Event, Input, LinkId, Output, PeerId, RelayMsg};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::events::{EventSink, NotQueued, Signaling};
use super::relay::{LinkSender, Queued, RelayInCounters, RelayInbox, RelayInput};
use super::{udp, ChannelLoad, JoinError, JoinRequest, Report, Request, RestartError, SfuError};
use crate::health::TaskEnd;
use crate::metrics::Snapshot;
use crate::protocol::ServerMsg;
use crate::rooms::mode::{Capability, Mode, SfuOnly};
use crate::rooms::{HandError, Joined, ModerateError, Moderation, Rights, RoomLimits, Rooms};
use media_core::LeaveReason;

/// `recvmmsg` calls per wake-up at most (each up to [`udp::BATCH`]
/// datagrams) before requests and timers get their turn.
const RECV_CALLS_PER_WAKE: usize = 4;

/// Relay messages handled per wake-up at most, from each of the two relay
/// queues, before the others get their turn.
const RELAY_PER_WAKE: usize = 64;

pub(super) struct Task {
    engine: Engine,
    rooms: Rooms,
    socket: Arc<UdpSocket>,
    rx: mpsc::Receiver<Request>,
    /// Relay messages from the links.
    relay: RelayInbox,
    relay_counters: Arc<RelayInCounters>,
    /// Each link's outbound queues, by link.
    links: HashMap<LinkId, LinkSender>,
    /// Each member's event queue (WebSocket session, WHIP/WHEP resource),
    /// by the peer id the room layer addresses it with.
    sinks: HashMap<PeerId, EventSink>,
    /// Members whose event queue was full: dropped at the next flush.
    slow: Vec<PeerId>,
    /// Joins waiting for the engine's answer.
    pending: HashMap<PeerId, oneshot::Sender<Result<Joined, JoinError>>>,
    /// ICE restarts waiting for the engine's answer. The engine answers a
    /// restart within the command that asked for it, so at most one per
    /// member waits, and only until the next poll.
    restarts: HashMap<PeerId, oneshot::Sender<Result<String, RestartError>>>,
    /// When each member not yet connected asked to join (`sfu_join_seconds`).
    connecting: HashMap<PeerId, Instant>,
    next_peer: u64,
    /// (static edge) The link every channel follows.
    upstream: Option<LinkId>,
    /// The engine's next timeout (its last `Output::Timeout`).
    engine_deadline: Instant,
    snapshot: Snapshot,
    /// Transmits of the engine waiting for the next `sendmmsg`.
    outbox: udp::Outbox,
    /// The datagrams forwarded since the last flush: arrival, copies.
    forwarded: Vec<udp::Forwarded>,
    /// The loop ended because the node stops (not a failure): what members
    /// still here are told.
    stopped: bool,
    /// The loop runs on a thread of its own (its CPU time is reported).
    pub(super) own_thread: bool,
    /// The node's other workers (engine number, requests), for the
    /// channels spread over them: their parts of a channel and moderation
    /// of their members. Weak: a worker's loop ends when signaling drops
    /// its handles, whatever the others hold.
    siblings: Vec<(u16, mpsc::WeakSender<Request>)>,
}

/// Where a worker's engine number sits in the peer ids it gives out.
const PEER_ID_ENGINE_SHIFT: u32 = 40;

impl Task {
    pub(super) fn new(
        engine: Engine,
        limits: RoomLimits,
        socket: UdpSocket,
        rx: mpsc::Receiver<Request>,
        relay: RelayInbox,
        input: &RelayInput,
        upstream: Option<LinkId>,
    ) -> Task {
        let next_peer = (u64::from(engine.config().engine_id.get()) << PEER_ID_ENGINE_SHIFT) + 1;
        Task {
            engine,
            rooms: Rooms::with_limits(limits),
            socket: Arc::new(socket),
            rx,
            relay,
            relay_counters: input.counters.clone(),
            links: HashMap::new(),
            sinks: HashMap::new(),
            slow: Vec::new(),
            pending: HashMap::new(),
            restarts: HashMap::new(),
            connecting: HashMap::new(),
            // Peer ids carry the engine's number above bit 40 (below
            // 2^53: exact in JSON numbers), so that the members of a node's
            // workers, which may share a spread channel, never share an id.
            next_peer,
            upstream,
            engine_deadline: Instant::now(),
            snapshot: Snapshot::default(),
            outbox: udp::Outbox::default(),
            forwarded: Vec::new(),
            stopped: false,
            own_thread: false,
            siblings: Vec::new(),
        }
    }

    /// Runs until every handle is dropped ([`TaskEnd::Stopped`]) or the
    /// socket fails. A panic ends it too; the members are told either way
    /// (`Drop`).
    pub(super) async fn run(mut self) -> TaskEnd {
        let local = match self.socket.local_addr() {
            Ok(a) => a,
            Err(e) => return TaskEnd::Failed(format!("the media socket has no address: {e}")),
        };
        let mut inbox = udp::Inbox::new();
        let mut control = Vec::with_capacity(RELAY_PER_WAKE);
        let mut media = Vec::with_capacity(RELAY_PER_WAKE);
        let mut wake_at = self.flush();
        // One timer, moved only when the wake-up time moves.
        let sleep = tokio::time::sleep_until(wake_at.into());
        tokio::pin!(sleep);
        let mut armed = Some(wake_at);
        loop {
            tokio::select! {
                biased;
                req = self.rx.recv() => {
                    let Some(req) = req else {
                        self.stopped = true;
                        return TaskEnd::Stopped;
                    };
                    self.request(req);
                }
                // `recv_many` returns 0 only once every handle is gone, and
                // then the request arm (polled first) ends the loop.
                _ = self.relay.control.recv_many(&mut control, RELAY_PER_WAKE) => {
                    self.relay_in(&mut control);
                }
                _ = self.relay.media.recv_many(&mut media, RELAY_PER_WAKE) => {
                    self.relay_in(&mut media);
                }
                ready = self.socket.readable() => {
                    if let Err(e) = ready {
                        return TaskEnd::Failed(format!("the media socket failed: {e}"));
                    }
                    self.receive(&mut inbox, local);
                }
                () = &mut sleep => {
                    armed = None;
                }
            }
            self.run_due_timers(Instant::now());
            wake_at = self.flush();
            if armed != Some(wake_at) {
                sleep.as_mut().reset(wake_at.into());
                armed = Some(wake_at);
            }
        }
    }

    /// Hands the engine its timeout if it is due.
    fn run_due_timers(&mut self, now: Instant) {
        if now >= self.engine_deadline {
            let _ = self.engine.handle_input(Input::Timeout(now));
            self.poll_engine();
        }
    }

    /// Hands the engine the relay messages of one wake-up.
    fn relay_in(&mut self, relayed: &mut Vec<(LinkId, RelayMsg)>) {
        let now = Instant::now();
        for (link, msg) in relayed.drain(..) {
            let _ = self.engine.handle_input(Input::Relay { now, link, msg });
            self.poll_engine();
        }
    }

    /// Reads what the socket has queued (a few batches at most) and hands it
    /// to the engine.
    fn receive(&mut self, inbox: &mut udp::Inbox, local: SocketAddr) {
        for _ in 0..RECV_CALLS_PER_WAKE {
            // `Ok(None)`: nothing left (readiness cleared); an error (an ICMP
            // report surfacing, say) ends this wake-up too.
            let Ok(Some(n)) = inbox.recv(&self.socket) else {
                break;
            };
            let now = Instant::now();
            self.run_due_timers(now);
            for i in 0..n {
                let Some((source, datagram)) = inbox.datagram(i) else {
                    continue;
                };
                let forwarded = self.engine.stats().rtp_forwarded;
                let first = self.outbox.rtp_queued;
                let _ = self.engine.handle_input(Input::Receive {
                    now,
                    source,
                    destination: local,
                    datagram,
                });
                // Queue the copies as we go: the engine's queue stays short
                // and full batches leave before the next datagram is read.
                self.poll_engine();
                if self.engine.stats().rtp_forwarded > forwarded {
                    // Its copies are the RTP datagrams queued since.
                    self.forwarded.push(udp::Forwarded {
                        at: now,
                        first,
                        last: self.outbox.rtp_queued,
                    });
                }
            }
        }
        self.snapshot.recv_calls = inbox.calls;
    }

    /// Sends what the engine queued, handles its events, sends the member
    /// counts that are due, drops the members too slow to take their
    /// messages; returns when to wake next. Each datagram forwarded since
    /// the last flush counts in the latency histograms: from its arrival to
    /// the hand-over of its last copy to the socket, and of each copy.
    fn flush(&mut self) -> Instant {
        self.poll_engine();
        let now = Instant::now();
        self.share_parts();
        let counts_due = self.rooms.poll_member_counts(now);
        let hands_due = self.rooms.poll_hands(now);
        let mode_due = self.rooms.poll_mode(now);
        self.room_commands();
        for (to, took) in self.rooms.take_switches() {
            let i = usize::from(to == Mode::P2p);
            self.snapshot.switch_time[i].observe(took);
        }
        self.deliver();
        // A dropped member's departure is news for the others, whose queues
        // may be full too: until nobody else is dropped.
        while !self.slow.is_empty() {
            self.drop_slow_members();
            self.poll_engine();
            self.deliver();
        }
        self.outbox.flush(&self.socket);
        // Each forwarded packet's latency: from its arrival to the flush
        // that handed its last copy to the kernel, and to the flush of each
        // copy (copies leave in batches as they are made, so a packet early
        // in a wake-up does not wait for the copies of the ones after it).
        self.outbox.observe_forwarded(
            &mut self.forwarded,
            &mut self.snapshot.forward_latency,
            &mut self.snapshot.forward_copy_latency,
        );
        self.snapshot.send_drops = self.outbox.drops;
        self.snapshot.send_calls = self.outbox.calls;
        self.snapshot.stats = self.engine.stats().clone();
        [counts_due, hands_due, mode_due]
            .into_iter()
            .flatten()
            .fold(self.engine_deadline, Instant::min)
    }

    /// Polls the engine until its next timeout (kept in `engine_deadline`).
    /// Datagrams go to the outbox (sent whenever a batch is full; the caller
    /// flushes the rest), relay messages to their link's queue, events to
    /// the rooms.
    fn poll_engine(&mut self) {
        loop {
            match self.engine.poll_output() {
                Output::Transmit(t) => self.outbox.push(&self.socket, t.destination, t.contents),
                Output::Relay { link, msg } => self.relay_out(link, msg),
                Output::Event(e) => self.event(e),
                Output::Timeout(t) => {
                    self.engine_deadline = t;
                    return;
                }
            }
        }
    }

    /// Queues a relay message for its link; a message for a link that is
    /// not up is dropped (the engine learns of links only through us).
    fn relay_out(&mut self, link: LinkId, msg: RelayMsg) {
        let Some(sender) = self.links.get(&link) else {
            return;
        };
        match sender.push(msg) {
            Queued::Yes => {}
            Queued::MediaDropped => self.snapshot.relay_out_dropped += 1,
            Queued::ControlOverflow => {
                tracing::warn!(
                    ?link,
                    "relay control overflowed the link's queue: closing the link"
                );
                self.snapshot.relay_out_overflows += 1;
                // Its send task closes the link when this sender is gone.
                self.links.remove(&link);
            }
            Queued::ControlLost => {
                tracing::error!(
                    ?link,
                    "relay control for another worker found its queue full: lost"
                );
                self.snapshot.relay_out_overflows += 1;
            }
            Queued::Gone => {
                self.links.remove(&link);
            }
        }
    }

    fn event(&mut self, e: Event) {
        if let Event::Restarted { peer, sdp } = e {
            if let Some(reply) = self.restarts.remove(&peer) {
                let _ = reply.send(Ok(sdp));
            }
            return;
        }
        let left = match &e {
            Event::PeerLeft { peer, .. } => Some(*peer),
            Event::PeerConnected { peer } => {
                if let Some(asked) = self.connecting.remove(peer) {
                    self.snapshot.join_time.observe(asked.elapsed());
                }
                None
            }
            _ => None,
        };
        if let Some(joined) = self.rooms.handle_event(e, Instant::now()) {
            if let Some(reply) = self.pending.remove(&joined.peer) {
                let _ = reply.send(Ok(joined));
            }
        }
        self.room_commands();
        self.deliver();
        // (hybrid) A member whose SFU session ended after a switch to P2P
        // stays; any other departure ends the member.
        if let Some(peer) = left {
            self.connecting.remove(&peer);
            if let Some(reply) = self.restarts.remove(&peer) {
                let _ = reply.send(Err(RestartError::Left));
            }
            if self.rooms.member(peer).is_none() {
                self.forget(peer);
            }
        }
    }

    /// After its own `member_left` went out: nothing more is addressed to a
    /// member that left.
    fn forget(&mut self, peer: PeerId) {
        self.sinks.remove(&peer);
        self.pending.remove(&peer);
        self.connecting.remove(&peer);
    }

    /// Carries out the engine commands the room rules asked for.
    fn room_commands(&mut self) {
        let commands: Vec<Command> = self.rooms.take_commands().collect();
        for c in commands {
            if let Err(e) = self.command(c) {
                tracing::warn!(error = %e, "room command refused by the engine");
            }
        }
    }

    /// Ends `peer`'s membership now (its messages go out first) and its SFU
    /// session if it has one. False when it was not a member.
    fn remove_member(&mut self, peer: PeerId) -> bool {
        let Some(in_engine) = self.rooms.remove(peer, LeaveReason::Left, Instant::now()) else {
            return false;
        };
        if in_engine {
            let _ = self.command(Command::Leave { peer });
        }
        self.room_commands();
        self.deliver();
        self.forget(peer);
        if let Some(reply) = self.restarts.remove(&peer) {
            let _ = reply.send(Err(RestartError::Left));
        }
        true
    }

    /// Hands the room messages to their members' event queues; a member
    /// whose queue is full is noted to be dropped.
    fn deliver(&mut self) {
        for (to, msg) in self.rooms.take_messages() {
            let Some(sink) = self.sinks.get(&to) else {
                continue;
            };
            // A session that is gone leaves on its own (WebSocket closed,
            // WHIP/WHEP resource deleted).
            if sink.try_send(msg) == Err(NotQueued::Full) && !self.slow.contains(&to) {
                self.slow.push(to);
            }
        }
    }

    /// Drops the members whose event queue was full: each is told why (its
    /// session ends) and leaves its channel.
    fn drop_slow_members(&mut self) {
        while let Some(peer) = self.slow.pop() {
            let Some(sink) = self.sinks.remove(&peer) else {
                continue;
            };
            tracing::warn!(%peer, "member dropped: it does not read its messages");
            sink.end(ServerMsg::error(
                "too_slow",
                "dropped: this client did not read the server's messages",
                None,
            ));
            self.snapshot.members_dropped_slow += 1;
            self.remove_member(peer);
        }
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Join(j, reply) => self.join(j, reply),
            Request::Leave(peer, reply) => {
                let ok = self.remove_member(peer);
                let _ = reply.send(ok);
            }
            Request::SfuJoin {
                peer,
                offer,
                epoch,
                reply,
            } => {
                let _ = reply.send(self.sfu_join(peer, offer, epoch));
            }
            Request::Signal {
                from,
                to,
                epoch,
                data,
                reply,
            } => {
                let res = self
                    .rooms
                    .handle_signal(from, to, epoch, data, Instant::now());
                self.deliver();
                let _ = reply.send(res);
            }
            Request::Report {
                peer,
                report,
                reply,
            } => {
                let now = Instant::now();
                let res = match report {
                    Report::Switched { mode, epoch } => {
                        self.rooms.handle_switched(peer, mode, epoch, now)
                    }
                    Report::P2pFailed {
                        peer: other,
                        failure,
                        epoch,
                    } => self
                        .rooms
                        .handle_p2p_failed(peer, other, failure, epoch, now),
                };
                self.room_commands();
                self.deliver();
                let _ = reply.send(res);
            }
            Request::Hybrid(settings) => {
                self.rooms.set_hybrid(settings, Instant::now());
                self.room_commands();
                self.deliver();
            }
            Request::Restart { peer, offer, reply } => {
                match self.command(Command::Restart { peer, offer }) {
                    // The answer comes out of poll_output (Event::Restarted).
                    Ok(()) => {
                        self.restarts.insert(peer, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RestartError::Refused(e)));
                    }
                }
            }
            Request::Moderate {
                by,
                target,
                action,
                reply,
            } => {
                if self.rooms.member(target).is_none() {
                    if let Some(tx) = self.sibling_of(target) {
                        self.moderate_elsewhere(tx, by, target, action, reply);
                        return;
                    }
                }
                let _ = reply.send(self.moderate(by, target, action));
            }
            Request::ModerateFor {
                channel,
                target,
                action,
                reply,
            } => {
                let res = self
                    .rooms
                    .moderation_for(&channel, target, &action)
                    .and_then(|command| self.apply_moderation(target, command, action));
                let _ = reply.send(res);
            }
            Request::Siblings {
                index,
                siblings,
                spread_after,
                hand_clock,
            } => {
                let engines: Vec<u16> = siblings.iter().map(|(e, _)| *e).collect();
                self.rooms
                    .set_siblings(index, &engines, spread_after, hand_clock);
                self.siblings = siblings;
            }
            Request::Part(part) => {
                self.rooms.handle_part(part, Instant::now());
                self.deliver();
            }
            Request::Hand {
                peer,
                raised,
                reply,
            } => {
                let _ = reply.send(self.hand(peer, raised));
            }
            Request::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Request::LinkOpened(link, engine, sender) => {
                self.links.insert(link, sender);
                if let Err(e) = self.command(Command::LinkOpened { link, engine }) {
                    tracing::warn!(?link, error = %e, "link refused by the engine");
                }
            }
            Request::Engine(command) => {
                if let Command::LinkClosed { link } = command {
                    self.links.remove(&link);
                }
                if let Err(e) = self.command(command) {
                    tracing::warn!(error = %e, "cluster command refused");
                }
            }
            Request::Resubscribe(link) => {
                let engine = &self.engine;
                let channels: Vec<String> = engine
                    .channel_names()
                    .filter(|c| engine.channel_upstream(c) == Some(link))
                    .map(str::to_owned)
                    .collect();
                for channel in channels {
                    self.follow(channel, Some(link));
                }
            }
            Request::Follow(channel, link) => {
                // Only a channel that has members here: an empty one is
                // gone (or about to be) from the engine.
                if self.rooms.has_members(&channel) {
                    self.follow(channel, link);
                }
            }
            Request::Channels(reply) => {
                let loads = self
                    .engine
                    .channel_names()
                    .map(|c| ChannelLoad {
                        channel: c.to_owned(),
                        members: self.rooms.member_count(c),
                        upstream: self.engine.channel_upstream(c),
                    })
                    .collect();
                let _ = reply.send(loads);
            }
            Request::Drain(deadline) => {
                self.rooms.handle_drain(deadline);
                self.deliver();
            }
            Request::LeaveAll => {
                let peers: Vec<PeerId> = self.rooms.peers().collect();
                for peer in peers {
                    self.remove_member(peer);
                }
            }
            Request::Move(channel, msg) => {
                let peers: Vec<PeerId> = self
                    .rooms
                    .peers()
                    .filter(|p| self.rooms.member(*p).is_some_and(|m| m.channel == channel))
                    .collect();
                for peer in peers {
                    if let Some(sink) = self.sinks.remove(&peer) {
                        sink.end(msg.clone());
                    }
                    self.remove_member(peer);
                }
            }
            #[cfg(debug_assertions)]
            Request::Crash => panic!("media worker crashed on purpose (test hook)"),
        }
    }

    /// The counters for `/metrics`, with the census of the rooms and queues.
    fn snapshot(&self) -> Snapshot {
        let census = self.rooms.census();
        let mut s = self.snapshot.clone();
        s.channels = census.channels;
        s.members = census.members;
        s.speakers = census.speakers;
        s.listeners = census.listeners;
        s.websocket_members = self
            .sinks
            .values()
            .filter(|sink| sink.signaling() == Signaling::WebSocket)
            .count();
        s.links = self.links.len();
        s.hybrid = self.rooms.hybrid_counters();
        s.relay_in_dropped = self.relay_counters.media_dropped.load(Ordering::Relaxed);
        s.relay_in_overflows = self.relay_counters.overflows.load(Ordering::Relaxed);
        // On a thread of its own, the thread's CPU time is the worker's.
        s.cpu_seconds = self
            .own_thread
            .then(crate::process::thread_cpu_seconds)
            .flatten();
        s
    }

    fn command(&mut self, command: Command) -> Result<(), media_core::Error> {
        self.engine.handle_input(Input::Command {
            now: Instant::now(),
            command,
        })
    }

    fn join(&mut self, j: JoinRequest, reply: oneshot::Sender<Result<Joined, JoinError>>) {
        let asked = Instant::now();
        if self.rooms.is_draining() {
            let _ = reply.send(Err(JoinError::Draining));
            return;
        }
        if let Err(full) = self.rooms.admit(&j.channel) {
            let _ = reply.send(Err(JoinError::Full(full)));
            return;
        }
        let first = !self.rooms.has_members(&j.channel);
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        let rights = Rights {
            can_publish: j.can_publish,
            can_moderate: j.can_moderate,
        };
        // (hybrid) A member of a peer-to-peer channel has no engine session.
        // (hybrid) A member placed here by a spread channel is on the SFU:
        // its channel's other members are on another worker.
        let capability = if j.upstream.is_some_and(super::is_local_link) {
            Capability::SfuOnly(SfuOnly::Spread)
        } else {
            j.capability
        };
        if self.rooms.preview_mode(&j.channel, capability, asked) == Mode::P2p {
            self.rooms
                .handle_join(peer, j.channel, j.identity, j.role, rights, capability);
            if let Some(sink) = j.events {
                self.sinks.insert(peer, sink);
            }
            if let Some(joined) = self.rooms.answer_p2p(peer, asked) {
                let _ = reply.send(Ok(joined));
            }
            self.room_commands();
            self.deliver();
            return;
        }
        let res = self.command(Command::Join {
            peer,
            channel: j.channel.clone(),
            identity: j.identity.clone(),
            role: j.role,
            offer: j.offer,
        });
        if let Err(e) = res {
            self.snapshot.joins_refused += 1;
            tracing::info!(channel = %j.channel, identity = %j.identity, error = %e, "join refused");
            let _ = reply.send(Err(JoinError::Refused(e)));
            return;
        }
        // (edge) Only a join the engine accepted subscribes upstream: a
        // refused one would leave the channel subscribed with nobody in it.
        if first {
            if let Some(link) = j.upstream.or(self.upstream) {
                self.follow(j.channel.clone(), Some(link));
            }
        }
        if j.upstream.is_some_and(super::is_local_link) {
            // Placed here by a channel spread over the workers.
            self.rooms.mark_spread(&j.channel);
        }
        self.rooms
            .handle_join(peer, j.channel, j.identity, j.role, rights, capability);
        if let Some(sink) = j.events {
            self.sinks.insert(peer, sink);
        }
        self.connecting.insert(peer, asked);
        // The answer comes out of poll_output (Event::Answer) right after.
        self.pending.insert(peer, reply);
    }

    /// (hybrid) `peer`'s SFU session during a switch up: the engine join
    /// under its member id; the answer goes out as `sfu_joined`.
    fn sfu_join(&mut self, peer: PeerId, offer: String, epoch: u64) -> Result<(), SfuError> {
        let (channel, identity, role) = self
            .rooms
            .sfu_join(peer, epoch)
            .map_err(SfuError::Refused)?;
        let muted = self.rooms.member(peer).is_some_and(|m| m.muted);
        self.command(Command::Join {
            peer,
            channel,
            identity,
            role,
            offer,
        })
        .map_err(SfuError::Offer)?;
        self.rooms.sfu_joining(peer);
        if muted {
            let _ = self.command(Command::SetMuted { peer, muted });
        }
        self.connecting.insert(peer, Instant::now());
        // The answer came out of the engine with the join.
        self.poll_engine();
        self.deliver();
        Ok(())
    }

    /// Makes `channel` follow the origin over `link`, or select itself
    /// (`None`).
    fn follow(&mut self, channel: String, link: Option<LinkId>) {
        if let Err(e) = self.command(Command::SetUpstream { channel, link }) {
            tracing::warn!(error = %e, "upstream not set");
        }
    }

    fn moderate(
        &mut self,
        by: PeerId,
        target: PeerId,
        action: Moderation,
    ) -> Result<(), ModerateError> {
        let command = self.rooms.moderation(by, target, &action)?;
        self.apply_moderation(target, command, action)
    }

    /// Carries out a moderation the rules allowed: `command` to the engine,
    /// then recorded and announced.
    fn apply_moderation(
        &mut self,
        target: PeerId,
        command: Command,
        action: Moderation,
    ) -> Result<(), ModerateError> {
        if let Command::Leave { peer } = command {
            // A kick: recorded first, so that the departure says so.
            self.rooms.handle_moderated(target, action);
            self.remove_member(peer);
            return Ok(());
        }
        // (hybrid) A member without an SFU session (a P2P channel's) has its
        // state recorded and announced; its clients enforce it, and its SFU
        // session gets it when it joins.
        let in_engine = self.rooms.member(target).is_some_and(|m| m.in_engine);
        if in_engine {
            self.command(command).map_err(|e| match e {
                media_core::Error::CannotSpeak(_) => ModerateError::CannotSpeak,
                e => ModerateError::Refused(e.to_string()),
            })?;
        }
        self.rooms.handle_moderated(target, action);
        self.deliver();
        Ok(())
    }

    /// The worker of the node whose engine numbered `peer`, if it is
    /// another one (peer ids carry their engine's number from bit 40 up).
    fn sibling_of(&self, peer: PeerId) -> Option<mpsc::WeakSender<Request>> {
        let engine = peer.0 >> PEER_ID_ENGINE_SHIFT;
        self.siblings
            .iter()
            .find(|(e, _)| u64::from(*e) == engine)
            .map(|(_, tx)| tx.clone())
    }

    /// `by` moderates `target`, a member of another worker of the node:
    /// the moderator's side of the rules here, the target's there; that
    /// worker answers.
    fn moderate_elsewhere(
        &mut self,
        tx: mpsc::WeakSender<Request>,
        by: PeerId,
        target: PeerId,
        action: Moderation,
        reply: oneshot::Sender<Result<(), ModerateError>>,
    ) {
        let channel = match self.rooms.moderation_elsewhere(by, &action) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let req = Request::ModerateFor {
            channel,
            target,
            action,
            reply,
        };
        // Never waits: two workers waiting on each other's full queue
        // would stop both.
        let Some(tx) = tx.upgrade() else {
            return;
        };
        if let Err(e) = tx.try_send(req) {
            if let Request::ModerateFor { reply, .. } = e.into_inner() {
                let busy = "the member's media worker is busy; try again".to_string();
                let _ = reply.send(Err(ModerateError::Refused(busy)));
            }
        }
    }

    /// Hands the parts of spread channels that changed to the node's other
    /// workers (never waiting: a part that finds a full queue goes again
    /// at the next flush).
    fn share_parts(&mut self) {
        if self.siblings.is_empty() {
            return;
        }
        for part in self.rooms.take_parts() {
            let mut sent = true;
            for (_, tx) in &self.siblings {
                let Some(tx) = tx.upgrade() else {
                    continue;
                };
                if tx.try_send(Request::Part(part.clone())).is_err() {
                    sent = false;
                }
            }
            if !sent {
                self.snapshot.parts_not_sent += 1;
                self.rooms.part_not_sent(&part);
            }
        }
    }

    fn hand(&mut self, peer: PeerId, raised: bool) -> Result<(), HandError> {
        self.rooms.handle_hand(peer, raised)?;
        self.deliver();
        Ok(())
    }
}

/// Whatever ends the task (the node stopping, a panic, a failed socket), the
/// members still here are told and their sessions end: a WebSocket waiting
/// for messages from a dead worker would otherwise wait forever.
impl Drop for Task {
    fn drop(&mut self) {
        let reason = if self.stopped {
            "the server stopped"
        } else {
            "the media worker of this server failed; join again elsewhere"
        };
        for sink in self.sinks.values() {
            sink.end(ServerMsg::Shutdown {
                reason: reason.into(),
                deadline_ms: 0,
            });
        }
    }
}
