//! The simulation: engines plus real str0m client peers in one process,
//! datagrams carried between them on a virtual clock with optional loss and
//! delay. DTLS, SRTP and Opus are real; only the network and the clock are
//! simulated.
//!
//! [`Sim::step`] always advances to whichever comes first: a datagram's
//! arrival, an engine's timeout, a client's timeout, or a speaker's next
//! 20 ms frame.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use media_core::{EngineConfig, Role};
//! # use testkit::{client::ClientSpec, Sim};
//! let mut sim = Sim::new(EngineConfig::new(testkit::SEED), testkit::epoch());
//! let alice = sim.join("alice", "room", Role::Speaker, ClientSpec::speaker(0));
//! let bob = sim.join("bob", "room", Role::Listener, ClientSpec::listener());
//! sim.run_until_connected(Duration::from_secs(5));
//! sim.set_talking(alice, true);
//! sim.run_for(Duration::from_secs(1));
//! let heard = sim.clients[bob].tones_heard(sim.start, sim.now, 10);
//! assert!(heard.contains(&0));
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use media_core::{
    Command, DatagramKind, Engine, EngineConfig, EngineId, Event, Input, LinkId, Output, PeerId,
    RelayMsg, Role,
};

use crate::audio::TONES;
use crate::client::{Client, ClientSpec};
use crate::net::{Datagram, LinkConditions, Net};

/// The engine's address in the simulation.
pub const ENGINE_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5000);

/// An engine of a simulated cluster beyond node 0.
#[derive(Debug)]
pub struct Node {
    /// The engine.
    pub engine: Engine,
    timeout: Instant,
}

/// The address of node `n`'s engine.
pub fn node_addr(n: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5000 + n as u16)
}

/// The link on node `from` that leads to node `to`.
pub fn link_to(to: usize) -> LinkId {
    LinkId(to as u64)
}

/// The engine number of node `n`: node 0's (its config's) plus `n`.
fn node_engine(base: EngineId, n: usize) -> EngineId {
    u16::try_from(n)
        .ok()
        .and_then(|n| EngineId::new(base.get().checked_add(n)?))
        .expect("engine numbers up to EngineId::MAX")
}

/// The engine, its clients and the network between them.
pub struct Sim {
    /// When the simulation started.
    pub start: Instant,
    /// The simulated current time.
    pub now: Instant,
    /// The engine under test (node 0: in a cluster, the core).
    pub engine: Engine,
    /// Further engines (nodes 1, 2, …: edges of a cluster), each at
    /// `127.0.0.1:5000 + node`.
    pub nodes: Vec<Node>,
    /// Relay messages in flight: (arrival, to node, over link, message).
    relays: VecDeque<(Instant, usize, LinkId, RelayMsg)>,
    /// Conditions of relay links: `delay` for every message, `loss` for
    /// media only (control is reliable, as on the QUIC stream).
    pub relay_link: LinkConditions,
    /// Relay media messages lost on purpose.
    pub relay_lost: u64,
    /// Links cut (both directions): (lower node, higher node).
    cut: Vec<(usize, usize)>,
    /// The node each client joined.
    client_node: Vec<usize>,
    /// Clients, indexed as returned by [`Sim::join`] (also their `PeerId`).
    pub clients: Vec<Client>,
    /// The network.
    pub net: Net,
    /// Every event the engines emitted, with its time (all nodes).
    pub events: Vec<(Instant, Event)>,
    /// The node of each entry of `events`.
    pub event_nodes: Vec<usize>,
    /// Clients that vanished: their datagrams are dropped, they never act.
    pub vanished: Vec<bool>,
    by_addr: HashMap<SocketAddr, usize>,
    engine_timeout: Instant,
    base_config: EngineConfig,
    cert: str0m::config::DtlsCert,
    /// Set when an engine call returned an error (tests assert on it).
    pub errors: Vec<media_core::Error>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now.saturating_duration_since(self.start))
            .field("clients", &self.clients.len())
            .finish()
    }
}

impl Sim {
    /// A simulation starting at `start` (take [`epoch`](crate::epoch) once
    /// in the test; nothing reads the clock after that).
    pub fn new(mut config: EngineConfig, start: Instant) -> Sim {
        if config.host_candidates.is_empty() {
            config.host_candidates = vec![ENGINE_ADDR];
        }
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("certificate");
        if config.dtls_cert.is_none() {
            config.dtls_cert = Some(cert.clone());
        }
        let mut net_seed = [0u8; 8];
        net_seed.copy_from_slice(&config.seed[..8]);
        let net_seed = u64::from_le_bytes(net_seed);
        Sim {
            start,
            now: start,
            engine: Engine::new(config.clone(), start),
            nodes: Vec::new(),
            relays: VecDeque::new(),
            relay_link: LinkConditions::default(),
            relay_lost: 0,
            cut: Vec::new(),
            client_node: Vec::new(),
            event_nodes: Vec::new(),
            base_config: config,
            clients: Vec::new(),
            net: Net::new(net_seed ^ 0xA5A5),
            events: Vec::new(),
            vanished: Vec::new(),
            by_addr: HashMap::new(),
            engine_timeout: start,
            cert,
            errors: Vec::new(),
        }
    }

