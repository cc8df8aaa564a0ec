//! Where a join goes in a fleet: to the channel's core, claimed through its
//! lease. `decide` is the rule (pure); `Placer` asks Redis, holds this
//! node's leases, renews them, releases those of channels that emptied, and
//! claims, once Redis answers again, the channels it served without one.
//!
//! A join for a channel:
//! - whose lease this node holds: here;
//! - whose lease another live node holds: there (a redirect), unless the
//!   core marked the channel big (regional edges, `edge_after`) and the
//!   joiner is from another region that has a node that may be an edge
//!   ([`choose_edge`]): that node, here as an edge (the channel follows the
//!   core over the cascade) or there (a redirect);
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::choose::{choose_core, choose_edge};
use super::record::{Lease, NodeRecord};
use super::redis::RedisFleet;

/// Where a join goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// This node is the channel's core.
    Here,
    /// This node serves the member as an edge: the channel follows its
    /// core, node `core`, whose cascade listens at `cluster`.
    Edge {
        /// The core's node id.
        core: u16,
        /// Where its cascade listens.
        cluster: SocketAddr,
        /// Its signaling URL (where the member goes when this node cannot
        /// link to it).
        url: String,
    },
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
/// now, `fanout` whether its core marked it big enough for edges, `nodes`
/// the registry, `me` this node, `region` the joiner's.
pub fn decide(
    lease: Option<Lease>,
    fanout: bool,
    nodes: &[NodeRecord],
    me: u16,
    region: &str,
) -> Decision {
    let Some(l) = lease else {
        return Decision::Claim(choose_core(nodes, region, me).map_or(me, |n| n.id));
    };
    let Some(core) = nodes.iter().find(|n| n.id == l.node) else {
        return Decision::Placed(if l.node == me {
            Placed::Here
        } else {
            Placed::Moving
        });
    };
    let edge = fanout
        .then(|| choose_edge(nodes, region, core, me))
        .flatten();
    if edge.is_none() && l.node == me {
        return Decision::Placed(Placed::Here);
    }
    Decision::Placed(match (edge, core.cluster) {
        (Some(e), Some(cluster)) if e.id == me => Placed::Edge {
            core: core.id,
            cluster,
            url: core.url.clone(),
        },
        (Some(e), _) => Placed::Elsewhere {
            node: e.id,
            url: e.url.clone(),
        },
        (None, _) => Placed::Elsewhere {
            node: core.id,
            url: core.url.clone(),
        },
    })
}

/// What a channel this node serves as an edge must do now, as its lease
/// says ([`Placer::refollow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refollow {
    /// This node holds the channel's lease now (it claimed it when the
    /// core's ran out, or another node claimed it for this one): select
    /// here, as its core.
    Promote,
    /// Another node is its core now: follow that one.
    Follow {
        /// The new core's node id.
        core: u16,
        /// Where its cascade listens.
        cluster: SocketAddr,
    },
}

/// The node's side of channel placement (see the module documentation).
#[derive(Debug)]
pub struct Placer {
    fleet: Arc<RedisFleet>,
    me: u16,
    /// This node's region.
    region: String,
    lease_ttl: Duration,
    /// Channels whose lease this node holds.
    held: Mutex<HashMap<String, Lease>>,
    /// Of those, the ones marked big enough for edges.
    big: Mutex<HashSet<String>>,
    /// Channels served here while Redis could not be reached.
    unclaimed: Mutex<HashSet<String>>,
    /// What it did, for `/metrics`.
    stats: PlacerStats,
}

/// A node's placement counters (`/metrics`).
#[derive(Debug, Default)]
pub struct PlacerStats {
    /// Channels this node serves as an edge (at the last check).
    pub edge_channels: AtomicU64,
    /// Channels this node took over as their core from one it followed.
    pub takeovers: AtomicU64,
    /// Channels this node, as their edge, moved to a new core.
    pub rehomes: AtomicU64,
}

