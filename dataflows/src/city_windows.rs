//! The second half of the city windows: per city, the workers' deltas summed into minute
//! buckets, and the window and minute rows made from them.
//!
//! Deltas are exchanged by city, so each city's buckets live on one worker. A window
//! `[s, s + length)` is the union of its minute buckets. A window is final once the input
//! frontier has passed its end: [`crate::window_partials`] sends every delta of a minute
//! before its own frontier passes the minute, so no delta of a minute before the end can
//! still arrive. Its final row is emitted once with `is_final = 1`, and buckets no open
//! window needs are dropped, so state stays bounded behind the frontier. A window's
//! distinct riders are the sum of its buckets' per-window first-seen counts
//! ([`Bucket::window_firsts`]), so a row is a sum over its five buckets rather than a union
//! of five sets of riders.
//!
//! The operator holds one capability, kept at its input frontier, and emits every row at
//! it. So its output frontier *is* its input frontier, which is the partial step's, which is
//! the sources' watermark: once a sink's durable frontier (see the job's sinks) reaches
//! minute `m`, every window ending at or before `m` has had its final row written — the
//! tight bound the source's checkpoints rely on. While a window is open, its row is emitted
//! at most once per emit interval when it changed (`is_final = 0`, `version` = its event
//! count so far).
//!
//! The same buckets also give the per-minute rollup rows ([`CityMinuteRow`], table
//! `city_minutes`): a bucket marks itself changed when a delta lands in it, its row goes out
//! with the windows' updates, and its final row once the frontier passes the minute's end —
//! under the same rules, so a restart re-emits identical final rows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use compact_str::CompactString;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::city_metrics::{window_index, window_starts, WindowConfig};
use crate::event::Timestamp;
use crate::frontier_capability;
use crate::inline_name::InlineName;
use crate::metrics_row::{final_version, CityMetricsRow};
use crate::minute_row::CityMinuteRow;
use crate::window_partials::{BucketDelta, Counts};

/// What the operator emits: both kinds of rows at the same capability.
#[derive(Clone, Debug)]
pub(crate) enum Emitted {
    Window(CityMetricsRow),
    Minute(CityMinuteRow),
}

/// One city's events in one minute, from every worker.
#[derive(Clone, Debug, Default)]
struct Bucket {
    counts: Counts,
    /// Changed since its minute row was last emitted.
    dirty: bool,
    /// Changed since the windows holding it were last updated: the windows to update are
    /// derived from these flags once per emit interval, so a delta marks one flag rather
    /// than inserting each of its windows into a set.
    windows_dirty: bool,
    /// Its distinct riders (the workers' riders are disjoint), sorted up to those added
    /// since its last minute row.
    riders: Vec<InlineName>,
    /// Per window holding this minute (in [`window_starts`] order): the riders first seen
    /// in that window by an event of this minute, summed over workers.
    window_firsts: Vec<u64>,
}

/// One city's minute buckets.
#[derive(Debug, Default)]
struct CityState {
    minutes: BTreeMap<u64, Bucket>,
}

impl CityState {
    /// Whether a row of this city changed since the last update.
    fn changed(&self) -> bool {
        self.minutes.values().any(|b| b.dirty || b.windows_dirty)
    }

    /// The starts of the open windows (ending after `finalized_to`) holding a changed
    /// minute; clears the minutes' window flags.
    fn take_dirty_windows(&mut self, length: u64, slide: u64, finalized_to: u64) -> BTreeSet<u64> {
        let mut starts = BTreeSet::new();
        for (minute, bucket) in self.minutes.iter_mut() {
            if std::mem::take(&mut bucket.windows_dirty) {
                starts.extend(
                    window_starts(*minute, length, slide).filter(|s| s + length > finalized_to),
                );
            }
        }
        starts
    }
}

/// The operator's state: per city its buckets; the capability rows are emitted at.
struct WindowState {
    config: WindowConfig,
    /// Per city (one lookup per delta, by `&str`, without allocating a key).
    cities: BTreeMap<String, CityState>,
    /// At the input frontier; dropped when the input is done.
    capability: Option<Capability<u64>>,
    /// Every window ending at or before this minute has had its final row.
    finalized_to: u64,
    last_flush: Instant,
}

