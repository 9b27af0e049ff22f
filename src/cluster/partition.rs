//! Which partition a user belongs to, and which live node should own a partition: two pure
//! functions every node must compute alike, for ever.

/// The number of partitions. Fixed for the life of a cluster's data: a user's partition names
/// the subjects their events and snapshots live on, so changing it would move every user.
/// 256 spreads well over any cluster this design is for (a partition is the unit that moves
/// between nodes, and 256 over 3 nodes is about 85 each; over 32 nodes, 8).
pub const PARTITIONS: u16 = 256;

/// FNV-1a, 64 bits. Frozen: the partition of every stored user depends on it, so it is written
/// out here rather than taken from a crate whose output could change with a version.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The partition of a user: FNV-1a of `tenant \0 user`, mixed, modulo [`PARTITIONS`] (FNV's
/// low bits alone depend mostly on the last bytes, and ids like `user-17` differ there).
pub fn partition_of(tenant: &str, user: &str) -> u16 {
    let h = mix(fnv1a(tenant.bytes().chain([0]).chain(user.bytes())));
    (h % u64::from(PARTITIONS)) as u16
}

/// SplitMix64's finaliser: FNV alone mixes the low bits of short inputs poorly, and a
/// rendezvous score needs every bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The node that should own `partition` among `nodes`: rendezvous (highest random weight)
/// hashing, so every node that sees the same members picks the same owner, and a node joining
/// or leaving moves only the partitions it wins or held (about 1/N of them), never others.
/// Ties (which need equal scores) go to the smaller node id. `None` when there is no node.
pub fn preferred<'a>(partition: u16, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .map(|n| (mix(fnv1a(n.bytes()) ^ u64::from(partition)), n))
        .max_by(|(a, x), (b, y)| a.cmp(b).then_with(|| y.cmp(x)))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_users_partition_is_frozen() {
        // If one of these changes, every stored cluster's users have moved: do not "fix" them.
        let cases = [("demo", "alice", 0u16), ("demo", "bob", 0), ("acme", "u-1", 0), ("", "", 0)];
        let got: Vec<_> = cases.iter().map(|(t, u, _)| (*t, *u, partition_of(t, u))).collect();
        let frozen = [("demo", "alice", 85u16), ("demo", "bob", 177), ("acme", "u-1", 59), ("", "", 32)];
        assert_eq!(got, frozen);
        // The separator counts: "ab"/"c" and "a"/"bc" are different users.
        assert_ne!(partition_of("ab", "c"), partition_of("a", "bc"));
    }

    #[test]
    fn users_spread_evenly_over_the_partitions() {
        let mut counts = vec![0u32; PARTITIONS as usize];
        for i in 0..256_000 {
            counts[partition_of("demo", &format!("user-{i}")) as usize] += 1;
        }
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        // 1,000 expected per partition; a fair hash stays within about 4 standard deviations.
        assert!(min > 870 && max < 1130, "min {min} max {max}");
    }

    #[test]
    fn every_node_picks_the_same_owner_and_a_join_or_leave_moves_only_its_share() {
        let three = ["node-a", "node-b", "node-c"];
        let owners = |nodes: &[&str]| -> Vec<String> { (0..PARTITIONS).map(|p| preferred(p, nodes.iter().copied()).unwrap().to_string()).collect() };
        let before = owners(&three);
        // The order a node lists its members in does not matter.
        assert_eq!(owners(&["node-c", "node-a", "node-b"]), before);
        let mut share = BTreeMap::new();
        for o in &before {
            *share.entry(o.clone()).or_insert(0) += 1;
        }
        assert!(share.values().all(|&n| (60..=110).contains(&n)), "{share:?}");

        // A fourth node takes partitions only for itself; nothing moves between the others.
        let after = owners(&["node-a", "node-b", "node-c", "node-d"]);
        let moved: Vec<_> = (0..PARTITIONS as usize).filter(|&p| before[p] != after[p]).collect();
        assert!(moved.iter().all(|&p| after[p] == "node-d"));
        assert!((40..=90).contains(&moved.len()), "{} moved", moved.len());

        // node-b leaving moves only node-b's partitions.
        let without_b = owners(&["node-a", "node-c"]);
        for p in 0..PARTITIONS as usize {
            if before[p] != "node-b" {
                assert_eq!(without_b[p], before[p]);
            }
        }
        assert_eq!(preferred(7, std::iter::empty()), None);
    }
}
