//! The per-minute rollups the dashboards read (`city_minutes`, and late events in
//! `city_minute_late`) against the real broker and ClickHouse:
//! - a replayed dataset with late events and malformed lines, `run --until-end -w 2`: every
//!   final rollup row equals a recomputation from the raw rows in `ride_events`, and the
//!   totals equal an independent pass over the dataset file (events assigned to partitions
//!   as the producer does, lateness judged per partition);
//! - a kill -9 mid-run and a restart of the same group: the same rollup rows and the same
//!   late counts (raw rows re-delivered by the restart count once), again equal to the
//!   recomputation from that run's raw rows. Before the restart one partition's checkpoint
//!   is rolled back to the oldest one the test saw: a partition whose last checkpoint is
//!   older than the job's finalized minute (another worker's landed later) re-reads
//!   minutes already final, and must judge them as the killed run did.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{field, send_signal, summary_of, temp_dir, Namespace};
use dataflows::event::RideEvent;
use ridepulse::kafka::partitioner::partition_for;

/// The final rollup rows, every column but `updated_at`.
const ROLLUP_SQL: &str = "SELECT toUnixTimestamp(minute) AS m, city, events, requested, accepted, started, completed, cancelled, round(fare_sum, 4), fares, unique_riders, arrayStringConcat(riders, ','), max_event_ms, is_final, toString(version) FROM city_minutes FINAL ORDER BY city, m";

/// The same rows recomputed from the raw on-time events (a final row's version is
/// 2^63 + its events).
const RAW_SQL: &str = "SELECT toUnixTimestamp(toDateTime(intDiv(timestamp_ms, 60000) * 60)) AS m, city, count(), countIf(event_type = 'requested'), countIf(event_type = 'accepted'), countIf(event_type = 'started'), countIf(event_type = 'completed'), countIf(event_type = 'cancelled'), round(sum(ifNull(estimated_fare, 0)), 4), count(estimated_fare), uniqExact(user_id), arrayStringConcat(arraySort(groupUniqArray(user_id)), ','), max(timestamp_ms), 1, toString(toUInt64(9223372036854775808) + count()) FROM ride_events FINAL WHERE is_late = 0 GROUP BY m, city ORDER BY city, m";

/// Late events per minute and city, from the rollup and from the raw rows.
const LATE_SQL: &str = "SELECT toUnixTimestamp(minute) AS m, city, uniqExactMerge(late_events) FROM city_minute_late GROUP BY m, city ORDER BY city, m";
const RAW_LATE_SQL: &str = "SELECT toUnixTimestamp(toDateTime(intDiv(timestamp_ms, 60000) * 60)) AS m, city, count() FROM ride_events FINAL WHERE is_late = 1 GROUP BY m, city ORDER BY city, m";

/// Asserts the rollups of `ns` equal the recomputation from its raw rows; returns them.
fn assert_rollups_match_raw(ns: &Namespace, what: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let rollup = ns.query(ROLLUP_SQL);
    let raw = ns.query(RAW_SQL);
    assert!(!rollup.is_empty(), "{what}: no rollup rows");
    assert_eq!(
        rollup.len(),
        raw.len(),
        "{what}: rollup minutes vs raw minutes"
    );
    for (got, want) in rollup.iter().zip(&raw) {
        assert_eq!(got, want, "{what}: rollup row vs raw recomputation");
    }
    let late = ns.query(LATE_SQL);
    assert_eq!(
        late,
        ns.query(RAW_LATE_SQL),
        "{what}: late events per minute"
    );
    assert!(!late.is_empty(), "{what}: the dataset has late events");
    (rollup, late)
}

