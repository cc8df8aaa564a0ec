//! How often one client address and one token may join: token buckets, one
//! per key, refilled continuously (a bucket holds a minute's allowance, so
//! a burst of that many is fine, then joins come at the average rate).
//!
//! Sans-IO: `now` comes in with every call. The tables are bounded: idle
//! buckets (full again, so forgetting them changes nothing) are dropped
//! when a table fills; a table still full then refuses new keys, which
//! takes more distinct addresses (or tokens) joining within one minute than
//! a node can serve joins.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;

/// Keys a table holds at most.
pub const MAX_KEYS: usize = 65_536;

/// Why a join is refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// The client address used up its allowance; try again after this long.
    Address(Duration),
    /// The token used up its allowance; try again after this long.
    Token(Duration),
    /// The table of keys is full of active ones.
    TableFull,
}

/// The key of a client address: an IPv4 address, or an IPv6 address's
/// /64 (one subscriber's network: a host there has 2^64 addresses to
/// rotate through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// An IPv4 address (IPv4-mapped IPv6 included).
    V4([u8; 4]),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl AddressKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                AddressKey::V6Prefix(prefix)
            }
        }
    }
}

/// The key of a token: SHA-256 of its `jti` claim when it has one (a token
/// minted again with the same id shares the allowance), else of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The key of `token`, whose verified claims had `jti`.
    pub fn of(token: &str, jti: Option<&str>) -> TokenKey {
        let mut ctx = digest::Context::new(&digest::SHA256);
        match jti {
            Some(id) => {
                ctx.update(b"jti\0");
                ctx.update(id.as_bytes());
            }
            None => {
                ctx.update(b"token\0");
                ctx.update(token.as_bytes());
            }
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        TokenKey(key)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Joins left, fractional while refilling.
    left: f64,
    /// When `left` was last brought up to date.
    at: Instant,
}

/// One table of buckets.
#[derive(Debug)]
struct Buckets<K> {
    /// Allowance per minute; 0: no limit.
    per_minute: u32,
    map: HashMap<K, Bucket>,
    max_keys: usize,
}

enum Taken {
    Yes,
    RetryAfter(Duration),
    TableFull,
}

impl<K: Eq + Hash + Copy> Buckets<K> {
    fn new(per_minute: u32, max_keys: usize) -> Self {
        Buckets {
            per_minute,
            map: HashMap::new(),
            max_keys,
        }
    }

    /// Joins a bucket regains per second.
    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    /// `b` brought up to `now`.
    fn refill(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            left: (b.left + elapsed * self.rate()).min(self.capacity()),
            at: now,
        }
    }

    fn take(&mut self, key: K, now: Instant) -> Taken {
        if self.per_minute == 0 {
            return Taken::Yes;
        }
        let bucket = match self.map.get(&key) {
            Some(b) => self.refill(*b, now),
            None => {
                if self.map.len() >= self.max_keys {
                    self.forget_idle(now);
                    if self.map.len() >= self.max_keys {
                        return Taken::TableFull;
                    }
                }
                Bucket {
                    left: self.capacity(),
                    at: now,
                }
            }
        };
        if bucket.left >= 1.0 {
            self.map.insert(
                key,
                Bucket {
                    left: bucket.left - 1.0,
                    ..bucket
                },
            );
            Taken::Yes
        } else {
            self.map.insert(key, bucket);
            let wait = (1.0 - bucket.left) / self.rate();
            Taken::RetryAfter(Duration::from_secs_f64(wait))
        }
    }

    /// Drops the buckets that are full again: a fresh bucket is the same.
    fn forget_idle(&mut self, now: Instant) {
        let (rate, capacity) = (self.rate(), self.capacity());
        self.map.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.left + elapsed * rate < capacity
        });
    }
}

/// The join allowances of client addresses and of tokens.
#[derive(Debug)]
pub struct JoinRates {
    addresses: Buckets<AddressKey>,
    tokens: Buckets<TokenKey>,
}

impl JoinRates {
    /// Allowances per minute (0: no limit).
    pub fn new(per_address: u32, per_token: u32) -> JoinRates {
        JoinRates::with_max_keys(per_address, per_token, MAX_KEYS)
    }

    /// With tables of at most `max_keys` keys each.
    pub fn with_max_keys(per_address: u32, per_token: u32, max_keys: usize) -> JoinRates {
        JoinRates {
            addresses: Buckets::new(per_address, max_keys),
            tokens: Buckets::new(per_token, max_keys),
        }
    }

