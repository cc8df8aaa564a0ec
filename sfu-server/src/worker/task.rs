//! The worker's loop: datagrams, signaling requests and the engine's
//! deadline, around the [`Engine`] and the [`Rooms`]. It keeps no rules of
//! its own: the engine decides about media, the rooms about members; this
//! loop carries their inputs and outputs (datagrams to the socket, relay
//! messages to the cascade, room messages to each member's event channel,
//! join answers to whoever asked).
//!
//! The engine's timeouts are honoured exactly: the task sleeps until the
//! earlier of the engine's deadline and the next member count, unless a
//! datagram or a request comes first. There is no periodic tick.
//!
//! Datagrams move in batches (`udp`): one wake-up reads what the socket has
//! queued with `recvmmsg`, and the copies the engine makes of them leave
//! with `sendmmsg`, up to 32 per system call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use media_core::{Command, Engine, Event, Input, LinkId, Output, PeerId, RelayMsg};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::{udp, JoinError, JoinRequest, Request};
use crate::metrics::Snapshot;
use crate::protocol::ServerMsg;
use crate::rooms::{Joined, ModerateError, Moderation, Rights, RoomLimits, Rooms};

/// `recvmmsg` calls per wake-up at most (each up to [`udp::BATCH`]
/// datagrams) before requests and timers get their turn.
const RECV_CALLS_PER_WAKE: usize = 4;

pub(super) struct Task {
    engine: Engine,
    rooms: Rooms,
    socket: Arc<UdpSocket>,
    rx: mpsc::Receiver<Request>,
    /// Each member's event channel (WebSocket session, WHIP/WHEP resource),
    /// by the peer id the room layer addresses it with.
    sinks: HashMap<PeerId, mpsc::UnboundedSender<ServerMsg>>,
    /// Joins waiting for the engine's answer.
    pending: HashMap<PeerId, oneshot::Sender<Result<Joined, JoinError>>>,
    /// When each member not yet connected asked to join (`sfu_join_seconds`).
    connecting: HashMap<PeerId, Instant>,
    next_peer: u64,
    relay_out: Option<mpsc::UnboundedSender<(LinkId, RelayMsg)>>,
    upstream: Option<LinkId>,
    snapshot: Snapshot,
    /// Transmits of the engine waiting for the next `sendmmsg`.
    outbox: udp::Outbox,
    /// Arrival times of the datagrams forwarded since the last flush.
    forwarded_arrivals: Vec<Instant>,
}

