//! Which partitions a consumer-group member owns, so that a commit never
//! moves a partition's offset backwards after a rebalance.
//!
//! A partition revoked from this member may be processed by another one
//! meanwhile; batches of it still in flight here must not be committed
//! while it is gone. Once it is assigned again (to this member: with the
//! eager assignors every rebalance revokes and re-assigns everything), the
//! member re-reads from the group's committed offset, so batches read before
//! and after the rebalance may both be in flight. A commit is therefore kept
//! only if it moves the partition forward from both the first offset read
//! since the assignment (another member may have committed up to there) and
//! the highest offset this member committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::record::Offsets;

type Partition = (Arc<str>, i32);

#[derive(Debug, Default)]
pub struct Ownership {
    assigned: HashSet<Partition>,
    /// Assigned, and no record received since the assignment.
    awaiting_first: HashSet<Partition>,
    /// The offset of the first record received since the last assignment.
    resumed_at: HashMap<Partition, i64>,
    /// The highest offset committed by this member.
    committed: HashMap<Partition, i64>,
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

    /// The assigned partitions as `topic/partition`, sorted.
    pub fn partitions(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .assigned
            .iter()
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        all.sort();
        all
    }

    /// A record arrived.
    pub fn received(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let p = (topic.clone(), partition);
        if self.awaiting_first.remove(&p) {
            self.resumed_at.insert(p, offset);
        }
    }

    /// The part of `offsets` this member may commit now (recorded as
    /// committed), and what it drops.
    pub fn committable(&mut self, offsets: &Offsets) -> (Offsets, Vec<(Partition, i64)>) {
        let mut keep = Offsets::new();
        let mut dropped = Vec::new();
        for (p, &offset) in offsets {
            let forward = self.assigned.contains(p)
                && !self.awaiting_first.contains(p)
                && self.resumed_at.get(p).is_none_or(|&first| offset > first)
                && self.committed.get(p).is_none_or(|&last| offset > last);
            if forward {
                self.committed.insert(p.clone(), offset);
                keep.insert(p.clone(), offset);
            } else {
                dropped.push((p.clone(), offset));
            }
        }
        (keep, dropped)
    }
}

impl Ownership {
    /// Of offsets already passed by [`Self::committable`], those still owned
    /// and not superseded: what a final synchronous commit may repeat.
    pub fn recommittable(&self, offsets: &Offsets) -> Offsets {
        offsets
            .iter()
            .filter(|(p, offset)| {
                self.assigned.contains(*p) && self.committed.get(*p) == Some(*offset)
            })
            .map(|(p, offset)| (p.clone(), *offset))
            .collect()
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

    fn t() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn revoked_partitions_are_not_committed() {
        let mut o = Ownership::default();
        o.assign([p(0), p(1)]);
        o.received(&t(), 0, 10);
        o.received(&t(), 1, 20);
        o.revoke([p(1)]);
        let (keep, dropped) = o.committable(&offsets(&[(0, 15), (1, 25)]));
        assert_eq!(keep, offsets(&[(0, 15)]));
        assert_eq!(dropped, vec![(p(1), 25)]);
    }

    #[test]
    fn a_partition_back_from_another_member_commits_only_past_where_it_resumed() {
        let mut o = Ownership::default();
        o.assign([p(0)]);
        o.received(&t(), 0, 0);
        o.revoke([p(0)]);
        o.assign([p(0)]);
        // In flight from before the revocation: not yet safe.
        assert!(o.committable(&offsets(&[(0, 50)])).0.is_empty());
        // Another member committed 80 meanwhile; this member resumes there.
        o.received(&t(), 0, 80);
        assert!(o.committable(&offsets(&[(0, 50)])).0.is_empty());
        assert!(o.committable(&offsets(&[(0, 80)])).0.is_empty());
        assert_eq!(o.committable(&offsets(&[(0, 81)])).0, offsets(&[(0, 81)]));
    }

    #[test]
    fn a_partition_handed_straight_back_never_commits_below_what_was_committed() {
        let mut o = Ownership::default();
        o.assign([p(0)]);
        o.received(&t(), 0, 100);
        // Eager rebalance: revoked and re-assigned to the same member, which
        // re-reads from the committed 100 while 100..149 are in flight.
        o.revoke([p(0)]);
        o.assign([p(0)]);
        o.received(&t(), 0, 100);
        assert_eq!(o.committable(&offsets(&[(0, 150)])).0, offsets(&[(0, 150)]));
        // The re-read batch 100..120 must not take the offset back to 121.
        assert!(o.committable(&offsets(&[(0, 121)])).0.is_empty());
        assert_eq!(o.committable(&offsets(&[(0, 151)])).0, offsets(&[(0, 151)]));
    }
}
