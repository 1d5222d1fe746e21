//! The live view of SPEC §5's open minutes: per entity, the readings an open minute may need;
//! per minute and city, the records of the last `H` minutes; at most once per emit interval,
//! each worker counts the newest open minutes and reports them to `supply_rows`.
//!
//! Differential's arrangements only seal a minute once the watermark passes it, so the rows
//! of minutes still open (update mode) are computed here by hand. Records are exchanged by
//! entity (ride or driver), so each entity's readings are on one worker, sorted by recency.
//! At minute `m` an entity counts as its latest reading with an event minute ≤ `m`, while
//! that reading is fresh — the same rule `latest_state` applies to final minutes.
//! A report is a worker's complete count of the minutes `[first, last]` it covers (the open
//! minutes up to the newest it has read, at most `open_minutes` of them), so `supply_rows`
//! replaces a worker's previous report rather than adding to it, and only emits the minutes
//! every worker's report covers.
//!
//! State is what an open minute can still need, no more. As the frontier (the first open
//! minute) moves, an entity's readings before it collapse to the latest of them, and that
//! one goes too once it counts at no open minute (its tally is none: a completed or cancelled
//! ride, an offline driver; or it is no longer fresh), so finished rides leave the view at
//! the next frontier; the `events`/`requests` tallies are counted per (minute, city), not
//! kept per reading, and dropped once `e + H` is at or before the frontier. (Keeping every
//! reading of the last `H` minutes, as this view first did, cost ~170 MB and grew a report's
//! work with every ride of the last ten minutes at 50,000 rides/min: `examples/supply_memory`.)

use std::collections::{BTreeMap, HashMap};

/// A map with foldhash's fast hasher (see dataflows/Cargo.toml).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::entity_key::EntityKey;
use crate::event::EventType;
use crate::partitioned_source::{SourcedEvent, SourcedLocation};
use crate::supply::{Reading, SupplyConfig};
use crate::supply_row::SupplyCounts;
use crate::supply_split::LiveRecord;

/// One worker's counts of the open minutes it knows of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LiveReport {
    /// The reporting worker.
    pub worker: usize,
    /// Grows with every report of that worker.
    pub seq: u64,
    /// The minutes `(first, last)` it counted: the newest open minutes up to the newest
    /// minute it has read (empty, `first > last`, when it has read nothing since the
    /// frontier passed it); `None` while it has read nothing at all.
    pub covers: Option<(u64, u64)>,
    /// Its counts per (minute, city), for the minutes it covers.
    pub counts: Vec<(u64, String, SupplyCounts)>,
}

/// A kept reading and its event minute.
#[derive(Clone, Debug)]
struct Kept {
    reading: Reading,
    minute: u64,
}

/// One city's on-time records of one minute: the `events` and `requests` tallies.
#[derive(Clone, Copy, Debug, Default)]
struct MinuteTally {
    events: u64,
    requests: u64,
}

/// What the view keeps of one kind of entity (rides or drivers).
#[derive(Debug)]
struct Entities {
    /// A reading counts for this many minutes after its own.
    fresh_for: u64,
    /// Per entity, sorted by recency (oldest first): the readings of the open minutes, and
    /// before them at most one, the latest reading before the open minutes, kept only while
    /// it still counts (it has a tally and is fresh at the first open minute).
    by_key: FastMap<EntityKey, Vec<Kept>>,
    /// Readings kept.
    len: usize,
}

impl Entities {
    fn new(fresh_for: u64) -> Entities {
        Entities {
            fresh_for,
            by_key: FastMap::default(),
            len: 0,
        }
    }

    fn keep(&mut self, key: EntityKey, kept: Kept) {
        let readings = self.by_key.entry(key).or_default();
        let at = readings.partition_point(|k| k.reading <= kept.reading);
        readings.insert(at, kept);
        self.len += 1;
    }

    /// Minutes before `open_from` are final: per entity, the readings before it collapse to
    /// the latest of them, which is dropped when it counts at no open minute.
    fn advance(&mut self, open_from: u64) {
        let fresh_for = self.fresh_for;
        let mut len = 0;
        self.by_key.retain(|_, readings| {
            let before = readings.partition_point(|k| k.minute < open_from);
            if before > 0 {
                let base = &readings[before - 1];
                let counts = base.reading.tally.is_some() && base.minute + fresh_for > open_from;
                let keep_from = if counts { before - 1 } else { before };
                readings.drain(..keep_from);
            }
            len += readings.len();
            !readings.is_empty()
        });
        self.len = len;
    }

