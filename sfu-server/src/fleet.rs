//! A fleet of nodes coordinated through Redis: what each node says about
//! itself (the registry), which node is a channel's core (a lease with an
//! epoch that only grows), and the choice of a core for a new channel.
//!
//! Redis is the coordination engine; nothing here is a consensus of its own.
//! The rules that keep it safe:
//!
//! - **Everything expires.** A node's record lives 1.5 s unless it
//!   refreshes it (every 0.5 s): a node that dies leaves the registry by
//!   itself. A channel's lease lives 2 s unless its holder renews it (every
//!   0.5 s).
//! - **Fencing.** A lease is `node:epoch`; the epoch comes from a counter
//!   that only grows (`INCR`), so a node that claims a channel after another
//!   lost it holds a higher epoch, and anything acting for a channel acts
//!   only on the newest epoch it has seen. Renewal and release compare the
//!   whole value (a Lua script, atomic in Redis): a node never extends or
//!   deletes a lease it does not hold, so a node that was paused past its
//!   lease learns it lost it (`renew` is false) instead of deleting the new
//!   holder's.
//! - **Claims are atomic.** One script reads the lease and, when there is
//!   none, takes the next epoch and sets it: of any number of concurrent
//!   first claims, one wins and every one of them is answered with the
//!   winner's lease.
//! - **Bad data is skipped, never trusted.** A record that does not parse
//!   (another version, a hand-edited key) is skipped and counted.
//!
//! `record` (what a node says), `choose` (which node takes a new channel)
//! and `place::decide` (where a join goes) are pure; `redis` talks to the
//! server; `place::Placer` holds a node's leases.

mod choose;
mod place;
mod record;
mod redis;

pub use choose::{choose_core, choose_edge, Candidate};
pub use place::{decide, Decision, Placed, Placer, PlacerStats, Refollow};
pub use record::{Lease, LeaseError, NodeRecord, RecordError};
pub use redis::{FleetError, Keys, RedisFleet, Registry};
