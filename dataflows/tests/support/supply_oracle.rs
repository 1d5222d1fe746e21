//! SPEC §5 done the slow, obvious way, and seeded streams to check it on: shared by the
//! in-memory oracle tests (`dataflows/tests/supply_oracle.rs`) and the real-broker test
//! (`tests/supply_e2e.rs`). Shares no code with the supply dataflow: it walks each partition
//! of each topic in order to judge lateness, then for every minute and every ride and driver
//! finds its latest on-time event before the minute's end and applies the freshness rules.

#![allow(dead_code)]

use std::collections::BTreeMap;

use dataflows::event::{DriverLocation, DriverStatus, EventType, RideEvent, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const BASE_MS: i64 = 1_795_428_000_000; // a minute boundary
pub const CITIES: [&str; 4] = ["london", "brno", "kosice", "wien"];
pub const LATENESS_MS: i64 = 30_000;

/// The event time of the `i`-th record of a partition whose clock is at `clock`: mostly a
/// little behind it, sometimes far behind (out of order, often late).
pub fn jittered(rng: &mut ChaCha8Rng, clock: i64) -> i64 {
    if rng.random_bool(0.04) {
        clock - rng.random_range(20_000..600_000)
    } else {
        clock - rng.random_range(0..20_000)
    }
}

/// Ride events on `partitions` partitions (a ride stays on one): rides are requested, then
/// accepted, started and completed, or cancelled, or abandoned at any step; a next event
/// sometimes has exactly the previous one's timestamp.
pub fn generate_rides(seed: u64, partitions: usize, per_partition: usize) -> Vec<Vec<RideEvent>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..partitions)
        .map(|p| {
            let mut clock = BASE_MS + rng.random_range(0..120_000);
            // (ride id, city, next step, last timestamp)
            let mut open: Vec<(String, &str, usize, i64)> = Vec::new();
            let mut events = Vec::new();
            let mut next_ride = 0;
            while events.len() < per_partition {
                clock += rng.random_range(0..2_500);
                if open.is_empty() || rng.random_bool(0.35) {
                    let city = CITIES[rng.random_range(0..CITIES.len())];
                    let timestamp = jittered(&mut rng, clock);
                    let ride = format!("ride-{p}-{next_ride}");
                    next_ride += 1;
                    events.push(ride_event(&ride, city, EventType::Requested, timestamp));
                    // A fifth of the requests are abandoned: the ride never moves on.
                    if rng.random_bool(0.8) {
                        open.push((ride, city, 1, timestamp));
                    }
                    continue;
                }
                let at = rng.random_range(0..open.len());
                let (ride, city, step, last) = open[at].clone();
                let timestamp = if rng.random_bool(0.15) {
                    last // the same instant as the previous event: read order decides
                } else {
                    jittered(&mut rng, clock)
                };
                let event_type = match step {
                    _ if rng.random_bool(0.12) => EventType::Cancelled,
                    1 => EventType::Accepted,
                    2 => EventType::Started,
                    _ => EventType::Completed,
                };
                events.push(ride_event(&ride, city, event_type, timestamp));
                let done = matches!(event_type, EventType::Cancelled | EventType::Completed);
                if done || rng.random_bool(0.05) {
                    open.swap_remove(at); // finished, or abandoned mid-ride
                } else {
                    open[at] = (ride, city, step + 1, timestamp);
                }
            }
            events
        })
        .collect()
}

pub fn ride_event(ride: &str, city: &str, event_type: EventType, timestamp: i64) -> RideEvent {
    RideEvent {
        event_type,
        ride_id: ride.into(),
        timestamp: Timestamp(timestamp),
        city: city.into(),
        estimated_fare: None,
        user_id: format!("user-{ride}").into(),
        driver_id: None,
        pickup: None,
        dropoff: None,
    }
}

/// Driver locations on `partitions` partitions (a driver stays on one): drivers report in
/// turns, go silent for minutes and come back, and sometimes move to another city.
pub fn generate_locations(
    seed: u64,
    partitions: usize,
    per_partition: usize,
) -> Vec<Vec<DriverLocation>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..partitions)
        .map(|p| {
            let mut clock = BASE_MS + rng.random_range(0..120_000);
            // (driver id, city, silent until)
            let mut drivers: Vec<(String, &str, i64)> = (0..25)
                .map(|d| {
                    (
                        format!("driver-{p}-{d}"),
                        CITIES[rng.random_range(0..CITIES.len())],
                        0,
                    )
                })
                .collect();
            let mut locations = Vec::new();
            while locations.len() < per_partition {
                clock += rng.random_range(0..2_500);
                let at = rng.random_range(0..drivers.len());
                if drivers[at].2 > clock {
                    continue;
                }
                if rng.random_bool(0.02) {
                    drivers[at].2 = clock + rng.random_range(60_000..480_000);
                }
                if rng.random_bool(0.03) {
                    drivers[at].1 = CITIES[rng.random_range(0..CITIES.len())];
                }
                let status = match rng.random_range(0..10) {
                    0..5 => DriverStatus::Available,
                    5..9 => DriverStatus::OnTrip,
                    _ => DriverStatus::Offline,
                };
                locations.push(DriverLocation {
                    driver_id: drivers[at].0.clone(),
                    timestamp: Timestamp(jittered(&mut rng, clock)),
                    city: drivers[at].1.to_string(),
                    lat: 48.0,
                    lng: 17.0,
                    status,
                });
            }
            locations
        })
        .collect()
}

