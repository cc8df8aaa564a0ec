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
    /// Audio packets that were not Opus on the negotiated payload type (nor
    /// well-formed RED with an Opus primary, where RED was negotiated).
    pub dropped_wrong_codec: u64,
    /// Audio packets from voices not selected as active speakers.
    pub not_selected: u64,
    /// Packets of a voice that arrived too late, after its slot moved on.
    pub dropped_stale: u64,
    /// Opus payloads that failed to decode when measuring their level.
    pub level_decode_errors: u64,
    /// Relay messages received from other engines.
    pub relay_in: u64,
    /// Relay messages sent to other engines.
    pub relay_out: u64,
    /// Relay messages for a channel this engine does not carry, over a link
    /// that is not open or is neither the channel's upstream nor a
    /// subscriber, or about a voice the link may not speak for (one another
    /// engine numbered: see [`SourceId`](crate::SourceId)).
    pub dropped_relay: u64,
    /// Relay messages refused because their link reached a limit: a new
    /// voice past `EngineConfig::max_sources_per_link`, a subscription past
    /// `max_channels_per_link`.
    pub dropped_relay_limit: u64,
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
    /// Peers whose DTLS instance was let go: their first SRTP or SRTCP
    /// after the handshake showed that both ends have the keys (DTLS 1.2;
    /// the engine sends their slots itself).
    pub dtls_released: u64,
    /// Packets the engine could not seal (a crypto library error; never
    /// expected).
    pub dropped_seal: u64,
}

impl std::ops::AddAssign<&EngineStats> for EngineStats {
    /// Adds another engine's counters (several workers of one node).
    fn add_assign(&mut self, rhs: &EngineStats) {
        // Destructured without `..`: a counter added to the struct and
        // forgotten here is a compile error, not a metric silently missing.
        let EngineStats {
            datagrams_in,
            bytes_in,
            datagrams_out,
            bytes_out,
            rtp_in,
            rtp_forwarded,
            dropped_unknown_source,
            dropped_malformed,
            dropped_rejected,
            dropped_address_limit,
            dropped_not_allowed,
            dropped_wrong_codec,
            not_selected,
            dropped_stale,
            level_decode_errors,
            relay_in,
            relay_out,
            dropped_relay,
            dropped_relay_limit,
            speaker_switches,
            peers_joined,
            peers_connected,
            peers_failed,
            peers_direct,
            peers_str0m_send,
            sender_reports,
            dtls_released,
            dropped_seal,
        } = *rhs;
        self.datagrams_in += datagrams_in;
        self.bytes_in += bytes_in;
        self.datagrams_out += datagrams_out;
        self.bytes_out += bytes_out;
        self.rtp_in += rtp_in;
        self.rtp_forwarded += rtp_forwarded;
        self.dropped_unknown_source += dropped_unknown_source;
        self.dropped_malformed += dropped_malformed;
        self.dropped_rejected += dropped_rejected;
        self.dropped_address_limit += dropped_address_limit;
        self.dropped_not_allowed += dropped_not_allowed;
        self.dropped_wrong_codec += dropped_wrong_codec;
        self.not_selected += not_selected;
        self.dropped_stale += dropped_stale;
        self.level_decode_errors += level_decode_errors;
        self.relay_in += relay_in;
        self.relay_out += relay_out;
        self.dropped_relay += dropped_relay;
        self.dropped_relay_limit += dropped_relay_limit;
        self.speaker_switches += speaker_switches;
        self.peers_joined += peers_joined;
        self.peers_connected += peers_connected;
        self.peers_failed += peers_failed;
        self.peers_direct += peers_direct;
        self.peers_str0m_send += peers_str0m_send;
        self.sender_reports += sender_reports;
        self.dtls_released += dtls_released;
        self.dropped_seal += dropped_seal;
    }
}

#[cfg(test)]
mod tests {
    use super::EngineStats;

    #[test]
    fn add_assign_sums_every_counter() {
        let one = EngineStats {
            datagrams_in: 1,
            bytes_in: 2,
            datagrams_out: 3,
            bytes_out: 4,
            rtp_in: 5,
            rtp_forwarded: 6,
            dropped_unknown_source: 7,
            dropped_malformed: 8,
            dropped_rejected: 9,
            dropped_address_limit: 10,
            dropped_not_allowed: 11,
            dropped_wrong_codec: 12,
            not_selected: 13,
            dropped_stale: 14,
            level_decode_errors: 15,
            relay_in: 16,
            relay_out: 17,
            dropped_relay: 18,
            dropped_relay_limit: 27,
            speaker_switches: 19,
            peers_joined: 20,
            peers_connected: 21,
            peers_failed: 22,
            peers_direct: 23,
            peers_str0m_send: 24,
            sender_reports: 25,
            dtls_released: 28,
            dropped_seal: 26,
        };
        let mut total = EngineStats::default();
        total += &one;
        total += &one;
        assert_eq!(total.relay_in, 2 * one.relay_in);
        assert_eq!(total.dropped_relay, 2 * one.dropped_relay);
        let mut doubled = one.clone();
        doubled.datagrams_in *= 2;
        doubled.bytes_in *= 2;
        doubled.datagrams_out *= 2;
        doubled.bytes_out *= 2;
        doubled.rtp_in *= 2;
        doubled.rtp_forwarded *= 2;
        doubled.dropped_unknown_source *= 2;
        doubled.dropped_malformed *= 2;
        doubled.dropped_rejected *= 2;
        doubled.dropped_address_limit *= 2;
        doubled.dropped_not_allowed *= 2;
        doubled.dropped_wrong_codec *= 2;
        doubled.not_selected *= 2;
        doubled.dropped_stale *= 2;
        doubled.level_decode_errors *= 2;
        doubled.relay_in *= 2;
        doubled.relay_out *= 2;
        doubled.dropped_relay *= 2;
        doubled.dropped_relay_limit *= 2;
        doubled.speaker_switches *= 2;
        doubled.peers_joined *= 2;
        doubled.peers_connected *= 2;
        doubled.peers_failed *= 2;
        doubled.peers_direct *= 2;
        doubled.peers_str0m_send *= 2;
        doubled.sender_reports *= 2;
        doubled.dtls_released *= 2;
        doubled.dropped_seal *= 2;
        assert_eq!(total, doubled);
    }
}
