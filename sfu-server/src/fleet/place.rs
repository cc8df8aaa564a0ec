//! Where a join goes in a fleet: to the channel's core, claimed through its
//! lease. `decide` is the rule (pure); `Placer` asks Redis, holds this
//! node's leases, renews them, releases those of channels that emptied, and
//! claims, once Redis answers again, the channels it served without one.
//!
//! A join for a channel:
//! - whose lease this node holds: here;
//! - whose lease another live node holds: there (a redirect);
//! - whose lease a node holds that is no longer registered (it died; the
//!   lease runs out within its TTL): refused for a moment (`Moving`);
//! - that has no lease: the node [`choose_core`] picks for the joiner's
//!   region is claimed for (atomically: of racing claims one wins, and every
//!   one of them is answered with the winner), then here or there.
//!
//! Redis unreachable: a channel this node holds stays here; a new one is
//! served here, unclaimed, and claimed when Redis answers (if another node
//! claimed it meanwhile, this node lost it: [`Placer::maintain`] says so).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::choose::choose_core;
use super::record::{Lease, NodeRecord};
use super::redis::RedisFleet;

/// Where a join goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// This node is the channel's core.
    Here,
    /// Node `node`, reached at `url`, is.
    Elsewhere {
        /// Its node id.
        node: u16,
        /// Its signaling URL.
        url: String,
    },
    /// The channel's core is gone and its lease not yet expired: try again
    /// in a moment.
    Moving,
}

/// What the lease says, before any claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Settled: the join goes there.
    Placed(Placed),
    /// No lease: claim the channel for this node.
    Claim(u16),
}

/// The rule (see the module documentation): `lease` is the channel's lease
/// now, `nodes` the registry, `me` this node, `region` the joiner's.
pub fn decide(lease: Option<Lease>, nodes: &[NodeRecord], me: u16, region: &str) -> Decision {
    match lease {
        Some(l) if l.node == me => Decision::Placed(Placed::Here),
        Some(l) => Decision::Placed(match nodes.iter().find(|n| n.id == l.node) {
            Some(n) => Placed::Elsewhere {
                node: n.id,
                url: n.url.clone(),
            },
            None => Placed::Moving,
        }),
        None => Decision::Claim(choose_core(nodes, region, me).map_or(me, |n| n.id)),
    }
}

/// The node's side of channel placement (see the module documentation).
#[derive(Debug)]
pub struct Placer {
    fleet: Arc<RedisFleet>,
    me: u16,
    lease_ttl: Duration,
    /// Channels whose lease this node holds.
    held: Mutex<HashMap<String, Lease>>,
    /// Channels served here while Redis could not be reached.
    unclaimed: Mutex<HashSet<String>>,
}

