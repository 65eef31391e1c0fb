//! Offset allocator over the arena.
//!
//! Best fit over free ranges kept in two ordered maps: by `(size, offset)` to find
//! the smallest range that fits, by `offset` to merge neighbours on free. Both
//! operations are O(log n) in the number of free ranges. Arenas hold few, large
//! objects (tables) and some small blobs, so n stays small; a TLSF-style O(1)
//! allocator is a drop-in replacement behind this API if profiles ever show it.
//!
//! All sizes and offsets are multiples of `GRANULE_BYTES` (4 KiB) so that every
//! object starts page aligned; large objects are additionally aligned to the
//! arena's hugepage size by the caller's `align`.

use std::collections::{BTreeMap, BTreeSet};

/// Allocation granule: every offset and size is a multiple of this.
pub const GRANULE_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
pub struct Allocator {
    /// The range managed is `[start, start + capacity)`.
    start: u64,
    capacity: u64,
    by_size: BTreeSet<(u64, u64)>,
    by_offset: BTreeMap<u64, u64>,
    /// Live allocations, offset -> size. Kept to assert that frees match allocations.
    live: BTreeMap<u64, u64>,
    free_bytes: u64,
    /// Every range handed out (`true`) or given back (`false`) since the
    /// last `take_journal`, in order; `None` until `journal` is called.
    journal: Option<Vec<(bool, u64, u64)>>,
}

/// Rounds `n` up to the allocation granule.
pub fn round_up(n: u64) -> u64 {
    n.div_ceil(GRANULE_BYTES).saturating_mul(GRANULE_BYTES)
}

impl Allocator {
    /// An allocator over `[0, capacity)`; `capacity` is rounded down to the granule.
    pub fn new(capacity: u64) -> Self {
        Self::over(0, capacity)
    }

    /// An allocator over `[start, end)`, both rounded to the granule (start up,
    /// end down). Offsets it hands out are absolute, so alignment is too.
    pub fn over(start: u64, end: u64) -> Self {
        let start = round_up(start);
        let capacity = (end / GRANULE_BYTES * GRANULE_BYTES).saturating_sub(start);
        let mut a = Allocator {
            start,
            capacity,
            by_size: BTreeSet::new(),
            by_offset: BTreeMap::new(),
            live: BTreeMap::new(),
            free_bytes: 0,
            journal: None,
        };
        if capacity > 0 {
            a.insert_free(start, capacity);
        }
        a
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// From now on, remembers every range handed out and given back, for
    /// `take_journal`: how a `--state-dir` catalog knows which ranges a
    /// killed server had given to writers and readers.
    pub fn journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The ranges handed out (`true`) and given back (`false`) since the
    /// last call, in order.
    pub fn take_journal(&mut self) -> Vec<(bool, u64, u64)> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether `take_journal` has something.
    pub fn has_journal(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.is_empty())
    }

    fn note(&mut self, allocated: bool, offset: u64, size: u64) {
        if let Some(j) = &mut self.journal {
            j.push((allocated, offset, size));
        }
    }

