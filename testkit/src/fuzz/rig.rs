//! `DatagramRig`: an engine with established WebRTC sessions that the
//! datagram fuzz body reuses from input to input.
//!
//! Building an engine and joining costs about 2 ms (str0m parses the offer,
//! and its DTLS library checks its crypto provider for every new `Rtc`);
//! a DTLS handshake costs more. Paying that per input held the target to a
//! few hundred inputs a second. So the rig is built once: a speaker and a
//! listener, each a real str0m client that has completed ICE, DTLS and
//! SRTP with the engine, and a third member that joined but never
//! connected (a handshake that has not started). Inputs then act on it, and
//! [`DatagramRig::reset`] puts back what an input may have changed:
//!
//! - the speaker's and the listener's role and mute (commands undone);
//! - the newcomer, joined afresh after every [`NEWCOMER_REUSE`]th input
//!   whose datagrams or STUN requests reached it, and when it left or timed
//!   out;
//! - everything, rebuilt, when a session is no longer up (a client closed,
//!   a member left).
//!
//! Signed STUN requests from new addresses (the engine learns the address)
//! go to the newcomer, so that the speaker's session keeps its one address.
//! They come from addresses of their own ([`stun_source`]), never from the
//! [`STRANGERS`] that send garbage, so a learned address does not change
//! where a later input's garbage goes.
//!
//! What carries over between inputs, by design: the simulated time (it only
//! moves forward), the established sessions' SRTP and RTCP state (as in a
//! real call, where garbage arrives between good packets), the engine's
//! counters, and for up to [`NEWCOMER_REUSE`] − 1 inputs the newcomer's
//! state: ICE (addresses learned, at most 8) and a DTLS handshake an input
//! may have started. Joining it afresh after every input that reached it
//! costs about 1 ms each, most of the rig's time (after every 16th it still
//! took 14%). A crash that does not reproduce alone (`cargo fuzz run
//! datagrams CRASH` runs it on a fresh rig) needed such state: run it after
//! the inputs before it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::config::DtlsCert;
use str0m::ice::{StunMessage, TransId};
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};

use media_core::{Command, Engine, EngineConfig, Event, Input, Output, PeerId, Role};

use crate::audio::{ToneSpeaker, TONES};
use crate::client::{Client, ClientSpec};
use crate::sim::ENGINE_ADDR;

/// The speaker's member id and client address.
pub(crate) const SPEAKER: PeerId = PeerId(1);
pub(crate) const SPEAKER_ADDR: SocketAddr = loopback(10_001);
/// The listener's.
pub(crate) const LISTENER: PeerId = PeerId(2);
pub(crate) const LISTENER_ADDR: SocketAddr = loopback(10_002);
/// The member that joined and never connected, and the address the engine
/// was told it comes from.
pub(crate) const NEWCOMER: PeerId = PeerId(3);
pub(crate) const NEWCOMER_ADDR: SocketAddr = loopback(10_003);
/// Addresses no member has, and that no STUN request comes from:
/// datagrams from them are dropped.
pub(crate) const STRANGERS: [SocketAddr; 2] = [loopback(40_000), loopback(40_001)];

/// The address of STUN request source `n` of 16 (the engine learns at most 8
/// addresses per member).
pub(crate) const fn stun_source(n: u8) -> SocketAddr {
    loopback(41_000 + (n % 16) as u16)
}

/// Inputs that reach the newcomer before it joins afresh.
pub const NEWCOMER_REUSE: u32 = 32;

/// Whose ICE credentials a STUN request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StunTarget {
    /// The established speaker: signed requests come from its own address.
    Speaker,
    /// The member that never connected: from any address.
    Newcomer,
}

/// Most timer steps one [`DatagramRig::advance`] takes (a busy engine or
/// client asks to be woken every few milliseconds; a second has far fewer).
const MAX_STEPS: usize = 10_000;
/// Most rounds of datagrams going back and forth after one action.
const MAX_ROUNDS: usize = 64;
/// The longest a handshake may take in simulated time when the rig is built.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The certificate of the engine and the clients, made once per process
/// (generating one costs about a millisecond).
pub(crate) fn cert() -> &'static DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("certificate")
    })
}

