//! A job's `/metrics` as the real Prometheus sees it, and every pipeline-health panel and
//! alert rule of `grafana/` run against that Prometheus.
//!
//! The test starts Debian's Prometheus through `scripts/stack up prometheus` with its own
//! state folder, port and targets (the shared stack's components are never touched), replays
//! a backlog whose late events and dead letters it counts itself (SPEC §3's per-partition
//! rule over the partitions the producer's murmur2 gives, independent of the job), submits a
//! job on it (`ridepulse job submit`, which writes the Prometheus target; its process stays
//! up to be scraped), and reads through Prometheus's HTTP API: the lag rising and falling to
//! 0, the exact counts of events, late events and dead letters by reason, the watermark (the
//! largest event time minus the allowed lateness, once every partition is idle) with its
//! delay, and the supervisor's restarts; `job list` shows the same lag and delay.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Namespace;
use dataflows::event::{DriverLocation, RideEvent, Timestamp};
use rand::{Rng, SeedableRng};
use ridepulse::kafka::partitioner::{driver_id_key, partition_for, ride_id_key};
use serde_json::Value;

/// The job's name in Prometheus (the `job` label of its target).
const JOB: &str = "prom-test";

/// Stops what the test started, even when an assertion fails.
struct Cleanup {
    jobs: Option<Namespace>,
    stack: std::path::PathBuf,
    prometheus_port: u16,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.try_run(&["job", "stop", JOB]);
        }
        let _ = stack(&self.stack, self.prometheus_port, &self.stack, "down");
    }
}

/// `scripts/stack ACTION prometheus` with a private state folder, port and targets.
fn stack(state: &Path, port: u16, targets: &Path, action: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
    Command::new("bash")
        .arg(script)
        .args([action, "prometheus"])
        .env("RIDEPULSE_STACK_DIR", state)
        .env("RIDEPULSE_STACK_PROMETHEUS_PORT", port.to_string())
        .env(
            "RIDEPULSE_STACK_PROMETHEUS_TARGETS",
            targets.join("*.json").to_str().unwrap(),
        )
        .env("RIDEPULSE_STACK_PROMETHEUS_SCRAPE", "500ms")
        .output()
        .unwrap()
}

