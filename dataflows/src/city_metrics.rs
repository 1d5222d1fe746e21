//! The rolling city metrics of SPEC §3: sliding event-time windows per city, closed by the
//! watermark, emitted in update mode.
//!
//! Events arrive at timely time = their event minute (sources guarantee this; see
//! `partitioned_source`). They are exchanged by city, so each city's windows live on one
//! worker, and added to one *minute bucket* each; a window `[s, s + length)` is the union of
//! its minute buckets, so an event touches one bucket rather than five windows. A window is
//! final once the input frontier has passed its end (no minute before the end can still
//! arrive); its final row is emitted once with `is_final = 1`, and buckets no open window
//! needs are dropped, so state stays bounded behind the frontier.
//!
//! The operator holds one capability, kept at its input frontier, and emits every row at
//! it. So its output frontier *is* its input frontier: once a sink's durable frontier
//! (see the job's sinks) reaches minute `m`, every window ending at or before `m` has had
//! its final row written — the tight bound the source's checkpoints rely on.
//! While a window is open, its row is emitted at most once per emit interval when it
//! changed (`is_final = 0`, `version` = its event count so far).
//!
//! The same buckets also give the per-minute rollup rows ([`CityMinuteRow`], table
//! `city_minutes`): a bucket marks itself changed when an event lands in it (O(1) per event),
//! its row goes out with the windows' updates, and its final row once the frontier passes
//! the minute's end — under the same rules, so a restart re-emits identical final rows.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::event::{EventType, Timestamp};
use crate::metrics_row::{final_version, CityMetricsRow};
use crate::minute_row::CityMinuteRow;
use crate::partitioned_source::SourcedEvent;

/// Window shape and emission settings.
#[derive(Clone, Debug)]
pub struct WindowConfig {
    /// Window length in minutes (a multiple of the slide).
    pub length_minutes: u64,
    /// Slide in minutes; windows start at multiples of it since the Unix epoch.
    pub slide_minutes: u64,
    /// Minimum time between two updates of an open window.
    pub emit_interval: Duration,
    /// Windows ending at or before this minute already had their final rows written before
    /// a restart: they are not emitted again (0 for a fresh start).
    pub finalized_through: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            length_minutes: 5,
            slide_minutes: 1,
            emit_interval: Duration::from_secs(1),
            finalized_through: 0,
        }
    }
}

/// A late event, for the job's late-event counters (and `ride_events.is_late`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LateEvent {
    /// Its city.
    pub city: String,
    /// Its event time.
    pub timestamp: Timestamp,
}

/// What [`build`] produces.
pub struct CityMetrics<'scope> {
    /// Metric rows: updates while windows are open, one final row per window.
    pub rows: StreamVec<'scope, u64, CityMetricsRow>,
    /// Per-minute rollup rows: updates while a minute is open, one final row per minute.
    pub minutes: StreamVec<'scope, u64, CityMinuteRow>,
    /// Every late event (they add to no window).
    pub late: StreamVec<'scope, u64, LateEvent>,
}

/// What the operator emits: both kinds of rows at the same capability.
#[derive(Clone, Debug)]
enum Emitted {
    Window(CityMetricsRow),
    Minute(CityMinuteRow),
}

/// One city's events in one minute.
#[derive(Clone, Debug, Default)]
struct Bucket {
    total: u64,
    requests: u64,
    accepted: u64,
    started: u64,
    completions: u64,
    cancellations: u64,
    /// The largest event time in the bucket (ms).
    max_ms: i64,
    /// Changed since its minute row was last emitted.
    dirty: bool,
    /// Fares summed in nanounits: integer addition is exact and order-independent, so a
    /// replay gives bit-identical averages whatever the interleaving.
    fare_nanos: i128,
    fares: u64,
    riders: HashSet<String>,
}