    /// Adds the state of every entity at each minute `first + i` to `counts`.
    fn count<'a>(&'a self, first: u64, counts: &mut RangeCounts<'a>) {
        let last = first + counts.minutes as u64 - 1;
        for readings in self.by_key.values() {
            for (i, kept) in readings.iter().enumerate() {
                let Some(tally) = kept.reading.tally else {
                    continue;
                };
                // The latest reading from its minute until the next one's, while it is fresh.
                let next = readings.get(i + 1).map_or(u64::MAX, |next| next.minute);
                let from = kept.minute.max(first);
                let until = next.min(kept.minute + self.fresh_for).min(last + 1);
                if from < until {
                    let slots = counts.city(&kept.reading.city);
                    for minute in from..until {
                        tally.add_to(&mut slots[(minute - first) as usize], 1);
                    }
                }
            }
        }
    }
}

/// Per city, its counts at each minute of a report's range (index: minute − first): one
/// lookup per reading that counts, not a map entry per entity and minute.
struct RangeCounts<'a> {
    minutes: usize,
    by_city: FastMap<&'a str, Vec<SupplyCounts>>,
}

impl<'a> RangeCounts<'a> {
    fn city(&mut self, city: &'a str) -> &mut [SupplyCounts] {
        let minutes = self.minutes;
        self.by_city
            .entry(city)
            .or_insert_with(|| vec![SupplyCounts::default(); minutes])
    }
}

/// The latest readings per ride and per driver that an open minute may need, the records
/// per (minute, city) of the last `H` minutes, and the counts of any open minute they
/// decide. Pure state (no timely): the operator below drives it, tests feed it.
#[derive(Debug)]
pub struct LiveView {
    config: SupplyConfig,
    rides: Entities,
    drivers: Entities,
    /// The `events` and `requests` tallies per event minute and city, for the minutes an
    /// open minute's row can count (`e + H > open_from`).
    tallies: BTreeMap<u64, FastMap<String, MinuteTally>>,
    /// Minutes before this are final (the input frontier).
    open_from: u64,
    /// The newest event minute read.
    through: Option<u64>,
}

impl LiveView {
    /// An empty view with SPEC §5's knobs from `config`.
    pub fn new(config: &SupplyConfig) -> LiveView {
        LiveView {
            config: config.clone(),
            rides: Entities::new(config.request_timeout_minutes),
            drivers: Entities::new(config.stale_after_minutes),
            tallies: BTreeMap::new(),
            open_from: 0,
            through: None,
        }
    }

    /// Adds an on-time ride event.
    pub fn add_ride(&mut self, sourced: &SourcedEvent) {
        let requested = sourced.event.event_type == EventType::Requested;
        let ride = EntityKey::new(&sourced.event.ride_id);
        self.add_ride_reading(ride, Reading::of_ride(sourced), requested);
    }

    /// Adds an on-time driver location.
    pub fn add_driver(&mut self, sourced: &SourcedLocation) {
        let driver = EntityKey::new(&sourced.event.driver_id);
        self.add_driver_reading(driver, Reading::of_driver(sourced));
    }

    /// Adds a ride's on-time reading (`requested`: it is a `requested` event).
    pub(crate) fn add_ride_reading(&mut self, ride: EntityKey, reading: Reading, requested: bool) {
        let minute = reading.minute();
        self.see(minute, &reading.city, requested);
        self.rides.keep(ride, Kept { reading, minute });
    }

    /// Adds a driver's on-time reading.
    pub(crate) fn add_driver_reading(&mut self, driver: EntityKey, reading: Reading) {
        let minute = reading.minute();
        self.see(minute, &reading.city, false);
        self.drivers.keep(driver, Kept { reading, minute });
    }

    fn see(&mut self, minute: u64, city: &str, requested: bool) {
        self.through = Some(self.through.map_or(minute, |t| t.max(minute)));
        let cities = self.tallies.entry(minute).or_default();
        let tally = match cities.get_mut(city) {
            Some(tally) => tally,
            None => cities.entry(city.to_string()).or_default(),
        };
        tally.events += 1;
        tally.requests += u64::from(requested);
    }

    /// The newest event minute read, if any.
    pub fn through(&self) -> Option<u64> {
        self.through
    }

    /// Readings kept (for tests of boundedness).
    pub fn len(&self) -> usize {
        self.rides.len + self.drivers.len
    }

    /// Whether no reading is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The minutes before `open_from` are final: forgets what no later minute needs.
    /// Returns whether `open_from` moved.
    pub fn advance(&mut self, open_from: u64) -> bool {
        if open_from <= self.open_from {
            return false;
        }
        self.open_from = open_from;
        self.rides.advance(open_from);
        self.drivers.advance(open_from);
        let horizon = self.config.horizon();
        let keep_from = open_from.saturating_sub(horizon - 1);
        self.tallies = self.tallies.split_off(&keep_from);
        true
    }

