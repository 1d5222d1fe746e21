//! Oracle tests: the city-metrics dataflow against a naive batch recomputation written here,
//! independently of the operator, on seeded random streams with out-of-order and very late
//! events, several partitions with skewed clocks, repeated riders and missing fares. Run
//! with 1, 2 and 4 workers and several read interleavings: the final rows must be exactly
//! the oracle's every time. The per-minute rollup rows (`city_minutes`) are checked the same
//! way against a per-minute recomputation written here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataflows::city_metrics::{build, WindowConfig};
use dataflows::event::{EventType, RideEvent, Timestamp};
use dataflows::metrics_row::{final_version, CityMetricsRow};
use dataflows::minute_row::CityMinuteRow;
use dataflows::partitioned_source::{replay, ReplayConfig};
use rand::{Rng, SeedableRng};

#[path = "support/oracle.rs"]
mod oracle;
use oracle::oracle;
use rand_chacha::ChaCha8Rng;
use timely::dataflow::operators::Inspect;

const BASE_MS: i64 = 1_795_428_000_000; // a minute boundary
const CITIES: [&str; 6] = ["london", "berlin", "paris", "vienna", "brno", "kosice"];

/// Partitions of events: each partition has its own clock (skewed by minutes from the
/// others), events jitter up to 25 s behind it, and about 4 % are minutes late.
fn generate(seed: u64, partitions: usize, per_partition: usize) -> Vec<Vec<RideEvent>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..partitions)
        .map(|p| {
            let mut clock = BASE_MS + rng.random_range(0..600_000) + p as i64 * 37_000;
            (0..per_partition)
                .map(|i| {
                    clock += rng.random_range(0..4_000);
                    let timestamp = if rng.random_bool(0.04) {
                        clock - rng.random_range(31_000..900_000)
                    } else {
                        clock - rng.random_range(0..25_000) + rng.random_range(0..2_000)
                    };
                    let city = CITIES[(CITIES.len() as f64 * rng.random::<f64>().powi(2)) as usize];
                    let event_type = EventType::ALL[rng.random_range(0..5)];
                    let estimated_fare = match event_type {
                        EventType::Requested | EventType::Completed => {
                            Some((rng.random_range(300..6000) as f64) / 100.0)
                        }
                        EventType::Accepted if rng.random_bool(0.3) => {
                            Some(rng.random_range(1.0..80.0))
                        }
                        _ => None,
                    };
                    RideEvent {
                        event_type,
                        ride_id: format!("ride-{p}-{i}").into(),
                        timestamp: Timestamp(timestamp),
                        city: city.into(),
                        estimated_fare,
                        user_id: format!("user-{}", (60.0 * rng.random::<f64>().powi(2)) as u32)
                            .into(),
                        driver_id: None,
                        pickup: None,
                        dropoff: None,
                    }
                })
                .collect()
        })
        .collect()
}

/// What one minute of one city should hold: its on-time events, judged late per partition
/// the obvious way (independent of the operator and of `support/oracle.rs`).
#[derive(Debug, Default, PartialEq)]
struct ExpectedMinute {
    events: u64,
    by_type: [u64; 5],
    fare_sum: f64,
    fares: u64,
    riders: BTreeSet<String>,
    max_ms: i64,
}

fn expected_minutes(partitions: &[Vec<RideEvent>]) -> BTreeMap<(i64, String), ExpectedMinute> {
    let mut minutes: BTreeMap<(i64, String), ExpectedMinute> = BTreeMap::new();
    for partition in partitions {
        let mut largest = i64::MIN;
        for event in partition {
            let t = event.timestamp.0;
            let late = largest != i64::MIN && largest - t > 30_000;
            largest = largest.max(t);
            if late {
                continue;
            }
            let m = minutes
                .entry((t.div_euclid(60_000) * 60_000, event.city.to_string()))
                .or_insert_with(|| ExpectedMinute {
                    max_ms: i64::MIN,
                    ..ExpectedMinute::default()
                });
            m.events += 1;
            let index = EventType::ALL
                .iter()
                .position(|t| *t == event.event_type)
                .unwrap();
            m.by_type[index] += 1;
            if let Some(fare) = event.estimated_fare {
                m.fare_sum += fare;
                m.fares += 1;
            }
            m.riders.insert(event.user_id.to_string());
            m.max_ms = m.max_ms.max(t);
        }
    }
    minutes
}