/// Per (minute ms, city): on-time and late events of the dataset, each line assigned the
/// partition the producer gives its `ride_id` key and judged late against the largest event
/// time before it in that partition (SPEC §3, 30 s), independently of the job.
fn from_the_dataset(lines: &[String], partitions: i32) -> BTreeMap<(i64, String), (u64, u64)> {
    let mut largest: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for line in lines {
        let Ok(event) = RideEvent::parse(line.as_bytes()) else {
            continue;
        };
        let p = partition_for(Some(event.ride_id.as_bytes()), partitions, 0);
        let t = event.timestamp.0;
        let max = largest.entry(p).or_insert(t);
        let late = *max - t > 30_000;
        *max = (*max).max(t);
        let counts = out
            .entry((t.div_euclid(60_000) * 60_000, event.city.to_string()))
            .or_default();
        if late {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }
    out
}

#[test]
fn rollups_equal_the_raw_rows_through_a_kill_and_restart() {
    let ns = Namespace::new("rollups");
    ns.create_topics();
    ns.migrate();
    let dir = temp_dir("rollups");
    let path = common::dataset(&ns, &dir, 30_000, 500, "2026-11-20T10:00:00Z");
    let (lines, valid) = common::lines_of(&path);
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);

    let clean = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "clean"]));
    assert!(field::<u64>(&clean, "dead_letters") > 0, "{clean}");
    let (rollup, late) = assert_rollups_match_raw(&ns, "clean run");
    assert!(
        rollup.iter().all(|r| r[13] == "1"),
        "every minute is final after --until-end"
    );

    // The dataset itself, per minute and city.
    let partitions = ridepulse::kafka::topics::partition_count(
        &ns.config.kafka.brokers,
        &ns.config.topics.ride_events,
    )
    .unwrap();
    let expected = from_the_dataset(&lines, partitions);
    let got: BTreeMap<(i64, String), (u64, u64)> = {
        let mut got: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
        for r in &rollup {
            got.entry((r[0].parse::<i64>().unwrap() * 1000, r[1].clone()))
                .or_default()
                .0 = r[2].parse().unwrap();
        }
        for r in &late {
            got.entry((r[0].parse::<i64>().unwrap() * 1000, r[1].clone()))
                .or_default()
                .1 = r[2].parse().unwrap();
        }
        got
    };
    assert_eq!(got, expected, "rollups vs the dataset");
    let total: u64 = expected
        .values()
        .map(|(on_time, late)| on_time + late)
        .sum();
    assert_eq!(total, valid, "every valid event is in one minute");

    // A kill -9 mid-run, then a restart of the same group: the same rollups.
    let crash = ns.with(
        "clickhouse.database",
        &format!("{}_crash", ns.config.clickhouse.database),
    );
    crash.migrate();
    let crash = crash.with("job.checkpoint_interval_ms", "200");
    // Small fetches (`common::SMALL_FETCHES`), so minutes close and checkpoints advance
    // while the job reads.
    let mut job = crash
        .command(&["run", "--until-end", "-w", "2", "--group", "crash"])
        .env("RIDEPULSE_LIBRDKAFKA", common::SMALL_FETCHES)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    // The oldest checkpoint seen (of the partition with the smallest finalized minute), as
    // `partition,next_offset,clock,written_to,finalized_through`, and the newest minute
    // any checkpoint has finalized: one query per poll, as the job runs for seconds.
    let checkpoints = format!(
        "FROM checkpoints FINAL WHERE consumer_group = 'crash' AND topic = '{}'",
        crash.config.topics.ride_events
    );
    let progress_sql = format!(
        "SELECT (SELECT sum(next_offset) {checkpoints}), \
         (SELECT count() FROM city_minutes WHERE is_final = 1), \
         (SELECT max(finalized_through) {checkpoints}), \
         (SELECT concat(toString(kafka_partition), ',', toString(next_offset), ',', \
                 ifNull(toString(max_event_ms), 'NULL'), ',', toString(written_to), ',', \
                 toString(finalized_through)) {checkpoints} ORDER BY finalized_through, kafka_partition LIMIT 1)"
    );
    let mut oldest: Option<Vec<String>> = None;
    loop {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job finished before it was checkpointed mid-stream"
        );
        assert!(Instant::now() < deadline, "the job did not get far enough");
        let state = crash.query(&progress_sql);
        let number = |i: usize| state[0][i].parse::<u64>().unwrap();
        let (at, finals, finalized) = (number(0), number(1), number(2));
        // (`\N`: no checkpoint yet.)
        if oldest.is_none() && state[0][3] != "\\N" {
            oldest = Some(state[0][3].split(',').map(str::to_string).collect());
        }
        let behind = oldest
            .as_ref()
            .is_some_and(|o| o[4].parse::<u64>().unwrap() + 1 < finalized);
        if at > 0 && at < lines.len() as u64 && finals > 0 && finals < rollup.len() as u64 && behind
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(job.id(), "KILL");
    job.wait().unwrap();
    // That partition's newest checkpoint becomes the oldest one seen.
    let o = oldest.expect("seen");
    crash.query(&format!(
        "INSERT INTO checkpoints (consumer_group, topic, kafka_partition, next_offset, max_event_ms, written_to, finalized_through, written_at_us) \
         VALUES ('crash', '{}', {}, {}, {}, {}, {}, {})",
        crash.config.topics.ride_events,
        o[0],
        o[1],
        o[2],
        o[3],
        o[4],
        chrono::Utc::now().timestamp_micros()
    ));
    println!("rollups e2e: partition {} rolled back to its checkpoint at offset {} (finalized through minute {})", o[0], o[1], o[4]);
    let finals_at_kill = crash.scalar("SELECT count() FROM city_minutes FINAL WHERE is_final = 1");
    let raw_at_kill = crash.scalar("SELECT count() FROM ride_events");
    let restarted =
        summary_of(&crash.try_run(&["run", "--until-end", "-w", "2", "--group", "crash"]));
    let raw_inserted = crash.scalar("SELECT count() FROM ride_events");
    println!(
        "rollups e2e: killed with {finals_at_kill} of {} final minute rows and {raw_at_kill} raw rows written; \
         after the restart {raw_inserted} raw rows inserted for {valid} valid events; restart: {restarted}",
        rollup.len()
    );
    assert!(
        field::<u64>(&restarted, "events") < valid,
        "the restart resumed mid-stream: {restarted}"
    );
    let (crash_rollup, crash_late) =
        assert_rollups_match_raw(&crash, "after a kill -9 and a restart");
    assert_eq!(
        crash_rollup, rollup,
        "the same rollup rows as the clean run"
    );
    assert_eq!(crash_late, late, "the same late counts as the clean run");
    std::fs::remove_dir_all(&dir).ok();
}
