//! Which partitions a consumer-group member owns, so that a commit never
//! moves a partition's offset backwards after a rebalance.
//!
//! A partition revoked from this member may be processed by another one
//! meanwhile; batches of it still in flight here must not be committed
//! afterwards. Once a partition is assigned again, the first record
//! received from it marks where this member's ownership resumed: offsets at
//! or below that mark belong to the old ownership and are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::pipeline::record::Offsets;

type Partition = (Arc<str>, i32);

#[derive(Debug, Default)]
pub struct Ownership {
    assigned: HashSet<Partition>,
    /// Assigned, and no record received since the assignment.
    awaiting_first: HashSet<Partition>,
    /// The offset of the first record received since the last assignment.
    resumed_at: HashMap<Partition, i64>,
}

impl Ownership {
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = Partition>) {
        for p in partitions {
            if self.assigned.insert(p.clone()) {
                self.awaiting_first.insert(p.clone());
                self.resumed_at.remove(&p);
            }
        }
    }

    pub fn revoke(&mut self, partitions: impl IntoIterator<Item = Partition>) {
        for p in partitions {
            self.assigned.remove(&p);
            self.awaiting_first.remove(&p);
            self.resumed_at.remove(&p);
        }
    }

    pub fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.assigned.contains(&(Arc::from(topic), partition))
    }

    pub fn assigned(&self) -> usize {
        self.assigned.len()
    }

    /// A record arrived.
    pub fn received(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let p = (topic.clone(), partition);
        if self.awaiting_first.remove(&p) {
            self.resumed_at.insert(p, offset);
        }
    }

    /// The part of `offsets` this member may still commit; what it drops.
    pub fn committable(&self, offsets: &Offsets) -> (Offsets, Vec<(Partition, i64)>) {
        let mut keep = Offsets::new();
        let mut dropped = Vec::new();
        for (p, &offset) in offsets {
            let owned = self.assigned.contains(p)
                && !self.awaiting_first.contains(p)
                && self.resumed_at.get(p).is_none_or(|&first| offset > first);
            if owned {
                keep.insert(p.clone(), offset);
            } else {
                dropped.push((p.clone(), offset));
            }
        }
        (keep, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        (Arc::from("t"), n)
    }

    fn offsets(list: &[(i32, i64)]) -> Offsets {
        list.iter().map(|&(n, o)| (p(n), o)).collect()
    }

    #[test]
    fn revoked_partitions_are_not_committed() {
        let mut o = Ownership::default();
        o.assign([p(0), p(1)]);
        o.received(&Arc::from("t"), 0, 10);
        o.received(&Arc::from("t"), 1, 20);
        o.revoke([p(1)]);
        let (keep, dropped) = o.committable(&offsets(&[(0, 15), (1, 25)]));
        assert_eq!(keep, offsets(&[(0, 15)]));
        assert_eq!(dropped, vec![(p(1), 25)]);
    }

    #[test]
    fn a_reassigned_partition_commits_only_past_where_it_resumed() {
        let mut o = Ownership::default();
        o.assign([p(0)]);
        o.received(&Arc::from("t"), 0, 0);
        o.revoke([p(0)]);
        o.assign([p(0)]);
        // In flight from before the revocation: not yet safe.
        assert!(o.committable(&offsets(&[(0, 50)])).0.is_empty());
        // Another member committed 80 meanwhile; we resume there.
        o.received(&Arc::from("t"), 0, 80);
        assert!(o.committable(&offsets(&[(0, 50)])).0.is_empty());
        assert!(o.committable(&offsets(&[(0, 80)])).0.is_empty());
        assert_eq!(o.committable(&offsets(&[(0, 81)])).0, offsets(&[(0, 81)]));
    }
}