/// Asserts one final rollup row per minute, equal to the recomputation; updates are never
/// final, versioned by their count and never above their final row.
fn check_minutes(rows: &[CityMinuteRow], partitions: &[Vec<RideEvent>], what: &str) {
    let expected = expected_minutes(partitions);
    let mut finals: BTreeMap<(i64, String), &CityMinuteRow> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.is_final == 1) {
        let key = (row.minute.0, row.city.clone());
        assert!(
            finals.insert(key.clone(), row).is_none(),
            "{what}: two final minute rows for {key:?}"
        );
    }
    assert_eq!(
        finals.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: final minutes differ"
    );
    for (key, want) in &expected {
        let got = finals[key];
        let types = [
            got.requested,
            got.accepted,
            got.started,
            got.completed,
            got.cancelled,
        ];
        let order: Vec<usize> = [
            EventType::Requested,
            EventType::Accepted,
            EventType::Started,
            EventType::Completed,
            EventType::Cancelled,
        ]
        .iter()
        .map(|t| EventType::ALL.iter().position(|a| a == t).unwrap())
        .collect();
        for (got_count, index) in types.iter().zip(order) {
            assert_eq!(
                *got_count, want.by_type[index],
                "{what}: {key:?} type counts"
            );
        }
        assert_eq!(got.events, want.events, "{what}: {key:?} events");
        assert_eq!(got.version, final_version(want.events), "{what}: {key:?}");
        assert_eq!(got.fares, want.fares, "{what}: {key:?} fares");
        assert!(
            (got.fare_sum - want.fare_sum).abs() <= 1e-6 * want.fare_sum.abs().max(1.0),
            "{what}: {key:?} fare sum {} vs {}",
            got.fare_sum,
            want.fare_sum
        );
        let riders: BTreeSet<String> = got.riders.iter().map(|r| r.to_string()).collect();
        assert_eq!(riders, want.riders, "{what}: {key:?} riders");
        assert_eq!(got.riders.len() as u64, got.unique_riders);
        assert!(got.riders.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert_eq!(
            got.max_event_ms, want.max_ms,
            "{what}: {key:?} newest event"
        );
    }
    for row in rows.iter().filter(|r| r.is_final == 0) {
        assert_eq!(row.version, row.events);
        let final_row = finals[&(row.minute.0, row.city.clone())];
        assert!(
            row.events <= final_row.events,
            "{what}: an update above its final row"
        );
    }
}

/// Every row and minute row emitted, and the late events per city.
type Run = (
    Vec<CityMetricsRow>,
    BTreeMap<String, u64>,
    Vec<CityMinuteRow>,
);

/// Runs the dataflow; returns every row emitted, the late events per city and every minute
/// row emitted.
fn run_all(partitions: &[Vec<RideEvent>], workers: usize, batch: usize) -> Run {
    run_with_interval(partitions, workers, batch, Duration::from_millis(1))
}

/// [`run_all`] with the given emit interval.
fn run_with_interval(
    partitions: &[Vec<RideEvent>],
    workers: usize,
    batch: usize,
    emit_interval: Duration,
) -> Run {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(BTreeMap::new()));
    let minutes = Arc::new(Mutex::new(Vec::new()));
    let input = Arc::new(partitions.to_vec());
    let (rows2, late2, minutes2) = (rows.clone(), late.clone(), minutes.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (rows, late, input) = (rows2.clone(), late2.clone(), input.clone());
        let minutes = minutes2.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let events = replay(
                scope,
                &input,
                ReplayConfig {
                    allowed_lateness: Duration::from_secs(30),
                    batch,
                },
            );
            let metrics = build(
                events,
                &WindowConfig {
                    emit_interval,
                    ..WindowConfig::default()
                },
            );
            metrics
                .rows
                .inspect(move |row| rows.lock().unwrap().push(row.clone()));
            metrics
                .minutes
                .inspect(move |row| minutes.lock().unwrap().push(row.clone()));
            metrics
                .late
                .inspect(move |e| *late.lock().unwrap().entry(e.city.clone()).or_insert(0u64) += 1);
        });
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|result| result.unwrap());
    let rows = rows.lock().unwrap().clone();
    let late = late.lock().unwrap().clone();
    let minutes = minutes.lock().unwrap().clone();
    (rows, late, minutes)
}

