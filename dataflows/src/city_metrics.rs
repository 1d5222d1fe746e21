//! The rolling city metrics of SPEC §3: sliding event-time windows per city, closed by the
//! watermark, emitted in update mode.
//!
//! Events arrive at timely time = their event minute (sources guarantee this; see
//! `partitioned_source`). They are exchanged by city, so each city's windows live on one
//! worker, and added to one *minute bucket* each; a window `[s, s + length)` is the union of
//! its minute buckets, so an event touches one bucket rather than five windows. A window is
//! final once the input frontier has passed its end (no minute before the end can still
//! arrive); its final row is emitted once with `is_final = 1`, and buckets no open window
//! needs are dropped, so state stays bounded behind the frontier. Distinct riders are
//! counted per window as events arrive (a rider new to a minute's bucket is new to each of
//! its windows whose other buckets do not hold it; the count is kept in that bucket, per
//! window), so a row is a sum over its five buckets rather than a union of five sets of
//! riders (13 % of a file run's time before). Per city, one map
//! from rider to the retained minutes it appears in answers both questions with one lookup
//! per event (looking the rider up in each neighbouring bucket was 13 % of a file run).
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

use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::event::{EventType, RideEvent, Timestamp};
use crate::metrics_row::{final_version, CityMetricsRow};
use crate::minute_row::CityMinuteRow;
use crate::partitioned_source::SourcedEvent;
use crate::split::{split, Side};

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

/// What the windows need of an on-time event, and all that crosses the exchange: a
/// `SourcedEvent` is ~190 bytes (its ride, driver and coordinates too), moved once more
/// into the exchange's buffers and once out of them per event; this is ~80, and the ride's
/// other strings are freed by the worker that allocated them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct WindowEvent {
    city: String,
    user_id: String,
    /// Event time (ms).
    timestamp_ms: i64,
    event_type: EventType,
    estimated_fare: Option<f64>,
}

impl WindowEvent {
    fn of(event: RideEvent) -> WindowEvent {
        WindowEvent {
            city: event.city,
            user_id: event.user_id,
            timestamp_ms: event.timestamp.millis(),
            event_type: event.event_type,
            estimated_fare: event.estimated_fare,
        }
    }
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
    /// Changed since the windows holding it were last updated: the windows to update are
    /// derived from these flags once per emit interval, so an event marks one flag rather
    /// than inserting each of its windows into a set (five set insertions per event were a
    /// tenth of the operator's time).
    windows_dirty: bool,
    /// Fares summed in nanounits: integer addition is exact and order-independent, so a
    /// replay gives bit-identical averages whatever the interleaving.
    fare_nanos: i128,
    fares: u64,
    /// Its distinct riders.
    riders: Vec<RiderName>,
    /// Per window holding this minute (in [`window_starts`] order): the riders first seen
    /// in that window by an event of this minute. A window's distinct riders are the sum
    /// of these over its minutes (each rider is first seen in a window exactly once), so
    /// they are kept with the buckets and leave with them: no per-window map to look up
    /// for each new rider (five ordered-map updates per new rider before).
    window_firsts: Vec<u64>,
}

/// Rider ids up to this long are kept inline.
const INLINE_NAME: usize = 22;

/// A rider's id, inline when it fits (ids such as `user-bratislava-12345` do), so a lookup
/// compares bytes already in the map's slot rather than following a pointer per probe (the
/// rider lookup is the window operator's largest cost). Hashed and compared as bytes.
#[derive(Clone, Debug)]
enum RiderName {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Rc<str>),
}