/// The configuration of every engine the fuzz bodies build.
pub(crate) fn engine_config() -> EngineConfig {
    EngineConfig {
        host_candidates: vec![ENGINE_ADDR],
        dtls_cert: Some(cert().clone()),
        // The newcomer never connects, and simulated time runs fast (a
        // second per few inputs): with the default 15 s it would time out,
        // and be joined again (about 1 ms), every few inputs.
        connect_timeout: Duration::from_secs(3600),
        ..EngineConfig::new(crate::SEED)
    }
}

/// Real Opus frames (a loud tone, a quiet one, silence), encoded once.
fn opus_frames() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        [0.8, 0.05, 0.0]
            .into_iter()
            .map(|amplitude| ToneSpeaker::new(TONES[0], amplitude).next_frame().payload)
            .collect()
    })
}

/// The newcomer's offer: one receive-only m-line, the smallest a browser
/// makes, so that joining it again stays cheap.
fn newcomer_offer() -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(|| {
        let spec = ClientSpec {
            slots: 1,
            decode: false,
            log_packets: false,
            ..ClientSpec::listener()
        };
        Client::new(
            "newcomer",
            NEWCOMER_ADDR,
            &spec,
            &TONES,
            cert(),
            crate::epoch(),
        )
        .1
    })
}

/// How a fuzz input's RTP packet is made (what the speaker's str0m seals).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RtpShape {
    /// Added to the next sequence number (negative: a late or replayed one).
    pub(crate) seq_delta: i8,
    /// Added to the regular 20 ms timestamp step.
    pub(crate) ts_jitter: i16,
    pub(crate) marker: bool,
    /// RFC 6464 level and voice activity, or no extension.
    pub(crate) level: Option<(u8, Option<bool>)>,
    /// CSRCs to put in the header (0 to 3).
    pub(crate) csrcs: u8,
    /// Another payload type than the negotiated Opus one.
    pub(crate) pt: Option<u8>,
}

/// The engine and its established sessions. See the module documentation.
pub struct DatagramRig {
    engine: Engine,
    now: Instant,
    engine_timeout: Instant,
    speaker: Client,
    listener: Client,
    /// The speaker's sending m-line and Opus payload type.
    uplink: (Mid, Pt),
    /// Next sequence number and timestamp of the speaker's sealed packets.
    seq: u64,
    ts: u32,
    /// ICE names of the speaker and the newcomer (see [`IceNames`]).
    speaker_ice: IceNames,
    newcomer_ice: IceNames,
    /// An input sent the speaker a command (undo it).
    commanded: bool,
    /// An input's datagram reached the newcomer.
    newcomer_touched: bool,
    /// Inputs that reached the newcomer since it joined.
    newcomer_inputs: u32,
    rebuilds: u64,
    inputs: u64,
    /// Why it was rebuilt: a session down, a member gone.
    why: [u64; 2],
}

impl std::fmt::Debug for DatagramRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramRig")
            .field("inputs", &self.inputs)
            .field("rebuilds", &self.rebuilds)
            .finish()
    }
}

impl DatagramRig {
    /// Builds the engine and connects the speaker and the listener (real
    /// handshakes on a simulated clock starting at `start`); the newcomer
    /// joins.
    ///
    /// # Panics
    /// If the sessions do not connect (a bug in the rig or the engine, not a
    /// fuzz finding).
    pub fn new(start: Instant) -> DatagramRig {
        let mut engine = Engine::new(engine_config(), start);
        let quiet = |spec: ClientSpec| ClientSpec {
            decode: false,
            log_packets: false,
            ..spec
        };
        let (speaker, speaker_offer) = Client::new(
            "speaker",
            SPEAKER_ADDR,
            &quiet(ClientSpec::speaker(0)),
            &TONES,
            cert(),
            start,
        );
        let (listener, listener_offer) = Client::new(
            "listener",
            LISTENER_ADDR,
            &quiet(ClientSpec::listener()),
            &TONES,
            cert(),
            start,
        );
        let speaker_ice = IceNames::of_offer(&speaker_offer);
        for (peer, role, offer) in [
            (SPEAKER, Role::Speaker, speaker_offer),
            (LISTENER, Role::Listener, listener_offer),
        ] {
            join(&mut engine, start, peer, role, offer).expect("the rig's offers are accepted");
        }
        let mut rig = DatagramRig {
            engine,
            now: start,
            engine_timeout: start,
            speaker,
            listener,
            uplink: (Mid::from("0"), Pt::from(111)),
            seq: 1,
            ts: 0,
            speaker_ice,
            newcomer_ice: IceNames::of_offer(newcomer_offer()),
            commanded: false,
            newcomer_touched: false,
            newcomer_inputs: 0,
            rebuilds: 0,
            inputs: 0,
            why: [0; 2],
        };
        // The answers come out here and are applied; the clients start ICE.
        rig.pump();
        rig.uplink = rig
            .speaker
            .uplink()
            .expect("the speaker's answer has its m-line");
        let deadline = start + CONNECT_WITHIN;
        while !(rig.speaker.is_connected() && rig.listener.is_connected()) {
            assert!(rig.now < deadline, "the rig's sessions did not connect");
            let next = rig.next_wakeup();
            rig.advance_to(next);
        }
        rig.join_newcomer();
        rig
    }

