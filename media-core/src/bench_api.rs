//! Thin public facades over crate-private parts of the engine, for the
//! criterion benches in `benches/` only (feature `_internal_test_exports`).
//! Not an API: it may change with any commit.
//!
//! Each facade holds the real type and forwards to it; nothing here adds
//! behaviour, so what the benches time is what the engine runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::demux::{self, Route};
use crate::dominant::DominantSpeakerDetector;
use crate::selection::SpeakerSelector;
use crate::{EngineConfig, SourceId};

/// The per-packet loudest-N selector of one channel
/// (`selection::SpeakerSelector`), built from a config as a channel builds it.
#[derive(Debug)]
pub struct Selector(SpeakerSelector);

impl Selector {
    /// The selector a channel of an engine with `config` gets.
    pub fn new(config: &EngineConfig) -> Self {
        Selector(SpeakerSelector::new(
            config.slots_per_listener,
            config.speech_expiry,
            config.switch_hysteresis_db,
            config.speech_level,
        ))
    }

    /// `SpeakerSelector::on_packet`: feeds one packet's level; true when the
    /// selection changed.
    #[inline]
    pub fn on_packet(&mut self, source: SourceId, level: u8, speech: bool, now: Instant) -> bool {
        self.0.on_packet(source, level, speech, now)
    }

    /// `SpeakerSelector::pin`: pins the dominant speaker; true when the
    /// selection changed.
    #[inline]
    pub fn pin(&mut self, source: Option<SourceId>, now: Instant) -> bool {
        self.0.pin(source, now)
    }

    /// The selected voices.
    pub fn selected(&self) -> &[SourceId] {
        self.0.selected()
    }
}

/// The dominant speaker detector of one channel (`dominant::DominantSpeakerDetector`).
#[derive(Debug, Default)]
pub struct Dominant(DominantSpeakerDetector<SourceId>);

impl Dominant {
    /// The decision interval the engine uses by default (300 ms).
    pub const DECISION_INTERVAL: Duration = DominantSpeakerDetector::<SourceId>::DECISION_INTERVAL;

    /// An empty detector.
    pub fn new() -> Self {
        Self::default()
    }

    /// `DominantSpeakerDetector::record_level`: one packet's RFC 6464 level.
    #[inline]
    pub fn record_level(&mut self, source: SourceId, level: u8, now: Instant) {
        self.0.record_level(source, level, now);
    }

    /// `DominantSpeakerDetector::decide`: `Some` when the dominant speaker changed.
    #[inline]
    pub fn decide(&mut self, now: Instant) -> Option<SourceId> {
        self.0.decide(now)
    }

    /// The current dominant speaker.
    pub fn dominant(&self) -> Option<SourceId> {
        self.0.dominant()
    }
}

/// Where [`Demux::route`] sends a datagram (`demux::Route`, with the peer's
/// slab index as a plain `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemuxRoute {
    /// A known 4-tuple.
    Known(u32),
    /// A STUN binding request naming a peer, from a new address, whose
    /// MESSAGE-INTEGRITY verifies with that peer's password.
    NewAddress(u32),
    /// A STUN binding request naming a peer, with a bad MESSAGE-INTEGRITY.
    BadIntegrity,
    /// Nobody.
    Unknown,
    /// STUN that does not parse.
    BadStun,
}

/// The engine's datagram → peer table (`demux::Demux`).
#[derive(Debug, Default)]
pub struct Demux(demux::Demux);

impl Demux {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a peer's local ICE ufrag and password, as a join does.
    pub fn add_ufrag(&mut self, ufrag: String, pass: String, key: u32) {
        self.0.add_ufrag(ufrag, pass, key);
    }

    /// Registers a 4-tuple of a peer, as a verified binding request does.
    pub fn add_tuple(&mut self, source: SocketAddr, destination: SocketAddr, key: u32) {
        self.0.add_tuple(source, destination, key);
    }

    /// `Demux::route`: the peer a datagram belongs to.
    #[inline]
    pub fn route(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> DemuxRoute {
        match self.0.route(source, destination, datagram) {
            Route::Known(k) => DemuxRoute::Known(k),
            Route::NewAddress(k) => DemuxRoute::NewAddress(k),
            Route::BadIntegrity => DemuxRoute::BadIntegrity,
            Route::Unknown => DemuxRoute::Unknown,
            Route::BadStun => DemuxRoute::BadStun,
        }
    }
}

/// The engine's HMAC-SHA1 (STUN MESSAGE-INTEGRITY), for building requests
/// and for the baseline of the STUN demux bench.
pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    demux::hmac_sha1(key, parts)
}
