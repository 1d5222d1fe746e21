//! What every ride or driver counts as, minute by minute, as differential updates of the
//! per-city tallies: the latest reading of each entity, kept by hand instead of in a
//! differential `reduce` over each entity's readings.
//!
//! SPEC §5 counts an entity at minute `m` as its latest reading with an event minute `≤ m`,
//! while that reading is fresh (`m < e + fresh_for`). Readings are held per event minute
//! until the input frontier passes it (no on-time reading of that minute can come after), then
//! the minutes are applied in order, each entity's latest reading of the minute first. A
//! reading of a later minute always supersedes the entity's previous one (its timestamp is
//! larger), so at minute `m` the state is:
//! - the new reading's `(city, tally)`: `+1` at `m` and `−1` at `m + fresh_for`, where it
//!   stops being fresh;
//! - the previous reading's, if it still counted at `m`: `−1` at `m` and `+1` at its own
//!   expiry, cancelling the retraction sent with it.
//!
//! Only entities whose latest reading counts are kept (a completed or cancelled ride, an
//! offline driver counts nowhere and needs no cancelling), and each is dropped once its
//! reading has expired; the updates of one minute are summed per (city, tally, time) before
//! they leave, so differential sees a few updates per city and minute, not one per reading.
//!
//! This is the same function as a `reduce` per entity over readings inserted at `e` and
//! retracted at `e + fresh_for` (the latest present one, as before), which the job used to
//! run: the reduce arranged every reading of the last `fresh_for` minutes, sorted and merged
//! them by string keys and replayed each entity's history at every minute it might change,
//! about 60 % of a supply run's CPU time and most of its memory
//! (`docs/benchmarks.md`, issue 13's sixth step). Here an entity costs a hash lookup per
//! minute it reports in. The oracle tests (`tests/supply_oracle.rs`) check the result.

use std::collections::{BTreeMap, HashMap};

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::dataflow::StreamVec;

use crate::entity_key::EntityKey;
use crate::supply::{Reading, Tally};

/// A map with foldhash's fast hasher (see dataflows/Cargo.toml).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What an entity's latest reading counts as, and from which minute.
#[derive(Debug)]
struct Counted {
    minute: u64,
    city: String,
    tally: Tally,
}

/// One event minute not yet final: the capability to send at, and each entity's latest
/// reading of that minute.
type PendingMinute = (Capability<u64>, FastMap<EntityKey, Reading>);

/// The operator's state.
struct LatestStates {
    /// A reading counts for this many minutes from its own.
    fresh_for: u64,
    /// Readings of the minutes the frontier has not passed.
    pending: BTreeMap<u64, PendingMinute>,
    /// Per entity whose latest reading still counts: what it counts as.
    counting: FastMap<EntityKey, Counted>,
    /// Per minute, the entities whose reading stops counting then (an entry whose entity has
    /// a newer reading since is skipped).
    expiring: BTreeMap<u64, Vec<EntityKey>>,
    /// One minute's updates, summed per city, (tally, time) before they are sent.
    updates: FastMap<String, FastMap<(Tally, u64), isize>>,
}

impl LatestStates {
    fn new(fresh_for: u64) -> Self {
        LatestStates {
            fresh_for,
            pending: BTreeMap::new(),
            counting: FastMap::default(),
            expiring: BTreeMap::new(),
            updates: FastMap::default(),
        }
    }

    /// Keeps `reading` if it is its entity's latest of its minute so far.
    fn hold(&mut self, capability: &InputCapability<u64>, entity: EntityKey, reading: Reading) {
        let minute = reading.minute();
        let (_, latest) = self
            .pending
            .entry(minute)
            .or_insert_with(|| (capability.delayed(&minute, 0), FastMap::default()));
        match latest.get_mut(&entity) {
            Some(kept) => {
                if reading > *kept {
                    *kept = reading;
                }
            }
            None => {
                latest.insert(entity, reading);
            }
        }
    }

    fn update(&mut self, city: &str, tally: Tally, time: u64, diff: isize) {
        let per_city = match self.updates.get_mut(city) {
            Some(per_city) => per_city,
            None => self.updates.entry(city.to_owned()).or_default(),
        };
        *per_city.entry((tally, time)).or_default() += diff;
    }

    /// The updates of the minutes applied since the last call, summed, zeros left out.
    fn take_updates(&mut self) -> impl Iterator<Item = ((String, Tally), u64, isize)> + '_ {
        self.updates.iter_mut().flat_map(|(city, per_city)| {
            per_city
                .drain()
                .filter(|(_, diff)| *diff != 0)
                .map(|((tally, time), diff)| ((city.clone(), tally), time, diff))
        })
    }

    /// Drops the entities whose reading stops counting at or before `minute`.
    fn expire_through(&mut self, minute: u64) {
        while let Some(entry) = self.expiring.first_entry() {
            let expiry = *entry.key();
            if expiry > minute {
                break;
            }
            for entity in entry.remove() {
                if let Some(counted) = self.counting.get(&entity) {
                    if counted.minute + self.fresh_for == expiry {
                        self.counting.remove(&entity);
                    }
                }
            }
        }
    }

    /// Applies minute `minute`'s latest readings: the updates they make, at `minute` and after.
    fn apply(&mut self, minute: u64, latest: FastMap<EntityKey, Reading>) {
        self.expire_through(minute);
        let fresh_for = self.fresh_for;
        for (entity, reading) in latest {
            if let Some(old) = self.counting.remove(&entity) {
                let expiry = old.minute + fresh_for;
                if expiry > minute {
                    self.update(&old.city, old.tally, minute, -1);
                    self.update(&old.city, old.tally, expiry, 1);
                }
            }
            if let Some(tally) = reading.tally {
                self.update(&reading.city, tally, minute, 1);
                self.update(&reading.city, tally, minute + fresh_for, -1);
                self.expiring
                    .entry(minute + fresh_for)
                    .or_default()
                    .push(entity.clone());
                self.counting.insert(
                    entity,
                    Counted {
                        minute,
                        city: reading.city,
                        tally,
                    },
                );
            }
        }
    }
}