impl RiderName {
    fn new(name: &str) -> RiderName {
        if name.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            RiderName::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            RiderName::Shared(Rc::from(name))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            RiderName::Inline { len, bytes } => &bytes[..*len as usize],
            RiderName::Shared(name) => name.as_bytes(),
        }
    }

    fn to_text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl std::borrow::Borrow<[u8]> for RiderName {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::hash::Hash for RiderName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for RiderName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RiderName {}

/// The retained minutes a rider appears in, inline up to three (a heap vector per rider
/// was an allocation for most events, since most are their rider's first in the minute,
/// and a second cache miss for the rest).
type RiderMinutes = SmallVec<[u64; 3]>;

/// One city's part of the state: its minute buckets, the distinct riders of each open
/// window (kept as events arrive, so a row costs no merge of sets), and its windows changed
/// since their last update.
#[derive(Debug, Default)]
struct CityState {
    minutes: BTreeMap<u64, Bucket>,
    /// Every rider of `minutes` with the minutes of `minutes` it appears in (a few: a rider
    /// has few events per window, so they are kept in the map's slot, see [`RiderMinutes`]);
    /// foldhash's fast hasher (see dataflows/Cargo.toml). An event's rider is new to a
    /// window exactly when none of its minutes is in the window, whatever order the events
    /// came in; the count goes to the event's bucket ([`Bucket::window_firsts`]).
    riders: HashMap<RiderName, RiderMinutes, foldhash::fast::RandomState>,
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

/// The operator's state: per city its buckets and window riders; the capability rows are
/// emitted at.
struct WindowState {
    config: WindowConfig,
    /// Per city (one lookup per event, by `&str`, without allocating a key).
    cities: BTreeMap<String, CityState>,
    /// At the input frontier; dropped when the input is done.
    capability: Option<Capability<u64>>,
    /// Every window ending at or before this minute has had its final row.
    finalized_to: u64,
    last_flush: Instant,
}

impl WindowState {
    fn add(&mut self, e: &WindowEvent, minute: u64) {
        let (length, slide) = (self.config.length_minutes, self.config.slide_minutes);
        let finalized_to = self.finalized_to;
        let city = match self.cities.get_mut(e.city.as_str()) {
            Some(city) => city,
            None => self.cities.entry(e.city.clone()).or_default(),
        };
        let bucket = city.minutes.entry(minute).or_default();
        if bucket.total == 0 || e.timestamp_ms > bucket.max_ms {
            bucket.max_ms = e.timestamp_ms;
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
        bucket.dirty = minute + 1 > finalized_to;
        bucket.windows_dirty = true;
        if let Some(fare) = e.estimated_fare {
            bucket.fare_nanos += (fare * 1e9).round() as i128;
            bucket.fares += 1;
        }
        let minutes = match city.riders.get_mut(e.user_id.as_bytes()) {
            Some(minutes) => minutes,
            None => city.riders.entry(RiderName::new(&e.user_id)).or_default(),
        };
        // Most events are of a rider already in their minute: nothing more to count.
        if minutes.contains(&minute) {
            return;
        }
        for (index, start) in window_starts(minute, length, slide).enumerate() {
            let window = start..start + length;
            if start + length > finalized_to && !minutes.iter().any(|m| window.contains(m)) {
                if bucket.window_firsts.is_empty() {
                    bucket.window_firsts = vec![0; (length / slide) as usize];
                }
                bucket.window_firsts[index] += 1;
            }
        }
        bucket.riders.push(RiderName::new(&e.user_id));
        minutes.push(minute);
    }

    /// The rollup row of one minute bucket.
    fn minute_row(minute: u64, city: &str, bucket: &Bucket, is_final: bool) -> CityMinuteRow {
        let mut riders: Vec<String> = bucket.riders.iter().map(RiderName::to_text).collect();
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
        let (length, slide) = (self.config.length_minutes, self.config.slide_minutes);
        let state = self.cities.get(city)?;
        for (minute, bucket) in state.minutes.range(start..end) {
            let index = window_index(*minute, start, length, slide);
            row.unique_riders += bucket.window_firsts.get(index).copied().unwrap_or(0);
            row.total_events += bucket.total;
            row.requests += bucket.requests;
            row.completions += bucket.completions;
            row.cancellations += bucket.cancellations;
            fare_nanos += bucket.fare_nanos;
            fares += bucket.fares;
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

/// Starts of the windows (`length` minutes, sliding by `slide`) containing `minute`.
fn window_starts(minute: u64, length: u64, slide: u64) -> impl Iterator<Item = u64> {
    let last = minute - minute % slide;
    let first = (minute + 1).saturating_sub(length).div_ceil(slide) * slide;
    (first..=last).step_by(slide as usize)
}

/// Where the window starting at `start` is among [`window_starts`]`(minute, ..)`.
fn window_index(minute: u64, start: u64, length: u64, slide: u64) -> usize {
    let first = (minute + 1).saturating_sub(length).div_ceil(slide) * slide;
    ((start - first) / slide) as usize
}

/// The exchange key: foldhash with a fixed seed, so every process of a cluster (the same
/// binary) routes alike, at a fraction of SipHash's cost per record.
fn city_hash(city: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(city)
}

/// Rolling per-city metrics from sourced events (timely time = event minute).
pub fn build<'scope>(
    events: StreamVec<'scope, u64, SourcedEvent>,
    config: &WindowConfig,
) -> CityMetrics<'scope> {
    assert!(config.slide_minutes > 0 && config.length_minutes.is_multiple_of(config.slide_minutes));
    // Late and on-time events part ways by move: a `clone()` of the stream would copy
    // every event for the late branch only.
    let (on_time, late) = split(events, "LateEvents", |e: SourcedEvent| {
        if e.late {
            Side::Right(LateEvent {
                city: e.event.city,
                timestamp: e.event.timestamp,
            })
        } else {
            Side::Left(WindowEvent::of(e.event))
        }
    });
    let scope = on_time.scope();
    let config = config.clone();
    let emitted = on_time
        .unary_frontier(
            Exchange::new(|e: &WindowEvent| city_hash(&e.city)),
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
                    input.for_each(|capability, data| {
                        let Some(minute) = capability.least().copied() else {
                            return;
                        };
                        for event in data.drain(..) {
                            state.add(&event, minute);
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
                            city_state.riders.retain(|_, minutes| {
                                minutes.retain(|minute| *minute + length > done);
                                !minutes.is_empty()
                            });
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
    let (rows, minutes) = split(emitted, "RowKinds", |emitted| match emitted {
        Emitted::Window(row) => Side::Left(row),
        Emitted::Minute(row) => Side::Right(row),
    });
    CityMetrics {
        rows,
        minutes,
        late,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket's per-window rider counts are found again from the window's start, for
    /// every shape the config allows (the oracle tests run the default 5/1 only).
    #[test]
    fn window_index_is_the_position_among_window_starts() {
        for (length, slide) in [(5, 1), (6, 2), (6, 3), (4, 4), (1, 1), (10, 5)] {
            for minute in 0..60 {
                let starts: Vec<u64> = window_starts(minute, length, slide).collect();
                assert!(starts.len() <= (length / slide) as usize);
                for (position, start) in starts.into_iter().enumerate() {
                    assert!(start <= minute && minute < start + length);
                    assert_eq!(window_index(minute, start, length, slide), position);
                }
            }
        }
    }
}
