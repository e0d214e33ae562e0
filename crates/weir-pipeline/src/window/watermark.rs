//! Watermarks: per partition, the largest event time seen less the allowed
//! out-of-orderness; the source's watermark is the minimum over the
//! partitions that are not idle. A partition without records for
//! `idle_partition_ms` stops holding the watermark back until its next
//! record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A partition of the source: (topic or file, partition).
pub type PartitionId = (Arc<str>, i32);

#[derive(Debug, Clone, Copy)]
struct Partition {
    max_event_us: i64,
    last_seen: Instant,
}

/// The watermarks of one source.
#[derive(Debug)]
pub struct Watermarks {
    max_out_of_order_us: i64,
    idle_after: Option<Duration>,
    partitions: BTreeMap<PartitionId, Partition>,
    /// Never moves back (a partition returning from idleness does not
    /// reopen windows already emitted).
    current: i64,
    /// Partitions the source is assigned (Kafka), and since when: until
    /// each delivered a record (or `idle_after` passed) the watermark
    /// waits, so a partition whose records come later is not made late.
    expected: Option<(usize, Instant)>,
}

impl Watermarks {
    /// `idle_partition_ms = 0` never treats a partition as idle.
    pub fn new(max_out_of_order_ms: u64, idle_partition_ms: u64) -> Self {
        Watermarks {
            max_out_of_order_us: (max_out_of_order_ms as i64).saturating_mul(1000),
            idle_after: (idle_partition_ms > 0).then(|| Duration::from_millis(idle_partition_ms)),
            partitions: BTreeMap::new(),
            current: i64::MIN,
            expected: None,
        }
    }

    /// The source is assigned `count` partitions (None: it cannot say).
    pub fn expect(&mut self, count: Option<usize>, now: Instant) {
        match (count, self.expected) {
            (None, _) => self.expected = None,
            (Some(n), Some((m, _))) if n == m => {}
            (Some(n), _) => self.expected = Some((n, now)),
        }
    }

    /// The watermark in microseconds (`i64::MIN` before any record).
    pub fn current(&self) -> i64 {
        self.current
    }

    /// A record of `partition` with event time `event_us` arrived at `now`;
    /// returns the watermark after it.
    pub fn observe(&mut self, partition: &PartitionId, event_us: i64, now: Instant) -> i64 {
        match self.partitions.get_mut(partition) {
            Some(p) => {
                p.max_event_us = p.max_event_us.max(event_us);
                p.last_seen = now;
            }
            None => {
                self.partitions.insert(
                    partition.clone(),
                    Partition {
                        max_event_us: event_us,
                        last_seen: now,
                    },
                );
            }
        }
        self.advance(now)
    }

    /// Recomputes the watermark at `now` (a partition may have gone idle).
    pub fn advance(&mut self, now: Instant) -> i64 {
        if let Some((n, since)) = self.expected
            && self.partitions.len() < n
            && self
                .idle_after
                .is_none_or(|after| now.saturating_duration_since(since) < after)
        {
            // An assigned partition has not delivered yet: it holds the
            // watermark back like a partition at the start of time.
            return self.current;
        }
        let of = |p: &Partition| p.max_event_us.saturating_sub(self.max_out_of_order_us);
        let active = self
            .partitions
            .values()
            .filter(|p| {
                self.idle_after
                    .is_none_or(|after| now.saturating_duration_since(p.last_seen) < after)
            })
            .map(of)
            .min();
        // Every partition idle: the most advanced one sets the pace.
        let candidate = active.or_else(|| self.partitions.values().map(of).max());
        if let Some(c) = candidate {
            self.current = self.current.max(c);
        }
        self.current
    }

    /// Starts from `mark` (a watermark committed before a restart): the
    /// windows it passed were emitted then.
    pub fn raise_to(&mut self, mark: i64) {
        self.current = self.current.max(mark);
    }

    /// Each partition's largest event time (what [`Self::resume`] takes
    /// back): a checkpoint keeps it, since the records that set it are
    /// not read again.
    pub fn maxima(&self) -> Vec<(PartitionId, i64)> {
        self.partitions
            .iter()
            .map(|(p, v)| (p.clone(), v.max_event_us))
            .collect()
    }

    /// Takes back the largest event times of [`Self::maxima`] (seen `now`).
    pub fn resume(&mut self, maxima: impl IntoIterator<Item = (PartitionId, i64)>, now: Instant) {
        for (partition, max) in maxima {
            let p = self.partitions.entry(partition).or_insert(Partition {
                max_event_us: max,
                last_seen: now,
            });
            p.max_event_us = p.max_event_us.max(max);
        }
    }

    /// Forgets a partition (revoked from this consumer).
    pub fn forget(&mut self, partition: &PartitionId) {
        self.partitions.remove(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> PartitionId {
        ("t".into(), n)
    }

    /// A member that takes a checkpoint over goes on from each partition's
    /// largest event time: a partition whose last records came before the
    /// checkpoint does not hold its watermark back for ever (the records
    /// that set it are not read again).
    #[test]
    fn a_restored_watermark_goes_on_from_each_partitions_largest_event_time() {
        let t0 = Instant::now();
        let mut before = Watermarks::new(0, 0);
        before.expect(Some(2), t0);
        // Partition 0's last record (40) comes before the checkpoint.
        before.observe(&p(0), 40, t0);
        before.observe(&p(1), 20, t0);
        assert_eq!(before.current(), 20);
        let mut after = Watermarks::new(0, 0);
        after.expect(Some(2), t0);
        after.raise_to(before.current());
        after.resume(before.maxima(), t0);
        assert_eq!(after.observe(&p(1), 30, t0), 30);
        let mut without = Watermarks::new(0, 0);
        without.expect(Some(2), t0);
        without.raise_to(20);
        assert_eq!(without.observe(&p(1), 30, t0), 20, "waits for partition 0");
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark_until_it_is_idle() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5, 1000);
        assert_eq!(w.observe(&p(0), 100_000, t0), 95_000);
        assert_eq!(w.observe(&p(1), 50_000, t0), 95_000, "never moves back");
        assert_eq!(
            w.observe(&p(0), 200_000, t0),
            95_000,
            "partition 1 holds it"
        );
        assert_eq!(w.observe(&p(1), 150_000, t0), 145_000);
        // Partition 1 goes quiet: after the idle timeout partition 0 alone counts.
        assert_eq!(w.advance(t0 + Duration::from_millis(500)), 145_000);
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(w.observe(&p(0), 300_000, later), 295_000);
    }

    #[test]
    fn an_assigned_partition_that_has_not_delivered_yet_holds_it() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, 1000);
        w.expect(Some(2), t0);
        assert_eq!(w.observe(&p(0), 500, t0), i64::MIN);
        assert_eq!(w.observe(&p(1), 100, t0), 100);
        // Unless it stays silent past the idle timeout.
        let mut w = Watermarks::new(0, 1000);
        w.expect(Some(2), t0);
        w.observe(&p(0), 500, t0);
        assert_eq!(w.observe(&p(0), 600, t0 + Duration::from_millis(1500)), 600);
    }

    #[test]
    fn out_of_order_records_do_not_move_it_back() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, 0);
        assert_eq!(w.observe(&p(0), 10, t0), 10);
        assert_eq!(w.observe(&p(0), 3, t0), 10);
        assert_eq!(
            w.advance(t0 + Duration::from_secs(3600)),
            10,
            "no idleness with 0"
        );
    }
}