/// Per-city tallies `(city, tally)` of every entity's latest reading, each reading counting
/// for `fresh_for` minutes from its minute. `readings` are exchanged by entity.
pub(crate) fn build<'scope>(
    readings: StreamVec<'scope, u64, (EntityKey, Reading)>,
    fresh_for: u64,
    name: &str,
) -> VecCollection<'scope, u64, (String, Tally)> {
    readings
        .unary_frontier(
            Exchange::new(|(entity, _): &(EntityKey, Reading)| entity.hash()),
            name,
            move |_capability, _info| {
                let mut state = LatestStates::new(fresh_for);
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (entity, reading) in data.drain(..) {
                            state.hold(&capability, entity, reading);
                        }
                    });
                    while let Some(entry) = state.pending.first_entry() {
                        let minute = *entry.key();
                        if frontier.less_equal(&minute) {
                            break;
                        }
                        let (capability, latest) = entry.remove();
                        state.apply(minute, latest);
                        output
                            .session(&capability)
                            .give_iterator(state.take_updates());
                    }
                }
            },
        )
        .container::<Vec<_>>()
        .as_collection()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn reading(minute: u64, second: u64, city: &str, tally: Option<Tally>) -> Reading {
        Reading {
            ts: (minute * 60 + second) as i64 * 1_000,
            partition: 0,
            offset: minute * 60 + second,
            city: city.to_owned(),
            tally,
        }
    }

    /// Applies `minute`'s readings and returns the updates sent, consolidated.
    fn apply(
        state: &mut LatestStates,
        minute: u64,
        readings: Vec<(&str, Reading)>,
    ) -> BTreeMap<(String, Tally, u64), isize> {
        let latest = readings
            .into_iter()
            .map(|(id, r)| (EntityKey::new(id), r))
            .collect();
        state.apply(minute, latest);
        state
            .take_updates()
            .map(|((city, tally), time, diff)| ((city, tally, time), diff))
            .collect()
    }

    #[test]
    fn a_newer_reading_replaces_the_count_of_the_previous_one() {
        let mut state = LatestStates::new(10);
        let requested = apply(
            &mut state,
            3,
            vec![("r1", reading(3, 5, "brno", Some(Tally::Waiting)))],
        );
        assert_eq!(
            requested,
            BTreeMap::from([
                (("brno".into(), Tally::Waiting, 3), 1),
                (("brno".into(), Tally::Waiting, 13), -1),
            ])
        );
        // Accepted two minutes later: waiting for [3, 5), in progress for [5, 15).
        let accepted = apply(
            &mut state,
            5,
            vec![("r1", reading(5, 0, "brno", Some(Tally::InProgress)))],
        );
        assert_eq!(
            accepted,
            BTreeMap::from([
                (("brno".into(), Tally::Waiting, 5), -1),
                (("brno".into(), Tally::Waiting, 13), 1),
                (("brno".into(), Tally::InProgress, 5), 1),
                (("brno".into(), Tally::InProgress, 15), -1),
            ])
        );
        // Completed: counts nowhere from minute 7, and the ride is forgotten.
        let completed = apply(&mut state, 7, vec![("r1", reading(7, 0, "brno", None))]);
        assert_eq!(
            completed,
            BTreeMap::from([
                (("brno".into(), Tally::InProgress, 7), -1),
                (("brno".into(), Tally::InProgress, 15), 1),
            ])
        );
        assert!(state.counting.is_empty());
    }

    #[test]
    fn an_entity_is_kept_while_its_reading_counts_and_no_longer() {
        let mut state = LatestStates::new(10);
        apply(
            &mut state,
            0,
            vec![
                ("r1", reading(0, 1, "brno", Some(Tally::Waiting))),
                ("r2", reading(0, 2, "wien", Some(Tally::Waiting))),
            ],
        );
        // r2 moves on at minute 4: its first reading's expiry (10) no longer drops it.
        apply(
            &mut state,
            4,
            vec![("r2", reading(4, 0, "wien", Some(Tally::InProgress)))],
        );
        state.expire_through(9);
        assert_eq!(state.counting.len(), 2);
        state.expire_through(10);
        assert_eq!(state.counting.len(), 1, "r1 expired at minute 10");
        state.expire_through(14);
        assert!(state.counting.is_empty(), "r2 expired at minute 14");
        assert!(state.expiring.is_empty());
        // An expired reading is not cancelled again when a newer one comes.
        let late = apply(
            &mut state,
            20,
            vec![("r1", reading(20, 0, "brno", Some(Tally::InProgress)))],
        );
        assert_eq!(late.len(), 2, "{late:?}");
    }
}
