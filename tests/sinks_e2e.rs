//! The sinks end to end, on the real broker and the real ClickHouse: a seeded dataset with
//! out-of-order, very late and malformed lines is replayed into ride-events and
//! `ridepulse run --until-end` fills `city_metrics`, `ride_events`, `analytics-aggregated`
//! and the dead-letter topic. Each is checked against an independent reference: ClickHouse
//! SQL over the raw events, the Rust oracle over what the broker holds, and the malformed
//! lines themselves. Then: a second run and a `--from-beginning` run change nothing, and a
//! run killed with SIGKILL half-way and restarted ends identical to a clean run.

mod common;

#[path = "../dataflows/tests/support/oracle.rs"]
mod oracle;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{field, send_signal, snapshot, summary_of, Namespace};
use dataflows::event::RideEvent;
use dataflows::metrics_row::CityMetricsRow;
use ridepulse::kafka::plain_consumer::{read_all, Record};

/// SPEC §3 recomputed by ClickHouse from the raw events: every on-time event counts in the
/// five windows that start at its minute and the four minutes before.
const REFERENCE_SQL: &str = "
SELECT city, (minute - k) * 60 AS start, count(), countIf(event_type = 'requested'),
       countIf(event_type = 'completed'), countIf(event_type = 'cancelled'),
       avg(estimated_fare), uniqExact(user_id)
FROM (
    SELECT city, event_type, estimated_fare, user_id,
           intDiv(timestamp_ms, 60000) AS minute, arrayJoin(range(5)) AS k
    FROM ride_events FINAL
    WHERE is_late = 0
)
GROUP BY city, start
ORDER BY city, start";

/// The same columns from the job's output.
const METRICS_SQL: &str = "
SELECT city, toUnixTimestamp(window_start), total_events, requests, completions,
       cancellations, avg_fare, unique_riders
FROM city_metrics FINAL
ORDER BY city, window_start";

fn assert_same_numbers(got: &[Vec<String>], want: &[Vec<String>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row counts differ");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}");
        for (a, b) in g.iter().zip(w) {
            if a == b {
                continue;
            }
            // Floats: the job sums fares exactly, ClickHouse in float order.
            let (x, y): (f64, f64) = (a.parse().unwrap_or(f64::NAN), b.parse().unwrap_or(f64::NAN));
            assert!(
                (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                "{what}: {g:?} != {w:?}"
            );
        }
    }
}

struct Replayed {
    records: Vec<Record>,
    valid: u64,
    malformed: Vec<Record>,
    expected: BTreeMap<(i64, String), oracle::Expected>,
    late: BTreeMap<String, u64>,
}

fn replay(ns: &Namespace, count: u64, rate: u64, start: &str) -> Replayed {
    let dir = common::temp_dir("sinks");
    let path = common::dataset(ns, &dir, count, rate, start);
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    let records = read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events).unwrap();
    let mut partitions: Vec<Vec<RideEvent>> = vec![Vec::new(); 12];
    let mut malformed = Vec::new();
    for record in &records {
        match RideEvent::parse(&record.payload) {
            Ok(event) => partitions[record.partition as usize].push(event),
            Err(_) => malformed.push(record.clone()),
        }
    }
    let (expected, late) = oracle::oracle(&partitions);
    Replayed {
        valid: (records.len() - malformed.len()) as u64,
        records,
        malformed,
        expected,
        late,
    }
}

