//! Which node becomes the core of a new channel (pure): a node that may be
//! a core and is not draining, in the region of the channel's first member
//! when there is one there, else anywhere; of those, the one with the
//! fewest members (ties: fewer channels, then the node that asks, then the
//! lowest id: a tie costs no redirect, and nodes that see the same registry
//! agree otherwise).

use super::record::NodeRecord;

/// A node as the choice sees it.
pub type Candidate = NodeRecord;

/// The node that should be the core of a new channel whose first member is
/// in `region`, as node `asking` sees it; `None` when no node may be.
pub fn choose_core<'a>(nodes: &'a [Candidate], region: &str, asking: u16) -> Option<&'a Candidate> {
    let eligible = || nodes.iter().filter(|n| n.core && !n.draining);
    let least = |it: &mut dyn Iterator<Item = &'a Candidate>| {
        it.min_by_key(|n| (n.members, n.channels, n.id != asking, n.id))
    };
    least(&mut eligible().filter(|n| n.region == region)).or_else(|| least(&mut eligible()))
}

/// The node that should serve a member in `region` as an edge of a
/// channel whose core is `core`, as node `asking` sees it: a node of that
/// region that may be an edge, accepts links (it advertises a cluster
/// address) and is not draining: the asking node itself when it is one (no
/// redirect: the load balancer already spread the region's users), else the
/// one with the fewest members. `None` when the member is in the core's
/// region, when the core accepts no links, or when the region has no such
/// node: the member goes to the core.
pub fn choose_edge<'a>(
    nodes: &'a [Candidate],
    region: &str,
    core: &Candidate,
    asking: u16,
) -> Option<&'a Candidate> {
    if core.region == region || core.cluster.is_none() {
        return None;
    }
    nodes
        .iter()
        .filter(|n| {
            n.edge && !n.draining && n.cluster.is_some() && n.region == region && n.id != core.id
        })
        .min_by_key(|n| (n.id != asking, n.members, n.channels, n.id))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A node that may be anything, serving `members`.
    pub(in crate::fleet) fn node(id: u16, region: &str, members: u64) -> Candidate {
        Candidate {
            id,
            region: region.into(),
            core: true,
            edge: true,
            url: format!("http://node-{id}"),
            media: Vec::new(),
            cluster: None,
            draining: false,
            members,
            channels: 0,
            cpu: 0.0,
        }
    }

    #[test]
    fn the_region_first_then_the_least_loaded_never_a_draining_node() {
        let mut nodes = vec![
            node(1, "eu", 500),
            node(2, "eu", 100),
            node(3, "us", 10),
            node(4, "us", 10),
        ];
        assert_eq!(choose_core(&nodes, "eu", 1).map(|n| n.id), Some(2));
        assert_eq!(
            choose_core(&nodes, "us", 1).map(|n| n.id),
            Some(3),
            "ties: lowest id"
        );
        assert_eq!(
            choose_core(&nodes, "us", 4).map(|n| n.id),
            Some(4),
            "ties: the node that asks"
        );
        assert_eq!(
            choose_core(&nodes, "ap", 1).map(|n| n.id),
            Some(3),
            "no node in the region: the least loaded anywhere"
        );
        nodes[1].draining = true;
        assert_eq!(choose_core(&nodes, "eu", 2).map(|n| n.id), Some(1));
        nodes[0].core = false;
        assert_eq!(
            choose_core(&nodes, "eu", 1).map(|n| n.id),
            Some(3),
            "the region has no node that may be a core"
        );
        assert_eq!(choose_core(&[], "eu", 1), None);
    }

    #[test]
    fn an_edge_is_a_node_of_the_member_s_region_that_accepts_links() {
        let linked = |id, region, members| Candidate {
            cluster: Some(format!("127.0.0.1:{}", 7000 + id).parse().unwrap()),
            ..node(id, region, members)
        };
        let mut nodes = vec![
            linked(1, "eu", 0),
            linked(2, "us", 300),
            linked(3, "us", 200),
            node(4, "ap", 0),
        ];
        let core = nodes[0].clone();
        let edge = |nodes: &[Candidate], region, asking| {
            choose_edge(nodes, region, &core, asking).map(|n| n.id)
        };
        assert_eq!(edge(&nodes, "eu", 2), None, "the core's region: the core");
        assert_eq!(edge(&nodes, "us", 1), Some(3), "the least loaded");
        assert_eq!(edge(&nodes, "us", 2), Some(2), "the asking node itself");
        assert_eq!(edge(&nodes, "ap", 1), None, "node 4 accepts no links");
        nodes[2].draining = true;
        assert_eq!(edge(&nodes, "us", 1), Some(2));
        nodes[1].edge = false;
        assert_eq!(edge(&nodes, "us", 1), None);
        let unlinked = node(1, "eu", 0);
        assert_eq!(
            choose_edge(&[linked(5, "us", 0)], "us", &unlinked, 5),
            None,
            "a core that accepts no links has no edges"
        );
    }
}
