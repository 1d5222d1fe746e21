//! Live supply and demand per city (SPEC §5), on differential dataflow.
//!
//! ```text
//!  rides ─► supply_split ─┬─ late ──────────────────────────────────────────► late_rides
//!           (one pass)    ├─ (ride, reading) ─► latest_state: per ride, its latest reading's
//!                         │   (exchange by ride)  (city, tally) +1 at e, −1 at e+T ──────────┐
//!                         ├─ (city, request) +1 at e, −1 at e+1 ───────────────────────────────┤
//!                         ├─ (city, event)   +1 at e, −1 at e+H ───────────────────────────────┤
//!                         └─ live record ─┐                                                    ▼
//!  locations ─► supply_split ─┬─ late ────┼─────────────────────────► late_locations   reduce per city
//!                             ├─ (driver, reading) ─► latest_state (+1 at e, −1 at e+S) ─► (counts, outer
//!                             ├─ (city, event) +1 at e, −1 at e+H ────────────────────────► join of supply
//!                             └─ live record ─┤                                             with demand)
//!                                             ▼                                                    │ final
//!              supply_live (open minutes, per worker) ── reports ──► supply_rows ◄─────────────────┘ counts
//!                                                                        │ (worker 0)
//!                                                                        ▼ CitySupplyRow
//! ```
//!
//! Timely time is the event minute `e` (the sources emit on-time records at their minute; see
//! `partitioned_source`). A row for minute `m` describes the state at `end(m) = m + 1 min`,
//! which depends on records with an event minute ≤ `m` only; in a differential collection at
//! time `m` exactly those have been inserted, so *the collection at time `m` is the state at
//! `end(m)`*. SPEC §5's freshness rules are whole minutes, so each record is a *temporal
//! filter*: inserted at its minute `e`, retracted at the first minute it no longer counts:
//! - a ride's reading at `e + T` (`request_timeout_minutes`, default 10): at `m ≥ e + T` its
//!   timestamp is older than `end(m) − T`;
//! - a driver's reading at `e + S` (`stale_after_minutes`, default 1);
//! - a `requested` event, for the `requests` column, at `e + 1`;
//! - every on-time record, for the row's `version`, at `e + H` with `H = max(T, S)`.
//!
//! An entity (ride or driver) counts at minute `m` as its latest reading (largest timestamp,
//! then partition, then offset: a later read of the same partition wins a tie) with an event
//! minute `≤ m`, while that reading is fresh: its `(city, tally)`. A ride whose latest event
//! is `requested` waits, `accepted`/`started` is in progress, `completed`/`cancelled` counts
//! nowhere; a driver is available or on trip in the city of its latest location, offline
//! counts nowhere. `latest_state` keeps each entity's latest reading by hand and sends those
//! tallies as differential updates: `+1` from the reading's minute, `−1` when it stops being
//! fresh or a newer reading replaces it (it used to be a differential `reduce` per entity
//! over every reading of the last `T` minutes, which cost most of a supply run; see that
//! module). A `reduce` per city turns the multiset of tallies into [`SupplyCounts`]: this is
//! the per-(city, minute) *join of supply with demand*, written as a reduce over their union
//! because it must be an outer join (a city with drivers and no rider still has a row) and
//! differential's `join` is inner; a `count` per (city, tally) before it would only add an
//! arrangement, since the reduce already sees each distinct tally once with its
//! multiplicity. A city's row exists when a count is non-zero.
//!
//! Differential's arrangements seal a time only once the input frontier passes it, and
//! `latest_state` applies a minute only then too; the frontier is the watermark minute (the
//! minimum of both topics' watermarks, since both streams feed the per-city reduce), so its
//! output for minute `m` appears exactly when `m` is final. The reduce compacts its traces to
//! its input frontier as it goes and holds per-city tallies only; `latest_state` keeps an
//! entity only while its latest reading counts; so memory is bounded by the entities of the
//! last `H` minutes plus what the watermark holds open.
//!
//! Update mode needs rows of minutes that are *not* final yet, which differential cannot
//! produce at this timestamp: an arrangement seals a minute only once the frontier passes
//! it. (A partially ordered `(minute, round)` time would let it, but the sources of both
//! topics and the city metrics share one `u64` minute timeline, so that is a change of the
//! whole job, not of this module.) So the open minutes are computed by `supply_live`, a
//! hand-written operator that keeps the readings of the last `H` minutes per entity and, at
//! most once per emit interval, counts the newest `open_minutes` minutes; the oracle tests
//! check it against the same oracle as the final rows. `supply_rows` (on worker 0: its input
//! is a few changes per city and minute) emits those update rows when they change, and, from
//! differential's output, every final row once, after which that minute gets no update. An
//! update row is what has been read so far: a city whose counts fall to zero before the
//! minute is final gets no further update and no final row, so its last update stays behind
//! (readers of the sinks use the final rows, `FINAL` / `argMax` by version, for history).
//!
//! `version`: an update row's version is its `events` (on-time records of the city with an
//! event minute in `(m − H, m]` read so far, summed over workers), below `1 << 63`; a final
//! row's is `(1 << 63) + events`. So a final row outranks every update; the same input gives
//! the same final row (the events counted are decided by the partitions' contents, not by the
//! read order); and a final row computed from fewer events (a replay whose head was trimmed)
//! has a smaller version than one computed from all of them.
//!
//! Late records (SPEC §3's rule, per partition of each topic) change nothing; they come out
//! on [`CitySupply::late_rides`] and [`CitySupply::late_locations`] to be counted. A job
//! that also runs `city_metrics` counts late ride events once, from there.
//!
//! Restarts: a row of minute `m` depends on records back to `m − H + 1`, so a job resuming
//! with `finalized_through = F` must replay every record with an event minute ≥ `F − H`
//! (and restore the partitions' lateness clocks), not just those after its last checkpoint
//! of the city metrics; rows of minutes before `F` are recomputed but not emitted again.
//!
//! Cost, measured (release, jemalloc, `docs/benchmarks.md`, issue 13's sixth step): a job's
//! file run of 1,000,000 ride events with supply on (`--set supply.enabled=true`, raw events
//! off) ran at ~100,000 events/s with one worker and 400 MB when each entity's latest state
//! was a differential `reduce` (its batcher, spines and history replay were ~60 % of the
//! time), and at ~200,000 events/s and 185 MB with `latest_state`; the final rows are the
//! same. Memory: `examples/supply_memory 30 1` (50,000 rides/min and 2,000 drivers in event
//! time, no I/O) holds 138 MB at minute 10 (the horizon) and 139–141 MB after, where the
//! per-entity reduce held 247 MB and 280–306 MB.
//!
//! Choices where SPEC §5 leaves room: `request_timeout_minutes` applies to a ride's latest
//! event whatever it is (so a ride whose `completed` never arrives stops being "in progress"
//! after the timeout, and every event matters to a finite set of minutes, as §5 says); a
//! driver's `status` and `city` are both taken from its latest location.