    /// The counts of every city with a record in the last `H` minutes at each minute of
    /// `minutes` (which must not start before the last [`LiveView::advance`]), by (minute,
    /// city); cities whose counts are all zero but `events` are included.
    pub fn counts(
        &self,
        minutes: std::ops::RangeInclusive<u64>,
    ) -> BTreeMap<(u64, String), SupplyCounts> {
        let (first, last) = (*minutes.start(), *minutes.end());
        if first > last {
            return BTreeMap::new();
        }
        let mut counts = RangeCounts {
            minutes: (last - first + 1) as usize,
            by_city: FastMap::default(),
        };
        let horizon = self.config.horizon();
        for (&e, cities) in self
            .tallies
            .range((first + 1).saturating_sub(horizon)..=last)
        {
            for (city, tally) in cities {
                let slots = counts.city(city);
                // A record of minute `e` counts at the minutes `[e, e + H)` of the range.
                for minute in e.max(first)..(e + horizon).min(last + 1) {
                    let entry = &mut slots[(minute - first) as usize];
                    entry.events += tally.events;
                    if e == minute {
                        entry.requests += tally.requests;
                    }
                }
            }
        }
        self.rides.count(first, &mut counts);
        self.drivers.count(first, &mut counts);
        let mut rows = BTreeMap::new();
        for (city, slots) in counts.by_city {
            for (i, c) in slots.into_iter().enumerate() {
                // A (minute, city) is in the counts when anything counted there.
                if c != SupplyCounts::default() {
                    rows.insert((first + i as u64, city.to_string()), c);
                }
            }
        }
        rows
    }

    /// The newest open minutes (at most `open_minutes` of them, up to the newest read);
    /// empty (`first > last`) when nothing open has been read.
    fn open_minutes(&self) -> Option<(u64, u64)> {
        let through = self.through?;
        let first = self
            .open_from
            .max((through + 1).saturating_sub(self.config.open_minutes));
        Some((first, through))
    }
}

/// The operator's state: the view, and when and what it last reported.
struct LiveState {
    view: LiveView,
    worker: usize,
    capability: Option<Capability<u64>>,
    dirty: bool,
    seq: u64,
    last_report: Instant,
}

impl LiveState {
    /// Counts the newest open minutes.
    fn report(&mut self) -> LiveReport {
        let covers = self.view.open_minutes();
        let counts = match covers {
            Some((first, last)) if first <= last => self.view.counts(first..=last),
            _ => BTreeMap::new(),
        };
        self.seq += 1;
        LiveReport {
            worker: self.worker,
            seq: self.seq,
            covers,
            counts: counts
                .into_iter()
                .map(|((minute, city), c)| (minute, city, c))
                .collect(),
        }
    }
}

/// The live view's reports, from on-time rides' and locations' records.
pub(crate) fn build<'scope>(
    rides: StreamVec<'scope, u64, LiveRecord>,
    locations: StreamVec<'scope, u64, LiveRecord>,
    config: &SupplyConfig,
) -> StreamVec<'scope, u64, LiveReport> {
    let scope = rides.scope();
    let config = config.clone();
    rides
        .binary_frontier(
            locations,
            Exchange::new(|r: &LiveRecord| r.key.hash()),
            Exchange::new(|r: &LiveRecord| r.key.hash()),
            "SupplyLive",
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let mut state = LiveState {
                    view: LiveView::new(&config),
                    worker: scope.index(),
                    capability: Some(capability),
                    dirty: true,
                    seq: 0,
                    last_report: Instant::now(),
                };
                move |(rides, rides_frontier), (locations, locations_frontier), output| {
                    rides.for_each(|_, data| {
                        for r in data.drain(..) {
                            state.view.add_ride_reading(r.key, r.reading, r.requested);
                            state.dirty = true;
                        }
                    });
                    locations.for_each(|_, data| {
                        for r in data.drain(..) {
                            state.view.add_driver_reading(r.key, r.reading);
                            state.dirty = true;
                        }
                    });
                    let frontier = [rides_frontier, locations_frontier]
                        .iter()
                        .filter_map(|f| f.frontier().first().copied())
                        .min();
                    let Some(frontier) = frontier else {
                        // Both inputs done: every minute is final, nothing is open.
                        state.capability = None;
                        return;
                    };
                    if state.view.advance(frontier) {
                        state.dirty = true;
                    }
                    if let Some(capability) = state.capability.as_mut() {
                        if frontier > *capability.time() {
                            capability.downgrade(&frontier);
                        }
                    }
                    if state.dirty {
                        let since = state.last_report.elapsed();
                        if since >= config.emit_interval {
                            let report = state.report();
                            if let Some(capability) = state.capability.as_ref() {
                                output.session(capability).give(report);
                            }
                            state.dirty = false;
                            state.last_report = Instant::now();
                        } else {
                            activator.activate_after(config.emit_interval - since);
                        }
                    }
                }
            },
        )
        .container::<Vec<_>>()
}
