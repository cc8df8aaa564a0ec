//! A small seeded random number generator.
//!
//! The engine never reads an unseeded RNG: every random choice it makes (ICE
//! credentials, initial sequence numbers and timestamps of slots) comes from
//! this generator, seeded from [`EngineConfig::seed`](crate::EngineConfig::seed),
//! so a test that fixes the seed replays the same decisions. Public so that
//! the test kit's simulated loss and talk patterns replay the same way from
//! the same code.

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough for
/// identifiers that must be unpredictable to nobody but unique per engine.
/// Not a cryptographic generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A uniform number in `0.0..1.0` (53 random bits).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A string of `len` characters from the ICE character set
    /// ([RFC 8839 §5.4](https://www.rfc-editor.org/rfc/rfc8839#section-5.4): ALPHA / DIGIT / "+" / "/").
    pub(crate) fn ice_string(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..len)
            .map(|_| ALPHABET[(self.next_u64() % 64) as usize] as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_different_seed_different() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let xa: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn ice_strings_use_the_ice_alphabet() {
        let mut r = Rng::new(1);
        let s = r.ice_string(24);
        assert_eq!(s.len(), 24);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
    }
}