use std::time::Duration;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;

use crate::city_metrics::LateEvent;
use crate::event::{DriverStatus, EventType};
use crate::partitioned_source::{minute_of, SourcedEvent, SourcedLocation};
use crate::supply_row::{CitySupplyRow, SupplyCounts};

/// SPEC §5's knobs and the emission settings.
#[derive(Clone, Debug)]
pub struct SupplyConfig {
    /// A driver's latest location counts at `end(m)` when it is at most this many whole
    /// minutes old (default 1: only drivers that reported during minute `m`).
    pub stale_after_minutes: u64,
    /// A ride's latest event counts at `end(m)` when it is at most this many whole minutes
    /// old (default 10), so abandoned requests stop counting.
    pub request_timeout_minutes: u64,
    /// Minimum time between two updates of an open minute's row.
    pub emit_interval: Duration,
    /// Minutes ending at or before this minute already had their final rows written before
    /// a restart: they are not emitted again (0 for a fresh start).
    pub finalized_through: u64,
    /// How many of the newest open minutes get update rows (a watermark held far back by a
    /// slow partition leaves many minutes open; the newest ones are the live view). 0 turns
    /// update rows off: no live view is built, and only final rows come out.
    pub open_minutes: u64,
}

impl Default for SupplyConfig {
    fn default() -> Self {
        SupplyConfig {
            stale_after_minutes: 1,
            request_timeout_minutes: 10,
            emit_interval: Duration::from_secs(1),
            finalized_through: 0,
            open_minutes: 3,
        }
    }
}