#[test]
fn until_end_fills_clickhouse_and_kafka_exactly() {
    let ns = Namespace::new("sinks");
    ns.create_topics();
    ns.migrate();
    // Event time ends a few minutes ago, so the shipped "last hour" queries see it.
    let start = dataflows::event::Timestamp(chrono::Utc::now().timestamp_millis() - 20 * 60_000);
    let data = replay(&ns, 15_000, 1_500, &start.to_string());
    assert!(data.malformed.len() >= 20, "{}", data.malformed.len());
    assert!(data.late.values().sum::<u64>() > 100);

    let summary = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "g"]));
    assert_eq!(field::<u64>(&summary, "events"), data.valid, "{summary}");
    assert_eq!(
        field::<u64>(&summary, "written_events"),
        data.valid,
        "{summary}"
    );
    assert_eq!(
        field::<u64>(&summary, "invalid"),
        data.malformed.len() as u64,
        "{summary}"
    );
    assert_eq!(
        field::<u64>(&summary, "dead_letters"),
        data.malformed.len() as u64,
        "{summary}"
    );

    // ride_events: every valid event once, late ones flagged as the oracle judges them.
    assert_eq!(ns.scalar("SELECT count() FROM ride_events"), data.valid);
    let late_by_city: BTreeMap<String, u64> = ns
        .query("SELECT city, sum(is_late) FROM ride_events FINAL GROUP BY city HAVING sum(is_late) > 0")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(late_by_city, data.late);

    // city_metrics: only final rows, each equal to ClickHouse's own recomputation.
    assert_eq!(
        ns.scalar("SELECT count() FROM city_metrics FINAL WHERE is_final = 0"),
        0
    );
    let metrics = ns.query(METRICS_SQL);
    assert_eq!(metrics.len(), data.expected.len());
    assert_same_numbers(
        &metrics,
        &ns.query(REFERENCE_SQL),
        "city_metrics vs SQL reference",
    );

    // analytics-aggregated: the same final rows, equal to the oracle's.
    let aggregated = read_all(&ns.config.kafka.brokers, &ns.config.topics.aggregated).unwrap();
    let rows: Vec<CityMetricsRow> = aggregated
        .iter()
        .map(|r| {
            let row: CityMetricsRow = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(r.key.as_deref(), Some(row.city.as_bytes()), "keyed by city");
            row
        })
        .collect();
    let finals = oracle::assert_final_rows_match(&rows, &data.expected, "analytics-aggregated");
    assert_eq!(finals.len(), metrics.len());
    for row in &metrics {
        let key = (row[1].parse::<i64>().unwrap() * 1000, row[0].clone());
        assert_eq!(
            row[2].parse::<u64>().unwrap(),
            finals[&key].total_events,
            "{key:?}"
        );
    }

    // ride-events-dlq: exactly the malformed messages, with their origin in headers.
    let dead = read_all(&ns.config.kafka.brokers, &ns.config.topics.dead_letters).unwrap();
    assert_eq!(dead.len(), data.malformed.len());
    let mut unmatched = data.malformed.clone();
    for letter in &dead {
        let header = |name: &str| {
            let value = letter.headers.iter().find(|(k, _)| k == name);
            String::from_utf8(
                value
                    .unwrap_or_else(|| panic!("no header {name}"))
                    .1
                    .clone(),
            )
            .unwrap()
        };
        assert_eq!(header("source_topic"), ns.config.topics.ride_events);
        let (partition, offset): (i32, i64) = (
            header("source_partition").parse().unwrap(),
            header("source_offset").parse().unwrap(),
        );
        let at = unmatched
            .iter()
            .position(|r| r.partition == partition && r.offset == offset)
            .unwrap_or_else(|| {
                panic!("dead letter for p{partition}@{offset} matches no malformed message")
            });
        let original = unmatched.remove(at);
        assert_eq!(letter.payload, original.payload, "original bytes");
        assert_eq!(letter.key, original.key, "original key");
        let error = RideEvent::parse(&original.payload).unwrap_err().to_string();
        assert_eq!(header("error"), error);
    }
    assert!(unmatched.is_empty());
    assert!(data.records.len() > dead.len());
    // The same dead letters in ClickHouse (for dashboards), with position and error.
    let rows = ns.query(
        "SELECT kafka_partition, kafka_offset, error, payload FROM dead_letters FINAL ORDER BY kafka_partition, kafka_offset",
    );
    let mut want: Vec<Vec<String>> = data
        .malformed
        .iter()
        .map(|r| {
            vec![
                r.partition.to_string(),
                r.offset.to_string(),
                RideEvent::parse(&r.payload).unwrap_err().to_string(),
                String::from_utf8_lossy(&r.payload).into_owned(),
            ]
        })
        .collect();
    want.sort_by_key(|r| (r[0].parse::<u64>().unwrap(), r[1].parse::<u64>().unwrap()));
    assert_eq!(rows, want, "dead_letters table");

    // The shipped queries run and agree with the raw data.
    let root = env!("CARGO_MANIFEST_DIR");
    let performance = ns.run(&[
        "query",
        "--format",
        "TabSeparated",
        "--file",
        &format!("{root}/sql/city_performance_last_hour.sql"),
    ]);
    let requests: u64 = performance
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    // The shipped query reads the rollups: on-time events of the minutes that started in
    // the last hour (late events are counted apart, in city_minute_late).
    assert_eq!(
        requests,
        ns.scalar("SELECT countIf(event_type = 'requested' AND is_late = 0) FROM ride_events FINAL WHERE toStartOfMinute(timestamp) >= now() - INTERVAL 1 HOUR")
    );
    assert!(requests > 0);
    let per_minute = ns.run(&[
        "query",
        "--format",
        "TabSeparated",
        "--file",
        &format!("{root}/sql/rides_per_minute.sql"),
    ]);
    let requested: u64 = per_minute
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requested, requests);

    // Idempotence: the same job again resumes at its end and changes nothing; reading
    // everything again (--from-beginning) rewrites the same rows.
    let before = snapshot(&ns);
    let again = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "g"]));
    assert_eq!(field::<u64>(&again, "events"), 0, "{again}");
    assert_eq!(snapshot(&ns), before);
    let all = summary_of(&ns.try_run(&["run", "--until-end", "--group", "g", "--from-beginning"]));
    assert_eq!(field::<u64>(&all, "written_events"), data.valid, "{all}");
    assert_eq!(snapshot(&ns), before);
    // Re-delivered rows collapse at merge (FINAL already hides them).
    ns.query("OPTIMIZE TABLE ride_events FINAL");
    assert_eq!(ns.scalar("SELECT count() FROM ride_events"), data.valid);
}

