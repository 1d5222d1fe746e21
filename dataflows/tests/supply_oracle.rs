//! Oracle tests for SPEC §5: the supply dataflow against a batch recomputation written here,
//! sharing no code with it: walk each partition of each topic in order to judge lateness,
//! then for every minute and every ride and driver, find its latest on-time event before the
//! minute's end and apply the freshness rules. The seeded streams have out-of-order and very
//! late events, equal timestamps inside one ride, drivers that go silent and come back,
//! drivers that change city, abandoned requests, and (read from lines) malformed lines. With
//! 1, 2 and 4 workers and several read interleavings the final rows must be exactly the
//! oracle's. The hand-written live view (update rows) is checked against the same oracle,
//! and memory against the stream's length.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataflows::event::{DriverLocation, DriverStatus, EventType, RideEvent, Timestamp};
use dataflows::partitioned_source::{replay, ReplayConfig, Sourced};
use dataflows::supply::{build, SupplyConfig};
use dataflows::supply_live::LiveView;
use dataflows::supply_row::CitySupplyRow;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use timely::dataflow::operators::Inspect;

const BASE_MS: i64 = 1_795_428_000_000; // a minute boundary
const CITIES: [&str; 4] = ["london", "brno", "kosice", "wien"];
const LATENESS_MS: i64 = 30_000;

/// The event time of the `i`-th record of a partition whose clock is at `clock`: mostly a
/// little behind it, sometimes far behind (out of order, often late).
fn jittered(rng: &mut ChaCha8Rng, clock: i64) -> i64 {
    if rng.random_bool(0.04) {
        clock - rng.random_range(20_000..600_000)
    } else {
        clock - rng.random_range(0..20_000)
    }
}