impl WindowState {
    fn absorb(&mut self, delta: BucketDelta) {
        let finalized_to = self.finalized_to;
        let city = match self.cities.get_mut(delta.city.as_str()) {
            Some(city) => city,
            None => self.cities.entry(delta.city).or_default(),
        };
        let bucket = city.minutes.entry(delta.minute).or_default();
        bucket.counts.absorb(&delta.counts);
        if bucket.riders.is_empty() {
            bucket.riders = delta.riders;
        } else {
            bucket.riders.extend(delta.riders);
        }
        if bucket.window_firsts.is_empty() {
            bucket.window_firsts = delta.window_firsts;
        } else {
            for (sum, firsts) in bucket.window_firsts.iter_mut().zip(delta.window_firsts) {
                *sum += firsts;
            }
        }
        // A minute whose final row was written before a restart is rebuilt, not re-emitted.
        bucket.dirty = delta.minute + 1 > finalized_to;
        bucket.windows_dirty = true;
    }

    /// The rollup row of one minute bucket.
    fn minute_row(minute: u64, city: &str, bucket: &mut Bucket, is_final: bool) -> CityMinuteRow {
        // Sorted as names (inline bytes) before they become strings: the order is the same.
        // Sorted in place, so the next row of the minute finds its riders sorted up to the
        // ones added since: a stable sort takes that prefix as one run and merges the new
        // riders in, rather than sorting the minute's thousands again per update. (The
        // riders are distinct, so stable or not is the same order.)
        bucket.riders.sort();
        let riders: Vec<CompactString> = bucket.riders.iter().map(InlineName::to_compact).collect();
        let counts = &bucket.counts;
        CityMinuteRow {
            minute: Timestamp(minute as i64 * 60_000),
            city: city.to_string(),
            events: counts.total,
            requested: counts.requests,
            accepted: counts.accepted,
            started: counts.started,
            completed: counts.completions,
            cancelled: counts.cancellations,
            fare_sum: counts.fare_nanos as f64 / 1e9,
            fares: counts.fares,
            unique_riders: riders.len() as u64,
            riders,
            max_event_ms: counts.max_ms,
            is_final: u8::from(is_final),
            version: if is_final {
                final_version(counts.total)
            } else {
                counts.total
            },
            updated_at: Timestamp(chrono::Utc::now().timestamp_millis()),
        }
    }

    fn row(&self, start: u64, city: &str, is_final: bool) -> Option<CityMetricsRow> {
        let end = start + self.config.length_minutes;
        let mut row = CityMetricsRow {
            window_start: Timestamp(start as i64 * 60_000),
            window_end: Timestamp(end as i64 * 60_000),
            city: city.to_string(),
            total_events: 0,
            requests: 0,
            completions: 0,
            cancellations: 0,
            avg_fare: None,
            unique_riders: 0,
            is_final: u8::from(is_final),
            version: 0,
            updated_at: Timestamp(chrono::Utc::now().timestamp_millis()),
        };
        let (mut fare_nanos, mut fares) = (0i128, 0u64);
        let (length, slide) = (self.config.length_minutes, self.config.slide_minutes);
        let state = self.cities.get(city)?;
        for (minute, bucket) in state.minutes.range(start..end) {
            let index = window_index(*minute, start, length, slide);
            row.unique_riders += bucket.window_firsts.get(index).copied().unwrap_or(0);
            let counts = &bucket.counts;
            row.total_events += counts.total;
            row.requests += counts.requests;
            row.completions += counts.completions;
            row.cancellations += counts.cancellations;
            fare_nanos += counts.fare_nanos;
            fares += counts.fares;
        }
        if row.total_events == 0 {
            return None;
        }
        row.avg_fare = (fares > 0).then(|| fare_nanos as f64 / 1e9 / fares as f64);
        row.version = if is_final {
            final_version(row.total_events)
        } else {
            row.total_events
        };
        Some(row)
    }
}

/// The exchange key: foldhash with a fixed seed, so every process of a cluster (the same
/// binary) routes alike, at a fraction of SipHash's cost per record.
fn city_hash(city: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(city)
}

