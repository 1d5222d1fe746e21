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
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ridepulse::kafka::plain_consumer::read_all;

const MALFORMED: usize = 20;

/// The simulator's events with a quarter jittered up to 25 s back and 3 % pushed minutes
/// back (late), plus malformed lines.
fn dataset(ns: &Namespace, dir: &std::path::Path) -> std::path::PathBuf {
    let clean = dir.join("clean.jsonl");
    ns.run(&[
        "simulate",
        "--out",
        clean.to_str().unwrap(),
        "--count",
        "12000",
        "--rate",
        "12000",
        "--seed",
        "21",
        "--start",
        "2026-11-23T10:00:00Z",
    ]);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(&clean).unwrap().lines() {
        let mut event = RideEvent::parse(line.as_bytes()).unwrap();
        let shift = if rng.random_bool(0.03) {
            rng.random_range(60_000..600_000)
        } else if rng.random_bool(0.25) {
            rng.random_range(0..25_000)
        } else {
            0
        };
        event.timestamp = Timestamp(event.timestamp.0 - shift);
        lines.push(event.to_json());
        if lines.len() % 600 == 0 {
            lines.push(["{not json", "{\"event_type\":\"requested\"}", "[]", "{\"event_type\":\"flying\",\"ride_id\":\"r\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"x\",\"user_id\":\"u\"}"][lines.len() / 600 % 4].to_string());
        }
    }
    let path = dir.join("replay.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
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
    let dir = std::env::temp_dir().join(format!("ridepulse-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dataset(&ns, &dir);
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);

    // The oracle reads the broker's partitions in offset order, as the job does.
    let records = read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events).unwrap();
    let mut partitions: Vec<Vec<RideEvent>> = vec![Vec::new(); 12];
    let mut malformed = 0;
    for record in &records {
        match RideEvent::parse(&record.payload) {
            Ok(event) => partitions[record.partition as usize].push(event),
            Err(_) => malformed += 1,
        }
    }
    assert_eq!(malformed, MALFORMED);
    let (expected, late) = oracle::oracle(&partitions);
    let late_total: u64 = late.values().sum();
    assert!(
        late_total > 100,
        "the dataset has late events: {late_total}"
    );

    for workers in ["1", "2", "3"] {
        let output = ns.try_run(&[
            "run",
            "--until-end",
            "-w",
            workers,
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
            (records.len() - MALFORMED) as u64,
            "{summary}"
        );
        let rows = final_rows(&String::from_utf8(output.stdout).unwrap());
        oracle::assert_final_rows_match(&rows, &expected, &format!("{workers} workers"));
    }
    std::fs::remove_dir_all(&dir).ok();
}
