//! `ridepulse run --from-file`: the same events read from files give exactly the rows the
//! Kafka path gives (lines are spread over partitions as the producer spreads them, so
//! lateness is judged the same), malformed lines become dead letters, and several files
//! are read one after the other.

mod common;

use common::{field, snapshot, summary_of, Namespace};
use ridepulse::source::line_chunks::{CHUNKS_AHEAD_PER_WORKER, CHUNK_BYTES};

const SUPPLY_SQL: &str = "SELECT toUnixTimestamp(minute), city, available_drivers, waiting_riders, rides_in_progress, requests, toString(version) FROM city_supply FINAL WHERE is_final = 1 ORDER BY city, minute";

const EVENTS_SQL: &str = "SELECT ride_id, event_type, timestamp_ms, city, user_id, estimated_fare, is_late FROM ride_events FINAL ORDER BY ride_id, event_type, timestamp_ms, is_late";

#[test]
fn files_give_the_rows_of_the_kafka_path() {
    let kafka = Namespace::new("files");
    kafka.create_topics();
    kafka.migrate();
    let dir = common::temp_dir("files");
    let path = common::dataset(&kafka, &dir, 20_000, 2_000, "2026-11-23T10:00:00Z");
    let (lines, valid) = common::lines_of(&path);
    let malformed = lines.len() as u64 - valid;
    assert!(malformed >= 30, "{malformed}");
    kafka.run(&["simulate", "--replay", path.to_str().unwrap()]);
    let via_kafka = summary_of(&kafka.try_run(&["run", "--until-end", "-w", "2", "--group", "k"]));
    assert_eq!(field::<u64>(&via_kafka, "written_events"), valid);

    let file = kafka.with(
        "clickhouse.database",
        &format!("{}_file", kafka.config.clickhouse.database),
    );
    file.migrate();
    let via_file =
        summary_of(&file.try_run(&["run", "--from-file", path.to_str().unwrap(), "-w", "2"]));
    eprintln!("kafka: {via_kafka}\nfile:  {via_file}");
    assert_eq!(field::<u64>(&via_file, "events"), valid, "{via_file}");
    assert_eq!(field::<u64>(&via_file, "invalid"), malformed, "{via_file}");
    assert_eq!(
        field::<u64>(&via_file, "dead_letters"),
        malformed,
        "{via_file}"
    );
    assert_eq!(
        field::<u64>(&via_file, "late"),
        field::<u64>(&via_kafka, "late"),
        "the same lateness verdicts"
    );
    let (want, got) = (snapshot(&kafka), snapshot(&file));
    assert!(want[0].len() > 100);
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    assert_eq!(
        file.query(EVENTS_SQL),
        kafka.query(EVENTS_SQL),
        "ride_events FINAL"
    );
    assert_eq!(
        file.scalar("SELECT count() FROM dead_letters FINAL"),
        malformed
    );
    // The Kafka job computed supply (from its rides: no location was produced); the file
    // run of rides alone did not.
    let supply = kafka.query(SUPPLY_SQL);
    assert!(supply.len() > 100, "{}", supply.len());
    assert_eq!(file.scalar("SELECT count() FROM city_supply"), 0);

    // Two files, read in order, are the same stream; this run's inserts are LZ4-compressed
    // (the others', to this machine, are not: `clickhouse.compression = auto`).
    let (first, second) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let half = lines.len() / 2;
    std::fs::write(&first, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[half..].join("\n") + "\n").unwrap();
    let split = kafka
        .with(
            "clickhouse.database",
            &format!("{}_split", kafka.config.clickhouse.database),
        )
        .with("supply.enabled", "true")
        .with("clickhouse.compression", "lz4");
    split.migrate();
    let via_two = summary_of(&split.try_run(&[
        "run",
        "--from-file",
        first.to_str().unwrap(),
        "--from-file",
        second.to_str().unwrap(),
    ]));
    assert_eq!(field::<u64>(&via_two, "events"), valid, "{via_two}");
    assert_eq!(
        snapshot(&split)[0],
        want[0],
        "city_metrics FINAL from two files"
    );
    assert_eq!(split.query(SUPPLY_SQL), supply, "supply.enabled = true");

    // And a Kafka job without supply: the same city metrics, no supply row.
    let alone = kafka
        .with(
            "clickhouse.database",
            &format!("{}_alone", kafka.config.clickhouse.database),
        )
        .with("supply.enabled", "false");
    alone.migrate();
    let via_alone = summary_of(&alone.try_run(&["run", "--until-end", "--group", "alone"]));
    assert_eq!(field::<u64>(&via_alone, "events"), valid, "{via_alone}");
    assert_eq!(
        snapshot(&alone)[0],
        want[0],
        "city_metrics FINAL, no supply"
    );
    assert_eq!(alone.scalar("SELECT count() FROM city_supply"), 0);

    // A missing file is named.
    let output = split.try_run(&["run", "--from-file", "/nonexistent/events.jsonl"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--from-file /nonexistent/events.jsonl"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A file in which one partition's events run ten minutes behind the others (more than
/// `job.max_drift_secs`): the file source must read on, since only reading on moves that
/// partition's clock (waiting for it stalled the run for good), and the rows are those of
/// the same lines read back from Kafka, where partitions are read independently.
#[test]
fn a_partition_far_behind_the_others_does_not_stall_a_file_run() {
    let kafka = Namespace::new("lagging");
    kafka.create_topics();
    kafka.migrate();
    let dir = common::temp_dir("lagging");
    let path = lagging_file(&kafka, &dir, 12_000, 1_000);
    kafka.run(&["simulate", "--replay", path.to_str().unwrap()]);
    summary_of(&kafka.try_run(&["run", "--until-end", "--group", "k"]));

    let (file, output) = two_worker_file_run(
        &kafka,
        "file",
        &path,
        120,
        "the file run stalled (a partition ten minutes behind the others)",
    );
    let via_file = summary_of(&output);
    assert_eq!(field::<u64>(&via_file, "events"), 12_000, "{via_file}");
    let (want, got) = (snapshot(&kafka), snapshot(&file));
    assert!(want[0].len() > 50);
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    std::fs::remove_dir_all(&dir).ok();
}

/// `run --from-file path -w 2` into a fresh database (`ns`'s, with `_suffix`), failed with
/// `stalled` if it runs longer than `limit_secs`: that database's namespace and the output.
fn two_worker_file_run(
    ns: &Namespace,
    suffix: &str,
    path: &std::path::Path,
    limit_secs: u64,
    stalled: &str,
) -> (Namespace, std::process::Output) {
    let file = ns.with(
        "clickhouse.database",
        &format!("{}_{suffix}", ns.config.clickhouse.database),
    );
    file.migrate();
    let child = file
        .command(&["run", "--from-file", path.to_str().unwrap(), "-w", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::wait_or_fail(child, std::time::Duration::from_secs(limit_secs), stalled);
    (file, output)
}

/// `count` simulated rides, `per_minute` of event time, in which partition 0's events run
/// ten minutes behind the others.
fn lagging_file(
    ns: &Namespace,
    dir: &std::path::Path,
    count: u64,
    per_minute: u64,
) -> std::path::PathBuf {
    use dataflows::event::{RideEvent, Timestamp};
    use ridepulse::kafka::partitioner::{partition_for, ride_id_key};

    let clean = dir.join("clean.jsonl");
    ns.run(&[
        "simulate",
        "--out",
        clean.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--rate",
        &per_minute.to_string(),
        "--seed",
        "5",
        "--start",
        "2026-11-23T10:00:00Z",
    ]);
    let partitions = 12;
    let mut shifted = 0;
    let lines: Vec<String> = std::fs::read_to_string(&clean)
        .unwrap()
        .lines()
        .map(|line| {
            let key = ride_id_key(line.as_bytes()).map(|k| k.into_owned());
            if partition_for(key.as_deref().map(str::as_bytes), partitions, 0) != 0 {
                return line.to_string();
            }
            shifted += 1;
            let mut event = RideEvent::parse(line.as_bytes()).unwrap();
            event.timestamp = Timestamp(event.timestamp.millis() - 600_000);
            event.to_json()
        })
        .collect();
    assert!(shifted > count / 24, "{shifted}");
    let path = dir.join("lagging.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The same lag in a file larger than the workers may read ahead of one another (8 MiB
/// for two workers, see `source::line_chunks`). The worker whose partitions run ahead waits
/// for the watermark, which the lagging partition holds; its peer, owning that partition,
/// reads on until it may read no further ahead (at 50,000 rides a minute that is about a
/// minute of event time, far short of the lag). Then the waiting worker holds its peer back
/// and must read on too, or each waits for the other for good. Two workers give the rows of
/// one.
#[test]
fn two_workers_never_wait_on_each_other_over_a_lagging_partition() {
    let one = Namespace::new("lagwide");
    one.create_topics();
    one.migrate();
    let dir = common::temp_dir("lagwide");
    let path = lagging_file(&one, &dir, 90_000, 50_000);
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    let window = 2 * CHUNKS_AHEAD_PER_WORKER * CHUNK_BYTES;
    assert!(
        size > window + window / 4,
        "{size} bytes: not wider than the {window}-byte window"
    );
    let via_one =
        summary_of(&one.try_run(&["run", "--from-file", path.to_str().unwrap(), "-w", "1"]));
    assert_eq!(field::<u64>(&via_one, "events"), 90_000, "{via_one}");

    let (two, output) = two_worker_file_run(
        &one,
        "two",
        &path,
        180,
        "two workers stalled over a lagging partition",
    );
    let via_two = summary_of(&output);
    assert_eq!(field::<u64>(&via_two, "events"), 90_000, "{via_two}");
    let (want, got) = (snapshot(&one), snapshot(&two));
    assert!(want[0].len() > 100, "{}", want[0].len());
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    std::fs::remove_dir_all(&dir).ok();
}