/// An instant PromQL query; panics unless Prometheus answers `success`.
fn query(port: u16, promql: &str) -> Vec<Value> {
    let output = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-G"])
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={promql}"))
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("{promql}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(body["status"], "success", "{promql}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The single value of a query returning one series.
fn scalar(port: u16, promql: &str) -> Option<f64> {
    let result = query(port, promql);
    let sample = result.first()?;
    sample["value"][1].as_str()?.parse().ok()
}

/// Waits until `promql` returns exactly `want`, up to `within`.
fn wait_for(port: u16, promql: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = scalar(port, promql);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: {got:?}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Malformed driver locations mixed into [`locations_dataset`]: invalid JSON, a missing
/// status, an unknown status, a latitude off the globe.
const BAD_LOCATIONS: [&str; 4] = [
    "{not json",
    "{\"driver_id\":\"driver-x\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"brno\",\"lat\":1.0,\"lng\":2.0}",
    "{\"driver_id\":\"driver-y\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"brno\",\"lat\":1.0,\"lng\":2.0,\"status\":\"parked\"}",
    "{\"driver_id\":\"driver-z\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"brno\",\"lat\":91.0,\"lng\":2.0,\"status\":\"available\"}",
];

/// A driver-locations file of the simulator's world from `start`: every 20th location of
/// the run (modest for the test broker), 3 % of them pushed minutes back (late), and a
/// malformed line after every 500.
fn locations_dataset(ns: &Namespace, dir: &Path, start: &str) -> std::path::PathBuf {
    let (rides, all) = (dir.join("sim-rides.jsonl"), dir.join("sim-locations.jsonl"));
    ns.run(&[
        "simulate",
        "--out",
        rides.to_str().unwrap(),
        "--locations-out",
        all.to_str().unwrap(),
        "--count",
        "30000",
        "--rate",
        "2500",
        "--seed",
        "22",
        "--start",
        start,
    ]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(&all).unwrap().lines().step_by(20) {
        let mut location = DriverLocation::parse(line.as_bytes()).unwrap();
        if rng.random_bool(0.03) {
            location.timestamp =
                Timestamp(location.timestamp.0 - rng.random_range(60_000..600_000));
        }
        lines.push(location.to_json());
        if lines.len() % 500 == 0 {
            lines.push(BAD_LOCATIONS[lines.len() / 500 % 4].to_string());
        }
    }
    let path = dir.join("locations.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// What a topic's file holds, by SPEC §3's per-partition rule: an event is late when it is
/// more than the allowed lateness behind the largest event time read before it from its
/// partition (murmur2 of its key over the topic's partitions, as the producer).
#[derive(Debug, Default)]
struct Expected {
    events: u64,
    late: u64,
    max_ms: i64,
    dead: BTreeMap<String, u64>,
}

fn expected<E>(
    path: &Path,
    partitions: i32,
    lateness_ms: i64,
    parse: impl Fn(&[u8]) -> Result<E, dataflows::event::EventError>,
    time: impl Fn(&E) -> i64,
    key: impl Fn(&[u8]) -> Option<String>,
) -> Expected {
    let mut want = Expected {
        max_ms: i64::MIN,
        ..Expected::default()
    };
    let mut clocks: BTreeMap<i32, i64> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        match parse(line.as_bytes()) {
            Ok(event) => {
                let key = key(line.as_bytes()).unwrap();
                let partition = partition_for(Some(key.as_bytes()), partitions, 0);
                let ms = time(&event);
                let clock = clocks.entry(partition).or_insert(ms);
                if ms < *clock - lateness_ms {
                    want.late += 1;
                }
                *clock = (*clock).max(ms);
                want.max_ms = want.max_ms.max(ms);
                want.events += 1;
            }
            Err(error) => *want.dead.entry(error.reason().to_string()).or_default() += 1,
        }
    }
    want
}

/// The length of ClickHouse's own RowBinary answer to `select` in the test's database.
fn row_binary_bytes(ns: &Namespace, select: &str) -> usize {
    let output = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-G"])
        .arg(format!(
            "{}/",
            ns.config.clickhouse.url.trim_end_matches('/')
        ))
        .arg("--data-urlencode")
        .arg(format!("database={}", ns.config.clickhouse.database))
        .arg("--data-urlencode")
        .arg(format!("query={select} FORMAT RowBinary"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{select}: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    output.stdout.len()
}

#[test]
fn prometheus_reads_lag_watermark_late_events_and_dead_letters_and_every_panel_runs() {
    let ns = Namespace::new("prom");
    ns.create_topics();
    ns.migrate();
    let dir = common::temp_dir("prom");
    // 30 000 events over the last ~12 minutes, 3 % of them minutes late, a malformed line
    // after every 600 (see common::dataset).
    let start = dataflows::event::Timestamp(chrono::Utc::now().timestamp_millis() - 13 * 60_000);
    let path = common::dataset(&ns, &dir, 30_000, 2_500, &start.to_string());

    let locations_path = locations_dataset(&ns, &dir, &start.to_string());
    let location_partitions = ridepulse::kafka::topics::partition_count(
        &ns.config.kafka.brokers,
        &ns.config.topics.driver_locations,
    )
    .unwrap();

    // The references, from the files alone (see `expected`).
    let lateness_ms = ns.config.window.allowed_lateness_secs as i64 * 1000;
    let rides = expected(
        &path,
        12,
        lateness_ms,
        RideEvent::parse,
        |e| e.timestamp.millis(),
        |l| ride_id_key(l).map(|k| k.into_owned()),
    );
    let located = expected(
        &locations_path,
        location_partitions,
        lateness_ms,
        DriverLocation::parse,
        |l| l.timestamp.millis(),
        |l| driver_id_key(l).map(|k| k.into_owned()),
    );
    for want in [&rides, &located] {
        assert!(
            want.late > 100 && want.dead.values().sum::<u64>() >= 25,
            "{want:?}"
        );
    }
    let (events, late, dead) = (rides.events, rides.late, &rides.dead);
    // Both topics post to one marks board: the job's watermark rests at the largest event
    // time of either, minus the lateness.
    let max_ms = rides.max_ms.max(located.max_ms);
    eprintln!("dataset: {events} events, {late} late, dead letters {dead:?}");
    eprintln!(
        "locations: {} records, {} late, dead letters {:?}",
        located.events, located.late, located.dead
    );
    // A backlog: lateness is judged exactly as the reference only when every message is
    // there before the job reads (a partition going idle mid-read would make the job's
    // watermark pass events still to come).
    ns.run(&[
        "simulate",
        "--replay",
        path.to_str().unwrap(),
        "--replay-locations",
        locations_path.to_str().unwrap(),
    ]);

    // The job, submitted (`ridepulse job submit`, its own state folder and one process of
    // two workers): its supervisor starts `ridepulse run`, which stays up after catching up,
    // and submit writes the Prometheus target (metrics.listen's port plus process index 0).
    let (prometheus_port, metrics_port) = common::free_ports();
    let (timely_port, _) = common::free_ports();
    let jobs_state = dir.join("jobs");
    let layout = dir.join("workers.toml");
    std::fs::write(
        &layout,
        format!("[[process]]\naddress = \"127.0.0.1:{timely_port}\"\nworkers = 2\n"),
    )
    .unwrap();
    let jobs = ns
        .with("cluster.state_dir", jobs_state.to_str().unwrap())
        .with("cluster.layout", layout.to_str().unwrap())
        .with("metrics.listen", &format!("127.0.0.1:{metrics_port}"));
    let selector = format!("{{job=\"{JOB}\"}}");
    let state = dir.join("stack");
    let targets = ridepulse::jobs::scrape_targets_dir(&jobs_state);
    let mut cleanup = Cleanup {
        jobs: None,
        stack: state.clone(),
        prometheus_port,
    };
    // Prometheus, private, reading the targets `job submit` writes (file-based discovery).
    let up = stack(&state, prometheus_port, &targets, "up");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The target as `job submit` writes it, in place beforehand so that Prometheus already
    // scrapes the address when the process comes up (submit rewrites it, checked below).
    let target = serde_json::json!([{"targets": [format!("127.0.0.1:{metrics_port}")], "labels": {"job": JOB}}]);
    std::fs::create_dir_all(&targets).unwrap();
    std::fs::write(targets.join(format!("{JOB}.json")), target.to_string()).unwrap();
    wait_for(
        prometheus_port,
        &format!("count(up{selector})"),
        1.0,
        Duration::from_secs(30),
    );
    jobs.run(&["job", "submit", "--name", JOB, "--all-cities"]);
    cleanup.jobs = Some(jobs.clone());
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(targets.join(format!("{JOB}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(written, target);
    let lag = format!("sum(ridepulse_consumer_lag_messages{selector})");
    // The backlog is read: the lag was above 0 at some scrape and comes down to 0.
    let (ride_topic, location_topic) = (
        ns.config.topics.ride_events.as_str(),
        ns.config.topics.driver_locations.as_str(),
    );
    let on = |topic: &str| format!("{{job=\"{JOB}\",topic=\"{topic}\"}}");
    for (topic, partitions) in [(ride_topic, 12), (location_topic, location_partitions)] {
        wait_for(
            prometheus_port,
            &format!("count(ridepulse_consumer_lag_messages{})", on(topic)),
            f64::from(partitions),
            Duration::from_secs(60),
        );
    }
    for (topic, want) in [(ride_topic, &rides), (location_topic, &located)] {
        wait_for(
            prometheus_port,
            &format!("sum(ridepulse_events_read_total{})", on(topic)),
            want.events as f64,
            Duration::from_secs(240),
        );
    }
    wait_for(prometheus_port, &lag, 0.0, Duration::from_secs(60));
    let peak = scalar(prometheus_port, &format!("max_over_time({lag}[10m:1s])")).unwrap();
    assert!(peak > 0.0, "the lag was never seen above 0 (peak {peak})");
    eprintln!("lag peaked at {peak} messages and fell to 0");

    // Exactly each file's late records and dead letters, by reason, under its topic.
    for (topic, want) in [(ride_topic, &rides), (location_topic, &located)] {
        assert_eq!(
            scalar(
                prometheus_port,
                &format!("sum(ridepulse_late_events_total{})", on(topic))
            ),
            Some(want.late as f64),
            "{topic}"
        );
        for (reason, count) in &want.dead {
            assert_eq!(
                scalar(
                    prometheus_port,
                    &format!(
                        "sum(ridepulse_dead_letters_total{{job=\"{JOB}\",topic=\"{topic}\",reason=\"{reason}\"}})"
                    )
                ),
                Some(*count as f64),
                "{topic} reason {reason}"
            );
        }
        assert_eq!(
            scalar(
                prometheus_port,
                &format!("sum(ridepulse_dead_letters_total{})", on(topic))
            ),
            Some(want.dead.values().sum::<u64>() as f64),
            "{topic}"
        );
    }
    // The series names of before, summed over topics, still add up (dashboards and alerts).
    assert_eq!(
        scalar(
            prometheus_port,
            &format!("sum(ridepulse_late_events_total{selector})")
        ),
        Some((late + located.late) as f64)
    );

    // Every partition idle: the watermark rests at the largest event time minus the allowed
    // lateness, and its delay is now minus that.
    wait_for(
        prometheus_port,
        &format!("min(ridepulse_partition_idle{selector})"),
        1.0,
        Duration::from_secs(60),
    );
    let watermark = (max_ms - lateness_ms) as f64 / 1000.0;
    wait_for(
        prometheus_port,
        &format!("max(ridepulse_watermark_seconds{selector})"),
        watermark,
        Duration::from_secs(30),
    );
    // One watermark, reported under both topics.
    for topic in [ride_topic, location_topic] {
        wait_for(
            prometheus_port,
            &format!("ridepulse_watermark_seconds{}", on(topic)),
            watermark,
            Duration::from_secs(30),
        );
    }
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let delay = scalar(
        prometheus_port,
        &format!("max(ridepulse_watermark_delay_seconds{selector})"),
    )
    .unwrap();
    assert!(
        delay <= now - watermark + 1.0 && delay >= now - watermark - 10.0,
        "watermark delay {delay}, now - watermark = {}",
        now - watermark
    );
    assert_eq!(
        scalar(
            prometheus_port,
            &format!("max(ridepulse_partition_max_event_time_seconds{selector})")
        ),
        Some(max_ms as f64 / 1000.0)
    );
    // Written rows and a recent checkpoint.
    wait_for(
        prometheus_port,
        &format!("sum(ridepulse_writer_rows_total{{job=\"{JOB}\",table=\"ride_events\"}})"),
        events as f64,
        Duration::from_secs(30),
    );
    // Bytes written: exactly the RowBinary ClickHouse itself gives for the rows it holds, in
    // the writer's column order (no row is written twice in this run, and both tables are
    // keyed by the message's position, so none collapsed).
    let all_dead = rides.dead.values().sum::<u64>() + located.dead.values().sum::<u64>();
    wait_for(
        prometheus_port,
        &format!("sum(ridepulse_writer_rows_total{{job=\"{JOB}\",table=\"dead_letters\"}})"),
        all_dead as f64,
        Duration::from_secs(30),
    );
    for (table, columns) in [
        ("ride_events", "event_type, ride_id, timestamp, timestamp_ms, city, user_id, driver_id, estimated_fare, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, kafka_partition, kafka_offset, is_late, ingested_at"),
        ("dead_letters", "source_topic, kafka_partition, kafka_offset, error, reason, payload, received_at"),
    ] {
        let want = row_binary_bytes(&ns, &format!("SELECT {columns} FROM {table}"));
        let got = scalar(
            prometheus_port,
            &format!("sum(ridepulse_writer_bytes_total{{job=\"{JOB}\",table=\"{table}\"}})"),
        );
        assert_eq!(got, Some(want as f64), "{table}");
        eprintln!("{table}: {want} bytes of RowBinary, as ClickHouse encodes its rows");
    }
    let age = scalar(
        prometheus_port,
        &format!("max(ridepulse_checkpoint_age_seconds{selector})"),
    )
    .unwrap();
    assert!(age < 30.0, "checkpoint age {age}");

    // The supervisor's restarts (none), labelled with the job's name.
    assert_eq!(
        scalar(
            prometheus_port,
            &format!("ridepulse_job_restarts_total{selector}")
        ),
        Some(0.0)
    );
    // `job list` reads the same numbers from the process's /metrics.
    let list = jobs.run(&["job", "list"]);
    eprintln!("{list}");
    let row: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with(JOB))
        .unwrap_or_else(|| panic!("{list}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[3], "running", "{list}");
    assert_eq!(row[row.len() - 2], "0", "lag: {list}");
    let listed: f64 = row[row.len() - 1].trim_end_matches('s').parse().unwrap();
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    assert!(
        (listed - (now - watermark)).abs() <= 5.0,
        "{listed} vs {}",
        now - watermark
    );

    // Every pipeline-health panel and every Prometheus alert rule: parses and returns series.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut queries: Vec<(String, String)> = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/pipeline-health.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "ridepulse-prometheus");
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    // The alert file is JSON under a YAML comment header.
    let alerts_text = std::fs::read_to_string(
        root.join("grafana/provisioning/alerting/ridepulse-pipeline-alerts.yaml"),
    )
    .unwrap();
    let alerts: Value = serde_json::from_str(
        &alerts_text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let mut rules = 0;
    for rule in alerts["groups"][0]["rules"].as_array().unwrap() {
        for data in rule["data"].as_array().unwrap() {
            if data["datasourceUid"] == "ridepulse-prometheus" {
                rules += 1;
                queries.push((
                    format!("alert: {}", rule["title"].as_str().unwrap()),
                    data["model"]["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    assert_eq!(rules, 3, "lag growing, freshness, dead letters");
    for (title, expr) in &queries {
        // Grafana's interval variable: at least 4 scrapes of the stack's 5 s.
        let promql = expr.replace("$__rate_interval", "1m");
        let result = query(prometheus_port, &promql);
        assert!(!result.is_empty(), "{title}: `{promql}` returned no series");
        eprintln!("ok   Prometheus: {title}: {} series", result.len());
    }
    assert_eq!(queries.len(), 12 + 3);

    // Stopped, no process answers: `job list` computes the lag of both topics from the
    // checkpoints and the broker, and it is 0 too.
    jobs.run(&["job", "stop", JOB]);
    cleanup.jobs = None;
    let list = jobs.run(&["job", "list"]);
    eprintln!("{list}");
    let row: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with(JOB))
        .unwrap_or_else(|| panic!("{list}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[3], "stopped", "{list}");
    assert_eq!(row[row.len() - 2], "0", "lag from the checkpoints: {list}");
    drop(cleanup);
    std::fs::remove_dir_all(&dir).ok();
}