impl Placer {
    /// Places joins as node `me`, claiming leases of `lease_ttl`.
    pub fn new(fleet: Arc<RedisFleet>, me: u16, lease_ttl: Duration) -> Placer {
        Placer {
            fleet,
            me,
            lease_ttl,
            held: Mutex::default(),
            unclaimed: Mutex::default(),
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unclaimed(&self) -> MutexGuard<'_, HashSet<String>> {
        self.unclaimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease this node holds for `channel`, if any.
    pub fn lease_of(&self, channel: &str) -> Option<Lease> {
        self.held().get(channel).copied()
    }

    /// Where a join for `channel` from `region` goes.
    pub async fn place(&self, channel: &str, region: &str) -> Placed {
        if self.held().contains_key(channel) {
            return Placed::Here;
        }
        match self.ask(channel, region).await {
            Ok(placed) => placed,
            Err(e) => {
                tracing::warn!(channel, error = %e, "redis unreachable: the channel is served here, unclaimed");
                self.unclaimed().insert(channel.to_owned());
                Placed::Here
            }
        }
    }

    async fn ask(&self, channel: &str, region: &str) -> Result<Placed, super::FleetError> {
        let (lease, nodes) = (self.fleet.lease(channel).await?, self.fleet.nodes().await?);
        let claim_for = match decide(lease, &nodes, self.me, region) {
            Decision::Placed(Placed::Here) => {
                if let Some(l) = lease {
                    self.held().insert(channel.to_owned(), l);
                }
                return Ok(Placed::Here);
            }
            Decision::Placed(p) => return Ok(p),
            Decision::Claim(node) => node,
        };
        let won = self.fleet.claim(channel, claim_for, self.lease_ttl).await?;
        match decide(Some(won), &nodes, self.me, region) {
            Decision::Placed(Placed::Here) => {
                self.held().insert(channel.to_owned(), won);
                Ok(Placed::Here)
            }
            Decision::Placed(p) => Ok(p),
            // `decide` with a lease always places.
            Decision::Claim(_) => Ok(Placed::Moving),
        }
    }

    /// Once a period shorter than the lease: renews the leases this node
    /// holds for channels that still have members here (`has_members`),
    /// releases the others, and claims the channels it served while Redis
    /// could not be reached. Returns the channels this node lost (another
    /// node holds them now: their members here must move).
    pub async fn maintain(&self, has_members: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lost = Vec::new();
        let held: Vec<(String, Lease)> = self.held().iter().map(|(c, l)| (c.clone(), *l)).collect();
        let (keep, empty): (Vec<_>, Vec<_>) = held.into_iter().partition(|(c, _)| has_members(c));
        for (channel, lease) in empty {
            // Forgotten first: a join that comes meanwhile asks Redis.
            self.held().remove(&channel);
            if let Err(e) = self.fleet.release(&channel, lease).await {
                tracing::warn!(channel, error = %e, "lease not released (it expires)");
            }
        }
        // Every renewal in one round trip per batch.
        let renewed = self.fleet.renew_many(&keep, self.lease_ttl).await;
        for ((channel, _), renewed) in keep.into_iter().zip(renewed) {
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    // Expired (Redis was slow, or a release raced a join):
                    // still this node's unless another claimed it since.
                    match self.fleet.claim(&channel, self.me, self.lease_ttl).await {
                        Ok(l) if l.node == self.me => {
                            self.held().insert(channel, l);
                        }
                        Ok(_) => {
                            self.held().remove(&channel);
                            lost.push(channel);
                        }
                        Err(_) => {}
                    }
                }
                // Redis unreachable: the lease is kept here until it
                // answers (media does not depend on it).
                Err(_) => {}
            }
        }
        let unclaimed: Vec<String> = self.unclaimed().iter().cloned().collect();
        for channel in unclaimed {
            if !has_members(&channel) {
                self.unclaimed().remove(&channel);
                continue;
            }
            match self.fleet.claim(&channel, self.me, self.lease_ttl).await {
                Ok(l) if l.node == self.me => {
                    self.unclaimed().remove(&channel);
                    self.held().insert(channel, l);
                }
                Ok(_) => {
                    self.unclaimed().remove(&channel);
                    lost.push(channel);
                }
                Err(_) => {}
            }
        }
        for channel in &lost {
            tracing::warn!(
                channel,
                "another node is the channel's core now: its members here move"
            );
        }
        lost
    }
}

impl Placer {
    /// Gives up every lease this node holds (a draining node hands its
    /// channels over: the next join claims them afresh).
    pub async fn release_all(&self) {
        let held: Vec<(String, Lease)> = self.held().drain().collect();
        for (channel, lease) in held {
            if let Err(e) = self.fleet.release(&channel, lease).await {
                tracing::warn!(channel, error = %e, "lease not released (it expires)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u16, region: &str) -> NodeRecord {
        super::super::choose::tests::node(id, region, u64::from(id))
    }

    #[test]
    fn the_lease_decides_and_without_one_the_region_does() {
        let nodes = [node(1, "eu"), node(2, "eu"), node(3, "us")];
        let held = |n| Some(Lease { node: n, epoch: 4 });
        assert_eq!(
            decide(held(2), &nodes, 2, "us"),
            Decision::Placed(Placed::Here)
        );
        assert_eq!(
            decide(held(3), &nodes, 1, "eu"),
            Decision::Placed(Placed::Elsewhere {
                node: 3,
                url: "http://node-3".into()
            }),
            "the lease wins over the joiner's region"
        );
        assert_eq!(
            decide(held(9), &nodes, 1, "eu"),
            Decision::Placed(Placed::Moving),
            "a holder that left the registry"
        );
        assert_eq!(decide(None, &nodes, 3, "eu"), Decision::Claim(1));
        assert_eq!(decide(None, &nodes, 1, "us"), Decision::Claim(3));
        assert_eq!(
            decide(None, &[], 5, "eu"),
            Decision::Claim(5),
            "alone: itself"
        );
    }
}
