//! The live view of SPEC §5's open minutes: per entity, its readings of the last `H` minutes;
//! at most once per emit interval, each worker counts the newest open minutes of its entities
//! and reports them to `supply_rows`.
//!
//! Differential's arrangements only seal a minute once the watermark passes it, so the rows
//! of minutes still open (update mode) are computed here by hand. Records are exchanged by
//! entity (ride or driver), so each entity's readings are on one worker, sorted by recency.
//! At minute `m` an entity counts as its latest reading with an event minute ≤ `m`, while
//! that reading is fresh — the same rule the differential reduces apply to final minutes.
//! A report is a worker's complete count of the minutes `[first, last]` it covers (the open
//! minutes up to the newest it has read, at most `open_minutes` of them), so `supply_rows`
//! replaces a worker's previous report rather than adding to it, and only emits the minutes
//! every worker's report covers. Readings that can no longer matter to an open minute (an
//! event minute `e` with `e + H` at or before the frontier) are dropped as the frontier
//! moves, so state is bounded like the arrangements'.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::event::EventType;
use crate::partitioned_source::{SourcedEvent, SourcedLocation};
use crate::supply::{Reading, SupplyConfig, Tally};
use crate::supply_row::SupplyCounts;

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

/// A reading and whether it is a `requested` event.
#[derive(Clone, Debug)]
struct Kept {
    reading: Reading,
    minute: u64,
    requested: bool,
}

/// The readings of the last `H` minutes per ride and per driver, and the counts of any
/// minute they decide. Pure state (no timely): the operator below drives it, tests feed it.
#[derive(Debug)]
pub struct LiveView {
    config: SupplyConfig,
    /// Per ride, then per driver: readings sorted by recency (oldest first).
    rides: HashMap<String, Vec<Kept>>,
    drivers: HashMap<String, Vec<Kept>>,
    /// Minutes before this are final (the input frontier).
    open_from: u64,
    /// The newest event minute read.
    through: Option<u64>,
    /// Readings kept.
    len: usize,
}

fn keep(entities: &mut HashMap<String, Vec<Kept>>, key: &str, kept: Kept) {
    if !entities.contains_key(key) {
        entities.insert(key.to_string(), Vec::new());
    }
    let readings = entities.get_mut(key).expect("inserted above");
    let at = readings.partition_point(|k| k.reading <= kept.reading);
    readings.insert(at, kept);
}

impl LiveView {
    /// An empty view with SPEC §5's knobs from `config`.
    pub fn new(config: &SupplyConfig) -> LiveView {
        LiveView {
            config: config.clone(),
            rides: HashMap::new(),
            drivers: HashMap::new(),
            open_from: 0,
            through: None,
            len: 0,
        }
    }

    /// Adds an on-time ride event.
    pub fn add_ride(&mut self, sourced: &SourcedEvent) {
        let reading = Reading::of_ride(sourced);
        let minute = reading.minute();
        self.see(minute);
        let requested = sourced.event.event_type == EventType::Requested;
        let kept = Kept {
            reading,
            minute,
            requested,
        };
        keep(&mut self.rides, &sourced.event.ride_id, kept);
    }

    /// Adds an on-time driver location.
    pub fn add_driver(&mut self, sourced: &SourcedLocation) {
        let reading = Reading::of_driver(sourced);
        let minute = reading.minute();
        self.see(minute);
        let kept = Kept {
            reading,
            minute,
            requested: false,
        };
        keep(&mut self.drivers, &sourced.event.driver_id, kept);
    }

    fn see(&mut self, minute: u64) {
        self.through = Some(self.through.map_or(minute, |t| t.max(minute)));
        self.len += 1;
    }

    /// The newest event minute read, if any.
    pub fn through(&self) -> Option<u64> {
        self.through
    }

    /// Readings kept (for tests of boundedness).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no reading is kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The minutes before `open_from` are final: drops the readings no later minute needs
    /// (those with `e + H ≤ open_from`). Returns whether `open_from` moved.
    pub fn advance(&mut self, open_from: u64) -> bool {
        if open_from <= self.open_from {
            return false;
        }
        self.open_from = open_from;
        let horizon = self.config.horizon();
        let mut len = 0;
        for entities in [&mut self.rides, &mut self.drivers] {
            entities.retain(|_, readings| {
                readings.retain(|k| k.minute + horizon > open_from);
                len += readings.len();
                !readings.is_empty()
            });
        }
        self.len = len;
        true
    }

    /// The counts of every city with a reading at each minute of `minutes` (which must not
    /// start before the last [`LiveView::advance`]), by (minute, city); cities whose counts
    /// are all zero but `events` are included.
    pub fn counts(
        &self,
        minutes: std::ops::RangeInclusive<u64>,
    ) -> BTreeMap<(u64, String), SupplyCounts> {
        let mut counts: BTreeMap<(u64, &str), SupplyCounts> = BTreeMap::new();
        let horizon = self.config.horizon();
        let windows = [
            (&self.rides, self.config.request_timeout_minutes),
            (&self.drivers, self.config.stale_after_minutes),
        ];
        for (entities, fresh_for) in windows {
            for readings in entities.values() {
                for minute in minutes.clone() {
                    let upto = readings.partition_point(|k| k.minute <= minute);
                    if upto == 0 {
                        continue;
                    }
                    let latest = &readings[upto - 1];
                    if let Some(tally) = latest.reading.tally {
                        if minute < latest.minute + fresh_for {
                            let entry = counts.entry((minute, &latest.reading.city));
                            tally.add_to(entry.or_default(), 1);
                        }
                    }
                    for k in readings[..upto]
                        .iter()
                        .filter(|k| k.minute + horizon > minute)
                    {
                        let entry = counts.entry((minute, &k.reading.city)).or_default();
                        Tally::Event.add_to(entry, 1);
                        if k.requested && k.minute == minute {
                            Tally::Request.add_to(entry, 1);
                        }
                    }
                }
            }
        }
        counts
            .into_iter()
            .map(|((minute, city), c)| ((minute, city.to_string()), c))
            .collect()
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

fn key_hash(key: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The live view's reports, from on-time rides and locations.
pub(crate) fn build<'scope>(
    rides: StreamVec<'scope, u64, SourcedEvent>,
    locations: StreamVec<'scope, u64, SourcedLocation>,
    config: &SupplyConfig,
) -> StreamVec<'scope, u64, LiveReport> {
    let scope = rides.scope();
    let config = config.clone();
    rides
        .binary_frontier(
            locations,
            Exchange::new(|e: &SourcedEvent| key_hash(&e.event.ride_id)),
            Exchange::new(|l: &SourcedLocation| key_hash(&l.event.driver_id)),
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
                        for event in data.drain(..) {
                            state.view.add_ride(&event);
                            state.dirty = true;
                        }
                    });
                    locations.for_each(|_, data| {
                        for location in data.drain(..) {
                            state.view.add_driver(&location);
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