    /// The simulated time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The engine (for checks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// RTP packets the listener received so far (forwarded by the engine).
    pub fn listener_packets(&self) -> usize {
        self.listener.packets_received()
    }

    /// Inputs run and times the rig was rebuilt since it was made.
    pub fn counts(&self) -> (u64, u64) {
        (self.inputs, self.rebuilds)
    }

    /// Why it was rebuilt: (a session down, a member gone).
    pub fn rebuild_reasons(&self) -> (u64, u64) {
        (self.why[0], self.why[1])
    }

    /// Whether both sessions are up and every member is there.
    pub fn is_healthy(&self) -> bool {
        self.speaker.is_connected()
            && self.listener.is_connected()
            && self.engine.peer_source(SPEAKER).is_some()
            && self.engine.peer_source(LISTENER).is_some()
            && self.engine.peer_source(NEWCOMER).is_some()
    }

    /// Counts an input (see [`counts`](Self::counts)).
    pub(crate) fn start_input(&mut self) {
        self.inputs += 1;
    }

    /// Undoes what the last input changed (see the module documentation);
    /// rebuilds when that is impossible. Returns whether it rebuilt.
    pub fn reset(&mut self) -> bool {
        let up = self.speaker.is_connected() && self.listener.is_connected();
        if up {
            if self.commanded {
                for (peer, role) in [(SPEAKER, Role::Speaker), (LISTENER, Role::Listener)] {
                    self.command(Command::SetRole { peer, role });
                    self.command(Command::SetMuted { peer, muted: false });
                }
                self.commanded = false;
            }
            self.newcomer_inputs += u32::from(std::mem::take(&mut self.newcomer_touched));
            if self.newcomer_inputs >= NEWCOMER_REUSE || self.engine.peer_source(NEWCOMER).is_none()
            {
                self.command(Command::Leave { peer: NEWCOMER });
                self.join_newcomer();
            }
            if self.is_healthy() {
                return false;
            }
        }
        let mut why = self.why;
        why[usize::from(up)] += 1;
        let (inputs, rebuilds) = (self.inputs, self.rebuilds);
        *self = DatagramRig::new(self.now);
        self.inputs = inputs;
        self.rebuilds = rebuilds + 1;
        self.why = why;
        true
    }

    fn join_newcomer(&mut self) {
        self.newcomer_inputs = 0;
        let offer = newcomer_offer().to_string();
        if join(&mut self.engine, self.now, NEWCOMER, Role::Listener, offer).is_ok() {
            self.engine
                .learn_address(NEWCOMER, NEWCOMER_ADDR, ENGINE_ADDR);
        }
        self.pump();
    }

    /// A command to the engine (refusals are fine).
    pub(crate) fn command(&mut self, command: Command) {
        if matches!(command, Command::SetMuted { .. } | Command::SetRole { .. }) {
            self.commanded = true;
        }
        let now = self.now;
        let _ = self.engine.handle_input(Input::Command { now, command });
        self.pump();
    }

    /// A datagram to the engine from `source`.
    pub(crate) fn inject(&mut self, source: SocketAddr, datagram: &[u8]) {
        if source == NEWCOMER_ADDR {
            self.newcomer_touched = true;
        }
        let now = self.now;
        let _ = self.engine.handle_input(Input::Receive {
            now,
            source,
            destination: ENGINE_ADDR,
            datagram,
        });
        self.pump();
    }

