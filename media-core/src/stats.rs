//! Counters the engine keeps: traffic, and every kind of input it dropped.

/// Engine-wide counters, monotonic since the engine started.
///
/// Every datagram or packet the engine does not use is counted under one of
/// the `dropped_*` fields, so an operator can tell bad input from loss.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Datagrams handed to the engine.
    pub datagrams_in: u64,
    /// Bytes handed to the engine.
    pub bytes_in: u64,
    /// Datagrams the engine asked to send.
    pub datagrams_out: u64,
    /// Bytes the engine asked to send.
    pub bytes_out: u64,
    /// Audio packets received from peers.
    pub rtp_in: u64,
    /// Packets forwarded to a listener slot (one per packet and listener).
    pub rtp_forwarded: u64,
    /// Datagrams from an address no peer is known at, that did not name a peer.
    pub dropped_unknown_source: u64,
    /// Datagrams that are not STUN, DTLS, RTP or RTCP, or do not parse as such.
    pub dropped_malformed: u64,
    /// Datagrams the peer's WebRTC stack rejected (bad SRTP, bad STUN
    /// integrity, DTLS errors…).
    pub dropped_rejected: u64,
    /// STUN requests that would have added an address past `max_addrs_per_peer`.
    pub dropped_address_limit: u64,
    /// Audio from listeners or server-muted members (not routed).
    pub dropped_not_allowed: u64,
    /// Audio packets that were not Opus on the negotiated payload type.
    pub dropped_wrong_codec: u64,
    /// Audio packets from sources not selected as active speakers.
    pub not_selected: u64,
    /// Packets of a source that arrived too late, after its slot moved on.
    pub dropped_stale: u64,
    /// Opus payloads that failed to decode when measuring their level.
    pub level_decode_errors: u64,
    /// Relay messages received from other engines.
    pub relay_in: u64,
    /// Relay messages sent to other engines.
    pub relay_out: u64,
    /// Relay messages for a channel this engine does not carry, or from a
    /// link that is neither the channel's upstream nor a subscriber.
    pub dropped_relay: u64,
    /// Changes of the selected speakers of any channel.
    pub speaker_switches: u64,
    /// Peers that joined.
    pub peers_joined: u64,
    /// Peers that connected (ICE + DTLS).
    pub peers_connected: u64,
    /// Peers that failed or timed out.
    pub peers_failed: u64,
    /// Connected peers whose slots the engine sends itself, sealing with
    /// their SRTP keys (the fast path; see `EngineConfig::direct_srtp`).
    pub peers_direct: u64,
    /// Connected peers whose slots go through str0m's send path.
    pub peers_str0m_send: u64,
    /// RTCP sender reports the engine sent for slots it sends itself.
    pub sender_reports: u64,
    /// Packets the engine could not seal (a crypto library error; never
    /// expected).
    pub dropped_seal: u64,
}
