//! Which offset may be stored when jobs finish out of order.

use std::collections::{BTreeSet, HashMap};

/// Per partition: the offsets handed out and not yet finished. The position
/// that may be stored (the next offset to consume after a restart) is the
/// lowest unfinished offset, or one past the highest seen when none is
/// unfinished. Nothing below an unfinished job is ever skipped.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    highest_seen: Option<i64>,
    stored: Option<i64>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was handed to a worker.
    pub fn begin(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.in_flight.insert(offset);
        // Records of a partition arrive in order: the first one seen is where
        // this consumer's position already stands.
        p.stored.get_or_insert(offset);
        p.highest_seen = Some(p.highest_seen.map_or(offset, |h| h.max(offset)));
    }

    /// Records that `offset` is finished. Returns the position to store if it
    /// moved forward.
    pub fn complete(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.in_flight.remove(&offset) {
            return None;
        }
        let pos = match p.in_flight.first() {
            Some(&lowest) => lowest,
            None => p.highest_seen? + 1,
        };
        if p.stored.is_some_and(|s| s >= pos) {
            return None;
        }
        p.stored = Some(pos);
        Some(pos)
    }

    /// Forgets a partition. On revocation: its unfinished offsets will be
    /// redelivered to the new owner, and late completions are ignored. On
    /// assignment: the partition is fetched from its committed offset, so
    /// nothing known about it before still holds.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The position each partition may store now, for storing again: a
    /// store can fail or be reset inside the client, and the last job of a
    /// partition leaves no later completion to make up for it.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions.iter().filter_map(|(&p, s)| Some((p, s.stored?))).collect()
    }

    /// Unfinished jobs of the given partitions.
    pub fn in_flight_of(&self, partitions: &[i32]) -> usize {
        partitions.iter().filter_map(|p| self.partitions.get(p)).map(|p| p.in_flight.len()).sum()
    }

    /// Unfinished jobs, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_completion_advances_one_by_one() {
        let mut t = OffsetTracker::new();
        for o in 0..3 {
            t.begin(0, o);
        }
        assert_eq!(t.complete(0, 0), Some(1));
        assert_eq!(t.complete(0, 1), Some(2));
        assert_eq!(t.complete(0, 2), Some(3));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn out_of_order_completion_stores_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.begin(3, o);
        }
        assert_eq!(t.complete(3, 12), None, "10 and 11 still running");
        assert_eq!(t.complete(3, 14), None);
        assert_eq!(t.complete(3, 10), Some(11));
        assert_eq!(t.complete(3, 11), Some(13), "12 was already done");
        assert_eq!(t.complete(3, 13), Some(15));
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.begin(0, 5);
        t.begin(1, 7);
        assert_eq!(t.complete(1, 7), Some(8));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(0, 5), Some(6));
    }

    #[test]
    fn positions_are_what_was_last_stored() {
        let mut t = OffsetTracker::new();
        t.begin(0, 4);
        t.begin(0, 5);
        t.begin(2, 9);
        let mut at = t.positions();
        at.sort();
        assert_eq!(at, vec![(0, 4), (2, 9)], "nothing finished: where each partition began");
        assert_eq!(t.complete(0, 5), None);
        assert_eq!(t.complete(0, 4), Some(6));
        assert_eq!(t.complete(2, 9), Some(10));
        at = t.positions();
        at.sort();
        assert_eq!(at, vec![(0, 6), (2, 10)]);
        t.forget(0);
        assert_eq!(t.positions(), vec![(2, 10)], "a revoked partition has no position to store");
    }

    #[test]
    fn revoked_partitions_ignore_late_completions() {
        let mut t = OffsetTracker::new();
        t.begin(0, 1);
        t.forget(0);
        assert_eq!(t.complete(0, 1), None);
        assert_eq!(t.complete(9, 1), None, "never seen");
    }
}