/// Runs the dataflow; returns every row emitted and the late events per city.
fn run(
    partitions: &[Vec<RideEvent>],
    workers: usize,
    batch: usize,
) -> (Vec<CityMetricsRow>, BTreeMap<String, u64>) {
    let (rows, late, _) = run_all(partitions, workers, batch);
    (rows, late)
}

fn check(seed: u64, partitions: usize, per_partition: usize, workers: usize, batch: usize) {
    check_with_interval(
        seed,
        partitions,
        per_partition,
        workers,
        batch,
        Duration::from_millis(1),
    );
}

fn check_with_interval(
    seed: u64,
    partitions: usize,
    per_partition: usize,
    workers: usize,
    batch: usize,
    emit_interval: Duration,
) {
    let input = generate(seed, partitions, per_partition);
    let (expected, expected_late) = oracle(&input);
    let (rows, late, minutes) = run_with_interval(&input, workers, batch, emit_interval);
    let what = format!("seed {seed}, {partitions} partitions, {workers} workers, batch {batch}");

    let finals = oracle::assert_final_rows_match(&rows, &expected, &what);
    assert_eq!(late, expected_late, "{what}: late events per city");
    assert!(late.values().sum::<u64>() > 0, "the input has late events");
    check_minutes(&minutes, &input, &what);

    // Updates: never final, versioned by their count, never above the final row.
    for row in rows.iter().filter(|r| r.is_final == 0) {
        assert_eq!(row.version, row.total_events);
        let final_row = finals[&(row.window_start.0, row.city.clone())];
        assert!(
            row.total_events <= final_row.total_events,
            "{what}: an update above its final row"
        );
    }
}

#[test]
fn one_worker_matches_the_oracle() {
    for seed in [1, 2, 3] {
        check(seed, 4, 2_000, 1, 1024);
    }
}

#[test]
fn two_and_four_workers_match_the_oracle() {
    for (seed, workers) in [(4, 2), (5, 4), (6, 2), (7, 4)] {
        check(seed, 12, 800, workers, 1024);
    }
}

#[test]
fn the_read_interleaving_does_not_change_the_results() {
    for batch in [1, 7, 100_000] {
        check(8, 6, 1_500, 2, batch);
    }
}

/// Final rows follow the frontier alone: with an emit interval longer than the run, no
/// update is due, and every count must still reach its window's final row before the
/// frontier passes the window (across the workers' partial counts too).
#[test]
fn final_rows_do_not_wait_for_the_emit_interval() {
    for (seed, workers) in [(12, 1), (13, 2), (14, 4)] {
        check_with_interval(seed, 6, 1_000, workers, 256, Duration::from_secs(3600));
    }
}

#[test]
fn more_workers_than_partitions_do_not_stall_the_job() {
    check(9, 2, 2_000, 4, 64);
}

#[test]
fn an_empty_partition_does_not_stall_windows() {
    let mut input = generate(10, 3, 2_000);
    input.push(Vec::new());
    let (expected, _) = oracle(&input);
    let (rows, _) = run(&input, 2, 128);
    let finals = rows.iter().filter(|r| r.is_final == 1).count();
    assert_eq!(finals, expected.len());
}

