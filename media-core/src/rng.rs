//! The engine's random number generator: ChaCha20 seeded from the config.
//!
//! The engine never reads an unseeded RNG: every random choice it makes (ICE
//! credentials, initial sequence numbers and timestamps of slots) comes from
//! this generator, seeded from [`EngineConfig::seed`](crate::EngineConfig::seed),
//! so a test that fixes the seed replays the same decisions.
//!
//! It must be a cryptographic generator: a peer's ICE password is what a
//! STUN binding request from a new address must be signed with before the
//! engine sends that peer's media there (RFC 8445 §7.2.2). With a generator
//! whose state can be recovered from a few outputs (SplitMix64 was one: its
//! output function is invertible), anyone who sees one value it produced
//! could compute every other peer's password, and move or cut their media.
//! ChaCha20 (RFC 8439) as a generator reveals nothing of its key or of other
//! outputs from the ones it gives out.

use chacha20::ChaCha20Rng;
use rand_core::{Rng as _, SeedableRng};

/// ChaCha20 keyed by the 32-byte seed.
pub(crate) struct Rng(ChaCha20Rng);

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state is the key of every credential the engine hands out.
        f.write_str("Rng(ChaCha20)")
    }
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        Rng(ChaCha20Rng::from_seed(seed))
    }

    /// The next 32 random bits.
    pub(crate) fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// A string of `len` characters from the ICE character set
    /// ([RFC 8839 §5.4](https://www.rfc-editor.org/rfc/rfc8839#section-5.4): ALPHA / DIGIT / "+" / "/"):
    /// 6 random bits per character (the alphabet has 64 symbols, so every
    /// one is equally likely).
    pub(crate) fn ice_string(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..len)
            .map(|_| ALPHABET[(self.next_u32() & 63) as usize] as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is ChaCha20 with the seed as key, nonce 0, counter 0:
    /// RFC 8439 §2.3.2's all-zero-key keystream starts 76 b8 e0 ad a0 f1 3d 90.
    #[test]
    fn is_chacha20_keyed_by_the_seed() {
        let mut r = Rng::from_seed([0; 32]);
        assert_eq!(r.next_u32().to_le_bytes(), [0x76, 0xb8, 0xe0, 0xad]);
        assert_eq!(r.next_u32().to_le_bytes(), [0xa0, 0xf1, 0x3d, 0x90]);
    }

    #[test]
    fn same_seed_same_sequence_different_seed_different() {
        let run = |seed: [u8; 32]| {
            let mut r = Rng::from_seed(seed);
            (0..4).map(|_| r.next_u32()).collect::<Vec<u32>>()
        };
        let mut other = [7u8; 32];
        other[31] ^= 1;
        assert_eq!(run([7; 32]), run([7; 32]));
        assert_ne!(run([7; 32]), run(other));
    }

    #[test]
    fn ice_strings_use_the_whole_ice_alphabet() {
        let mut r = Rng::from_seed([1; 32]);
        let s = r.ice_string(24);
        assert_eq!(s.len(), 24);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
        // 64 × 100 characters: every symbol shows up.
        let many = r.ice_string(6400);
        let distinct: std::collections::BTreeSet<u8> = many.bytes().collect();
        assert_eq!(distinct.len(), 64);
    }
}