    /// A core (node 0) with `edges` edges (nodes 1, 2, …) whose channel
    /// `channel` follows it; returns the edges' node numbers.
    pub fn cluster(
        config: EngineConfig,
        start: Instant,
        edges: usize,
        channel: &str,
    ) -> (Sim, Vec<usize>) {
        let mut sim = Sim::new(config, start);
        let nodes: Vec<usize> = (0..edges).map(|_| sim.add_node()).collect();
        for &e in &nodes {
            sim.command_on(
                e,
                Command::SetUpstream {
                    channel: channel.into(),
                    link: Some(link_to(0)),
                },
            );
        }
        (sim, nodes)
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.start)
    }

    /// A new client joins `channel` on node 0. Returns its index (its
    /// `PeerId` too).
    pub fn join(&mut self, name: &str, channel: &str, role: Role, spec: ClientSpec) -> usize {
        self.join_on(0, name, channel, role, spec)
    }

    /// Adds an engine (node `1 + existing extra nodes`); returns its node
    /// number. Its config is node 0's with another seed, address and engine
    /// number (node 0's plus `n`). Its links to every other node are opened on both sides.
    pub fn add_node(&mut self) -> usize {
        let n = self.nodes.len() + 1;
        let mut config = self.base_config.clone();
        config.seed[31] ^= n as u8;
        config.seed[30] ^= (n >> 8) as u8;
        config.engine_id = node_engine(self.base_config.engine_id, n);
        config.host_candidates = vec![node_addr(n)];
        self.nodes.push(Node {
            engine: Engine::new(config, self.now),
            timeout: self.now,
        });
        for m in 0..n {
            self.open_link(m, n);
        }
        n
    }

    /// Tells both ends of the relay link between nodes `a` and `b` that it
    /// is up, and which engine is at the other end (as a transport does
    /// after its handshake).
    fn open_link(&mut self, a: usize, b: usize) {
        let base = self.base_config.engine_id;
        for (from, to) in [(a, b), (b, a)] {
            let engine = node_engine(base, to);
            self.command_on(
                from,
                Command::LinkOpened {
                    link: link_to(to),
                    engine,
                },
            );
        }
    }

    /// The engine of node `n`.
    pub fn engine_at(&self, n: usize) -> &Engine {
        if n == 0 {
            &self.engine
        } else {
            &self.nodes[n - 1].engine
        }
    }

    fn engine_at_mut(&mut self, n: usize) -> &mut Engine {
        if n == 0 {
            &mut self.engine
        } else {
            &mut self.nodes[n - 1].engine
        }
    }

    fn node_count(&self) -> usize {
        1 + self.nodes.len()
    }

    /// Sends a command to node `n`'s engine; an error goes to `errors`.
    pub fn command_on(&mut self, n: usize, command: Command) {
        let now = self.now;
        if let Err(e) = self
            .engine_at_mut(n)
            .handle_input(Input::Command { now, command })
        {
            self.errors.push(e);
        }
        self.poll_node(n);
    }

    /// Cuts (or restores) the relay link between two nodes. Cutting tells
    /// both engines `LinkClosed`, as a transport noticing the loss would;
    /// restoring opens it again on both sides, as a transport reconnecting.
    pub fn set_link_cut(&mut self, a: usize, b: usize, cut: bool) {
        let key = (a.min(b), a.max(b));
        let was_cut = self.cut.contains(&key);
        self.cut.retain(|k| *k != key);
        if cut {
            self.cut.push(key);
            self.command_on(a, Command::LinkClosed { link: link_to(b) });
            self.command_on(b, Command::LinkClosed { link: link_to(a) });
        } else if was_cut {
            self.open_link(a, b);
        }
    }

    /// A new client joins `channel` on node `node`. Returns its index.
    pub fn join_on(
        &mut self,
        node: usize,
        name: &str,
        channel: &str,
        role: Role,
        spec: ClientSpec,
    ) -> usize {
        let idx = self.clients.len();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10_000 + idx as u16);
        let (client, offer) = Client::new(name, addr, &spec, &TONES, &self.cert, self.now);
        self.clients.push(client);
        self.vanished.push(false);
        self.client_node.push(node);
        self.by_addr.insert(addr, idx);
        self.command_on(
            node,
            Command::Join {
                peer: PeerId(idx as u64),
                channel: channel.to_string(),
                identity: name.to_string(),
                role,
                offer,
            },
        );
        self.flush_clients();
        idx
    }

    /// Sends a command to the engine (node 0); an error is recorded in
    /// `errors`.
    pub fn command(&mut self, command: Command) {
        self.command_on(0, command);
    }

    /// Client `idx`'s network changes: it moves to `addr` (nothing reaches
    /// its old address any more) and restarts ICE with the engine on node
    /// `node` ([`Command::Restart`]); the answer is applied when the engine
    /// gives it.
    pub fn restart_on(&mut self, node: usize, idx: usize, addr: SocketAddr) {
        let offer = self.clients[idx]
            .restart_ice(addr)
            .expect("no offer pending");
        let old = self
            .by_addr
            .iter()
            .find(|(_, i)| **i == idx)
            .map(|(a, _)| *a);
        if let Some(old) = old {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(addr, idx);
        self.command_on(
            node,
            Command::Restart {
                peer: PeerId(idx as u64),
                offer,
            },
        );
        self.flush_clients();
    }

    /// Starts (`true`) or stops a client's tone.
    pub fn set_talking(&mut self, idx: usize, talking: bool) {
        self.set_amplitude(idx, if talking { 0.5 } else { 0.0 });
    }

    /// Sets a client's tone amplitude (0 = silence).
    pub fn set_amplitude(&mut self, idx: usize, amplitude: f32) {
        self.clients[idx].set_talking(amplitude);
    }

    /// A client stops existing without a word: no more datagrams either way.
    pub fn vanish(&mut self, idx: usize) {
        self.vanished[idx] = true;
    }

    /// Delivers raw bytes to the engine as if from `source`.
    pub fn inject(&mut self, source: SocketAddr, datagram: &[u8]) {
        let now = self.now;
        let _ = self.engine.handle_input(Input::Receive {
            now,
            source,
            destination: ENGINE_ADDR,
            datagram,
        });
        self.poll_node(0);
    }

    /// Runs until every non-vanished client is connected, at most `limit`.
    /// Returns whether they all connected.
    pub fn run_until_connected(&mut self, limit: Duration) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            if self
                .clients
                .iter()
                .zip(&self.vanished)
                .all(|(c, v)| *v || c.connected)
            {
                return true;
            }
            self.step(deadline);
        }
        false
    }

    /// Runs the simulation for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs the simulation until `t`.
    pub fn run_until(&mut self, t: Instant) {
        while self.now < t {
            self.step(t);
        }
    }

    /// Advances to the next thing that happens (but not past `limit`) and
    /// does it.
    pub fn step(&mut self, limit: Instant) {
        self.step_inner(limit, None);
    }

    /// One step; with `capture`, the RTP packets that client sends are moved
    /// to the given vector before they reach the network.
    fn step_inner(&mut self, limit: Instant, mut capture: Option<(usize, &mut Vec<Datagram>)>) {
        let mut next = self.engine_timeout;
        for n in &self.nodes {
            next = next.min(n.timeout);
        }
        if let Some(t) = self.net.next_arrival() {
            next = next.min(t);
        }
        if let Some((t, ..)) = self.relays.front() {
            next = next.min(*t);
        }
        for (c, v) in self.clients.iter().zip(&self.vanished) {
            if !*v {
                next = next.min(c.next_wakeup());
            }
        }
        if next > limit {
            self.now = limit;
            return;
        }
        if next > self.now {
            self.now = next;
        }
        let now = self.now;

        // Every delivery and engine call may flush the clients' outboxes.
        while let Some(d) = self.net.pop_due(now) {
            self.capture(&mut capture);
            self.deliver(d);
        }
        while self.relays.front().is_some_and(|(t, ..)| *t <= now) {
            let Some((_, to, link, msg)) = self.relays.pop_front() else {
                break;
            };
            let _ = self
                .engine_at_mut(to)
                .handle_input(Input::Relay { now, link, msg });
            self.poll_node(to);
        }
        for n in 0..self.node_count() {
            let due = if n == 0 {
                self.engine_timeout
            } else {
                self.nodes[n - 1].timeout
            };
            if due <= now {
                self.capture(&mut capture);
                let _ = self.engine_at_mut(n).handle_input(Input::Timeout(now));
                self.poll_node(n);
            }
        }
        for i in 0..self.clients.len() {
            if self.vanished[i] {
                continue;
            }
            let c = &mut self.clients[i];
            if c.timeout <= now {
                c.handle_timeout(now);
            }
            c.send_due_frames(now);
        }
        self.capture(&mut capture);
        self.flush_clients();
    }

    fn capture(&mut self, capture: &mut Option<(usize, &mut Vec<Datagram>)>) {
        if let Some((idx, captured)) = capture {
            self.take_rtp(*idx, captured);
        }
    }

    fn deliver(&mut self, d: Datagram) {
        let now = self.now;
        let node = (0..self.node_count()).find(|n| node_addr(*n) == d.destination);
        if let Some(n) = node {
            let _ = self.engine_at_mut(n).handle_input(Input::Receive {
                now,
                source: d.source,
                destination: d.destination,
                datagram: &d.contents,
            });
            self.poll_node(n);
        } else if let Some(&i) = self.by_addr.get(&d.destination) {
            if !self.vanished[i] {
                self.clients[i].receive(now, &d);
            }
        }
    }

    fn flush_clients(&mut self) {
        let now = self.now;
        let cond = self.net.uplink;
        for (i, c) in self.clients.iter_mut().enumerate() {
            for d in c.outbox.drain(..) {
                // A client that moved has no socket at its old address.
                if !self.vanished[i] && d.source == c.addr {
                    self.net.send(now, cond, d);
                }
            }
        }
    }

    fn poll_node(&mut self, n: usize) {
        let now = self.now;
        loop {
            match self.engine_at_mut(n).poll_output() {
                Output::Transmit(t) => {
                    let cond = self.net.downlink;
                    self.net.send(
                        now,
                        cond,
                        Datagram {
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents,
                        },
                    );
                }
                Output::Relay { link, msg } => {
                    let to = link.0 as usize;
                    let key = (n.min(to), n.max(to));
                    if to >= self.node_count() || self.cut.contains(&key) {
                        continue;
                    }
                    let media = matches!(msg, RelayMsg::Media { .. });
                    if media && self.relay_link.loss > 0.0 && self.net.chance(self.relay_link.loss)
                    {
                        self.relay_lost += 1;
                        continue;
                    }
                    let at = now + self.relay_link.delay;
                    self.relays.push_back((at, to, link_to(n), msg));
                }
                Output::Event(e) => {
                    if let Event::Answer { peer, sdp, .. } | Event::Restarted { peer, sdp } = &e {
                        let i = peer.0 as usize;
                        if let Some(c) = self.clients.get_mut(i) {
                            c.accept_answer(sdp, now);
                        }
                    }
                    self.events.push((now, e));
                    self.event_nodes.push(n);
                }
                Output::Timeout(t) => {
                    if n == 0 {
                        self.engine_timeout = t;
                    } else {
                        self.nodes[n - 1].timeout = t;
                    }
                    break;
                }
            }
        }
        self.flush_clients();
    }

    /// Runs the simulation until client `idx` has sent at least `n` RTP
    /// packets, and returns them instead of delivering them: real
    /// SRTP-protected datagrams, in the order sent, that a benchmark can feed
    /// to the engine itself later (each once: SRTP rejects replays).
    /// Everything else (the client's STUN, RTCP and DTLS, the other clients,
    /// the engine) is carried as usual, so ICE consent stays fresh on both
    /// sides.
    ///
    /// Time may have been moved on (`now` set) since the last step, with the
    /// engine fed directly: the engine first gets a timeout at `now`, and the
    /// client skips the frames it missed meanwhile
    /// ([`Client::skip_missed_frames`]). Returns fewer packets when the
    /// client sends none for 5 simulated seconds (it is not connected, or
    /// has no uplink).
    pub fn capture_uplink(&mut self, idx: usize, n: usize) -> Vec<Datagram> {
        const STALL: Duration = Duration::from_secs(5);
        let mut captured = Vec::with_capacity(n);
        let now = self.now;
        self.clients[idx].skip_missed_frames(now);
        self.take_rtp(idx, &mut captured);
        let _ = self.engine.handle_input(Input::Timeout(now));
        self.poll_node(0);
        let mut deadline = self.now + STALL;
        while captured.len() < n && self.now < deadline {
            let before = captured.len();
            self.step_inner(deadline, Some((idx, &mut captured)));
            if captured.len() > before {
                deadline = self.now + STALL;
            }
        }
        captured
    }

    /// Moves the RTP packets (not RTCP, STUN or DTLS) out of client `idx`'s
    /// outbox into `captured`.
    fn take_rtp(&mut self, idx: usize, captured: &mut Vec<Datagram>) {
        let is_rtp = |d: &Datagram| DatagramKind::of(&d.contents) == DatagramKind::Rtp;
        let outbox = &mut self.clients[idx].outbox;
        if !outbox.iter().any(is_rtp) {
            return;
        }
        for d in std::mem::take(outbox) {
            if is_rtp(&d) {
                captured.push(d);
            } else {
                outbox.push(d);
            }
        }
    }

    /// Events emitted at or after `from`.
    pub fn events_since(&self, from: Instant) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(move |(t, _)| *t >= from)
            .map(|(_, e)| e)
    }
}
