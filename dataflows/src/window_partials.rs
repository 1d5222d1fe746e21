//! The first half of the city windows: each worker counts the events of its share of the
//! riders, per city and minute, and sends what changed to the city's worker.
//!
//! Window events are exchanged by (city, rider), so every worker takes an equal share of
//! the work however skewed the cities are (London carries ~12× Košice: exchanged by city,
//! one worker held most of the rider lookups and a second worker sped a file run up ~1.1×).
//! A rider's events all reach the same worker, so its distinct-rider counts are exact on
//! that worker, and the riders of two workers never overlap: the city's counts are the sums
//! of the workers' counts. Each worker keeps, per city, a map from rider to the retained
//! minutes it appears in (one lookup per event answers whether the rider is new to the
//! minute and to each of its windows), and per (city, minute) the [`BucketDelta`] of events
//! since its last flush. It flushes them to [`crate::city_windows`] at least every
//! [`PARTIAL_FLUSH`] and always before its capability passes their minute, so the merge's
//! input frontier passing a minute means every delta of that minute has arrived.
//!
//! Its output frontier is its input frontier (one capability, kept there), so the windows'
//! finality still follows the sources' watermark exactly.

use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::city_metrics::{window_starts, WindowConfig, WindowEvent};
use crate::event::EventType;
use crate::frontier_capability;
use crate::inline_name::InlineName;
use crate::rider_table::RiderTable;

/// The longest a worker holds its deltas while its frontier stays: rows are emitted at most
/// once per emit interval by the merge, and this keeps the partial step from adding a whole
/// interval to an update's delay (a flush is one delta per city and minute touched).
pub(crate) const PARTIAL_FLUSH: Duration = Duration::from_millis(100);

/// The frontier minutes between two passes over the rider tables ([`PartialState::evict`]).
/// A pass touches every rider's slot (~5 % of a file run when made at every minute), and a
/// minute no open window holds changes no count: an on-time event's minute is at or after
/// the frontier, so it is never that minute, and no open window holds it. Keeping such
/// minutes one more minute costs memory only (a minute of riders).
const EVICT_EVERY_MINUTES: u64 = 2;

/// Events whose rider slots are read ahead together: enough for many cache misses in flight,
/// few enough that the slots are still in the first-level cache when counted (a timely batch
/// is ~4,000 events: the first slots read were evicted before their turn).
const PEEK_BATCH: usize = 64;

/// Counts of one city's events in one minute: of one worker's riders since its last flush
/// (in a [`BucketDelta`]), or of all of them (in the merge's bucket). Sums of these are
/// exact and order-independent, so a replay gives bit-identical rows however the events
/// were spread over workers and flushes.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counts {
    pub(crate) total: u64,
    pub(crate) requests: u64,
    pub(crate) accepted: u64,
    pub(crate) started: u64,
    pub(crate) completions: u64,
    pub(crate) cancellations: u64,
    /// The largest event time counted (ms); meaningless while `total` is 0.
    pub(crate) max_ms: i64,
    /// Fares summed in nanounits: integer addition is exact and order-independent.
    pub(crate) fare_nanos: i128,
    pub(crate) fares: u64,
}

impl Counts {
    fn add(&mut self, e: &WindowEvent) {
        if self.total == 0 || e.timestamp_ms > self.max_ms {
            self.max_ms = e.timestamp_ms;
        }
        self.total += 1;
        match e.event_type {
            EventType::Requested => self.requests += 1,
            EventType::Completed => self.completions += 1,
            EventType::Cancelled => self.cancellations += 1,
            EventType::Accepted => self.accepted += 1,
            EventType::Started => self.started += 1,
        }
        if let Some(fare) = e.estimated_fare {
            self.fare_nanos += (fare * 1e9).round() as i128;
            self.fares += 1;
        }
    }

    /// Adds another worker's (or flush's) counts of the same city and minute.
    pub(crate) fn absorb(&mut self, other: &Counts) {
        if other.total == 0 {
            return;
        }
        if self.total == 0 || other.max_ms > self.max_ms {
            self.max_ms = other.max_ms;
        }
        self.total += other.total;
        self.requests += other.requests;
        self.accepted += other.accepted;
        self.started += other.started;
        self.completions += other.completions;
        self.cancellations += other.cancellations;
        self.fare_nanos += other.fare_nanos;
        self.fares += other.fares;
    }
}

/// What one worker's riders added to one city's minute since its last flush.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct BucketDelta {
    pub(crate) city: String,
    pub(crate) minute: u64,
    pub(crate) counts: Counts,
    /// Riders new to the minute (each appears in one delta of the minute only: riders are
    /// this worker's alone, and the worker remembers the minutes of each).
    pub(crate) riders: Vec<InlineName>,
    /// Per window holding the minute (in [`window_starts`] order): riders first seen in that
    /// window by an event of this minute; a window's distinct riders are the sum of these
    /// over its minutes and over workers (each rider is first seen in a window exactly
    /// once). Empty when no rider was new to a window.
    pub(crate) window_firsts: Vec<u64>,
}

