//! The window operator's map from a rider to what it keeps of it: an open-addressing table
//! whose slot for a key is known from the key's hash alone, so a batch's slots can be read
//! ahead of its updates.
//!
//! Almost every on-time event looks its rider up, and the rider's entry is almost never in
//! cache (tens of thousands of riders per minute, in random order). In a swiss table (std's
//! `HashMap`, hashbrown) a lookup is two dependent cache misses, the control bytes and then
//! the slot they point to, and a branch on the answer between them, so the processor does
//! not overlap the misses of one lookup with the next: they were ~13 % of a file run. Here
//! a key's first probe is slot `hash & mask` (linear probing, at most half full, so most
//! keys are in that slot or the next), and a loop of [`RiderTable::peek`] reads those two
//! slots of every key of a batch without a branch on what it reads: the loads are
//! independent, the processor keeps many in flight, and the batch's lookups right after
//! find their slots in cache. A slot is one cache line.

use std::hash::BuildHasher;

use crate::inline_name::InlineName;

/// A table holds at most one entry per this many slots (linear probing stays short).
const SLOTS_PER_ENTRY: usize = 2;

/// The smallest table, in slots.
const MIN_SLOTS: usize = 16;

/// One slot: a key, its value, and the key's tag. One cache line.
#[derive(Debug)]
#[repr(C, align(64))]
struct Slot<V> {
    /// The key's hash with its lowest bit set ([`RiderTable::tag`]), or 0 when empty.
    tag: u64,
    key: InlineName,
    value: V,
}

impl<V: Default> Slot<V> {
    fn empty() -> Slot<V> {
        Slot {
            tag: 0,
            key: InlineName::new(""),
            value: V::default(),
        }
    }
}

/// A map from [`InlineName`] to `V`, looked up by a tag computed once per key
/// ([`RiderTable::tag`]).
#[derive(Debug)]
pub(crate) struct RiderTable<V> {
    slots: Vec<Slot<V>>,
    len: usize,
    /// foldhash's fast hasher, seeded per table (see dataflows/Cargo.toml).
    hasher: foldhash::fast::RandomState,
}