#[test]
fn one_and_four_workers_emit_identical_final_rows() {
    let input = generate(11, 8, 1_000);
    let finals = |workers| {
        let (rows, _) = run(&input, workers, 256);
        let mut finals: Vec<CityMetricsRow> = rows
            .into_iter()
            .filter(|r| r.is_final == 1)
            .map(|r| CityMetricsRow {
                updated_at: Timestamp(0),
                ..r
            })
            .collect();
        finals.sort_by(|a, b| (a.window_start, &a.city).cmp(&(b.window_start, &b.city)));
        finals
    };
    assert_eq!(finals(1), finals(4), "bit-identical, including avg_fare");
}

/// Update mode while windows are open: every open window an event lands in gets an update
/// row with its counts so far (a rider already seen in an earlier minute of the window is not
/// counted again), and a window the frontier passes gets its final row, after its updates.
#[test]
fn every_open_window_an_event_lands_in_gets_an_update_row() {
    use dataflows::partitioned_source::Sourced;
    use timely::dataflow::operators::{Input, Probe};

    let rows = Arc::new(Mutex::new(Vec::<CityMetricsRow>::new()));
    let seen = rows.clone();
    timely::execute(timely::Config::thread(), move |worker| {
        let seen = seen.clone();
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input::<Vec<Sourced<RideEvent>>>();
            let metrics = build(
                events,
                &WindowConfig {
                    emit_interval: Duration::ZERO,
                    ..WindowConfig::default()
                },
            );
            let (probe, _) = metrics
                .rows
                .inspect(move |row| seen.lock().unwrap().push(row.clone()))
                .probe();
            (input, probe)
        });
        let m = (BASE_MS / 60_000) as u64 + 10;
        let event = |offset: u64, minute: u64, rider: &str| Sourced {
            partition: 0,
            offset,
            event: RideEvent {
                event_type: EventType::Requested,
                ride_id: format!("ride-{offset}").into(),
                timestamp: Timestamp(minute as i64 * 60_000 + 5_000),
                city: "london".into(),
                estimated_fare: Some(10.0),
                user_id: rider.into(),
                driver_id: None,
                pickup: None,
                dropoff: None,
            },
            late: false,
        };
        input.advance_to(m);
        // Data alone (the frontier stays): open windows' updates only.
        input.send(event(0, m, "rider-a"));
        for _ in 0..20 {
            worker.step();
        }
        // The frontier alone: the window ending at m + 1 closes.
        input.advance_to(m + 1);
        while probe.less_than(input.time()) {
            worker.step();
        }
        input.send(event(1, m + 1, "rider-a"));
        input.send(event(2, m + 1, "rider-b"));
        for _ in 0..20 {
            worker.step();
        }
        input.advance_to(m + 2);
        while probe.less_than(input.time()) {
            worker.step();
        }
    })
    .unwrap();
    let rows = rows.lock().unwrap().clone();
    let m = BASE_MS / 60_000 + 10;
    let start_of = |row: &CityMetricsRow| row.window_start.0 / 60_000 - m;
    // (window start − m, is_final) → (events, distinct riders) of its latest row.
    let mut latest = BTreeMap::new();
    for row in &rows {
        latest.insert(
            (start_of(row), row.is_final),
            (row.total_events, row.unique_riders),
        );
    }
    let expected: BTreeMap<(i64, u8), (u64, u64)> = [
        ((-4, 0), (1, 1)),
        ((-4, 1), (1, 1)),
        ((-3, 0), (3, 2)),
        ((-3, 1), (3, 2)),
        ((-2, 0), (3, 2)),
        ((-1, 0), (3, 2)),
        ((0, 0), (3, 2)),
        // Only the second minute: rider-a is new to this window.
        ((1, 0), (2, 2)),
        // The input closes when the worker returns: every window becomes final.
        ((-2, 1), (3, 2)),
        ((-1, 1), (3, 2)),
        ((0, 1), (3, 2)),
        ((1, 1), (2, 2)),
    ]
    .into();
    assert_eq!(latest, expected, "rows: {rows:#?}");
    let closing: Vec<u8> = rows
        .iter()
        .filter(|r| start_of(r) == -3)
        .map(|r| r.is_final)
        .collect();
    assert_eq!(closing, [0, 0, 1], "an update per step, then the final row");
}