    /// A STUN binding request naming `target`'s ICE ufrag, from `source`,
    /// signed with the right password when `signed`, else with a wrong one.
    /// A signed request to the speaker always comes from the speaker's own
    /// address (from another, the engine would learn it: see the module
    /// documentation).
    pub(crate) fn stun(&mut self, target: StunTarget, source: SocketAddr, request: StunRequest) {
        let (names, source) = match target {
            StunTarget::Speaker if request.signed => (&self.speaker_ice, SPEAKER_ADDR),
            StunTarget::Speaker => (&self.speaker_ice, source),
            StunTarget::Newcomer => (&self.newcomer_ice, source),
        };
        let username = names.username();
        let msg = StunMessage::binding_request(
            &username,
            TransId::new(),
            request.controlling,
            u64::from(request.prio),
            request.prio,
            request.use_candidate,
        );
        let pass = if request.signed {
            names.pass.as_str()
        } else {
            "not-the-password"
        };
        let mut buf = [0u8; 512];
        let Ok(n) = msg.to_bytes(Some(pass.as_bytes()), &mut buf, hmac_sha1) else {
            return;
        };
        if target == StunTarget::Newcomer {
            self.newcomer_touched = true;
        }
        self.inject(source, &buf[..n]);
    }

    /// The USERNAME `target`'s STUN requests carry
    /// (`engine-ufrag:client-ufrag`), for hand-made STUN messages.
    pub(crate) fn stun_username(&mut self, target: StunTarget) -> String {
        match target {
            StunTarget::Speaker => self.speaker_ice.username(),
            StunTarget::Newcomer => {
                self.newcomer_touched = true;
                self.newcomer_ice.username()
            }
        }
    }

    /// An RTP packet the speaker's str0m seals and sends (real SRTP):
    /// `payload` or, when `None`, real Opus frame `frame`.
    pub(crate) fn speak(&mut self, shape: RtpShape, payload: Option<&[u8]>, frame: usize) {
        let frames = opus_frames();
        let payload = payload.unwrap_or(&frames[frame % frames.len()]).to_vec();
        let seq = self
            .seq
            .saturating_add_signed(i64::from(shape.seq_delta))
            .max(1);
        self.seq = self.seq.max(seq) + 1;
        self.ts = self
            .ts
            .wrapping_add(960)
            .wrapping_add_signed(i32::from(shape.ts_jitter));
        let (mid, opus) = self.uplink;
        let pt = shape.pt.map_or(opus, |p| Pt::from(p & 0x7f));
        let ext = match shape.level {
            Some((level, voice_activity)) => ExtensionValues {
                audio_level: Some(-((level & 0x7f) as i8)),
                voice_activity,
                ..Default::default()
            },
            None => ExtensionValues::default(),
        };
        let csrcs: Vec<u32> = (0..u32::from(shape.csrcs % 4)).map(|i| 7 + i).collect();
        let now = self.now;
        let mut api = self.speaker.rtc.direct_api();
        if let Some(stream) = api.stream_tx_by_mid(mid, None) {
            stream.write_rtp(
                RtpWrite::new(pt, seq.into(), self.ts, now, payload)
                    .marker(shape.marker)
                    .ext_vals(ext)
                    .csrc(&csrcs),
            );
        }
        // Wake str0m's pacer so that the packet leaves now.
        self.speaker.handle_timeout(now);
        self.pump();
    }

    /// RTCP feedback from the listener about slot stream `slot` (an SRTCP
    /// packet its str0m seals): a keyframe request (PLI or FIR) or REMB.
    pub(crate) fn feedback(&mut self, slot: usize, kind: u8) {
        let Some(&ssrc) = self.listener.streams.keys().nth(slot) else {
            return;
        };
        let mut api = self.listener.rtc.direct_api();
        if let Some(rx) = api.stream_rx(&ssrc.into()) {
            match kind % 3 {
                0 => rx.request_keyframe(KeyframeRequestKind::Pli),
                1 => rx.request_keyframe(KeyframeRequestKind::Fir),
                _ => rx.request_remb(Bitrate::kbps(u64::from(kind) * 10)),
            }
        }
        self.listener.handle_timeout(self.now);
        self.pump();
    }

