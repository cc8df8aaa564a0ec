//! O(1) demultiplexing of datagrams to peers.
//!
//! Every datagram is routed by its 4-tuple (client address, engine address).
//! A 4-tuple is learned from a STUN binding request whose USERNAME
//! (`engine-ufrag:client-ufrag`, RFC 8445 §7.2.2) names a peer's local ICE
//! ufrag; str0m then checks the request's MESSAGE-INTEGRITY with that peer's
//! password. Nothing is ever found by asking each peer in turn.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::ice::StunMessage;

use crate::datagram::DatagramKind;

/// Slab index of a peer.
pub(crate) type PeerKey = u32;

/// HMAC-SHA1 over `parts` (STUN MESSAGE-INTEGRITY, RFC 5389 §15.4).
pub(crate) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[derive(Debug, Default)]
pub(crate) struct Demux {
    by_tuple: HashMap<(SocketAddr, SocketAddr), PeerKey>,
    /// Local ufrag → (peer, local ICE password).
    by_ufrag: HashMap<String, (PeerKey, String)>,
}

/// Where a datagram goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A known 4-tuple.
    Known(PeerKey),
    /// A STUN request naming a peer from an address not yet known for it,
    /// with a valid MESSAGE-INTEGRITY for that peer's password.
    NewAddress(PeerKey),
    /// A STUN request naming a peer whose MESSAGE-INTEGRITY does not verify.
    BadIntegrity,
    /// Nobody: from an unknown address and not a STUN request naming a peer.
    Unknown,
    /// STUN that does not parse.
    BadStun,
}

impl Demux {
    pub(crate) fn route(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> Route {
        if let Some(k) = self.by_tuple.get(&(source, destination)) {
            return Route::Known(*k);
        }
        if DatagramKind::of(datagram) != DatagramKind::Stun {
            return Route::Unknown;
        }
        let Ok(msg) = StunMessage::parse(datagram) else {
            return Route::BadStun;
        };
        if !msg.is_binding_request() {
            return Route::Unknown;
        }
        let Some((key, pass)) = msg
            .split_username()
            .and_then(|(local, _)| self.by_ufrag.get(local))
        else {
            return Route::Unknown;
        };
        // Learn an address only from a request that proves it knows the
        // peer's password (RFC 8445 §7.3), so that nobody can steer a peer's
        // table, or fill it, with the ufrag alone (it is in the SDP).
        if msg.verify(pass.as_bytes(), hmac_sha1) {
            Route::NewAddress(*key)
        } else {
            Route::BadIntegrity
        }
    }

    pub(crate) fn add_ufrag(&mut self, ufrag: String, pass: String, key: PeerKey) {
        self.by_ufrag.insert(ufrag, (key, pass));
    }

    /// The peer's local ICE credentials changed (an ICE restart): requests
    /// naming `old` are no longer its.
    pub(crate) fn replace_ufrag(&mut self, old: &str, ufrag: String, pass: String, key: PeerKey) {
        if self.by_ufrag.get(old).is_some_and(|(k, _)| *k == key) {
            self.by_ufrag.remove(old);
        }
        self.by_ufrag.insert(ufrag, (key, pass));
    }

    /// Forgets addresses a peer was reached from.
    pub(crate) fn remove_tuples(&mut self, tuples: &[(SocketAddr, SocketAddr)]) {
        for t in tuples {
            self.by_tuple.remove(t);
        }
    }

    pub(crate) fn add_tuple(&mut self, source: SocketAddr, destination: SocketAddr, key: PeerKey) {
        self.by_tuple.insert((source, destination), key);
    }

    /// Forgets a peer: its ufrag and the tuples it was reached from.
    pub(crate) fn remove(&mut self, ufrag: &str, tuples: &[(SocketAddr, SocketAddr)]) {
        self.by_ufrag.remove(ufrag);
        for t in tuples {
            self.by_tuple.remove(t);
        }
    }
}