/// The retained minutes a rider appears in, inline up to four (a heap vector per rider
/// was an allocation for most events, since most are their rider's first in the minute,
/// and a second cache miss for the rest). Minutes since the epoch as `u32`: every minute of
/// a four-digit year fits (9999-12-31T23:59 is minute 4,223,371,679), and a rider's slot
/// (tag, name, minutes) is 56 bytes: one cache line.
pub(crate) type RiderMinutes = SmallVec<[u32; 4]>;

/// A window event's minute as kept in [`RiderMinutes`] (saturating: no valid event time
/// reaches `u32::MAX`).
fn short_minute(minute: u64) -> u32 {
    u32::try_from(minute).unwrap_or(u32::MAX)
}

/// One city's part of a worker's state.
#[derive(Debug, Default)]
struct CityRiders {
    /// This worker's riders of the city with the retained minutes they appear in. An event's
    /// rider is new to a window exactly when none of its minutes is in the window, whatever
    /// order the events came in.
    riders: RiderTable<RiderMinutes>,
    /// Deltas not yet flushed, by minute.
    pending: BTreeMap<u64, BucketDelta>,
}

/// A worker's state: its riders per city, its pending deltas, and the capability they are
/// flushed at.
struct PartialState {
    config: WindowConfig,
    /// The cities this worker has riders or pending deltas of, found through `city_slots`
    /// (a hash lookup per event; an ordered map's comparisons were ~2.5 % of a file run).
    cities: Vec<(InlineName, CityRiders)>,
    /// foldhash's fast hasher (see dataflows/Cargo.toml).
    city_slots: HashMap<InlineName, usize, foldhash::fast::RandomState>,
    /// Per event of the batch being added: its city's slot and its rider's tag.
    located: Vec<(usize, u64)>,
    /// At the input frontier; dropped when the input is done.
    capability: Option<Capability<u64>>,
    /// Every window ending at or before this minute is final: new riders no longer count.
    finalized_to: u64,
    /// The frontier at the last pass over the rider tables.
    evicted_at: u64,
    last_flush: Instant,
}

impl PartialState {
    fn new(config: WindowConfig, capability: Capability<u64>) -> PartialState {
        PartialState {
            finalized_to: config.finalized_through,
            evicted_at: config.finalized_through,
            config,
            cities: Vec::new(),
            city_slots: HashMap::default(),
            located: Vec::new(),
            capability: Some(capability),
            last_flush: Instant::now(),
        }
    }

    /// Adds a batch of events of one minute, [`PEEK_BATCH`] at a time: first each event's
    /// city and rider tag, then a read of each rider's slot ([`RiderTable::peek`]:
    /// independent loads, whose cache misses the processor overlaps; one lookup at a time,
    /// they were ~13 % of a file run), then the counting, which finds the slots in cache.
    fn add_batch(&mut self, events: &[WindowEvent], minute: u64) {
        let mut located = std::mem::take(&mut self.located);
        for events in events.chunks(PEEK_BATCH) {
            located.clear();
            for e in events {
                let city = self.city_slot(&e.city);
                located.push((city, self.cities[city].1.riders.tag(&e.rider)));
            }
            let mut seen = 0;
            for &(city, tag) in &located {
                seen ^= self.cities[city].1.riders.peek(tag);
            }
            std::hint::black_box(seen);
            for (e, &(city, tag)) in events.iter().zip(&located) {
                self.add(e, minute, city, tag);
            }
        }
        self.located = located;
    }

    /// The slot of `name` in `cities`, added if new.
    fn city_slot(&mut self, name: &InlineName) -> usize {
        if let Some(&slot) = self.city_slots.get(name) {
            return slot;
        }
        self.cities.push((name.clone(), CityRiders::default()));
        self.city_slots.insert(name.clone(), self.cities.len() - 1);
        self.cities.len() - 1
    }

    fn add(&mut self, e: &WindowEvent, minute: u64, city: usize, tag: u64) {
        let (length, slide) = (self.config.length_minutes, self.config.slide_minutes);
        let finalized_to = self.finalized_to;
        let (name, city) = &mut self.cities[city];
        let delta = city.pending.entry(minute).or_insert_with(|| BucketDelta {
            city: name.to_text(),
            minute,
            counts: Counts::default(),
            riders: Vec::new(),
            window_firsts: Vec::new(),
        });
        delta.counts.add(e);
        let minutes = city.riders.get_or_default(tag, &e.rider);
        // Most events are of a rider already in their minute: nothing more to count.
        let short = short_minute(minute);
        if minutes.contains(&short) {
            return;
        }
        for (index, start) in window_starts(minute, length, slide).enumerate() {
            let window = start..start + length;
            if start + length > finalized_to
                && !minutes.iter().any(|&m| window.contains(&u64::from(m)))
            {
                if delta.window_firsts.is_empty() {
                    delta.window_firsts = vec![0; (length / slide) as usize];
                }
                delta.window_firsts[index] += 1;
            }
        }
        delta.riders.push(e.rider.clone());
        minutes.push(short);
    }

