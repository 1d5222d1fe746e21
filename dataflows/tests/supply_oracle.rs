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

use dataflows::event::{DriverLocation, RideEvent};
use dataflows::partitioned_source::{replay, ReplayConfig, Sourced};
use dataflows::supply::{build, SupplyConfig};
use dataflows::supply_live::LiveView;
use dataflows::supply_row::CitySupplyRow;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use timely::dataflow::operators::Inspect;

#[path = "support/supply_oracle.rs"]
mod supply_support;
use supply_support::*;

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

/// The live view's counts as the oracle's rows: (minute in ms, city) → counts, for the
/// (minute, city) pairs that have a row.
fn as_rows(
    counts: BTreeMap<(u64, String), dataflows::supply_row::SupplyCounts>,
) -> BTreeMap<(i64, String), Want> {
    counts
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
        .collect()
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
        let got = as_rows(view.counts(first..=last));
        assert_eq!(got, want.rows, "seed {seed}");
    }
}

#[test]
fn the_live_view_counts_open_minutes_like_the_oracle_of_what_was_read() {
    // Read in order, round-robin over every partition of both topics, with the view's
    // frontier at the job's watermark: at every check, the open minutes' counts must be the
    // oracle's over exactly the records read so far (so what `advance` forgets was never
    // needed by an open minute).
    let config = SupplyConfig {
        stale_after_minutes: 2,
        request_timeout_minutes: 4,
        ..config()
    };
    let rides = generate_rides(15, 3, 1_500);
    let locations = generate_locations(15, 4, 1_200);
    let mut view = LiveView::new(&config);
    let mut read = (
        vec![Vec::new(); rides.len()],
        vec![Vec::new(); locations.len()],
    );
    let mut largest = (
        vec![None::<i64>; rides.len()],
        vec![None::<i64>; locations.len()],
    );
    let judge = |largest: &mut Option<i64>, t: i64| {
        let late = largest.is_some_and(|max| max - t > LATENESS_MS);
        *largest = Some(largest.map_or(t, |max| max.max(t)));
        late
    };
    let mut checks = 0;
    for i in 0..1_500 {
        for (p, partition) in rides.iter().enumerate() {
            let e = partition[i].clone();
            let late = judge(&mut largest.0[p], e.timestamp.0);
            read.0[p].push(e.clone());
            if !late {
                view.add_ride(&Sourced {
                    partition: p as u32,
                    offset: i as u64,
                    event: e,
                    late,
                });
            }
        }
        for (p, partition) in locations.iter().enumerate() {
            let Some(l) = partition.get(i).cloned() else {
                continue;
            };
            let late = judge(&mut largest.1[p], l.timestamp.0);
            read.1[p].push(l.clone());
            if !late {
                view.add_driver(&Sourced {
                    partition: p as u32,
                    offset: i as u64,
                    event: l,
                    late,
                });
            }
        }
        let watermark = largest.0.iter().chain(&largest.1).flatten().min().unwrap() - LATENESS_MS;
        view.advance(watermark.div_euclid(60_000) as u64);
        if i % 150 != 149 {
            continue;
        }
        let open_from = watermark.div_euclid(60_000) as u64;
        let through = view.through().unwrap();
        let want = oracle(
            &read.0,
            &read.1,
            config.request_timeout_minutes as i64,
            config.stale_after_minutes as i64,
        );
        let want: BTreeMap<(i64, String), Want> = want
            .rows
            .into_iter()
            .filter(|((minute, _), _)| (open_from..=through).contains(&(*minute as u64 / 60_000)))
            .collect();
        let got = as_rows(view.counts(open_from..=through));
        assert!(
            !want.is_empty(),
            "check {checks}: minutes {open_from}..={through}"
        );
        assert_eq!(got, want, "check {checks}: minutes {open_from}..={through}");
        checks += 1;
    }
    assert_eq!(checks, 10);
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
fn arrangements_hold_per_city_tallies_not_rides() {
    // 40 minutes of traffic, and 120 minutes of four times as much. Every entity's latest state is kept by hand
    // (`latest_state`, bounded by its own test) and differential arranges per-city tallies
    // alone, compacted as the watermark moves: its peak neither grows with the stream nor
    // comes near the ride events of the horizon (what per-ride state would hold).
    let rides = generate_rides(15, 8, 6_000);
    let short = peak_arranged(
        &generate_rides(15, 2, 2_000),
        &generate_locations(15, 2, 2_000),
    );
    let long = peak_arranged(&rides, &generate_locations(15, 2, 6_000));
    let events = rides.iter().map(Vec::len).sum::<usize>() as i64;
    let first = rides.iter().flatten().map(|e| e.timestamp.0).min().unwrap();
    let last = rides.iter().flatten().map(|e| e.timestamp.0).max().unwrap();
    let per_minute = events * 60_000 / (last - first);
    assert!(short > 0);
    assert!(
        long < 2 * short && long < per_minute * config().horizon() as i64,
        "peak updates held: {short} for 40 minutes, {long} for 120 at 4× ({per_minute} ride events a minute)"
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
