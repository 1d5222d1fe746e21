//! SPEC §5 end to end, on the real broker and ClickHouse: a seeded dataset of rides and
//! driver locations (out-of-order and very late events, equal timestamps inside one ride,
//! drivers that go silent and come back or change city, abandoned requests, malformed
//! lines) is produced into `ride-events` and `driver-locations` keyed by `ride_id` /
//! `driver_id` (the producer's murmur2 partitioner), and:
//! - `run --until-end -w 2` gives `city_supply FINAL` equal to the independent
//!   recomputation in `dataflows/tests/support/supply_oracle.rs` (which shares no code with
//!   the dataflow), over each topic's partitions in the order the producer wrote them;
//! - a kill -9 mid-run and a restart end with the same final rows (and the same city
//!   metrics) as the clean run;
//! - the same lines through `run --from-file … --locations-file …` give the same rows;
//! - the `city-supply` topic receives the final rows, keyed by city; malformed locations are
//!   dead letters naming `driver-locations`.

mod common;

#[path = "../dataflows/tests/support/supply_oracle.rs"]
mod supply_oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{field, send_signal, summary_of, temp_dir, Namespace};
use dataflows::event::{DriverLocation, RideEvent};
use ridepulse::kafka::partitioner::partition_for;
use ridepulse::kafka::producer::CountingProducer;
use supply_oracle::{generate_locations, generate_rides, oracle, Want};

/// Lines that are no valid location (the third has a key: it goes to that driver's
/// partition; the others are keyless).
const BAD_LOCATIONS: [&str; 3] = [
    "{not json",
    "{\"driver_id\":\"driver-x\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"brno\",\"lat\":1.0,\"lng\":2.0}",
    "{\"driver_id\":\"driver-y\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"brno\",\"lat\":1.0,\"lng\":2.0,\"status\":\"parked\"}",
];
const BAD_RIDES: [&str; 2] = ["[]", "{\"event_type\":\"requested\"}"];

/// Final rows as compared: (minute in seconds, city) → counts, and pressure as text.
type Finals = BTreeMap<(i64, String), (Want, Option<f64>)>;

const FINALS_SQL: &str = "SELECT toUnixTimestamp(minute), city, available_drivers, on_trip_drivers, waiting_riders, rides_in_progress, requests, ifNull(toString(pressure), 'null'), toString(version) FROM city_supply FINAL WHERE is_final = 1 ORDER BY city, minute";

fn finals_of(ns: &Namespace) -> Finals {
    ns.query(FINALS_SQL)
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].parse::<u64>().unwrap();
            let version: u64 = r[8].parse().unwrap();
            let want = Want {
                available: n(2),
                on_trip: n(3),
                waiting: n(4),
                in_progress: n(5),
                requests: n(6),
                events: version - (1 << 63),
            };
            let pressure = (r[7] != "null").then(|| r[7].parse::<f64>().unwrap());
            ((r[0].parse().unwrap(), r[1].clone()), (want, pressure))
        })
        .collect()
}

fn expected(want: &BTreeMap<(i64, String), Want>) -> Finals {
    want.iter()
        .map(|((ms, city), w)| {
            let pressure = (w.available > 0).then(|| w.waiting as f64 / w.available as f64);
            ((ms / 1000, city.clone()), (w.clone(), pressure))
        })
        .collect()
}

fn assert_finals(got: &Finals, want: &Finals, what: &str) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} final rows missing (first {:?}), {} unexpected (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (key, (w, wp)) in want {
        let (g, gp) = &got[key];
        assert_eq!(g, w, "{what}: {key:?}");
        match (gp, wp) {
            (None, None) => {}
            (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9 * w.abs(), "{what}: {key:?}"),
            _ => panic!("{what}: {key:?} pressure {gp:?} != {wp:?}"),
        }
    }
}

/// Splits `stream` (lines in production order) over `partitions` by key, as the producer
/// does; malformed lines (no key or unparseable) are left out: they never reach the oracle.
fn by_partition<T>(records: &[T], partitions: i32, key: impl Fn(&T) -> &str) -> Vec<Vec<T>>
where
    T: Clone,
{
    let mut out = vec![Vec::new(); partitions as usize];
    for record in records {
        let p = partition_for(Some(key(record).as_bytes()), partitions, 0);
        out[p as usize].push(record.clone());
    }
    out
}

/// The lines of a stream with a malformed line after every `every` records.
fn with_malformed(valid: Vec<String>, bad: &[&str], every: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, line) in valid.into_iter().enumerate() {
        lines.push(line);
        if (i + 1) % every == 0 {
            lines.push(bad[(i / every) % bad.len()].to_string());
        }
    }
    lines
}

fn produce(ns: &Namespace, topic: &str, lines: &[String], key: impl Fn(&[u8]) -> Option<String>) {
    let producer = CountingProducer::new(&ns.config.kafka, topic, "it-supply").unwrap();
    for line in lines {
        let key = key(line.as_bytes());
        producer
            .send(key.as_deref().map(str::as_bytes), line.as_bytes(), None)
            .unwrap();
    }
    producer.finish(Duration::from_secs(300)).unwrap();
}