#[test]
fn a_job_killed_half_way_and_restarted_ends_identical() {
    let clean = Namespace::new("sigterm");
    clean.create_topics();
    clean.migrate();
    let data = replay(&clean, 40_000, 2_000, "2026-11-23T10:00:00Z");
    let summary =
        summary_of(&clean.try_run(&["run", "--until-end", "-w", "2", "--group", "clean"]));
    assert_eq!(field::<u64>(&summary, "written_events"), data.valid);

    // The same topics, another database: kill a run (SIGKILL: no chance to clean up) as
    // soon as it has written something, then run again. Tansu delivers a backlog in bursts
    // of a second or less, so the kill may land before any resume point beyond the start
    // was checkpointed (the restart then re-reads everything, which must still end
    // identical); the live test below checks resuming from mid-way checkpoints. A run that
    // finishes before it can be killed is tried again on a fresh database (at most 5 times).
    let total = data.records.len() as u64;
    let mut attempt = 0;
    let (restarted, partial, checkpointed) = loop {
        attempt += 1;
        assert!(
            attempt <= 5,
            "no run could be killed half-way in 5 attempts"
        );
        let database = format!("{}_restarted{attempt}", clean.config.clickhouse.database);
        let restarted = clean
            .with("clickhouse.database", &database)
            .with("job.checkpoint_interval_ms", "50");
        restarted.migrate();
        let mut child = restarted
            .command(&["run", "--until-end", "-w", "2", "--group", "restarted"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut finished = false;
        while restarted.scalar("SELECT count() FROM ride_events") == 0 {
            assert!(Instant::now() < deadline, "the run wrote nothing");
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL (a no-op if it has finished)
        let status = child.wait().unwrap();
        let covered = restarted.scalar("SELECT sum(next_offset) FROM checkpoints FINAL");
        let checkpointed = restarted.scalar("SELECT max(written_to) FROM checkpoints FINAL");
        let partial = restarted.scalar("SELECT count() FROM ride_events FINAL");
        eprintln!(
            "attempt {attempt}: {status:?} with {partial} events written, checkpoints covering {covered} of {total} messages"
        );
        if !finished && status.signal() == Some(9) && covered < total {
            break (restarted, partial, checkpointed);
        }
    };

    let resumed =
        summary_of(&restarted.try_run(&["run", "--until-end", "-w", "2", "--group", "restarted"]));
    eprintln!("partial={partial} resumed: {resumed}");
    // It resumed from its checkpoints: it re-read less than everything, or skipped
    // rewriting what was already written.
    let (events, replayed) = (
        field::<u64>(&resumed, "events"),
        field::<u64>(&resumed, "replayed"),
    );
    if checkpointed > 0 {
        assert!(events < data.valid || replayed > 0, "{resumed}");
    }
    assert_eq!(
        field::<u64>(&resumed, "written_events"),
        events - replayed,
        "{resumed}"
    );
    let (want, got) = (snapshot(&clean), snapshot(&restarted));
    assert_eq!(got[0].len(), want[0].len(), "city_metrics rows");
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    assert_eq!(got[1].len(), want[1].len(), "ride_events rows");
    assert_eq!(got[1], want[1], "ride_events FINAL");
    assert_eq!(got[2], want[2]);
}

/// A live job reads the first part of the data, goes idle, closes windows and checkpoints
/// resume offsets past the start of every partition; it is stopped, more data arrives, and
/// the restarted job rebuilds its open windows from the checkpoints: ClickHouse ends
/// exactly as after one clean run over everything.
#[test]
fn a_live_job_restarted_from_its_checkpoints_rebuilds_its_open_windows() {
    let clean = Namespace::new("resume");
    clean.create_topics();
    clean.migrate();
    let dir = common::temp_dir("resume");
    let start_ms = 1_795_428_000_000i64; // 2026-11-23T10:00:00Z
    let path = common::dataset(&clean, &dir, 30_000, 2_000, "2026-11-23T10:00:00Z");
    // Split where event time reaches 8 min 45 s: the live job's watermark then rests 30 s
    // behind, mid-minute, so no event after the split finds its minute already closed.
    let split_ms = start_ms + 8 * 60_000 + 45_000;
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let at = lines
        .iter()
        .position(|l| RideEvent::parse(l.as_bytes()).is_ok_and(|e| e.timestamp.0 >= split_ms))
        .unwrap();
    let (first, second) = (dir.join("first.jsonl"), dir.join("second.jsonl"));
    std::fs::write(&first, lines[..at].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[at..].join("\n") + "\n").unwrap();
    clean.run(&["simulate", "--replay", first.to_str().unwrap()]);
    let first_valid = lines[..at]
        .iter()
        .filter(|l| RideEvent::parse(l.as_bytes()).is_ok())
        .count() as u64;

    let database = format!("{}_restarted", clean.config.clickhouse.database);
    // A restart re-reads max(window length, supply horizon) minutes before the first open
    // one; with a 5-minute request timeout that is the window's 5 minutes, so the 9
    // minutes read live leave checkpoints past the start of every partition.
    let restarted = clean
        .with("clickhouse.database", &database)
        .with("supply.request_timeout_minutes", "5");
    restarted.migrate();
    let mut live = restarted
        .command(&[
            "--set",
            "window.idle_timeout_secs=1",
            "run",
            "-w",
            "2",
            "--group",
            "live",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = format!(
        "SELECT count() = 12 AND min(next_offset) > 0 AND min(finalized_through) >= {} FROM checkpoints FINAL WHERE topic = '{}'",
        (split_ms - 30_000) / 60_000,
        restarted.config.topics.ride_events
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while restarted.scalar("SELECT count() FROM ride_events") < first_valid
        || restarted.scalar(&ready) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the live job did not checkpoint its progress"
        );
        assert!(live.try_wait().unwrap().is_none(), "the live job ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    send_signal(live.id(), "TERM");
    assert_eq!(live.wait().unwrap().signal(), Some(15));

    clean.run(&["simulate", "--replay", second.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    let valid = lines
        .iter()
        .filter(|l| RideEvent::parse(l.as_bytes()).is_ok())
        .count() as u64;
    let resumed =
        summary_of(&restarted.try_run(&["run", "--until-end", "-w", "2", "--group", "live"]));
    eprintln!("first_valid={first_valid} valid={valid} resumed: {resumed}");
    let events = field::<u64>(&resumed, "events");
    assert!(
        events < valid,
        "resumed past the start of the partitions: {resumed}"
    );
    assert_eq!(
        field::<u64>(&resumed, "written_events"),
        valid - first_valid,
        "{resumed}"
    );

    let summary =
        summary_of(&clean.try_run(&["run", "--until-end", "-w", "2", "--group", "clean"]));
    assert_eq!(field::<u64>(&summary, "written_events"), valid);
    let (want, got) = (snapshot(&clean), snapshot(&restarted));
    assert_eq!(got[0].len(), want[0].len(), "city_metrics rows");
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    assert_eq!(got[1].len(), want[1].len(), "ride_events rows");
    assert_eq!(got[1], want[1], "ride_events FINAL");
    assert_eq!(got[2], want[2]);
}