impl Placer {
    /// Places joins as node `me` of `region`, claiming leases of
    /// `lease_ttl`.
    pub fn new(fleet: Arc<RedisFleet>, me: u16, region: &str, lease_ttl: Duration) -> Placer {
        Placer {
            fleet,
            me,
            region: region.to_owned(),
            lease_ttl,
            held: Mutex::default(),
            big: Mutex::default(),
            stats: PlacerStats::default(),
            unclaimed: Mutex::default(),
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn big_channels(&self) -> MutexGuard<'_, HashSet<String>> {
        self.big.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unclaimed(&self) -> MutexGuard<'_, HashSet<String>> {
        self.unclaimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its counters.
    pub fn stats(&self) -> &PlacerStats {
        &self.stats
    }

    /// How many channels' leases this node holds.
    pub fn held_count(&self) -> usize {
        self.held().len()
    }

    /// The lease this node holds for `channel`, if any.
    pub fn lease_of(&self, channel: &str) -> Option<Lease> {
        self.held().get(channel).copied()
    }

    /// Where a join for `channel` from `region` goes.
    pub async fn place(&self, channel: &str, region: &str) -> Placed {
        // A channel held here is served here without asking Redis, unless
        // it is big and the joiner from another region (an edge may be
        // theirs).
        if self.held().contains_key(channel)
            && (region == self.region || !self.big_channels().contains(channel))
        {
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
        let (lease, fanout) = self.fleet.lease_and_fanout(channel).await?;
        let nodes = self.fleet.nodes().await?;
        let claim_for = match decide(lease, fanout, &nodes, self.me, region) {
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
        // A channel claimed just now has no members: no edges yet.
        match decide(Some(won), false, &nodes, self.me, region) {
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
    /// For channels this node serves as an edge, `following` (channel, the
    /// node it follows): what each must do now that its lease says
    /// otherwise. A channel whose lease ran out (its core died, or drained
    /// and released it) is claimed for this node: of the edges racing for
    /// it one wins and becomes its core, the others follow the winner. A
    /// lease held by a node that left the registry is waited out. Redis
    /// unreachable: nothing changes (the channels keep following).
    pub async fn refollow(&self, following: &[(String, u16)]) -> Vec<(String, Refollow)> {
        self.stats
            .edge_channels
            .store(following.len() as u64, Ordering::Relaxed);
        let names: Vec<String> = following.iter().map(|(c, _)| c.clone()).collect();
        let Ok(leases) = self.fleet.leases_of(&names).await else {
            return Vec::new();
        };
        let stale: Vec<(&String, Option<Lease>)> = following
            .iter()
            .zip(leases)
            .filter(|((_, core), lease)| lease.is_none_or(|l| l.node != *core))
            .map(|((c, _), lease)| (c, lease))
            .collect();
        if stale.is_empty() {
            return Vec::new();
        }
        let Ok(nodes) = self.fleet.nodes().await else {
            return Vec::new();
        };
        let mut plan = Vec::new();
        for (channel, lease) in stale {
            let lease = match lease {
                Some(l) => l,
                None => match self.fleet.claim(channel, self.me, self.lease_ttl).await {
                    Ok(l) => l,
                    Err(_) => continue,
                },
            };
            if lease.node == self.me {
                tracing::info!(
                    channel,
                    epoch = lease.epoch,
                    "this node is the channel's core now"
                );
                self.held().insert(channel.clone(), lease);
                self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                plan.push((channel.clone(), Refollow::Promote));
            } else if let Some(cluster) = nodes
                .iter()
                .find(|n| n.id == lease.node)
                .and_then(|n| n.cluster)
            {
                tracing::info!(
                    channel,
                    core = lease.node,
                    "the channel has a new core; following it"
                );
                self.stats.rehomes.fetch_add(1, Ordering::Relaxed);
                plan.push((
                    channel.clone(),
                    Refollow::Follow {
                        core: lease.node,
                        cluster,
                    },
                ));
            }
        }
        plan
    }

    /// Whether `channel` is marked big enough for edges.
    pub fn is_big(&self, channel: &str) -> bool {
        self.big_channels().contains(channel)
    }

    /// Marks one channel this node holds big enough for edges (it just
    /// grew past the threshold).
    pub async fn mark_big(&self, channel: String) {
        self.big_channels().insert(channel.clone());
        if let Err(e) = self.fleet.mark_fanout(&[channel], self.lease_ttl).await {
            tracing::debug!(error = %e, "channel not marked for edges");
        }
    }

    /// Marks the channels this node holds that are big enough for edges
    /// (for a lease's time: marked again while they are).
    pub async fn mark_fanout(&self, channels: &[String]) {
        *self.big_channels() = channels.iter().cloned().collect();
        if let Err(e) = self.fleet.mark_fanout(channels, self.lease_ttl).await {
            tracing::debug!(error = %e, "channels not marked for edges");
        }
    }

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
            decide(held(2), false, &nodes, 2, "us"),
            Decision::Placed(Placed::Here)
        );
        assert_eq!(
            decide(held(3), false, &nodes, 1, "eu"),
            Decision::Placed(Placed::Elsewhere {
                node: 3,
                url: "http://node-3".into()
            }),
            "the lease wins over the joiner's region"
        );
        assert_eq!(
            decide(held(9), false, &nodes, 1, "eu"),
            Decision::Placed(Placed::Moving),
            "a holder that left the registry"
        );
        assert_eq!(decide(None, false, &nodes, 3, "eu"), Decision::Claim(1));
        assert_eq!(decide(None, true, &nodes, 1, "us"), Decision::Claim(3));
        assert_eq!(
            decide(None, false, &[], 5, "eu"),
            Decision::Claim(5),
            "alone: itself"
        );
    }

    #[test]
    fn a_big_channel_sends_other_regions_to_their_edges() {
        let linked = |id, region| NodeRecord {
            cluster: Some(format!("127.0.0.1:{}", 7000 + id).parse().unwrap()),
            ..node(id, region)
        };
        let nodes = [linked(1, "eu"), linked(2, "us"), linked(3, "us")];
        let core = Some(Lease { node: 1, epoch: 7 });
        let to = |node: u16| {
            Decision::Placed(Placed::Elsewhere {
                node,
                url: format!("http://node-{node}"),
            })
        };
        assert_eq!(
            decide(core, false, &nodes, 2, "us"),
            to(1),
            "small: the core"
        );
        assert_eq!(
            decide(core, true, &nodes, 2, "us"),
            Decision::Placed(Placed::Edge {
                core: 1,
                cluster: "127.0.0.1:7001".parse().unwrap(),
                url: "http://node-1".into(),
            }),
            "big: this node, an edge in the joiner's region"
        );
        assert_eq!(
            decide(core, true, &nodes, 1, "us"),
            to(2),
            "the core itself sends a joiner to its region's edge"
        );
        assert_eq!(
            decide(core, true, &nodes, 1, "eu"),
            Decision::Placed(Placed::Here)
        );
        assert_eq!(
            decide(core, true, &nodes, 3, "eu"),
            to(1),
            "the core's region: the core"
        );
        assert_eq!(decide(core, true, &nodes, 2, "ap"), to(1), "no node there");
        let unlinked = [node(1, "eu"), linked(2, "us")];
        assert_eq!(
            decide(core, true, &unlinked, 2, "us"),
            to(1),
            "a core without a cluster address has no edges"
        );
    }
}