impl<V: Default> Default for RiderTable<V> {
    fn default() -> RiderTable<V> {
        RiderTable {
            slots: (0..MIN_SLOTS).map(|_| Slot::empty()).collect(),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<V: Default> RiderTable<V> {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tag of `key` in this table: its hash, never 0 (0 marks an empty slot).
    pub(crate) fn tag(&self, key: &InlineName) -> u64 {
        self.hasher.hash_one(key.as_bytes()) | 1
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Reads the tags in the first two slots of the key tagged `tag` (an entry or a free
    /// slot for it is in one of them ~90 % of the time at half full): loads with no branch
    /// on them, so that a loop of these over a batch has many cache misses in flight at
    /// once, and the batch's lookups right after find their slots in cache.
    pub(crate) fn peek(&self, tag: u64) -> u64 {
        let mask = self.mask();
        let at = tag as usize & mask;
        self.slots[at].tag ^ self.slots[(at + 1) & mask].tag
    }

    /// The value of `key` (whose tag is `tag`), inserted as `V::default()` if absent.
    pub(crate) fn get_or_default(&mut self, tag: u64, key: &InlineName) -> &mut V {
        if (self.len + 1) * SLOTS_PER_ENTRY > self.slots.len() {
            self.resize(self.slots.len() * 2);
        }
        let mask = self.mask();
        let mut at = tag as usize & mask;
        loop {
            let slot = &self.slots[at];
            if slot.tag == 0 {
                break;
            }
            if slot.tag == tag && slot.key == *key {
                return &mut self.slots[at].value;
            }
            at = (at + 1) & mask;
        }
        self.len += 1;
        let slot = &mut self.slots[at];
        slot.tag = tag;
        slot.key = key.clone();
        &mut slot.value
    }

    /// Keeps the entries for which `keep` (which may change the value) answers true, in
    /// one pass over the slots and in place: each kept entry moves back to the first slot
    /// its probe run now leaves free, so every entry stays reachable from its first slot
    /// without crossing an empty one. (Rebuilding the table instead was ~5 % of a file run.)
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        let mask = self.mask();
        // Start after a slot that is empty before any removal (the table is at most half
        // full): no probe run crosses it, so every entry met after it has its first slot
        // between it and the entry, and moving an entry back never passes it either.
        let start = (0..self.slots.len())
            .find(|&at| self.slots[at].tag == 0)
            .expect("a table is at most half full");
        for step in 1..=self.slots.len() {
            let at = (start + step) & mask;
            if self.slots[at].tag == 0 {
                continue;
            }
            if !keep(&mut self.slots[at].value) {
                self.slots[at] = Slot::empty();
                self.len -= 1;
                continue;
            }
            let mut to = self.slots[at].tag as usize & mask;
            while to != at {
                if self.slots[to].tag == 0 {
                    self.slots.swap(to, at);
                    break;
                }
                to = (to + 1) & mask;
            }
        }
        // Shrink only when far too big, so that a table does not shrink and grow again
        // every minute.
        let mut slots = self.slots.len();
        while slots > MIN_SLOTS && self.len * SLOTS_PER_ENTRY * 4 <= slots {
            slots /= 2;
        }
        if slots != self.slots.len() {
            self.resize(slots);
        }
    }

    /// Moves every entry into a table of `slots` slots (a power of two, at least
    /// [`SLOTS_PER_ENTRY`] per entry).
    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, (0..slots).map(|_| Slot::empty()).collect());
        let mask = self.mask();
        self.len = 0;
        for slot in old.into_iter().filter(|slot| slot.tag != 0) {
            let mut at = slot.tag as usize & mask;
            while self.slots[at].tag != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        /// Adds `1` to the value of a key (inserting it at 0 first if absent).
        Bump(u8),
        /// Keeps the entries whose value is at least this.
        KeepAtLeast(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => any::<u8>().prop_map(Op::Bump),
            1 => (0u32..4).prop_map(Op::KeepAtLeast),
        ]
    }

    /// A key per number: short (inline) and long (on the heap) names alike.
    fn key(n: u8) -> InlineName {
        if n.is_multiple_of(7) {
            InlineName::new(&format!("a-rider-whose-id-is-too-long-to-inline-{n}"))
        } else {
            InlineName::new(&format!("user-{n}"))
        }
    }

    proptest! {
        /// Any sequence of lookups and removals (growing and shrinking the table) leaves the
        /// same entries as std's `HashMap` given the same operations.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 0..600)) {
            let mut table = RiderTable::<u32>::default();
            let mut model: HashMap<u8, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Bump(n) => {
                        let name = key(n);
                        let tag = table.tag(&name);
                        let _ = table.peek(tag);
                        *table.get_or_default(tag, &name) += 1;
                        *model.entry(n).or_default() += 1;
                    }
                    Op::KeepAtLeast(least) => {
                        table.retain(|v| *v >= least);
                        model.retain(|_, v| *v >= least);
                    }
                }
                prop_assert_eq!(table.len, model.len());
                prop_assert!(table.slots.len() >= table.len * SLOTS_PER_ENTRY);
            }
            for (n, value) in &model {
                let name = key(*n);
                let tag = table.tag(&name);
                prop_assert_eq!(*table.get_or_default(tag, &name), *value);
            }
            prop_assert_eq!(table.len, model.len());
        }
    }

    /// A table emptied by `retain` shrinks back, and a slot is one cache line.
    #[test]
    fn shrinks_when_mostly_empty_and_slots_are_cache_lines() {
        let mut table = RiderTable::<u32>::default();
        for n in 0..10_000 {
            let name = InlineName::new(&format!("user-{n}"));
            let tag = table.tag(&name);
            *table.get_or_default(tag, &name) = n;
        }
        assert!(table.slots.len() >= 20_000);
        table.retain(|v| *v < 10);
        assert_eq!(table.len, 10);
        assert!(table.slots.len() <= 128, "{} slots", table.slots.len());
        assert_eq!(
            std::mem::size_of::<Slot<crate::window_partials::RiderMinutes>>(),
            64
        );
    }
}