    /// The allocated ranges, neighbours merged, in offset order.
    pub fn used_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&o, &s) in &self.live {
            match out.last_mut() {
                Some((lo, ls)) if *lo + *ls == o => *ls += s,
                _ => out.push((o, s)),
            }
        }
        out
    }

    /// Takes every free part of `[start, end)` (clamped to this allocator's
    /// range; granule multiples) as allocations of their own, and returns
    /// them: how a restarted server holds back what the server before it had
    /// handed out, around the ranges it took back for recovered versions.
    pub fn take_free_within(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let start = round_up(start.max(self.start));
        let end = (end.min(self.start + self.capacity)) / GRANULE_BYTES * GRANULE_BYTES;
        if start >= end {
            return Vec::new();
        }
        // Free ranges that reach into [start, end): the one that begins
        // before `start`, and every one that begins inside.
        let first = self
            .by_offset
            .range(..start)
            .next_back()
            .filter(|(&o, &s)| o + s > start)
            .map(|(&o, _)| o);
        let inside: Vec<u64> = first
            .into_iter()
            .chain(self.by_offset.range(start..end).map(|(&o, _)| o))
            .collect();
        let mut taken = Vec::new();
        for o in inside {
            let s = self.by_offset[&o];
            let (a, b) = (o.max(start), (o + s).min(end));
            if a < b && self.take(a, b - a) {
                taken.push((a, b - a));
            }
        }
        taken
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.capacity - self.free_bytes
    }

    /// The largest contiguous free range.
    pub fn largest_free(&self) -> u64 {
        self.by_size.iter().next_back().map_or(0, |&(s, _)| s)
    }

    fn insert_free(&mut self, offset: u64, size: u64) {
        debug_assert!(size > 0);
        self.by_size.insert((size, offset));
        self.by_offset.insert(offset, size);
        self.free_bytes += size;
    }

    fn remove_free(&mut self, offset: u64, size: u64) {
        let removed =
            self.by_size.remove(&(size, offset)) && self.by_offset.remove(&offset) == Some(size);
        assert!(
            removed,
            "allocator free lists out of sync at offset {offset}"
        );
        self.free_bytes -= size;
    }

    /// Allocates `size` bytes (rounded up to the granule) at an offset that is a
    /// multiple of `align` (a power of two, at least the granule). Returns the
    /// offset and the rounded size, or `None` if no free range fits.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<(u64, u64)> {
        let size = round_up(size.max(1));
        let (range_off, range_size, start) = self.best_fit(size, align)?;
        self.remove_free(range_off, range_size);
        if start > range_off {
            self.insert_free(range_off, start - range_off);
        }
        let end = start + size;
        if end < range_off + range_size {
            self.insert_free(end, range_off + range_size - end);
        }
        let prev = self.live.insert(start, size);
        assert!(prev.is_none(), "allocator handed out offset {start} twice");
        self.note(true, start, size);
        Some((start, size))
    }

    /// The smallest free range that holds `size` (a granule multiple) at a
    /// multiple of `align`: `(range offset, range size, start)`.
    fn best_fit(&self, size: u64, align: u64) -> Option<(u64, u64, u64)> {
        let align = align.max(GRANULE_BYTES);
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        self.by_size.range((size, 0)..).find_map(|&(s, o)| {
            let start = o.checked_next_multiple_of(align)?;
            (start.checked_add(size)? <= o + s).then_some((o, s, start))
        })
    }

    /// Where `alloc(size, align)` would place its range now, without taking
    /// it: `(offset, rounded size)`.
    pub fn fit(&self, size: u64, align: u64) -> Option<(u64, u64)> {
        let size = round_up(size.max(1));
        self.best_fit(size, align)
            .map(|(_, _, start)| (start, size))
    }

    /// Whether `[offset, offset + size)` lies inside one free range.
    pub fn is_free(&self, offset: u64, size: u64) -> bool {
        self.by_offset
            .range(..=offset)
            .next_back()
            .is_some_and(|(&o, &s)| offset.saturating_add(size) <= o + s)
    }

    /// Marks `[offset, offset + size)` (granule multiples) as allocated, as if
    /// `alloc` had handed it out: how a restarted server takes back the ranges
    /// its recovered versions occupy. `false` (and nothing changed) when any
    /// of it is not free or lies outside the allocator's range.
    pub fn take(&mut self, offset: u64, size: u64) -> bool {
        if size == 0 || !offset.is_multiple_of(GRANULE_BYTES) || !size.is_multiple_of(GRANULE_BYTES)
        {
            return false;
        }
        let Some(end) = offset.checked_add(size) else {
            return false;
        };
        let Some((&o, &s)) = self.by_offset.range(..=offset).next_back() else {
            return false;
        };
        if o + s < end {
            return false;
        }
        self.remove_free(o, s);
        if offset > o {
            self.insert_free(o, offset - o);
        }
        if end < o + s {
            self.insert_free(end, o + s - end);
        }
        let prev = self.live.insert(offset, size);
        debug_assert!(prev.is_none());
        self.note(true, offset, size);
        true
    }

    /// Frees an allocation made by `alloc`, merging with free neighbours.
    pub fn free(&mut self, offset: u64, size: u64) {
        let live = self.live.remove(&offset);
        assert_eq!(
            live,
            Some(size),
            "free of {size} bytes at {offset} does not match an allocation"
        );
        self.note(false, offset, size);
        let mut start = offset;
        let mut end = offset + size;
        if let Some((&o, &s)) = self.by_offset.range(..offset).next_back() {
            if o + s == offset {
                self.remove_free(o, s);
                start = o;
            }
        }
        if let Some(&s) = self.by_offset.get(&end) {
            self.remove_free(end, s);
            end += s;
        }
        self.insert_free(start, end - start);
    }

    /// Shrinks a live allocation to `new_size` (rounded up), freeing the tail.
    /// Returns the new size.
    pub fn shrink(&mut self, offset: u64, size: u64, new_size: u64) -> u64 {
        let new_size = round_up(new_size.max(1));
        if new_size >= size {
            return size;
        }
        assert_eq!(
            self.live.get(&offset),
            Some(&size),
            "shrink of an unknown allocation at {offset}"
        );
        self.live.insert(offset, new_size);
        // Free the tail as its own allocation so `free` merges it.
        self.live.insert(offset + new_size, size - new_size);
        self.free(offset + new_size, size - new_size);
        new_size
    }

    /// Whether `[offset, offset + size)` is exactly one live allocation.
    pub fn is_live(&self, offset: u64, size: u64) -> bool {
        self.live.get(&offset) == Some(&size)
    }

    /// Checks every invariant; used by tests after each step.
    pub fn check_invariants(&self) {
        let mut ranges: Vec<(u64, u64, bool)> =
            self.by_offset.iter().map(|(&o, &s)| (o, s, true)).collect();
        ranges.extend(self.live.iter().map(|(&o, &s)| (o, s, false)));
        ranges.sort();
        let mut cursor = self.start;
        let mut prev_free = false;
        for &(o, s, is_free) in &ranges {
            assert!(o >= cursor, "ranges overlap at offset {o}");
            assert!(
                o % GRANULE_BYTES == 0 && s % GRANULE_BYTES == 0 && s > 0,
                "range not granular"
            );
            assert!(
                !(is_free && prev_free && o == cursor),
                "adjacent free ranges not merged at {o}"
            );
            prev_free = is_free;
            cursor = o + s;
        }
        assert!(cursor <= self.start + self.capacity, "range past capacity");
        let free: u64 = self.by_offset.values().sum();
        let live: u64 = self.live.values().sum();
        assert_eq!(free, self.free_bytes, "free byte count drifted");
        assert_eq!(free + live, self.capacity, "free + live != capacity");
        assert_eq!(self.by_size.len(), self.by_offset.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fit_says_where_alloc_goes_without_taking_it() {
        let mut a = Allocator::new(64 * GRANULE_BYTES);
        let (x, _) = a.alloc(8 * GRANULE_BYTES, GRANULE_BYTES).unwrap();
        let (y, _) = a.alloc(4 * GRANULE_BYTES, GRANULE_BYTES).unwrap();
        a.free(x, 8 * GRANULE_BYTES);
        // Best fit: a 6-granule request goes into the 8-granule hole.
        let fit = a.fit(6 * GRANULE_BYTES, GRANULE_BYTES).unwrap();
        assert_eq!(fit, (x, 6 * GRANULE_BYTES));
        assert!(a.is_free(fit.0, fit.1));
        assert!(!a.is_free(y, GRANULE_BYTES));
        assert!(!a.is_free(x, 9 * GRANULE_BYTES), "runs into the live range");
        assert_eq!(a.free_bytes(), 60 * GRANULE_BYTES, "fit took nothing");
        assert_eq!(a.alloc(6 * GRANULE_BYTES, GRANULE_BYTES).unwrap(), fit);
        assert!(!a.is_free(fit.0, GRANULE_BYTES));
        assert!(a.fit(61 * GRANULE_BYTES, GRANULE_BYTES).is_none());
    }

    #[test]
    fn alloc_free_merges_back_to_one_range() {
        let mut a = Allocator::new(1 << 20);
        let x = a.alloc(5000, 4096).unwrap();
        let y = a.alloc(4096, 4096).unwrap();
        assert_eq!(x, (0, 8192));
        assert_eq!(y, (8192, 4096));
        a.free(x.0, x.1);
        a.free(y.0, y.1);
        a.check_invariants();
        assert_eq!(a.largest_free(), 1 << 20);
    }

    #[test]
    fn take_claims_a_free_range_and_refuses_overlaps() {
        let mut a = Allocator::over(4096, 1 << 20);
        assert!(a.take(8192, 8192));
        assert!(!a.take(12288, 4096), "overlaps the taken range");
        assert!(!a.take(0, 4096), "below the allocator's range");
        assert!(!a.take(1 << 20, 4096), "above it");
        assert!(!a.take(8193, 4096), "not granule aligned");
        assert!(a.take(16384, 4096));
        a.check_invariants();
        assert_eq!(a.used_bytes(), 12288);
        a.free(8192, 8192);
        a.free(16384, 4096);
        a.check_invariants();
        assert_eq!(a.largest_free(), a.capacity());
    }

    #[test]
    fn the_journal_replays_to_the_used_ranges() {
        let mut a = Allocator::over(4096, 1 << 20);
        a.journal();
        let x = a.alloc(20_000, 4096).unwrap();
        let y = a.alloc(8192, 4096).unwrap();
        a.shrink(x.0, x.1, 4096);
        a.free(y.0, y.1);
        assert!(a.take(65536, 4096));
        let mut live = std::collections::BTreeMap::new();
        for (allocated, o, s) in a.take_journal() {
            for g in (o..o + s).step_by(GRANULE_BYTES as usize) {
                if allocated {
                    assert!(live.insert(g, ()).is_none(), "granule {g} handed out twice");
                } else {
                    assert!(live.remove(&g).is_some(), "granule {g} freed but not live");
                }
            }
        }
        let granules: Vec<u64> = live.into_keys().collect();
        let used: Vec<u64> = a
            .used_ranges()
            .iter()
            .flat_map(|&(o, s)| (o..o + s).step_by(GRANULE_BYTES as usize))
            .collect();
        assert_eq!(granules, used);
        assert_eq!(a.used_ranges(), vec![(x.0, 4096), (65536, 4096)]);
        assert!(!a.has_journal());
    }

    #[test]
    fn take_free_within_takes_only_what_is_free() {
        let mut a = Allocator::over(4096, 1 << 20);
        assert!(a.take(16384, 8192));
        assert!(a.take(40960, 4096));
        let got = a.take_free_within(8192, 49152);
        assert_eq!(got, vec![(8192, 8192), (24576, 16384), (45056, 4096)]);
        assert_eq!(a.free_bytes(), a.capacity() - (49152 - 8192));
        a.check_invariants();
        assert!(
            a.take_free_within(8192, 49152).is_empty(),
            "nothing free is left there"
        );
        assert!(
            a.take_free_within(2 << 20, 3 << 20).is_empty(),
            "outside the range"
        );
        for (o, s) in got {
            a.free(o, s);
        }
        a.check_invariants();
        assert_eq!(a.free_bytes(), a.capacity() - 12288);
    }

    #[test]
    fn alignment_is_honoured() {
        let mut a = Allocator::new(16 << 20);
        a.alloc(4096, 4096).unwrap();
        let (o, _) = a.alloc(3 << 20, 2 << 20).unwrap();
        assert_eq!(o % (2 << 20), 0);
        a.check_invariants();
    }

    #[test]
    fn a_range_allocator_hands_out_absolute_offsets() {
        let mut a = Allocator::over(1 << 20, 3 << 20);
        assert_eq!(a.capacity(), 2 << 20);
        let (o, s) = a.alloc(4096, 4096).unwrap();
        assert_eq!((o, s), (1 << 20, 4096));
        let (o2, _) = a.alloc(4096, 2 << 20).unwrap();
        assert_eq!(o2, 2 << 20, "alignment is absolute");
        assert!(a.alloc(2 << 20, 4096).is_none());
        a.free(o, s);
        a.check_invariants();
    }

    #[test]
    fn too_big_is_none() {
        let mut a = Allocator::new(1 << 20);
        assert!(a.alloc(2 << 20, 4096).is_none());
    }

    #[test]
    fn shrink_returns_tail() {
        let mut a = Allocator::new(1 << 20);
        let (o, s) = a.alloc(100_000, 4096).unwrap();
        let n = a.shrink(o, s, 10);
        assert_eq!(n, 4096);
        a.check_invariants();
        assert_eq!(a.free_bytes(), (1 << 20) - 4096);
    }

    proptest! {
        /// After random allocations, `take_free_within` takes exactly the free
        /// granules of the range: the range is then all used, nothing outside
        /// it changed, and freeing what it took restores the allocator.
        #[test]
        fn take_free_within_takes_exactly_the_free_part(
            sizes in proptest::collection::vec(1u64..200_000, 0..40),
            start in 0u64..(4 << 20),
            len in 0u64..(2 << 20),
        ) {
            let mut a = Allocator::over(4096, 4 << 20);
            for s in sizes {
                a.alloc(s, 4096);
            }
            let before = a.used_ranges();
            let used_before = a.used_bytes();
            let taken = a.take_free_within(start, start + len);
            a.check_invariants();
            let (lo, hi) = (round_up(start.max(4096)), ((start + len).min(4 << 20)) / GRANULE_BYTES * GRANULE_BYTES);
            for &(o, n) in &taken {
                prop_assert!(o >= lo && o + n <= hi, "took {o}+{n} outside [{lo}, {hi})");
            }
            let took: u64 = taken.iter().map(|t| t.1).sum();
            prop_assert_eq!(a.used_bytes(), used_before + took);
            if lo < hi {
                // Every granule of the range is used now.
                let covered: u64 = a
                    .used_ranges()
                    .iter()
                    .map(|&(o, n)| (o + n).min(hi).saturating_sub(o.max(lo)))
                    .sum();
                prop_assert_eq!(covered, hi - lo);
            }
            for (o, n) in taken {
                a.free(o, n);
            }
            a.check_invariants();
            prop_assert_eq!(a.used_ranges(), before);
        }

        #[test]
        fn random_alloc_free_keeps_invariants(ops in proptest::collection::vec((any::<bool>(), 1u64..300_000, 0usize..64), 1..300)) {
            let mut a = Allocator::new(4 << 20);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (is_alloc, size, pick) in ops {
                if is_alloc || live.is_empty() {
                    let align = if size > 100_000 { 64 * 1024 } else { 4096 };
                    if let Some((o, s)) = a.alloc(size, align) {
                        prop_assert_eq!(o % align, 0);
                        prop_assert!(s >= size);
                        live.push((o, s));
                    }
                } else {
                    let (o, s) = live.swap_remove(pick % live.len());
                    a.free(o, s);
                }
                a.check_invariants();
            }
        }
    }
}