/// Window and minute rows from the workers' deltas.
pub(crate) fn build<'scope>(
    deltas: StreamVec<'scope, u64, BucketDelta>,
    config: &WindowConfig,
) -> StreamVec<'scope, u64, Emitted> {
    let scope = deltas.scope();
    let config = config.clone();
    deltas
        .unary_frontier(
            Exchange::new(|d: &BucketDelta| city_hash(&d.city)),
            "CityWindows",
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let finalized_to = config.finalized_through;
                let mut state = WindowState {
                    config,
                    cities: BTreeMap::new(),
                    capability: Some(capability),
                    finalized_to,
                    last_flush: Instant::now(),
                };
                move |(input, frontier), output| {
                    input.for_each(|_, data| {
                        for delta in data.drain(..) {
                            state.absorb(delta);
                        }
                    });
                    let (length, slide) = (state.config.length_minutes, state.config.slide_minutes);
                    // Everything before `done` is complete.
                    let done = frontier.frontier().first().copied().unwrap_or(u64::MAX);

                    // Final rows for windows whose end the frontier has passed.
                    if done > state.finalized_to {
                        // Final rollup rows of the minutes the frontier has passed.
                        let finalized_to = state.finalized_to;
                        for (city, city_state) in state.cities.iter_mut() {
                            for (minute, bucket) in city_state.minutes.range_mut(..done) {
                                if minute + 1 > finalized_to {
                                    bucket.dirty = false;
                                    if let Some(capability) = state.capability.as_ref() {
                                        output.session(capability).give(Emitted::Minute(
                                            WindowState::minute_row(*minute, city, bucket, true),
                                        ));
                                    }
                                }
                            }
                        }
                        let mut closing: BTreeSet<(u64, String)> = BTreeSet::new();
                        for (city, city_state) in &state.cities {
                            for minute in city_state.minutes.keys() {
                                for start in window_starts(*minute, length, slide) {
                                    let end = start + length;
                                    if end > state.finalized_to && end <= done {
                                        closing.insert((start, city.clone()));
                                    }
                                }
                            }
                        }
                        for (start, city) in &closing {
                            if let (Some(row), Some(capability)) =
                                (state.row(*start, city, true), state.capability.as_ref())
                            {
                                output.session(capability).give(Emitted::Window(row));
                            }
                        }
                        state.finalized_to = done;
                        // Evict what no open window needs.
                        for city_state in state.cities.values_mut() {
                            city_state
                                .minutes
                                .retain(|minute, _| minute + length > done);
                        }
                        state.cities.retain(|_, c| !c.minutes.is_empty());
                    }

                    // Updates of open windows and minutes, at most once per emit interval.
                    let changed = state.cities.values().any(CityState::changed);
                    if changed {
                        let since = state.last_flush.elapsed();
                        if since >= state.config.emit_interval {
                            let finalized_to = state.finalized_to;
                            let dirty: Vec<(String, BTreeSet<u64>)> = state
                                .cities
                                .iter_mut()
                                .map(|(city, c)| {
                                    (
                                        city.clone(),
                                        c.take_dirty_windows(length, slide, finalized_to),
                                    )
                                })
                                .filter(|(_, starts)| !starts.is_empty())
                                .collect();
                            for (city, starts) in dirty {
                                for start in starts {
                                    if let (Some(row), Some(capability)) =
                                        (state.row(start, &city, false), state.capability.as_ref())
                                    {
                                        output.session(capability).give(Emitted::Window(row));
                                    }
                                }
                            }
                            for (city, city_state) in state.cities.iter_mut() {
                                for (minute, bucket) in
                                    city_state.minutes.iter_mut().filter(|(_, b)| b.dirty)
                                {
                                    bucket.dirty = false;
                                    if let Some(capability) = state.capability.as_ref() {
                                        output.session(capability).give(Emitted::Minute(
                                            WindowState::minute_row(*minute, city, bucket, false),
                                        ));
                                    }
                                }
                            }
                            state.last_flush = Instant::now();
                        } else {
                            activator.activate_after(state.config.emit_interval - since);
                        }
                    }

                    // Rows from now on are emitted at the input frontier, or never.
                    frontier_capability::follow(
                        &mut state.capability,
                        frontier.frontier().first().copied(),
                    );
                }
            },
        )
        .container::<Vec<_>>()
}