impl SupplyConfig {
    /// The minutes any record can matter for: `max(T, S)`.
    pub fn horizon(&self) -> u64 {
        self.stale_after_minutes.max(self.request_timeout_minutes)
    }
}

/// What [`build`] produces.
pub struct CitySupply<'scope> {
    /// Supply rows: updates while minutes are open, one final row per (city, minute).
    pub rows: StreamVec<'scope, u64, CitySupplyRow>,
    /// Every late ride event (it changes nothing).
    pub late_rides: StreamVec<'scope, u64, LateEvent>,
    /// Every late driver location (it changes nothing).
    pub late_locations: StreamVec<'scope, u64, LateEvent>,
}

/// What a city's row counts one entity, event or record as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Tally {
    /// A driver whose latest location is `available`.
    Available,
    /// A driver whose latest location is `on_trip`.
    OnTrip,
    /// A ride whose latest event is `requested`.
    Waiting,
    /// A ride whose latest event is `accepted` or `started`.
    InProgress,
    /// A `requested` event of the minute.
    Request,
    /// An on-time record within the horizon (the row's version).
    Event,
}

impl Tally {
    /// What a ride whose latest event has this type counts as.
    pub(crate) fn of_ride(event_type: EventType) -> Option<Tally> {
        match event_type {
            EventType::Requested => Some(Tally::Waiting),
            EventType::Accepted | EventType::Started => Some(Tally::InProgress),
            EventType::Completed | EventType::Cancelled => None,
        }
    }

    /// What a driver whose latest location has this status counts as.
    pub(crate) fn of_driver(status: DriverStatus) -> Option<Tally> {
        match status {
            DriverStatus::Available => Some(Tally::Available),
            DriverStatus::OnTrip => Some(Tally::OnTrip),
            DriverStatus::Offline => None,
        }
    }

    /// Adds `n` of this tally to `counts`.
    pub(crate) fn add_to(self, counts: &mut SupplyCounts, n: u64) {
        let field = match self {
            Tally::Available => &mut counts.available_drivers,
            Tally::OnTrip => &mut counts.on_trip_drivers,
            Tally::Waiting => &mut counts.waiting_riders,
            Tally::InProgress => &mut counts.rides_in_progress,
            Tally::Request => &mut counts.requests,
            Tally::Event => &mut counts.events,
        };
        *field += n;
    }
}

/// One entity's event reduced to what its state needs. Ordered by recency first: the
/// largest is the latest (timestamp, then read order within the entity's partition).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Reading {
    /// Event time (ms).
    pub ts: i64,
    /// Partition read from (all of an entity's events share one).
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// The city the event is in.
    pub city: String,
    /// What the entity counts as while this is its latest reading.
    pub tally: Option<Tally>,
}

impl Reading {
    pub(crate) fn of_ride(sourced: &SourcedEvent) -> Reading {
        let e = &sourced.event;
        Reading {
            ts: e.timestamp.millis(),
            partition: sourced.partition,
            offset: sourced.offset,
            city: e.city.to_string(),
            tally: Tally::of_ride(e.event_type),
        }
    }

    pub(crate) fn of_driver(sourced: &SourcedLocation) -> Reading {
        let l = &sourced.event;
        Reading {
            ts: l.timestamp.millis(),
            partition: sourced.partition,
            offset: sourced.offset,
            city: l.city.clone(),
            tally: Tally::of_driver(l.status),
        }
    }

    /// The event minute.
    pub(crate) fn minute(&self) -> u64 {
        minute_of(self.ts)
    }
}

