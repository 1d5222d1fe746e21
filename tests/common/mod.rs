//! Shared helpers for the integration tests: a unique namespace per test (its own topics),
//! running the real `ridepulse` binary, and reading topics back with a plain consumer.
//!
//! The tests need the local stack (`scripts/stack up`); `scripts/test` starts it. The
//! broker address comes from `RIDEPULSE_KAFKA_BROKERS` (default 127.0.0.1:9092).
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use ridepulse::config::Config;

/// A test's own topic names and ClickHouse database, and the flags that select them.
#[derive(Clone)]
pub struct Namespace {
    /// The configuration the binary will see.
    pub config: Config,
    args: Vec<String>,
}

impl Namespace {
    /// Topics named `it-<test>-<unique>-<topic>` on the test broker, and a database
    /// `it_<test>_<unique>` on the test ClickHouse (`RIDEPULSE_CLICKHOUSE_URL`, default
    /// http://127.0.0.1:8123).
    pub fn new(test: &str) -> Namespace {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("it-{test}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let brokers =
            std::env::var("RIDEPULSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let clickhouse = std::env::var("RIDEPULSE_CLICKHOUSE_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8123".into());
        let database = prefix.replace('-', "_");
        let args = vec![
            format!("kafka.brokers={brokers}"),
            format!("clickhouse.url={clickhouse}"),
            format!("clickhouse.database={database}"),
            format!("topics.ride_events={prefix}-ride-events"),
            format!("topics.driver_locations={prefix}-driver-locations"),
            format!("topics.aggregated={prefix}-analytics-aggregated"),
            format!("topics.dead_letters={prefix}-ride-events-dlq"),
            format!("topics.city_supply={prefix}-city-supply"),
        ];
        Namespace::from_settings(args)
    }

    fn from_settings(settings: Vec<String>) -> Namespace {
        // The environment too, as the binary sees it (e.g. RIDEPULSE_KAFKA_IDEMPOTENCE).
        let config = Config::load(None, std::env::vars(), &settings).unwrap();
        Namespace {
            config,
            args: settings
                .into_iter()
                .flat_map(|a| ["--set".to_string(), a])
                .collect(),
        }
    }

    /// The same topics with another `[section] key` (e.g. a second database).
    pub fn with(&self, key: &str, value: &str) -> Namespace {
        let mut settings: Vec<String> = self
            .args
            .iter()
            .filter(|a| *a != "--set" && !a.starts_with(&format!("{key}=")))
            .cloned()
            .collect();
        settings.push(format!("{key}={value}"));
        Namespace::from_settings(settings)
    }

    /// Creates this namespace's database and tables.
    pub fn migrate(&self) {
        self.run(&["migrate"]);
    }

    /// Runs SQL in this namespace's database and returns the TabSeparated rows.
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.run(&["query", "--format", "TabSeparated", sql])
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// A single number from SQL.
    pub fn scalar(&self, sql: &str) -> u64 {
        let rows = self.query(sql);
        rows[0][0]
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: {rows:?}"))
    }

    /// The flags that select this namespace's configuration.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Runs `ridepulse <args>` with this namespace's topics; panics with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.try_run(args);
        assert!(
            output.status.success(),
            "ridepulse {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `ridepulse <args>` and returns whatever happened.
    pub fn try_run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The command `ridepulse <args>` in this namespace, to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ridepulse"));
        command
            .args(&self.args)
            .args(args)
            .env_remove("RIDEPULSE_CONFIG");
        command
    }

    /// Creates this namespace's topics, `driver-locations` without compaction: for tests
    /// that re-read locations (a restart, a second group) and compare with a first read.
    /// Tansu ignores `min.compaction.lag.ms` and compacts at its next periodic sweep, so on
    /// the contract topic such a comparison depends on when the sweep runs
    /// (see tests/locations_compaction.rs and docs/operations.md).
    pub fn create_topics_uncompacted_locations(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let spec = ridepulse::kafka::topics::contract_topics(&self.config)
            .into_iter()
            .find(|t| t.name == self.config.topics.driver_locations)
            .unwrap();
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            ridepulse::kafka::settings::admin(&self.config.kafka.brokers)
                .create()
                .unwrap();
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(self.config.kafka.replication_factor),
        );
        for (key, value) in &spec.configs {
            if *key != "cleanup.policy" {
                topic = topic.set(key, value);
            }
        }
        topic = topic.set("cleanup.policy", "delete");
        let replies = futures_executor::block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30))),
        ))
        .unwrap();
        assert!(replies.iter().all(Result::is_ok), "{replies:?}");
        let out = self.run(&["topics", "create"]);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("created")).count(),
            4,
            "{out}"
        );
    }

    /// Creates this namespace's topics.
    pub fn create_topics(&self) {
        let out = self.run(&["topics", "create"]);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("created")).count(),
            5,
            "{out}"
        );
    }
}

