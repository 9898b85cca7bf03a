//! A time-ordered queue for streams that arrive nearly in time order (the
//! trace's records of different threads interleave a little out of order),
//! such as the events of QEMU's blocktime replay, taken out in exact order
//! once the stream is far enough past them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Items `(time, rest)` taken out in `(time, rest)` order.
///
/// Items are bucketed by time (about 1 ms per bucket, unsorted: O(1) per
/// item); a bucket is sorted once, when taking out reaches it. An item for
/// a bucket already being taken out goes to a heap. Every operation is
/// O(log n) at worst, whatever the order of input; a stream in order costs
/// a sort of small buckets instead of a heap's cache misses.
#[derive(Debug)]
pub struct TimeQueue<T> {
    buckets: BTreeMap<u64, Vec<(u64, T)>>,
    /// The sorted bucket being taken out, and its key.
    current: VecDeque<(u64, T)>,
    current_key: Option<u64>,
    late: BinaryHeap<Reverse<(u64, T)>>,
    /// Emptied buffers, reused for new buckets (no regrowth per bucket).
    spare: Vec<Vec<(u64, T)>>,
    /// No item is earlier than this: most calls find nothing due in O(1).
    floor: u64,
}

impl<T> Default for TimeQueue<T> {
    fn default() -> Self {
        Self {
            buckets: BTreeMap::new(),
            current: VecDeque::new(),
            current_key: None,
            late: BinaryHeap::new(),
            spare: Vec::new(),
            floor: u64::MAX,
        }
    }
}

impl<T: Ord + Copy> TimeQueue<T> {
    const BUCKET_SHIFT: u32 = 20;
    /// Emptied buffers kept for reuse.
    const SPARE: usize = 64;

    pub fn push(&mut self, time: u64, rest: T) {
        let item = (time, rest);
        self.floor = self.floor.min(time);
        let key = time >> Self::BUCKET_SHIFT;
        if self.current_key.is_some_and(|c| key <= c) {
            self.late.push(Reverse(item));
            return;
        }
        // Most items belong to the newest bucket.
        if let Some(mut newest) = self.buckets.last_entry() {
            if *newest.key() == key {
                newest.get_mut().push(item);
                return;
            }
        }
        let spare = &mut self.spare;
        self.buckets
            .entry(key)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(item);
    }

    /// Removes and returns the earliest item if its time is at or before `upto`.
    pub fn pop_upto(&mut self, upto: u64) -> Option<(u64, T)> {
        if self.floor > upto {
            return None;
        }
        if self.current.is_empty() {
            self.open_next(upto);
        }
        let from_late = match (self.current.front(), self.late.peek()) {
            (Some(a), Some(Reverse(b))) => b < a,
            (None, Some(_)) => true,
            _ => false,
        };
        let front = if from_late {
            self.late.peek().map(|r| r.0)
        } else {
            self.current.front().copied()
        };
        match front {
            Some((time, _)) if time <= upto => self.floor = time,
            _ => {
                // Nothing due: the earliest item is the front, or in the
                // first bucket not yet opened.
                let unopened = self.buckets.keys().next().map(|k| k << Self::BUCKET_SHIFT);
                self.floor = front
                    .map(|f| f.0)
                    .into_iter()
                    .chain(unopened)
                    .min()
                    .unwrap_or(u64::MAX);
                return None;
            }
        }
        if from_late {
            self.late.pop().map(|r| r.0)
        } else {
            self.current.pop_front()
        }
    }

    /// Sorts the earliest bucket into `current` if it holds items at or
    /// before `upto`.
    fn open_next(&mut self, upto: u64) {
        let Some(entry) = self.buckets.first_entry() else {
            return;
        };
        if *entry.key() > upto >> Self::BUCKET_SHIFT {
            return;
        }
        let (key, mut bucket) = entry.remove_entry();
        bucket.sort_unstable();
        let done = std::mem::replace(&mut self.current, bucket.into());
        if self.spare.len() < Self::SPARE {
            self.spare.push(Vec::from(done));
        }
        self.current_key = Some(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut TimeQueue<u32>, upto: u64) -> Vec<(u64, u32)> {
        std::iter::from_fn(|| q.pop_upto(upto)).collect()
    }

    #[test]
    fn items_come_out_in_order_whatever_order_they_went_in() {
        let mut q = TimeQueue::default();
        let times: Vec<u64> = (0..5_000u64).map(|i| (i * 7_919 % 5_000) * 997).collect();
        for (i, &t) in times.iter().enumerate() {
            q.push(t, i as u32);
        }
        let mut want: Vec<(u64, u32)> = times
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, i as u32))
            .collect();
        want.sort_unstable();
        assert_eq!(drain(&mut q, u64::MAX), want);
    }

    #[test]
    fn only_items_up_to_the_limit_come_out_and_late_ones_keep_their_place() {
        let mut q = TimeQueue::default();
        q.push(3_000_000, 1);
        q.push(1_000_000, 2);
        q.push(5_000_000, 3);
        assert_eq!(drain(&mut q, 2_000_000), vec![(1_000_000, 2)]);
        // Into the bucket already being taken out, and before what is left.
        q.push(1_500_000, 4);
        q.push(2_500_000, 5);
        assert_eq!(
            drain(&mut q, 4_000_000),
            vec![(1_500_000, 4), (2_500_000, 5), (3_000_000, 1)]
        );
        assert_eq!(drain(&mut q, u64::MAX), vec![(5_000_000, 3)]);
        assert_eq!(q.pop_upto(u64::MAX), None);
    }
}
