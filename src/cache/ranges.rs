//! A set of byte ranges: which parts of a file being filled have landed.

use std::ops::Range;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// Sorted, non-overlapping, non-adjacent.
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        // First range that ends at or after r.start (may touch r).
        let i = self.ranges.partition_point(|x| x.end < r.start);
        let mut start = r.start;
        let mut end = r.end;
        let mut j = i;
        while j < self.ranges.len() && self.ranges[j].start <= end {
            start = start.min(self.ranges[j].start);
            end = end.max(self.ranges[j].end);
            j += 1;
        }
        self.ranges.splice(i..j, std::iter::once(start..end));
    }

    pub fn contains(&self, r: &Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges
            .get(i)
            .is_some_and(|x| x.start <= r.start && r.end <= x.end)
    }

    /// Length of the covered prefix starting at 0.
    pub fn prefix_len(&self) -> u64 {
        match self.ranges.first() {
            Some(r) if r.start == 0 => r.end,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_answers_containment() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        assert!(s.contains(&(12..18)));
        assert!(!s.contains(&(15..35)));
        assert_eq!(s.prefix_len(), 0);
        s.insert(20..30);
        assert!(s.contains(&(10..40)));
        s.insert(0..10);
        assert_eq!(s.prefix_len(), 40);
        s.insert(5..50);
        assert_eq!(s.ranges, vec![0..50]);
        s.insert(60..70);
        s.insert(55..58);
        assert_eq!(s.ranges, vec![0..50, 55..58, 60..70]);
        assert!(s.contains(&(0..0)));
    }
}