/// A field `name=value` from a summary line printed by the binary.
pub fn field<T: std::str::FromStr>(text: &str, name: &str) -> T {
    let prefix = format!("{name}=");
    text.split([' ', ',', '\n'])
        .find_map(|word| word.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= in {text}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {text}"))
}

/// `RIDEPULSE_LIBRDKAFKA` for a job a test means to kill mid-stream: fetches of 2 KB, so a
/// small topic is read in many rounds and minutes close (and checkpoints advance) while the
/// job reads. Tansu ignores `max.partition.fetch.bytes` but honours `fetch.max.bytes`
/// (librdkafka wants `message.max.bytes`, and so `batch.size`, no larger).
pub const SMALL_FETCHES: &str = "fetch.max.bytes=2048,message.max.bytes=2048,batch.size=2048";

/// Malformed lines mixed into [`dataset`]: invalid JSON, missing fields, wrong shape,
/// unknown event type.
pub const MALFORMED_LINES: [&str; 4] = [
    "{not json",
    "{\"event_type\":\"requested\"}",
    "[]",
    "{\"event_type\":\"flying\",\"ride_id\":\"r\",\"timestamp\":\"2026-11-23T10:00:00Z\",\"city\":\"x\",\"user_id\":\"u\"}",
];

/// A seeded JSON-lines dataset: the simulator's `count` events at `rate` per minute from
/// `start`, with a quarter jittered up to 25 s back and 3 % pushed minutes back (late), and
/// one malformed line after every 600 events. Returns the file.
pub fn dataset(
    ns: &Namespace,
    dir: &std::path::Path,
    count: u64,
    rate: u64,
    start: &str,
) -> std::path::PathBuf {
    use dataflows::event::{RideEvent, Timestamp};
    use rand::{Rng, SeedableRng};
    let clean = dir.join("clean.jsonl");
    ns.run(&[
        "simulate",
        "--out",
        clean.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
        "--seed",
        "21",
        "--start",
        start,
    ]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
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
            lines.push(MALFORMED_LINES[lines.len() / 600 % 4].to_string());
        }
    }
    let path = dir.join("replay.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A fresh temporary folder for one test.
pub fn temp_dir(test: &str) -> std::path::PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("ridepulse-{test}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything the job wrote except wall-clock columns, for before/after comparisons.
pub const SNAPSHOT_SQL: [&str; 3] = [
    "SELECT city, toUnixTimestamp(window_start), toUnixTimestamp(window_end), total_events, requests, completions, cancellations, avg_fare, unique_riders, is_final, version FROM city_metrics FINAL ORDER BY city, window_start",
    "SELECT kafka_partition, kafka_offset, event_type, ride_id, timestamp_ms, city, user_id, driver_id, estimated_fare, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, is_late FROM ride_events FINAL ORDER BY kafka_partition, kafka_offset",
    "SELECT count() FROM city_metrics FINAL WHERE is_final = 0",
];

pub fn snapshot(ns: &Namespace) -> Vec<Vec<Vec<String>>> {
    SNAPSHOT_SQL.iter().map(|sql| ns.query(sql)).collect()
}

/// Waits for `child` to exit, killing it and failing the test (`what` says what should
/// have happened) if it runs longer than `limit`.
pub fn wait_or_fail(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

pub fn summary_of(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    stderr.lines().last().unwrap().to_string()
}

/// Sends a signal with the system's `kill` (no libc dependency for one call).
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The Python with chdb and PyYAML that `scripts/test` installs (`RIDEPULSE_PYTHON`, or the
/// virtualenv in `~/.cache/ridepulse/venv`).
pub fn python() -> String {
    std::env::var("RIDEPULSE_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/ridepulse/venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    })
}

/// A dataset file's lines and how many of them are valid events.
pub fn lines_of(path: &std::path::Path) -> (Vec<String>, u64) {
    let lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let valid = lines
        .iter()
        .filter(|l| dataflows::event::RideEvent::parse(l.as_bytes()).is_ok())
        .count() as u64;
    (lines, valid)
}

/// Two distinct free ports (both held while asked for, so they differ).
pub fn free_ports() -> (u16, u16) {
    let (a, b) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// `scripts/stack ACTION tansu` for a private broker (its own state folder, Kafka and
/// PostgreSQL ports), so a test can stop and start it without disturbing the shared stack.
/// Never on memory://, which keeps nothing across the restart these tests make.
pub fn private_broker(state: &std::path::Path, port: u16, postgres_port: u16, action: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
    let mut command = std::process::Command::new("bash");
    command
        .arg(script)
        .args([action, "tansu"])
        .env("RIDEPULSE_STACK_DIR", state)
        .env("RIDEPULSE_STACK_KAFKA_PORT", port.to_string())
        .env("RIDEPULSE_STACK_POSTGRES_PORT", postgres_port.to_string());
    if std::env::var("RIDEPULSE_STACK_KAFKA_ENGINE").is_ok_and(|engine| engine == "memory") {
        command.env_remove("RIDEPULSE_STACK_KAFKA_ENGINE");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "stack {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `city_metrics` row (FINAL) as the job emitted it.
pub fn metrics_rows(ns: &Namespace) -> Vec<dataflows::metrics_row::CityMetricsRow> {
    use dataflows::event::Timestamp;
    use dataflows::metrics_row::CityMetricsRow;
    ns.query("SELECT city, toUnixTimestamp(window_start), toUnixTimestamp(window_end), total_events, requests, completions, cancellations, avg_fare, unique_riders, is_final, version FROM city_metrics FINAL ORDER BY city, window_start")
        .into_iter()
        .map(|r| CityMetricsRow {
            city: r[0].clone(),
            window_start: Timestamp(r[1].parse::<i64>().unwrap() * 1000),
            window_end: Timestamp(r[2].parse::<i64>().unwrap() * 1000),
            total_events: r[3].parse().unwrap(),
            requests: r[4].parse().unwrap(),
            completions: r[5].parse().unwrap(),
            cancellations: r[6].parse().unwrap(),
            avg_fare: (r[7] != "\\N").then(|| r[7].parse().unwrap()),
            unique_riders: r[8].parse().unwrap(),
            is_final: r[9].parse().unwrap(),
            version: r[10].parse().unwrap(),
            updated_at: Timestamp(0),
        })
        .collect()
}