/// Live supply and demand rows from sourced ride events and driver locations (each at
/// timely time = event minute, late ones at their source's capability, as the sources in
/// `partitioned_source` emit them).
///
/// One available driver in Brno at 10:00:05 and a ride requested at 10:00:30: the minute
/// 10:00 has one final row with pressure 1.
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use dataflows::event::{DriverLocation, DriverStatus, EventType, RideEvent, Timestamp};
/// use dataflows::partitioned_source::{replay, ReplayConfig};
/// use dataflows::supply::{build, SupplyConfig};
/// use timely::dataflow::operators::Inspect;
///
/// let at = |seconds: i64| Timestamp(1_795_428_000_000 + seconds * 1_000); // 10:00:00
/// let driver = DriverLocation {
///     driver_id: "driver-7".into(),
///     timestamp: at(5),
///     city: "brno".into(),
///     lat: 49.19,
///     lng: 16.61,
///     status: DriverStatus::Available,
/// };
/// let ride = RideEvent {
///     event_type: EventType::Requested,
///     ride_id: "ride-1".into(),
///     timestamp: at(30),
///     city: "brno".into(),
///     estimated_fare: Some(8.5),
///     user_id: "user-1".into(),
///     driver_id: None,
///     pickup: None,
///     dropoff: None,
/// };
/// let rows = Arc::new(Mutex::new(Vec::new()));
/// let sink = rows.clone();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<u64, _, _>(|scope| {
///         let rides = replay(scope, &[vec![ride]], ReplayConfig::default());
///         let locations = replay(scope, &[vec![driver]], ReplayConfig::default());
///         let supply = build(rides, locations, &SupplyConfig::default());
///         supply
///             .rows
///             .inspect(move |row| sink.lock().unwrap().push(row.clone()));
///     });
/// });
/// let rows = rows.lock().unwrap();
/// let finals: Vec<_> = rows.iter().filter(|r| r.is_final == 1).collect();
/// // 10:00 (driver fresh, rider waiting, one request); then the rider waits until the
/// // 10-minute timeout with no fresh driver: rows 10:01 to 10:09 have pressure null.
/// assert_eq!(finals.len(), 10);
/// let first = finals.iter().find(|r| r.minute == at(0)).unwrap();
/// assert_eq!(
///     (first.available_drivers, first.waiting_riders, first.requests),
///     (1, 1, 1)
/// );
/// assert_eq!(first.pressure, Some(1.0));
/// assert!(finals.iter().filter(|r| r.minute != at(0)).all(|r| r.pressure.is_none()));
/// ```
pub fn build<'scope>(
    rides: StreamVec<'scope, u64, SourcedEvent>,
    locations: StreamVec<'scope, u64, SourcedLocation>,
    config: &SupplyConfig,
) -> CitySupply<'scope> {
    assert!(
        config.stale_after_minutes > 0 && config.request_timeout_minutes > 0,
        "stale_after_minutes and request_timeout_minutes are at least 1"
    );
    let (timeout, stale, horizon) = (
        config.request_timeout_minutes,
        config.stale_after_minutes,
        config.horizon(),
    );
    let live = config.open_minutes > 0;
    let rides = crate::supply_split::build(rides, horizon, live, "SplitRides");
    let locations = crate::supply_split::build(locations, horizon, live, "SplitLocations");
    let ride_states = crate::latest_state::build(rides.readings, timeout, "LatestRideState");
    let driver_states = crate::latest_state::build(locations.readings, stale, "LatestDriverState");
    let ride_tallies = rides.tallies.as_collection();
    let location_tallies = locations.tallies.as_collection();

    let counts = ride_states
        .concatenate([driver_states, ride_tallies, location_tallies])
        .reduce_named("CitySupply", |_city, tallies, output| {
            let mut counts = SupplyCounts::default();
            for (tally, n) in tallies {
                tally.add_to(&mut counts, (*n).max(0) as u64);
            }
            if counts.has_row() {
                output.push((counts, 1isize));
            }
        });

    let live = if live {
        crate::supply_live::build(rides.live, locations.live, config)
    } else {
        timely::dataflow::operators::generic::operator::empty(counts.inner.scope())
    };
    let rows = crate::supply_rows::build(counts.inner, live, config);
    CitySupply {
        rows,
        late_rides: rides.late,
        late_locations: locations.late,
    }
}
