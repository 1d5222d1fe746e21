//! `ridepulse run --until-end` against the real broker: a seeded dataset with out-of-order,
//! very late and malformed lines is replayed into ride-events; the job's final rows must be
//! exactly the oracle's, computed from what the broker holds (each partition in offset
//! order), whatever the number of workers.

mod common;

#[path = "../dataflows/tests/support/oracle.rs"]
mod oracle;

use common::{field, Namespace};
use dataflows::event::{RideEvent, Timestamp};
use dataflows::metrics_row::CityMetricsRow;
use ridepulse::kafka::plain_consumer::read_all;

const MALFORMED: usize = 20;

fn dataset(ns: &Namespace, dir: &std::path::Path) -> std::path::PathBuf {
    common::dataset(ns, dir, 12_000, 12_000, "2026-11-23T10:00:00Z")
}

/// What the broker holds of the namespace's ride events, each partition in offset order (as
/// the job reads them): the valid events per partition, how many messages are malformed, and
/// how many there are in all.
fn broker_partitions(ns: &Namespace) -> (Vec<Vec<RideEvent>>, usize, usize) {
    let records = read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events).unwrap();
    let mut partitions: Vec<Vec<RideEvent>> = vec![Vec::new(); 12];
    let mut malformed = 0;
    for record in &records {
        match RideEvent::parse(&record.payload) {
            Ok(event) => partitions[record.partition as usize].push(event),
            Err(_) => malformed += 1,
        }
    }
    (partitions, malformed, records.len())
}