impl Task {
    pub(super) fn new(
        engine: Engine,
        limits: RoomLimits,
        socket: UdpSocket,
        rx: mpsc::Receiver<Request>,
        relay_out: Option<mpsc::UnboundedSender<(LinkId, RelayMsg)>>,
        upstream: Option<LinkId>,
    ) -> Task {
        Task {
            engine,
            rooms: Rooms::with_limits(limits),
            socket: Arc::new(socket),
            rx,
            sinks: HashMap::new(),
            pending: HashMap::new(),
            connecting: HashMap::new(),
            next_peer: 1,
            relay_out,
            upstream,
            snapshot: Snapshot::default(),
            outbox: udp::Outbox::default(),
            forwarded_arrivals: Vec::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let local = match self.socket.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let mut inbox = udp::Inbox::new();
        let mut deadline = self.flush();
        // One timer, moved only when the deadline moves.
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut armed = Some(deadline);
        loop {
            tokio::select! {
                biased;
                req = self.rx.recv() => {
                    let Some(req) = req else { return };
                    self.request(req);
                    deadline = self.flush();
                }
                ready = self.socket.readable() => {
                    if ready.is_err() {
                        // The runtime's I/O driver is gone.
                        return;
                    }
                    self.receive(&mut inbox, local);
                    deadline = self.flush();
                }
                () = &mut sleep => {
                    armed = None;
                    let _ = self.engine.handle_input(Input::Timeout(Instant::now()));
                    deadline = self.flush();
                }
            }
            if armed != Some(deadline) {
                sleep.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
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
            for i in 0..n {
                let Some((source, datagram)) = inbox.datagram(i) else {
                    continue;
                };
                let forwarded = self.engine.stats().rtp_forwarded;
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
                    self.forwarded_arrivals.push(now);
                }
            }
        }
        self.snapshot.recv_calls = inbox.calls;
    }

    /// Sends what the engine queued, handles its events, sends the member
    /// counts that are due; returns when to wake next. Each datagram
    /// forwarded since the last flush counts in the latency histogram: from
    /// its arrival to now, when its last copy has been handed to the socket.
    fn flush(&mut self) -> Instant {
        let engine_deadline = self.poll_engine();
        let now = Instant::now();
        let counts_due = self.rooms.poll_member_counts(now);
        self.deliver();
        self.outbox.flush(&self.socket);
        if !self.forwarded_arrivals.is_empty() {
            let sent = Instant::now();
            for at in self.forwarded_arrivals.drain(..) {
                self.snapshot
                    .forward_latency
                    .observe(sent.saturating_duration_since(at));
            }
        }
        self.snapshot.send_drops = self.outbox.drops;
        self.snapshot.send_calls = self.outbox.calls;
        self.snapshot.stats = self.engine.stats().clone();
        counts_due.map_or(engine_deadline, |at| at.min(engine_deadline))
    }

    /// Polls the engine until its next timeout (returned). Datagrams go to
    /// the outbox (sent whenever a batch is full; the caller flushes the
    /// rest), relay messages to the cascade, events to the rooms.
    fn poll_engine(&mut self) -> Instant {
        loop {
            match self.engine.poll_output() {
                Output::Transmit(t) => self.outbox.push(&self.socket, t.destination, t.contents),
                Output::Relay { link, msg } => {
                    if let Some(tx) = &self.relay_out {
                        let _ = tx.send((link, msg));
                    }
                }
                Output::Event(e) => self.event(e),
                Output::Timeout(t) => return t,
            }
        }
    }

    fn event(&mut self, e: Event) {
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
        if let Some(joined) = self.rooms.handle_event(e) {
            if let Some(reply) = self.pending.remove(&joined.peer) {
                let _ = reply.send(Ok(joined));
            }
        }
        self.deliver();
        // After its own `member_left` went out: nothing more is addressed
        // to a member that left.
        if let Some(peer) = left {
            self.sinks.remove(&peer);
            self.pending.remove(&peer);
            self.connecting.remove(&peer);
        }
    }

    /// Hands the room messages to their members' event channels.
    fn deliver(&mut self) {
        for (to, msg) in self.rooms.take_messages() {
            if let Some(sink) = self.sinks.get(&to) {
                let _ = sink.send(msg);
            }
        }
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Join(j, reply) => self.join(j, reply),
            Request::Leave(peer, reply) => {
                let ok = self.command(Command::Leave { peer }).is_ok();
                let _ = reply.send(ok);
            }
            Request::Moderate {
                by,
                target,
                action,
                reply,
            } => {
                let _ = reply.send(self.moderate(by, target, action));
            }
            Request::Snapshot(reply) => {
                let census = self.rooms.census();
                let mut s = self.snapshot.clone();
                s.channels = census.channels;
                s.members = census.members;
                s.speakers = census.speakers;
                s.listeners = census.listeners;
                let _ = reply.send(s);
            }
            Request::Relay(link, msg) => {
                let _ = self.engine.handle_input(Input::Relay {
                    now: Instant::now(),
                    link,
                    msg,
                });
            }
            Request::Engine(command) => {
                if let Err(e) = self.command(command) {
                    tracing::warn!(error = %e, "cluster command refused");
                }
            }
            Request::Resubscribe => {
                let channels: Vec<String> = self.rooms.channels().map(str::to_string).collect();
                for channel in channels {
                    self.follow_upstream(channel);
                }
            }
            Request::Drain(deadline) => {
                self.rooms.handle_drain(deadline);
                self.deliver();
            }
        }
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
        if !self.rooms.has_members(&j.channel) {
            self.follow_upstream(j.channel.clone());
        }
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
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
        let rights = Rights {
            can_publish: j.can_publish,
            can_moderate: j.can_moderate,
        };
        self.rooms
            .handle_join(peer, j.channel, j.identity, j.role, rights);
        if let Some(sink) = j.events {
            self.sinks.insert(peer, sink);
        }
        self.connecting.insert(peer, asked);
        // The answer comes out of poll_output (Event::Answer) right after.
        self.pending.insert(peer, reply);
    }

    /// (edge) Makes `channel` follow the origin over the upstream link.
    fn follow_upstream(&mut self, channel: String) {
        let Some(link) = self.upstream else { return };
        let _ = self.command(Command::SetUpstream {
            channel,
            link: Some(link),
        });
    }

    fn moderate(
        &mut self,
        by: PeerId,
        target: PeerId,
        action: Moderation,
    ) -> Result<(), ModerateError> {
        let command = self.rooms.moderation(by, target, action)?;
        self.command(command)
            .map_err(|e| ModerateError::Refused(e.to_string()))?;
        self.rooms.handle_moderated(target, action);
        self.deliver();
        Ok(())
    }
}