/// An on-time record as the oracle sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub entity: String,
    pub city: String,
    pub ts: i64,
    /// (partition, offset): the read order, which breaks timestamp ties.
    pub order: (usize, usize),
    /// 0 waiting / in progress / nothing for rides; available / on trip / nothing for drivers.
    pub state: &'static str,
    pub requested: bool,
}

/// SPEC §3's per-partition lateness: returns the on-time records and late counts per city.
pub fn judge<T>(
    partitions: &[Vec<T>],
    view: impl Fn(&T) -> (String, String, i64, &'static str, bool),
) -> (Vec<Seen>, BTreeMap<String, u64>) {
    let (mut seen, mut late) = (Vec::new(), BTreeMap::new());
    for (p, partition) in partitions.iter().enumerate() {
        let mut largest: Option<i64> = None;
        for (offset, record) in partition.iter().enumerate() {
            let (entity, city, ts, state, requested) = view(record);
            let is_late = largest.is_some_and(|max| max - ts > LATENESS_MS);
            largest = Some(largest.map_or(ts, |max| max.max(ts)));
            if is_late {
                *late.entry(city).or_insert(0u64) += 1;
            } else {
                seen.push(Seen {
                    entity,
                    city,
                    ts,
                    order: (p, offset),
                    state,
                    requested,
                });
            }
        }
    }
    (seen, late)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Want {
    pub available: u64,
    pub on_trip: u64,
    pub waiting: u64,
    pub in_progress: u64,
    pub requests: u64,
    pub events: u64,
}

pub struct Oracle {
    pub rows: BTreeMap<(i64, String), Want>,
    pub late_rides: BTreeMap<String, u64>,
    pub late_locations: BTreeMap<String, u64>,
}

/// SPEC §5 done the slow, obvious way.
pub fn oracle(
    rides: &[Vec<RideEvent>],
    locations: &[Vec<DriverLocation>],
    timeout: i64,
    stale: i64,
) -> Oracle {
    let (rides, late_rides) = judge(rides, |e| {
        let state = match e.event_type {
            EventType::Requested => "waiting",
            EventType::Accepted | EventType::Started => "in_progress",
            _ => "",
        };
        let requested = e.event_type == EventType::Requested;
        (
            e.ride_id.to_string(),
            e.city.to_string(),
            e.timestamp.0,
            state,
            requested,
        )
    });
    let (drivers, late_locations) = judge(locations, |l| {
        let state = match l.status {
            DriverStatus::Available => "available",
            DriverStatus::OnTrip => "on_trip",
            DriverStatus::Offline => "",
        };
        (
            l.driver_id.clone(),
            l.city.clone(),
            l.timestamp.0,
            state,
            false,
        )
    });
    let horizon = timeout.max(stale);
    let minute_of = |ts: i64| ts.div_euclid(60_000);
    let all = rides.iter().chain(&drivers);
    let first = all.clone().map(|s| minute_of(s.ts)).min().unwrap();
    let last = all.clone().map(|s| minute_of(s.ts)).max().unwrap() + horizon;
    let mut rows = BTreeMap::new();
    for m in first..=last {
        let end = (m + 1) * 60_000;
        let mut counts: BTreeMap<String, Want> = BTreeMap::new();
        for (records, fresh_minutes) in [(&rides, timeout), (&drivers, stale)] {
            let mut latest: BTreeMap<&str, &Seen> = BTreeMap::new();
            for s in records.iter().filter(|s| s.ts < end) {
                let newer = latest
                    .get(s.entity.as_str())
                    .is_none_or(|l| (s.ts, s.order) > (l.ts, l.order));
                if newer {
                    latest.insert(&s.entity, s);
                }
            }
            for s in latest.values() {
                if s.ts < end - fresh_minutes * 60_000 {
                    continue;
                }
                let want = counts.entry(s.city.clone()).or_default();
                match s.state {
                    "waiting" => want.waiting += 1,
                    "in_progress" => want.in_progress += 1,
                    "available" => want.available += 1,
                    "on_trip" => want.on_trip += 1,
                    _ => {}
                }
            }
        }
        for s in rides.iter().chain(&drivers) {
            let minute = minute_of(s.ts);
            if minute <= m && minute > m - horizon {
                let want = counts.entry(s.city.clone()).or_default();
                want.events += 1;
                want.requests += u64::from(s.requested && minute == m);
            }
        }
        for (city, want) in counts {
            let any =
                want.available + want.on_trip + want.waiting + want.in_progress + want.requests;
            if any > 0 {
                rows.insert((m * 60_000, city), want);
            }
        }
    }
    Oracle {
        rows,
        late_rides,
        late_locations,
    }
}