/// The operator's state: minute buckets per city, the capability rows are emitted at, and
/// which windows changed since the last update.
struct WindowState {
    config: WindowConfig,
    /// Per city, per minute. Keyed by city first so an event finds its bucket by `&str`,
    /// without allocating a key.
    buckets: BTreeMap<String, BTreeMap<u64, Bucket>>,
    /// At the input frontier; dropped when the input is done.
    capability: Option<Capability<u64>>,
    /// Per city, the starts of its windows changed since their last update.
    dirty: BTreeMap<String, BTreeSet<u64>>,
    /// Every window ending at or before this minute has had its final row.
    finalized_to: u64,
    last_flush: Instant,
}

impl WindowState {
    fn add(&mut self, event: &SourcedEvent, minute: u64) {
        let e = &event.event;
        if !self.buckets.contains_key(e.city.as_str()) {
            self.buckets.insert(e.city.clone(), BTreeMap::new());
        }
        let minutes = self
            .buckets
            .get_mut(e.city.as_str())
            .expect("inserted above");
        let bucket = minutes.entry(minute).or_default();
        if bucket.total == 0 || e.timestamp.millis() > bucket.max_ms {
            bucket.max_ms = e.timestamp.millis();
        }
        bucket.total += 1;
        match e.event_type {
            EventType::Requested => bucket.requests += 1,
            EventType::Completed => bucket.completions += 1,
            EventType::Cancelled => bucket.cancellations += 1,
            EventType::Accepted => bucket.accepted += 1,
            EventType::Started => bucket.started += 1,
        }
        // A minute whose final row was written before a restart is rebuilt, not re-emitted.
        bucket.dirty = minute + 1 > self.finalized_to;
        if let Some(fare) = e.estimated_fare {
            bucket.fare_nanos += (fare * 1e9).round() as i128;
            bucket.fares += 1;
        }
        if !bucket.riders.contains(&e.user_id) {
            bucket.riders.insert(e.user_id.clone());
        }
        let open: Vec<u64> = self
            .window_starts(minute)
            .filter(|start| start + self.config.length_minutes > self.finalized_to)
            .collect();
        if open.is_empty() {
            return;
        }
        if !self.dirty.contains_key(e.city.as_str()) {
            self.dirty.insert(e.city.clone(), BTreeSet::new());
        }
        let dirty = self.dirty.get_mut(e.city.as_str()).expect("inserted above");
        dirty.extend(open);
    }

    /// Starts of the windows containing `minute`.
    fn window_starts(&self, minute: u64) -> impl Iterator<Item = u64> {
        let (length, slide) = (self.config.length_minutes, self.config.slide_minutes);
        let last = minute - minute % slide;
        let first = (minute + 1).saturating_sub(length).div_ceil(slide) * slide;
        (first..=last).step_by(slide as usize)
    }