fn final_rows(stdout: &str) -> Vec<CityMetricsRow> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn run_until_end_gives_the_oracles_final_rows() {
    let ns = Namespace::new("run");
    ns.create_topics();
    ns.migrate();
    let dir = std::env::temp_dir().join(format!("ridepulse-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dataset(&ns, &dir);
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);

    // The oracle reads the broker's partitions in offset order, as the job does.
    let (partitions, malformed, records) = broker_partitions(&ns);
    assert_eq!(malformed, MALFORMED);
    let (expected, late) = oracle::oracle(&partitions);
    let late_total: u64 = late.values().sum();
    assert!(
        late_total > 100,
        "the dataset has late events: {late_total}"
    );

    // 13 workers for 12 partitions: a worker without partitions must not stall the job.
    for workers in ["1", "2", "13"] {
        let output = ns.try_run(&[
            "run",
            "--until-end",
            "-w",
            workers,
            "--print",
            "--final-only",
            "--group",
            &format!("it-run-{workers}"),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let summary = stderr.lines().last().unwrap();
        assert_eq!(
            field::<u64>(summary, "invalid"),
            MALFORMED as u64,
            "{summary}"
        );
        assert_eq!(field::<u64>(summary, "late"), late_total, "{summary}");
        assert_eq!(
            field::<u64>(summary, "events"),
            (records - MALFORMED) as u64,
            "{summary}"
        );
        let rows = final_rows(&String::from_utf8(output.stdout).unwrap());
        oracle::assert_final_rows_match(&rows, &expected, &format!("{workers} workers"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `sinks.raw_events = false` (issue 13): no row reaches `ride_events`, dead letters still
/// do, the final rows are still exactly the oracle's, and the checkpoints advance on their
/// own (nothing raw is written to confirm them), so a kill -9 mid-run and a restart end with
/// the oracle's rows too.
#[test]
fn without_raw_events_the_rows_are_the_oracles_and_a_crash_resumes() {
    let ns = Namespace::new("noraw").with("sinks.raw_events", "false");
    ns.create_topics();
    ns.migrate();
    let dir = common::temp_dir("noraw");
    let path = common::dataset(&ns, &dir, 60_000, 6_000, "2026-11-23T10:00:00Z");
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);
    let (partitions, malformed, records) = broker_partitions(&ns);
    let malformed = malformed as u64;
    let (expected, _) = oracle::oracle(&partitions);

    let output = ns.try_run(&[
        "run",
        "--until-end",
        "-w",
        "2",
        "--print",
        "--final-only",
        "--group",
        "noraw-clean",
    ]);
    let summary = common::summary_of(&output);
    assert_eq!(field::<u64>(&summary, "written_events"), 0, "{summary}");
    assert_eq!(
        field::<u64>(&summary, "dead_letters"),
        malformed,
        "{summary}"
    );
    let rows = final_rows(&String::from_utf8(output.stdout).unwrap());
    oracle::assert_final_rows_match(&rows, &expected, "raw events off");
    assert_eq!(ns.scalar("SELECT count() FROM ride_events"), 0);
    assert_eq!(ns.scalar("SELECT count() FROM dead_letters"), malformed);

    // A second database for the crash run, so its rows are its own.
    let crash = ns.with(
        "clickhouse.database",
        &format!("{}_crash", ns.config.clickhouse.database),
    );
    crash.migrate();
    // Frequent checkpoints and fetches of 16 KiB, so checkpoints land while the job reads:
    // a job fast enough to read the whole backlog before its first checkpoint (1 s by
    // default) left nothing to kill mid-run.
    let crash = crash.with("job.checkpoint_interval_ms", "200");
    let mut job = crash
        .command(&["run", "--until-end", "-w", "2", "--group", "noraw-crash"])
        .env(
            "RIDEPULSE_LIBRDKAFKA",
            "fetch.max.bytes=16384,message.max.bytes=16384,batch.size=16384",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut killed = false;
    while job.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint came");
        if crash.scalar("SELECT count() FROM checkpoints WHERE next_offset > 0") > 0 {
            common::send_signal(job.id(), "KILL");
            job.wait().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(killed, "the job finished before a checkpoint was seen");
    let resumed = crash.scalar(
        "SELECT sum(next_offset) FROM checkpoints FINAL WHERE consumer_group = 'noraw-crash'",
    );
    println!(
        "raw events off: killed with checkpoints at {resumed} of {} messages",
        records
    );
    let summary = common::summary_of(&crash.try_run(&[
        "run",
        "--until-end",
        "-w",
        "2",
        "--group",
        "noraw-crash",
    ]));
    assert_eq!(field::<u64>(&summary, "written_events"), 0, "{summary}");
    let rows = common::metrics_rows(&crash);
    oracle::assert_final_rows_match(&rows, &expected, "raw events off, after a kill -9");
    assert_eq!(crash.scalar("SELECT count() FROM ride_events"), 0);
    std::fs::remove_dir_all(&dir).ok();
}

/// Live mode: all events on one partition; the other eleven are empty, reach their end and
/// go idle, so they must not hold the watermark back: windows become final while the job
/// keeps running.
#[test]
fn idle_partitions_do_not_stall_a_live_job() {
    let ns = Namespace::new("idle");
    ns.create_topics();
    ns.migrate();
    let dir = std::env::temp_dir().join(format!("ridepulse-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Ten minutes of events of one ride (one key, so one partition), one every 10 s.
    let lines: Vec<String> = (0..60)
        .map(|i| {
            let t = Timestamp(1_795_428_000_000 + i * 10_000);
            format!(r#"{{"event_type":"requested","ride_id":"ride-one","timestamp":"{t}","city":"brno","user_id":"u{i}","estimated_fare":10.0}}"#)
        })
        .collect();
    let path = dir.join("one.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ridepulse"))
        .args(ns.args())
        .args([
            "--set",
            "window.idle_timeout_secs=1",
            "run",
            "-w",
            "2",
            "--print",
            "--final-only",
            "--group",
            "it-idle",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Largest event 9:50 past the start, minus 30 s lateness: every window ending by minute
    // 9 becomes final while the job runs; no later window can (the job is still running).
    let start = 1_795_428_000_000i64;
    let expected: Vec<i64> = (1..=9).collect();
    let mut ends: Vec<i64> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ends.len() < expected.len() && std::time::Instant::now() < deadline {
        if let Ok(line) = received.recv_timeout(std::time::Duration::from_millis(200)) {
            let row: CityMetricsRow = serde_json::from_str(&line).unwrap();
            ends.push((row.window_end.0 - start) / 60_000);
        }
    }
    // Give a wrongly emitted later window a moment to show up before stopping the job.
    std::thread::sleep(std::time::Duration::from_secs(2));
    while let Ok(line) = received.try_recv() {
        let row: CityMetricsRow = serde_json::from_str(&line).unwrap();
        ends.push((row.window_end.0 - start) / 60_000);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ends.sort();
    assert_eq!(ends, expected, "final windows while running");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--until-end` on a topic with nothing in it finishes at once instead of waiting forever.
#[test]
fn until_end_on_an_empty_topic_finishes() {
    let ns = Namespace::new("empty");
    ns.create_topics();
    ns.migrate();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ridepulse"))
        .args(ns.args())
        .args(["run", "--until-end", "-w", "2", "--group", "it-empty"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::wait_or_fail(
        child,
        std::time::Duration::from_secs(60),
        "run --until-end did not finish on an empty topic",
    );
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stderr.lines().last().unwrap();
    for name in ["events", "late", "invalid", "rows", "written_events"] {
        assert_eq!(field::<u64>(summary, name), 0, "{summary}");
    }
}
