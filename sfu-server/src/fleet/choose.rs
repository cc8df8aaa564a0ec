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
}