    /// Forgets the minutes no open window holds once every window before `done` is final,
    /// the riders with none left, and the cities with neither riders nor pending deltas.
    fn evict(&mut self, done: u64) {
        let length = self.config.length_minutes;
        for (_, city) in &mut self.cities {
            city.riders.retain(|minutes| {
                minutes.retain(|minute| u64::from(*minute) + length > done);
                !minutes.is_empty()
            });
        }
        let before = self.cities.len();
        self.cities
            .retain(|(_, c)| !c.riders.is_empty() || !c.pending.is_empty());
        if self.cities.len() != before {
            self.city_slots.clear();
            for (slot, (name, _)) in self.cities.iter().enumerate() {
                self.city_slots.insert(name.clone(), slot);
            }
        }
    }
}

/// The exchange key: (city, rider) hashed with foldhash's fixed seed, so every process of a
/// cluster (the same binary) routes alike.
fn rider_hash(e: &WindowEvent) -> u64 {
    foldhash::fast::FixedState::default().hash_one((e.city.as_bytes(), e.rider.as_bytes()))
}

/// Per worker, the deltas of its riders' events (timely time = event minute in, the
/// worker's frontier out).
pub(crate) fn build<'scope>(
    events: StreamVec<'scope, u64, WindowEvent>,
    config: &WindowConfig,
) -> StreamVec<'scope, u64, BucketDelta> {
    let scope = events.scope();
    let config = config.clone();
    events
        .unary_frontier(
            Exchange::new(rider_hash),
            "RiderPartials",
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let flush_every = config.emit_interval.min(PARTIAL_FLUSH);
                let mut state = PartialState::new(config, capability);
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        let Some(minute) = capability.least().copied() else {
                            return;
                        };
                        state.add_batch(data, minute);
                        data.clear();
                    });
                    // Everything before `done` is complete.
                    let done = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                    let advanced = done > state.finalized_to;

                    // Deltas leave before the capability passes their minute, and otherwise at
                    // least every `flush_every`.
                    if state.cities.iter().any(|(_, c)| !c.pending.is_empty()) {
                        let since = state.last_flush.elapsed();
                        if advanced || since >= flush_every {
                            if let Some(capability) = state.capability.as_ref() {
                                let mut session = output.session(capability);
                                for (_, city) in &mut state.cities {
                                    for (_, delta) in std::mem::take(&mut city.pending) {
                                        session.give(delta);
                                    }
                                }
                            }
                            state.last_flush = Instant::now();
                        } else {
                            activator.activate_after(flush_every - since);
                        }
                    }

                    if advanced {
                        state.finalized_to = done;
                        if done >= state.evicted_at.saturating_add(EVICT_EVERY_MINUTES) {
                            state.evicted_at = done;
                            state.evict(done);
                        }
                    }

                    // Deltas from now on are emitted at the input frontier, or never.
                    frontier_capability::follow(
                        &mut state.capability,
                        frontier.frontier().first().copied(),
                    );
                }
            },
        )
        .container::<Vec<_>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summing deltas gives the counts of all their events, whatever the split; an empty
    /// delta's `max_ms` (meaningless) never wins.
    #[test]
    fn absorbed_counts_equal_the_counts_of_all_events() {
        let event = |ms: i64, event_type: EventType, fare: Option<f64>| WindowEvent {
            city: "london".into(),
            rider: "u".into(),
            timestamp_ms: ms,
            event_type,
            estimated_fare: fare,
        };
        let events = [
            event(5_000, EventType::Requested, Some(12.5)),
            event(9_000, EventType::Completed, None),
            event(1_000, EventType::Cancelled, Some(0.1)),
            event(3_000, EventType::Accepted, None),
            event(2_000, EventType::Started, Some(7.25)),
        ];
        let mut whole = Counts::default();
        events.iter().for_each(|e| whole.add(e));
        assert_eq!((whole.total, whole.max_ms, whole.fares), (5, 9_000, 3));
        for cut in 0..=events.len() {
            let (mut first, mut second) = (Counts::default(), Counts::default());
            events[..cut].iter().for_each(|e| first.add(e));
            events[cut..].iter().for_each(|e| second.add(e));
            let mut merged = Counts::default();
            for part in [&second, &Counts::default(), &first] {
                merged.absorb(part);
            }
            assert_eq!(merged, whole, "cut at {cut}");
        }
    }
}
