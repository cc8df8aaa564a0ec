//! Engine configuration: everything the engine needs from the outside world
//! except time and datagrams.

use std::net::SocketAddr;
use std::time::Duration;

use str0m::config::DtlsCert;

use crate::EngineId;

/// Configuration of an [`Engine`](crate::Engine).
///
/// Made with [`EngineConfig::new`] from a seed (there is no `Default`: a
/// seed everybody shares would make every engine's ICE credentials the same
/// and public); every other field has a sane default.
#[derive(Clone)]
pub struct EngineConfig {
    /// The key of the engine's random generator (ChaCha20), from which every
    /// random choice it makes comes: ICE credentials, initial RTP sequence
    /// numbers and timestamps of slots.
    ///
    /// **Fill it from the operating system's secure generator** for every
    /// engine (`aws_lc_rs::rand::fill`, `getrandom::fill`, ...): whoever
    /// knows the seed knows every peer's ICE password and can move or cut
    /// its media with forged STUN. The engine never reads the operating
    /// system itself (it does no I/O), so that a test passing fixed bytes
    /// replays the same decisions.
    pub seed: [u8; 32],
    /// This engine's number, unique among the engines that share channels
    /// (the worker threads of a node, the nodes of a cluster): the high bits
    /// of every [`SourceId`](crate::SourceId) it gives out. Default 0 (one
    /// engine on its own).
    pub engine_id: EngineId,
    /// Addresses at which clients reach this engine's UDP socket. Each becomes
    /// an ICE host candidate in every answer. The engine sends from exactly
    /// these addresses.
    pub host_candidates: Vec<SocketAddr>,
    /// Receive slots a listener gets at most (the number of voices it hears at
    /// once), and so the number of active speakers selected per channel.
    /// Between 1 and 32 (clamped).
    pub slots_per_listener: usize,
    /// How loud a packet must be to count as speech, in RFC 6464 units
    /// (`0` = 0 dBov, `127` = silence): 60 means louder than -60 dBov. A
    /// sender's voice-activity bit moves this bar (10 dB lower with V = 1,
    /// 20 dB higher with V = 0) but never vetoes loud audio.
    pub speech_level: u8,
    /// A selected speaker that has not sent speech for this long may be
    /// replaced by any new speaker, however quiet.
    pub speech_expiry: Duration,
    /// A new speaker replaces a still-active one only when it is this many dB
    /// louder, so that two similar voices do not flap between slots.
    pub switch_hysteresis_db: u8,
    /// How often dominant-speaker and active-speaker events are decided.
    pub dominant_interval: Duration,
    /// A peer that has not connected (ICE + DTLS) this long after joining is
    /// dropped with [`LeaveReason::ConnectTimeout`](crate::LeaveReason).
    pub connect_timeout: Duration,
    /// How many distinct client addresses one peer may be reached from (ICE
    /// candidates it tries); bounds the demux table against address spraying.
    pub max_addrs_per_peer: usize,
    /// The DTLS certificate presented to every peer. Generated once per engine
    /// when not given (generation costs about a millisecond).
    pub dtls_cert: Option<DtlsCert>,
    /// Send forwarded audio with the engine's own RTP writer and SRTP
    /// sealing, using the keys of each peer's DTLS handshake, instead of
    /// str0m's per-stream send path: about an order of magnitude less work
    /// per (packet, listener) (BENCHMARKS.md). `false` keeps everything in
    /// str0m (for comparison; behaviour is the same).
    pub direct_srtp: bool,
    /// Hall mode: members who join as listeners receive two consecutive
    /// 20 ms Opus frames of a voice in one 40 ms packet (RFC 6716 §3.2;
    /// nothing is decoded): half the packets and about a third fewer bytes
    /// per listener, for 20 ms more latency. Speakers keep 20 ms packets.
    /// Decided at the join (a listener made a speaker keeps 40 ms
    /// packets). Default `false`.
    pub pack_listeners: bool,
    /// Accept RFC 2198 redundant audio (RED) for Opus where a client offers
    /// it (Chromium does): a sender's RED goes unchanged to listeners whose
    /// slots negotiated RED (they can fill a lost packet from the next one,
    /// at the cost of the redundant bytes), its plain Opus primary to the
    /// others and over relay links. `false` answers Opus only.
    pub red: bool,
    /// The wall-clock time at the `now` given to `Engine::new`, for the NTP
    /// timestamps of RTCP sender reports. Without it they count from
    /// 1970-01-01 at that instant (receivers only use differences).
    pub wallclock_at_start: Option<std::time::SystemTime>,
    /// (origin) Most voices one link may bring into this engine, all
    /// channels together; a voice past it is dropped and counted
    /// (`EngineStats::dropped_relay_limit`) until one of the link's voices
    /// leaves. Default 1024.
    pub max_sources_per_link: usize,
    /// (origin) Most channels one link may subscribe to; a subscription past
    /// it is dropped and counted (`EngineStats::dropped_relay_limit`).
    /// Default 4096.
    pub max_channels_per_link: usize,
}

impl EngineConfig {
    /// The default settings with the random generator keyed by `seed`: 32
    /// bytes from the operating system's secure generator in production,
    /// fixed bytes in tests (see [`EngineConfig::seed`]).
    pub fn new(seed: [u8; 32]) -> Self {
        EngineConfig {
            seed,
            engine_id: EngineId::default(),
            host_candidates: Vec::new(),
            slots_per_listener: 3,
            speech_level: 60,
            speech_expiry: Duration::from_millis(150),
            switch_hysteresis_db: 6,
            dominant_interval:
                crate::dominant::DominantSpeakerDetector::<crate::SourceId>::DECISION_INTERVAL,
            connect_timeout: Duration::from_secs(15),
            max_addrs_per_peer: 8,
            dtls_cert: None,
            direct_srtp: true,
            pack_listeners: false,
            red: true,
            wallclock_at_start: None,
            max_sources_per_link: 1024,
            max_channels_per_link: 4096,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("seed", &"<32 bytes>")
            .field("engine_id", &self.engine_id)
            .field("host_candidates", &self.host_candidates)
            .field("slots_per_listener", &self.slots_per_listener)
            .field("speech_level", &self.speech_level)
            .field("speech_expiry", &self.speech_expiry)
            .field("switch_hysteresis_db", &self.switch_hysteresis_db)
            .field("dominant_interval", &self.dominant_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_addrs_per_peer", &self.max_addrs_per_peer)
            .field("dtls_cert", &self.dtls_cert.is_some())
            .field("direct_srtp", &self.direct_srtp)
            .field("red", &self.red)
            .field("wallclock_at_start", &self.wallclock_at_start)
            .field("max_sources_per_link", &self.max_sources_per_link)
            .field("max_channels_per_link", &self.max_channels_per_link)
            .finish()
    }
}