    /// One join attempt from `ip`, counted whether or not it is then
    /// authorized (so that guessing tokens costs allowance too).
    pub fn take_address(&mut self, ip: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        match self.addresses.take(AddressKey::of(ip), now) {
            Taken::Yes => Ok(()),
            Taken::RetryAfter(d) => Err(RateRefusal::Address(d)),
            Taken::TableFull => Err(RateRefusal::TableFull),
        }
    }

    /// One join with a verified token.
    pub fn take_token(&mut self, key: TokenKey, now: Instant) -> Result<(), RateRefusal> {
        match self.tokens.take(key, now) {
            Taken::Yes => Ok(()),
            Taken::RetryAfter(d) => Err(RateRefusal::Token(d)),
            Taken::TableFull => Err(RateRefusal::TableFull),
        }
    }

    /// Keys held now (addresses, tokens).
    pub fn keys(&self) -> (usize, usize) {
        (self.addresses.map.len(), self.tokens.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_of_a_minute_then_the_average_rate() {
        let t0 = Instant::now();
        let mut r = JoinRates::new(6, 0);
        for _ in 0..6 {
            r.take_address(ip("192.0.2.1"), t0).unwrap();
        }
        // The 7th waits for one join's worth: 10 s at 6 a minute.
        let Err(RateRefusal::Address(wait)) = r.take_address(ip("192.0.2.1"), t0) else {
            panic!("the 7th join in a burst of 6 passed");
        };
        assert_eq!(wait.as_secs_f64().round(), 10.0);
        // Another address is not affected.
        r.take_address(ip("192.0.2.2"), t0).unwrap();
        // 10 s later one more passes, and only one.
        let t1 = t0 + Duration::from_secs(10);
        r.take_address(ip("192.0.2.1"), t1).unwrap();
        assert!(r.take_address(ip("192.0.2.1"), t1).is_err());
        // A minute's rest fills the bucket again, not beyond.
        let t2 = t1 + Duration::from_secs(600);
        for _ in 0..6 {
            r.take_address(ip("192.0.2.1"), t2).unwrap();
        }
        assert!(r.take_address(ip("192.0.2.1"), t2).is_err());
    }

    #[test]
    fn a_replayed_token_is_limited_wherever_it_comes_from() {
        let t0 = Instant::now();
        let mut r = JoinRates::new(0, 3);
        let key = TokenKey::of("a.b.c", None);
        for i in 0..3 {
            r.take_address(ip(&format!("198.51.100.{i}")), t0).unwrap();
            r.take_token(key, t0).unwrap();
        }
        assert!(matches!(r.take_token(key, t0), Err(RateRefusal::Token(_))));
        // The same jti in another token shares the allowance; other
        // tokens do not.
        let a = TokenKey::of("x", Some("id-1"));
        assert_eq!(a, TokenKey::of("y", Some("id-1")));
        assert_ne!(a, TokenKey::of("id-1", None));
        assert_ne!(key, TokenKey::of("a.b.d", None));
        r.take_token(TokenKey::of("a.b.d", None), t0).unwrap();
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let t0 = Instant::now();
        let mut r = JoinRates::new(2, 0);
        r.take_address(ip("2001:db8:1:2::1"), t0).unwrap();
        r.take_address(ip("2001:db8:1:2:ffff::9"), t0).unwrap();
        assert!(r.take_address(ip("2001:db8:1:2::77"), t0).is_err());
        r.take_address(ip("2001:db8:1:3::1"), t0).unwrap();
        // IPv4-mapped addresses are their IPv4 address.
        assert_eq!(
            AddressKey::of(ip("::ffff:192.0.2.7")),
            AddressKey::of(ip("192.0.2.7"))
        );
    }

    #[test]
    fn zero_is_no_limit() {
        let t0 = Instant::now();
        let mut r = JoinRates::new(0, 0);
        for _ in 0..1000 {
            r.take_address(ip("192.0.2.1"), t0).unwrap();
            r.take_token(TokenKey::of("t", None), t0).unwrap();
        }
        assert_eq!(r.keys(), (0, 0));
    }

    #[test]
    fn the_tables_are_bounded() {
        let t0 = Instant::now();
        let mut r = JoinRates::with_max_keys(2, 0, 4);
        for i in 0..4 {
            r.take_address(ip(&format!("192.0.2.{i}")), t0).unwrap();
        }
        // Four active addresses fill the table: a fifth is refused ...
        assert_eq!(
            r.take_address(ip("192.0.2.200"), t0),
            Err(RateRefusal::TableFull)
        );
        // ... until the others' buckets are full again and can be forgotten.
        let later = t0 + Duration::from_secs(30);
        r.take_address(ip("192.0.2.200"), later).unwrap();
        assert_eq!(r.keys().0, 1);
    }
}