#[test]
fn supply_rows_from_the_broker_equal_the_oracle_through_a_crash_and_from_files() {
    let ns = Namespace::new("supply");
    // The runs below re-read driver-locations and compare with the first read: on a
    // compacted topic Tansu's cleaner (which ignores min.compaction.lag.ms) would leave
    // only each driver's latest position for whichever run comes after its sweep (see
    // tests/locations_compaction.rs).
    ns.create_topics_uncompacted_locations();
    ns.migrate();
    let ride_partitions = 12;
    let location_partitions = 24;

    // One generated stream per topic (a natural clock), spread over the partitions by key.
    let rides: Vec<RideEvent> = generate_rides(41, 1, 10_000).remove(0);
    let locations: Vec<DriverLocation> = generate_locations(41, 1, 12_000).remove(0);
    let ride_lines = with_malformed(
        rides.iter().map(RideEvent::to_json).collect(),
        &BAD_RIDES,
        1_000,
    );
    let location_lines = with_malformed(
        locations.iter().map(DriverLocation::to_json).collect(),
        &BAD_LOCATIONS,
        1_000,
    );
    let bad_rides = (ride_lines.len() - rides.len()) as u64;
    let bad_locations = (location_lines.len() - locations.len()) as u64;
    let want = oracle(
        &by_partition(&rides, ride_partitions, |e| &e.ride_id),
        &by_partition(&locations, location_partitions, |l| &l.driver_id),
        10,
        1,
    );
    let want_finals = expected(&want.rows);
    assert!(want_finals.len() > 500, "{}", want_finals.len());
    let total = |f: fn(&Want) -> u64| want.rows.values().map(f).sum::<u64>();
    assert!(total(|w| w.waiting) > 0 && total(|w| w.available) > 0 && total(|w| w.on_trip) > 0);
    let late_locations: u64 = want.late_locations.values().sum();
    assert!(late_locations > 0 && want.late_rides.values().sum::<u64>() > 0);

    let dir = temp_dir("supply");
    let (ride_file, location_file) = (dir.join("rides.jsonl"), dir.join("locations.jsonl"));
    std::fs::write(&ride_file, ride_lines.join("\n") + "\n").unwrap();
    std::fs::write(&location_file, location_lines.join("\n") + "\n").unwrap();
    produce(&ns, &ns.config.topics.ride_events, &ride_lines, |l| {
        ridepulse::kafka::partitioner::ride_id_key(l).map(|k| k.into_owned())
    });
    produce(
        &ns,
        &ns.config.topics.driver_locations,
        &location_lines,
        |l| ridepulse::kafka::partitioner::driver_id_key(l).map(|k| k.into_owned()),
    );

    // A clean run.
    let started = Instant::now();
    let clean = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "clean"]));
    println!(
        "supply e2e: clean run {:.1} s: {clean}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        field::<u64>(&clean, "events"),
        rides.len() as u64,
        "{clean}"
    );
    assert_eq!(
        field::<u64>(&clean, "locations"),
        locations.len() as u64,
        "{clean}"
    );
    assert_eq!(field::<u64>(&clean, "invalid"), bad_rides, "{clean}");
    assert_eq!(
        field::<u64>(&clean, "invalid_locations"),
        bad_locations,
        "{clean}"
    );
    assert_eq!(
        field::<u64>(&clean, "late_locations"),
        late_locations,
        "{clean}"
    );
    assert_eq!(
        field::<u64>(&clean, "dead_letters"),
        bad_rides + bad_locations,
        "{clean}"
    );
    assert_finals(&finals_of(&ns), &want_finals, "clean run");
    let located_dead = ns.scalar(&format!(
        "SELECT count() FROM dead_letters FINAL WHERE source_topic = '{}'",
        ns.config.topics.driver_locations
    ));
    assert_eq!(located_dead, bad_locations);

    // A kill -9 mid-run, then a restart of the same group: the same final rows.
    let crash = ns.with(
        "clickhouse.database",
        &format!("{}_crash", ns.config.clickhouse.database),
    );
    crash.migrate();
    let crash = crash.with("job.checkpoint_interval_ms", "200");
    // Small fetches (`common::SMALL_FETCHES`), so the partitions are read in many rounds and
    // checkpoints of both topics advance while the job reads, as in a real catch-up; a fetch
    // of this dataset's default size returns a whole partition at once.
    let mut job = crash
        .command(&["run", "--until-end", "-w", "2", "--group", "crash"])
        .env("RIDEPULSE_LIBRDKAFKA", common::SMALL_FETCHES)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once ride-events has checkpoints past its first offsets and some final rows
    // are written: the restart resumes mid-stream. (A source that has read all its
    // partitions stops checkpointing until the job's final checkpoints, so the small
    // driver-locations partitions may still resume from their start.)
    let deadline = Instant::now() + Duration::from_secs(300);
    let resumed_sql = |topic: &str| {
        format!(
            "SELECT sum(next_offset) FROM checkpoints FINAL WHERE consumer_group = 'crash' AND topic = '{topic}'"
        )
    };
    let (rides_sql, locations_sql) = (
        resumed_sql(&crash.config.topics.ride_events),
        resumed_sql(&crash.config.topics.driver_locations),
    );
    loop {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job finished before it was checkpointed mid-stream"
        );
        assert!(Instant::now() < deadline, "the job did not get far enough");
        // One query per look (each is a process): mid-stream = a ride-events checkpoint
        // past the start but short of the end, and not every final row written yet.
        let state = crash.query(&format!(
            "SELECT ({rides_sql}), (SELECT count() FROM city_supply WHERE is_final = 1)"
        ));
        let (at, finals): (u64, u64) = (state[0][0].parse().unwrap(), state[0][1].parse().unwrap());
        if at > 0 && at < ride_lines.len() as u64 && finals > 0 && finals < want_finals.len() as u64
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(job.id(), "KILL");
    job.wait().unwrap();
    let finals_at_kill = crash.scalar("SELECT count() FROM city_supply FINAL WHERE is_final = 1");
    let resumed = (crash.scalar(&rides_sql), crash.scalar(&locations_sql));
    let restarted =
        summary_of(&crash.try_run(&["run", "--until-end", "-w", "2", "--group", "crash"]));
    println!(
        "supply e2e: killed with {finals_at_kill} of {} final rows written, resuming at offset sums {resumed:?} (rides, locations) of ({}, {}); restart: {restarted}",
        want_finals.len(),
        ride_lines.len(),
        location_lines.len()
    );
    assert!(
        field::<u64>(&restarted, "events") < rides.len() as u64,
        "the restart resumed mid-stream: {restarted}"
    );
    assert_finals(
        &finals_of(&crash),
        &want_finals,
        "after a kill -9 and a restart",
    );
    let metrics = "SELECT city, toUnixTimestamp(window_start), total_events, requests, completions, cancellations, avg_fare, unique_riders, version FROM city_metrics FINAL WHERE is_final = 1 ORDER BY city, window_start";
    assert_eq!(
        crash.query(metrics),
        ns.query(metrics),
        "city_metrics after the crash"
    );

    // The same lines from files.
    let files = ns.with(
        "clickhouse.database",
        &format!("{}_files", ns.config.clickhouse.database),
    );
    files.migrate();
    let from_files = summary_of(&files.try_run(&[
        "run",
        "--from-file",
        ride_file.to_str().unwrap(),
        "--locations-file",
        location_file.to_str().unwrap(),
        "-w",
        "2",
    ]));
    println!("supply e2e: from files: {from_files}");
    assert_eq!(
        field::<u64>(&from_files, "locations"),
        locations.len() as u64
    );
    assert_eq!(
        field::<u64>(&from_files, "invalid_locations"),
        bad_locations
    );
    assert_finals(&finals_of(&files), &want_finals, "from files");
    assert_eq!(
        files.query(metrics),
        ns.query(metrics),
        "city_metrics from files"
    );

    // The city-supply topic got the final rows (every run wrote the same ones), keyed by city.
    let mut on_topic: BTreeSet<(String, String, String)> = BTreeSet::new();
    ridepulse::kafka::plain_consumer::read_backlog(
        &ns.config.kafka.brokers,
        &ns.config.topics.city_supply,
        Duration::from_secs(30),
        |message| {
            use rdkafka::Message;
            let row: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            assert_eq!(
                message.key(),
                Some(row["city"].as_str().unwrap().as_bytes())
            );
            if row["is_final"] == 1 {
                on_topic.insert((
                    row["minute"].as_str().unwrap().to_string(),
                    row["city"].as_str().unwrap().to_string(),
                    format!(
                        "{} {} {} {} {} {}",
                        row["available_drivers"],
                        row["on_trip_drivers"],
                        row["waiting_riders"],
                        row["rides_in_progress"],
                        row["requests"],
                        row["version"]
                    ),
                ));
            }
        },
    )
    .unwrap();
    let want_on_topic: BTreeSet<(String, String, String)> = want
        .rows
        .iter()
        .map(|((ms, city), w)| {
            (
                dataflows::event::Timestamp(*ms).to_string(),
                city.clone(),
                format!(
                    "{} {} {} {} {} {}",
                    w.available,
                    w.on_trip,
                    w.waiting,
                    w.in_progress,
                    w.requests,
                    (1u64 << 63) + w.events
                ),
            )
        })
        .collect();
    assert_eq!(
        on_topic.len(),
        want_on_topic.len(),
        "distinct final rows on city-supply"
    );
    assert!(on_topic == want_on_topic, "the final rows on city-supply");
    std::fs::remove_dir_all(&dir).ok();
}