/// Ride events on `partitions` partitions (a ride stays on one): rides are requested, then
/// accepted, started and completed, or cancelled, or abandoned at any step; a next event
/// sometimes has exactly the previous one's timestamp.
fn generate_rides(seed: u64, partitions: usize, per_partition: usize) -> Vec<Vec<RideEvent>> {
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

fn ride_event(ride: &str, city: &str, event_type: EventType, timestamp: i64) -> RideEvent {
    RideEvent {
        event_type,
        ride_id: ride.to_string(),
        timestamp: Timestamp(timestamp),
        city: city.to_string(),
        estimated_fare: None,
        user_id: format!("user-{ride}"),
        driver_id: None,
        pickup: None,
        dropoff: None,
    }
}

/// Driver locations on `partitions` partitions (a driver stays on one): drivers report in
/// turns, go silent for minutes and come back, and sometimes move to another city.
fn generate_locations(
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
struct Seen {
    entity: String,
    city: String,
    ts: i64,
    /// (partition, offset): the read order, which breaks timestamp ties.
    order: (usize, usize),
    /// 0 waiting / in progress / nothing for rides; available / on trip / nothing for drivers.
    state: &'static str,
    requested: bool,
}

/// SPEC §3's per-partition lateness: returns the on-time records and late counts per city.
fn judge<T>(
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
struct Want {
    available: u64,
    on_trip: u64,
    waiting: u64,
    in_progress: u64,
    requests: u64,
    events: u64,
}

struct Oracle {
    rows: BTreeMap<(i64, String), Want>,
    late_rides: BTreeMap<String, u64>,
    late_locations: BTreeMap<String, u64>,
}

/// SPEC §5 done the slow, obvious way.
fn oracle(
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
            e.ride_id.clone(),
            e.city.clone(),
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

struct Run {
    rows: Vec<CitySupplyRow>,
    late_rides: BTreeMap<String, u64>,
    late_locations: BTreeMap<String, u64>,
}

fn run(
    rides: &[Vec<RideEvent>],
    locations: &[Vec<DriverLocation>],
    config: &SupplyConfig,
    workers: usize,
    batch: usize,
) -> Run {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new((BTreeMap::new(), BTreeMap::new())));
    let input = Arc::new((rides.to_vec(), locations.to_vec()));
    let (rows2, late2, config) = (rows.clone(), late.clone(), config.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (rows, late, input, config) =
            (rows2.clone(), late2.clone(), input.clone(), config.clone());
        worker.dataflow::<u64, _, _>(|scope| {
            let replay_config = ReplayConfig {
                allowed_lateness: Duration::from_millis(LATENESS_MS as u64),
                batch,
            };
            let rides = replay(scope, &input.0, replay_config.clone());
            let locations = replay(scope, &input.1, replay_config);
            let supply = build(rides, locations, &config);
            supply
                .rows
                .inspect(move |row| rows.lock().unwrap().push(row.clone()));
            let late_locations = late.clone();
            supply.late_rides.inspect(move |e| {
                *late.lock().unwrap().0.entry(e.city.clone()).or_insert(0u64) += 1
            });
            supply.late_locations.inspect(move |e| {
                *late_locations
                    .lock()
                    .unwrap()
                    .1
                    .entry(e.city.clone())
                    .or_insert(0u64) += 1
            });
        });
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|result| result.unwrap());
    let rows = rows.lock().unwrap().clone();
    let (late_rides, late_locations) = late.lock().unwrap().clone();
    Run {
        rows,
        late_rides,
        late_locations,
    }
}

fn config() -> SupplyConfig {
    SupplyConfig {
        emit_interval: Duration::from_millis(1),
        ..SupplyConfig::default()
    }
}

/// Compares a run's final rows (and late counts) with the oracle's; returns the run.
fn check_against_oracle(
    rides: &[Vec<RideEvent>],
    locations: &[Vec<DriverLocation>],
    config: &SupplyConfig,
    workers: usize,
    batch: usize,
    what: &str,
) -> Run {
    let want = oracle(
        rides,
        locations,
        config.request_timeout_minutes as i64,
        config.stale_after_minutes as i64,
    );
    let run = run(rides, locations, config, workers, batch);
    let what = format!("{what}, {workers} workers, batch {batch}");
    let mut finals: BTreeMap<(i64, String), &CitySupplyRow> = BTreeMap::new();
    let mut final_seen: BTreeSet<(i64, String)> = BTreeSet::new();
    for row in &run.rows {
        let key = (row.minute.0, row.city.clone());
        assert!(
            !final_seen.contains(&key),
            "{what}: a row for {key:?} after its final row"
        );
        if row.is_final == 1 {
            final_seen.insert(key.clone());
            finals.insert(key, row);
        } else {
            assert!(row.version < 1 << 63, "{what}: an update outranks finals");
        }
    }
    let missing: Vec<_> = want
        .rows
        .keys()
        .filter(|k| !finals.contains_key(*k))
        .collect();
    let extra: Vec<_> = finals
        .keys()
        .filter(|k| !want.rows.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: final rows missing {missing:?}, unexpected {extra:?}"
    );
    for (key, want) in &want.rows {
        let got = finals[key];
        let got_counts = Want {
            available: got.available_drivers,
            on_trip: got.on_trip_drivers,
            waiting: got.waiting_riders,
            in_progress: got.rides_in_progress,
            requests: got.requests,
            events: got.version - (1 << 63),
        };
        assert_eq!(&got_counts, want, "{what}: {key:?}");
        let pressure = (want.available > 0).then(|| want.waiting as f64 / want.available as f64);
        assert_eq!(got.pressure, pressure, "{what}: {key:?} pressure");
    }
    assert_eq!(run.late_rides, want.late_rides, "{what}: late ride events");
    assert_eq!(
        run.late_locations, want.late_locations,
        "{what}: late locations"
    );
    run
}

fn check(
    seed: u64,
    partitions: (usize, usize),
    per_partition: usize,
    workers: usize,
    batch: usize,
) {
    let rides = generate_rides(seed, partitions.0, per_partition);
    let locations = generate_locations(seed, partitions.1, per_partition);
    let what = format!("seed {seed}, {partitions:?} partitions");
    let run = check_against_oracle(&rides, &locations, &config(), workers, batch, &what);
    assert!(
        run.late_rides.values().sum::<u64>() > 0,
        "the rides have late events"
    );
    assert!(
        run.late_locations.values().sum::<u64>() > 0,
        "the locations have late events"
    );
}

#[test]
fn the_oracle_sees_every_feature_of_the_input() {
    let rides = generate_rides(1, 3, 1_500);
    let locations = generate_locations(1, 3, 1_500);
    let want = oracle(&rides, &locations, 10, 1);
    let total = |f: fn(&Want) -> u64| want.rows.values().map(f).sum::<u64>();
    assert!(total(|w| w.waiting) > 0 && total(|w| w.in_progress) > 0);
    assert!(total(|w| w.available) > 0 && total(|w| w.on_trip) > 0);
    // Ties inside one ride.
    let ties = rides
        .iter()
        .flat_map(|p| p.windows(2))
        .filter(|w| w[0].ride_id == w[1].ride_id && w[0].timestamp == w[1].timestamp)
        .count();
    let same_ts = rides.iter().flatten().fold(BTreeMap::new(), |mut m, e| {
        *m.entry((e.ride_id.clone(), e.timestamp)).or_insert(0) += 1;
        m
    });
    assert!(
        ties > 0 || same_ts.values().any(|n| *n > 1),
        "equal timestamps in a ride"
    );
    // Drivers that change city.
    let mut cities: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in locations.iter().flatten() {
        cities.entry(&l.driver_id).or_default().insert(&l.city);
    }
    assert!(
        cities.values().any(|c| c.len() > 1),
        "a driver changes city"
    );
    // Drivers silent for more than 3 minutes who come back.
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    let mut comebacks = 0;
    for l in locations.iter().flatten() {
        if let Some(t) = last.insert(&l.driver_id, l.timestamp.0) {
            comebacks += usize::from(l.timestamp.0 - t > 180_000);
        }
    }
    assert!(comebacks > 0, "drivers go silent and come back");
}

#[test]
fn one_worker_matches_the_oracle() {
    for seed in [1, 2, 3] {
        check(seed, (3, 3), 1_500, 1, 1024);
    }
}

#[test]
fn two_and_four_workers_match_the_oracle() {
    for (seed, workers) in [(4, 2), (5, 4), (6, 2), (7, 4)] {
        check(seed, (6, 8), 500, workers, 1024);
    }
}

#[test]
fn the_read_interleaving_does_not_change_the_results() {
    for batch in [1, 7, 100_000] {
        check(8, (4, 5), 800, 2, batch);
    }
}

#[test]
fn other_freshness_settings_match_the_oracle() {
    let rides = generate_rides(9, 3, 1_000);
    let locations = generate_locations(9, 4, 1_000);
    let config = SupplyConfig {
        stale_after_minutes: 3,
        request_timeout_minutes: 2,
        ..config()
    };
    check_against_oracle(&rides, &locations, &config, 2, 64, "seed 9, T=2 S=3");
}

#[test]
fn more_workers_than_partitions_and_an_empty_partition_do_not_stall() {
    let rides = generate_rides(10, 2, 1_500);
    let mut locations = generate_locations(10, 1, 1_500);
    locations.push(Vec::new());
    check_against_oracle(&rides, &locations, &config(), 4, 64, "seed 10");
}

#[test]
fn without_open_minutes_only_final_rows_come_out() {
    let rides = generate_rides(17, 2, 1_000);
    let locations = generate_locations(17, 2, 1_000);
    let config = SupplyConfig {
        open_minutes: 0,
        emit_interval: Duration::ZERO,
        ..config()
    };
    let run = check_against_oracle(&rides, &locations, &config, 2, 1, "seed 17, final only");
    assert!(run.rows.iter().all(|r| r.is_final == 1));
}

#[test]
fn open_minutes_get_update_rows_below_their_final_row() {
    let rides = generate_rides(11, 2, 3_000);
    let locations = generate_locations(11, 2, 3_000);
    let config = SupplyConfig {
        emit_interval: Duration::ZERO,
        ..config()
    };
    let run = check_against_oracle(&rides, &locations, &config, 2, 1, "seed 11");
    let updates = run.rows.iter().filter(|r| r.is_final == 0).count();
    assert!(updates > 0, "no update rows");
}

/// The records of each partition with SPEC §3's verdict, as a source would emit them.
fn sourced<T: Clone>(partitions: &[Vec<T>], ts: impl Fn(&T) -> i64) -> Vec<Sourced<T>> {
    let mut out = Vec::new();
    for (p, partition) in partitions.iter().enumerate() {
        let mut largest: Option<i64> = None;
        for (offset, record) in partition.iter().enumerate() {
            let t = ts(record);
            let late = largest.is_some_and(|max| max - t > LATENESS_MS);
            largest = Some(largest.map_or(t, |max| max.max(t)));
            out.push(Sourced {
                partition: p as u32,
                offset: offset as u64,
                event: record.clone(),
                late,
            });
        }
    }
    out
}

#[test]
fn the_live_view_counts_every_minute_like_the_oracle() {
    // The hand-written view of open minutes, given every on-time record and asked about
    // every minute, must agree with the oracle too (so update rows follow the same rules).
    for (seed, config) in [
        (12, config()),
        (
            13,
            SupplyConfig {
                stale_after_minutes: 2,
                request_timeout_minutes: 4,
                ..config()
            },
        ),
    ] {
        let rides = generate_rides(seed, 3, 1_000);
        let locations = generate_locations(seed, 3, 1_000);
        let want = oracle(
            &rides,
            &locations,
            config.request_timeout_minutes as i64,
            config.stale_after_minutes as i64,
        );
        let mut view = LiveView::new(&config);
        for e in sourced(&rides, |e| e.timestamp.0) {
            if !e.late {
                view.add_ride(&e);
            }
        }
        for l in sourced(&locations, |l| l.timestamp.0) {
            if !l.late {
                view.add_driver(&l);
            }
        }
        let first = want.rows.keys().next().unwrap().0 as u64 / 60_000;
        let last = view.through().unwrap() + config.horizon();
        let got: BTreeMap<(i64, String), Want> = view
            .counts(first..=last)
            .into_iter()
            .filter(|(_, c)| c.has_row())
            .map(|((minute, city), c)| {
                let want = Want {
                    available: c.available_drivers,
                    on_trip: c.on_trip_drivers,
                    waiting: c.waiting_riders,
                    in_progress: c.rides_in_progress,
                    requests: c.requests,
                    events: c.events,
                };
                ((minute as i64 * 60_000, city), want)
            })
            .collect();
        assert_eq!(got, want.rows, "seed {seed}");
    }
}

#[test]
fn the_live_view_forgets_what_no_open_minute_needs() {
    let rides = generate_rides(14, 2, 6_000);
    let config = config();
    let mut view = LiveView::new(&config);
    let (mut peak, mut total) = (0, 0);
    // Feed in read order, round-robin, with the frontier at the watermark's minute.
    let mut largest = [BASE_MS; 2]; // every clock starts after BASE_MS
    for i in 0..6_000 {
        for (p, partition) in rides.iter().enumerate() {
            let e = &partition[i];
            let late = largest[p] - e.timestamp.0 > LATENESS_MS;
            largest[p] = largest[p].max(e.timestamp.0);
            if !late {
                view.add_ride(&Sourced {
                    partition: p as u32,
                    offset: i as u64,
                    event: e.clone(),
                    late,
                });
                total += 1;
            }
        }
        let watermark = largest.iter().min().unwrap() - LATENESS_MS;
        view.advance((watermark.div_euclid(60_000)) as u64);
        peak = peak.max(view.len());
    }
    // About two hours of rides; the view holds at most the last H + 1 minutes' worth.
    let minutes = (largest[0] - BASE_MS) / 60_000;
    assert!(minutes > 100, "{minutes} minutes");
    let per_minute = total as i64 / minutes;
    let bound = per_minute * (config.horizon() as i64 + 3);
    assert!(
        (peak as i64) < bound,
        "peak {peak} readings, {per_minute}/min over {minutes} min"
    );
}

/// The updates held by differential's arrangements and batchers at their peak, from its
/// logging events (a batch adds its length, a merge replaces two lengths with one, a drop
/// removes one; a batcher reports its record changes).
fn peak_arranged(rides: &[Vec<RideEvent>], locations: &[Vec<DriverLocation>]) -> i64 {
    use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
    let peak = Arc::new(Mutex::new((0i64, 0i64)));
    let (peak2, input) = (peak.clone(), Arc::new((rides.to_vec(), locations.to_vec())));
    timely::execute(timely::Config::process(1), move |worker| {
        let (peak, input) = (peak2.clone(), input.clone());
        worker
            .log_register()
            .unwrap()
            .insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, data| {
                let Some(data) = data else { return };
                let (held, peak) = &mut *peak.lock().unwrap();
                for (_, event) in data.iter() {
                    *held += match event {
                        DifferentialEvent::Batch(e) => e.length as i64,
                        DifferentialEvent::Merge(e) => e
                            .complete
                            .map_or(0, |c| c as i64 - e.length1 as i64 - e.length2 as i64),
                        DifferentialEvent::Drop(e) => -(e.length as i64),
                        DifferentialEvent::Batcher(e) => e.records_diff as i64,
                        _ => 0,
                    };
                }
                *peak = (*peak).max(*held);
            });
        worker.dataflow::<u64, _, _>(|scope| {
            let replay_config = ReplayConfig {
                allowed_lateness: Duration::from_millis(LATENESS_MS as u64),
                batch: 16,
            };
            let rides = replay(scope, &input.0, replay_config.clone());
            let locations = replay(scope, &input.1, replay_config);
            build(rides, locations, &config());
        });
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|result| result.unwrap());
    let peak = peak.lock().unwrap().1;
    peak
}

#[test]
fn arrangements_stay_bounded_as_the_stream_grows() {
    // 40 and 120 minutes of the same traffic: compaction follows the watermark, so the
    // arrangements hold about the last H minutes either way.
    let short = peak_arranged(
        &generate_rides(15, 2, 2_000),
        &generate_locations(15, 2, 2_000),
    );
    let long = peak_arranged(
        &generate_rides(15, 2, 6_000),
        &generate_locations(15, 2, 6_000),
    );
    assert!(short > 0);
    assert!(
        (long as f64) < 1.5 * short as f64,
        "peak updates held: {short} for 40 minutes, {long} for 120"
    );
}

#[test]
fn malformed_lines_are_dead_letters_and_change_nothing() {
    // The files' lines, with junk between them: only the lines that parse reach the
    // dataflow (the junk goes to the dead-letter topic in a job), and the rows are the
    // oracle's over the valid records alone.
    let rides = generate_rides(16, 3, 800);
    let locations = generate_locations(16, 3, 800);
    let junk = [
        "not json at all",
        "{\"driver_id\": \"d\", \"timestamp\": \"2026-11-23T10:00:00Z\"}",
        "{\"event_type\": \"teleported\", \"ride_id\": \"r\", \"timestamp\": \"2026-11-23T10:00:00Z\", \"city\": \"brno\", \"user_id\": \"u\"}",
        "{\"driver_id\": \"d\", \"timestamp\": \"yesterday\", \"city\": \"brno\", \"lat\": 1, \"lng\": 2, \"status\": \"available\"}",
        "{\"driver_id\": \"d\", \"timestamp\": \"2026-11-23T10:00:00Z\", \"city\": \"brno\", \"lat\": 1, \"lng\": 2, \"status\": \"parked\"}",
        "",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut lines = |jsons: Vec<String>| -> Vec<String> {
        let mut out = Vec::new();
        for json in jsons {
            if rng.random_bool(0.05) {
                out.push(junk[rng.random_range(0..junk.len())].to_string());
            }
            out.push(json);
        }
        out
    };
    let ride_lines: Vec<Vec<String>> = rides
        .iter()
        .map(|p| lines(p.iter().map(RideEvent::to_json).collect()))
        .collect();
    let location_lines: Vec<Vec<String>> = locations
        .iter()
        .map(|p| lines(p.iter().map(DriverLocation::to_json).collect()))
        .collect();
    let (mut dead, mut total) = (0, 0);
    let parsed_rides: Vec<Vec<RideEvent>> = ride_lines
        .iter()
        .map(|p| {
            total += p.len();
            p.iter()
                .filter_map(|l| RideEvent::parse(l.as_bytes()).ok())
                .collect()
        })
        .collect();
    let parsed_locations: Vec<Vec<DriverLocation>> = location_lines
        .iter()
        .map(|p| {
            total += p.len();
            p.iter()
                .filter_map(|l| DriverLocation::parse(l.as_bytes()).ok())
                .collect()
        })
        .collect();
    dead += total
        - parsed_rides.iter().map(Vec::len).sum::<usize>()
        - parsed_locations.iter().map(Vec::len).sum::<usize>();
    assert!(dead > 0, "the files have malformed lines");
    assert_eq!(parsed_rides, rides, "every valid ride line parses back");
    assert_eq!(
        parsed_locations, locations,
        "every valid location line parses back"
    );
    check_against_oracle(
        &parsed_rides,
        &parsed_locations,
        &config(),
        2,
        32,
        "seed 16, junk",
    );
}