    /// Moves simulated time on by `by`, doing everything due on the way
    /// (the clients' ICE consent checks and RTCP, the engine's timers).
    pub(crate) fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        self.advance_to(until);
    }

    fn next_wakeup(&self) -> Instant {
        // Not `Client::next_wakeup`: the rig sends the speaker's frames
        // itself, so its frame clock is not a deadline.
        self.engine_timeout
            .min(self.speaker.timeout)
            .min(self.listener.timeout)
    }

    fn advance_to(&mut self, until: Instant) {
        for _ in 0..MAX_STEPS {
            let next = self.next_wakeup().max(self.now);
            if next > until {
                break;
            }
            self.now = next;
            let now = self.now;
            if self.engine_timeout <= now {
                let _ = self.engine.handle_input(Input::Timeout(now));
            }
            for client in [&mut self.speaker, &mut self.listener] {
                if client.timeout <= now {
                    client.handle_timeout(now);
                }
            }
            self.pump();
        }
        self.now = self.now.max(until);
    }

    /// Carries datagrams between the engine and the clients, without delay,
    /// until nobody has anything more to send; applies answers.
    fn pump(&mut self) {
        let now = self.now;
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            loop {
                match self.engine.poll_output() {
                    Output::Transmit(t) => {
                        moved = true;
                        let client = match t.destination {
                            SPEAKER_ADDR => &mut self.speaker,
                            LISTENER_ADDR => &mut self.listener,
                            _ => continue,
                        };
                        client.receive_bytes(now, t.source, t.destination, &t.contents);
                    }
                    Output::Event(Event::Answer { peer, sdp, .. }) => {
                        if peer == SPEAKER {
                            self.speaker_ice.answered(&sdp);
                            self.speaker.accept_answer(&sdp, now);
                        } else if peer == LISTENER {
                            self.listener.accept_answer(&sdp, now);
                        } else if peer == NEWCOMER {
                            self.newcomer_ice.answered(&sdp);
                        }
                    }
                    Output::Event(_) | Output::Relay { .. } => {}
                    Output::Timeout(t) => {
                        self.engine_timeout = t;
                        break;
                    }
                }
            }
            for client in [&mut self.speaker, &mut self.listener] {
                for d in client.take_outbox() {
                    moved = true;
                    let _ = self.engine.handle_input(Input::Receive {
                        now,
                        source: client.addr,
                        destination: d.destination,
                        datagram: &d.contents,
                    });
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// Member `peer` joins channel "fuzz" with `offer`.
pub(crate) fn join(
    engine: &mut Engine,
    now: Instant,
    peer: PeerId,
    role: Role,
    offer: String,
) -> Result<(), media_core::Error> {
    engine.handle_input(Input::Command {
        now,
        command: Command::Join {
            peer,
            channel: "fuzz".into(),
            identity: "fuzz".into(),
            role,
            offer,
        },
    })
}

/// A STUN binding request's fields (see [`DatagramRig::stun`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StunRequest {
    pub(crate) signed: bool,
    pub(crate) use_candidate: bool,
    pub(crate) controlling: bool,
    pub(crate) prio: u32,
}

/// The ICE credentials a member's STUN requests use.
#[derive(Debug, Default)]
struct IceNames {
    /// The engine's ufrag and password for the member (from the answer).
    ufrag: String,
    pass: String,
    /// The client's own ufrag (from its offer).
    remote: String,
}

impl IceNames {
    fn of_offer(offer: &str) -> IceNames {
        IceNames {
            remote: sdp_attribute(offer, "a=ice-ufrag:"),
            ..Default::default()
        }
    }

    fn answered(&mut self, answer: &str) {
        self.ufrag = sdp_attribute(answer, "a=ice-ufrag:");
        self.pass = sdp_attribute(answer, "a=ice-pwd:");
    }

    fn username(&self) -> String {
        format!("{}:{}", self.ufrag, self.remote)
    }
}

/// The value of the first `name` line of an SDP (empty when there is none).
fn sdp_attribute(sdp: &str, name: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .unwrap_or_default()
        .to_string()
}

/// HMAC-SHA1 for STUN MESSAGE-INTEGRITY (RFC 5389 §15.4), str0m's.
fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    str0m::crypto::from_feature_flags()
        .sha1_hmac_provider
        .sha1_hmac(key, parts)
}