    /// The rollup row of one minute bucket.
    fn minute_row(minute: u64, city: &str, bucket: &Bucket, is_final: bool) -> CityMinuteRow {
        let mut riders: Vec<String> = bucket.riders.iter().cloned().collect();
        riders.sort_unstable();
        CityMinuteRow {
            minute: Timestamp(minute as i64 * 60_000),
            city: city.to_string(),
            events: bucket.total,
            requested: bucket.requests,
            accepted: bucket.accepted,
            started: bucket.started,
            completed: bucket.completions,
            cancelled: bucket.cancellations,
            fare_sum: bucket.fare_nanos as f64 / 1e9,
            fares: bucket.fares,
            unique_riders: riders.len() as u64,
            riders,
            max_event_ms: bucket.max_ms,
            is_final: u8::from(is_final),
            version: if is_final {
                final_version(bucket.total)
            } else {
                bucket.total
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
        let mut riders: HashSet<&str> = HashSet::new();
        let buckets = self
            .buckets
            .get(city)
            .into_iter()
            .flat_map(|m| m.range(start..end));
        for (_, bucket) in buckets {
            row.total_events += bucket.total;
            row.requests += bucket.requests;
            row.completions += bucket.completions;
            row.cancellations += bucket.cancellations;
            fare_nanos += bucket.fare_nanos;
            fares += bucket.fares;
            riders.extend(bucket.riders.iter().map(String::as_str));
        }
        if row.total_events == 0 {
            return None;
        }
        row.avg_fare = (fares > 0).then(|| fare_nanos as f64 / 1e9 / fares as f64);
        row.unique_riders = riders.len() as u64;
        row.version = if is_final {
            final_version(row.total_events)
        } else {
            row.total_events
        };
        Some(row)
    }
}

fn city_hash(city: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    city.hash(&mut hasher);
    hasher.finish()
}

/// Rolling per-city metrics from sourced events (timely time = event minute).
pub fn build<'scope>(
    events: StreamVec<'scope, u64, SourcedEvent>,
    config: &WindowConfig,
) -> CityMetrics<'scope> {
    assert!(config.slide_minutes > 0 && config.length_minutes.is_multiple_of(config.slide_minutes));
    let late = events.clone().filter(|e| e.late).map(|e| LateEvent {
        city: e.event.city,
        timestamp: e.event.timestamp,
    });
    let scope = events.scope();
    let config = config.clone();
    let emitted = events
        .filter(|e| !e.late)
        .unary_frontier(
            Exchange::new(|e: &SourcedEvent| city_hash(&e.event.city)),
            "CityWindows",
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let finalized_to = config.finalized_through;
                let mut state = WindowState {
                    config,
                    buckets: BTreeMap::new(),
                    capability: Some(capability),
                    dirty: BTreeMap::new(),
                    finalized_to,
                    last_flush: Instant::now(),
                };
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        let Some(minute) = capability.least().copied() else {
                            return;
                        };
                        for event in data.drain(..) {
                            state.add(&event, minute);
                        }
                    });
                    let length = state.config.length_minutes;
                    // Everything before `done` is complete.
                    let done = frontier.frontier().first().copied().unwrap_or(u64::MAX);

                    // Final rows for windows whose end the frontier has passed.
                    if done > state.finalized_to {
                        // Final rollup rows of the minutes the frontier has passed.
                        let finalized_to = state.finalized_to;
                        for (city, minutes) in state.buckets.iter_mut() {
                            for (minute, bucket) in minutes.range_mut(..done) {
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
                        for (city, minutes) in &state.buckets {
                            for minute in minutes.keys() {
                                for start in state.window_starts(*minute) {
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
                            if let Some(starts) = state.dirty.get_mut(city.as_str()) {
                                starts.remove(start);
                            }
                        }
                        state.dirty.retain(|_, starts| !starts.is_empty());
                        state.finalized_to = done;
                        // Evict what no open window needs.
                        for minutes in state.buckets.values_mut() {
                            minutes.retain(|minute, _| minute + length > done);
                        }
                        state.buckets.retain(|_, minutes| !minutes.is_empty());
                    }

                    // Updates of open windows and minutes, at most once per emit interval.
                    let minutes_dirty = state
                        .buckets
                        .values()
                        .any(|minutes| minutes.values().any(|b| b.dirty));
                    if !state.dirty.is_empty() || minutes_dirty {
                        let since = state.last_flush.elapsed();
                        if since >= state.config.emit_interval {
                            for (city, starts) in std::mem::take(&mut state.dirty) {
                                for start in starts {
                                    if let (Some(row), Some(capability)) =
                                        (state.row(start, &city, false), state.capability.as_ref())
                                    {
                                        output.session(capability).give(Emitted::Window(row));
                                    }
                                }
                            }
                            for (city, minutes) in state.buckets.iter_mut() {
                                for (minute, bucket) in minutes.iter_mut().filter(|(_, b)| b.dirty)
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
                    match frontier.frontier().first() {
                        Some(&time) => {
                            if let Some(capability) = state.capability.as_mut() {
                                if time > *capability.time() {
                                    capability.downgrade(&time);
                                }
                            }
                        }
                        None => state.capability = None,
                    }
                }
            },
        )
        .container::<Vec<_>>();
    let rows = emitted.clone().flat_map(|emitted| match emitted {
        Emitted::Window(row) => Some(row),
        Emitted::Minute(_) => None,
    });
    let minutes = emitted.flat_map(|emitted| match emitted {
        Emitted::Minute(row) => Some(row),
        Emitted::Window(_) => None,
    });
    CityMetrics {
        rows,
        minutes,
        late,
    }
}
