//! The job across processes, per city set and under process kills, on the real broker and
//! ClickHouse:
//! - 2 processes × 2 workers (timely's cluster communication, `workers.toml`) write exactly
//!   the rows of 1 process × 1 worker;
//! - two jobs with disjoint city sets together write exactly the rows of one all-cities job,
//!   and a job whose cities overlap a running job's is refused;
//! - a supervised job (`job submit`) whose processes are killed with SIGKILL at three random
//!   moments while data arrives ends with `city_metrics FINAL` and the final rows on
//!   `analytics-aggregated` equal to a clean run: nothing lost, nothing counted twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{field, send_signal, snapshot, summary_of, Namespace};
use dataflows::event::RideEvent;
use rand::{Rng, SeedableRng};
use ridepulse::kafka::plain_consumer::read_all;

/// `n` ports free right now on 127.0.0.1.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A layout file of `processes` × `workers` on free local ports, plus per-job overrides.
fn write_layout(dir: &Path, processes: usize, workers: usize, jobs: &[&str]) -> String {
    let mut text = String::new();
    let mut ports = free_ports(processes * (1 + jobs.len())).into_iter();
    for _ in 0..processes {
        let port = ports.next().unwrap();
        text += &format!("[[process]]\naddress = \"127.0.0.1:{port}\"\nworkers = {workers}\n\n");
    }
    for job in jobs {
        let list: Vec<String> = (0..processes)
            .map(|_| {
                let port = ports.next().unwrap();
                format!("{{ address = \"127.0.0.1:{port}\", workers = {workers} }}")
            })
            .collect();
        text += &format!("[jobs.{job}]\nprocess = [{}]\n\n", list.join(", "));
    }
    let path = dir.join("workers.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Stops a submitted job when dropped, so a failing test leaves no processes behind.
struct StopOnDrop<'a>(&'a Namespace, &'static str);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_run(&["job", "stop", self.1]);
    }
}

/// Replays a seeded dataset into the namespace's ride-events; returns the valid count.
fn replay_dataset(ns: &Namespace, count: u64, rate: u64) -> u64 {
    let dir = common::temp_dir("cluster-data");
    let path = common::dataset(ns, &dir, count, rate, "2026-11-23T10:00:00Z");
    ns.run(&["simulate", "--replay", path.to_str().unwrap()]);
    let (_, valid) = common::lines_of(&path);
    std::fs::remove_dir_all(&dir).ok();
    valid
}

/// Runs every process of a layout with `args` and waits for all; returns their summaries.
fn run_cluster(ns: &Namespace, layout: &str, processes: usize, args: &[&str]) -> Vec<String> {
    let children: Vec<_> = (0..processes)
        .map(|i| {
            let index = i.to_string();
            let mut all = vec!["run", "--workers", layout, "--process", &index];
            all.extend_from_slice(args);
            ns.command(&all)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| summary_of(&child.wait_with_output().unwrap()))
        .collect()
}

#[test]
fn two_processes_of_two_workers_equal_one_process_of_one_worker() {
    let single = Namespace::new("cluster");
    single.create_topics();
    single.migrate();
    let valid = replay_dataset(&single, 20_000, 2_000);
    let one = summary_of(&single.try_run(&["run", "--until-end", "-w", "1", "--group", "one"]));
    assert_eq!(field::<u64>(&one, "written_events"), valid, "{one}");

    let database = format!("{}_cluster", single.config.clickhouse.database);
    let cluster = single.with("clickhouse.database", &database);
    cluster.migrate();
    let dir = common::temp_dir("cluster-layout");
    let layout = write_layout(&dir, 2, 2, &[]);
    let summaries = run_cluster(&cluster, &layout, 2, &["--until-end", "--group", "cluster"]);
    eprintln!("{summaries:#?}");
    // Each process read its own partitions (workers 0,1 and 2,3 of 4) and together all.
    let events: Vec<u64> = summaries.iter().map(|s| field(s, "events")).collect();
    assert!(events.iter().all(|e| *e > 0), "{summaries:?}");
    assert_eq!(events.iter().sum::<u64>(), valid);
    let (want, got) = (snapshot(&single), snapshot(&cluster));
    assert!(want[0].len() > 100, "{}", want[0].len());
    assert_eq!(got[0].len(), want[0].len(), "city_metrics rows");
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    assert_eq!(got[1].len(), want[1].len(), "ride_events rows");
    assert_eq!(got[1], want[1], "ride_events FINAL");
    assert_eq!(got[2], want[2]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_layout_or_process_index_is_refused_before_connecting() {
    let ns = Namespace::new("layout");
    let dir = common::temp_dir("bad-layout");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[process]]\naddress = \"127.0.0.1:1\"\nworkers = 1\n[[process]]\naddress = \"127.0.0.1:1\"\nworkers = 1\n",
    )
    .unwrap();
    let output = ns.try_run(&["run", "--workers", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`process[1].address` `127.0.0.1:1` is also process[0]'s address"),
        "{stderr}"
    );
    let layout = write_layout(&dir, 2, 1, &[]);
    let output = ns.try_run(&["run", "--workers", &layout, "--process", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--process 2 is out of range: the layout has processes 0..=1"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn jobs_per_city_set_add_up_to_one_all_cities_job_and_may_not_overlap() {
    let all = Namespace::new("cities");
    all.create_topics();
    all.migrate();
    let valid = replay_dataset(&all, 15_000, 2_000);
    let summary = summary_of(&all.try_run(&["run", "--until-end", "-w", "2", "--group", "all"]));
    assert_eq!(field::<u64>(&summary, "written_events"), valid);

    // Two jobs on the same topic and database, disjoint cities; one writes dead letters.
    let database = format!("{}_split", all.config.clickhouse.database);
    let split = all.with("clickhouse.database", &database);
    split.migrate();
    let east = "berlin,vienna,prague,warsaw,budapest,bratislava,krakow,brno,kosice";
    let a = summary_of(&split.try_run(&[
        "run",
        "--until-end",
        "-w",
        "2",
        "--group",
        "west",
        "--cities",
        "london,paris,munich",
    ]));
    let b = summary_of(&split.try_run(&[
        "run",
        "--until-end",
        "-w",
        "1",
        "--group",
        "east",
        "--cities",
        east,
        "--no-dead-letters",
    ]));
    eprintln!("west: {a}\neast: {b}");
    assert_eq!(
        field::<u64>(&a, "events") + field::<u64>(&b, "events"),
        valid
    );
    assert_eq!(field::<u64>(&a, "other_cities"), field::<u64>(&b, "events"));
    assert_eq!(field::<u64>(&b, "dead_letters"), 0);
    assert_eq!(
        field::<u64>(&a, "dead_letters"),
        field::<u64>(&summary, "dead_letters")
    );
    let (want, got) = (snapshot(&all), snapshot(&split));
    assert_eq!(got[0].len(), want[0].len(), "city_metrics rows");
    assert_eq!(got[0], want[0], "city_metrics FINAL");
    assert_eq!(got[1].len(), want[1].len(), "ride_events rows");
    assert_eq!(got[1], want[1], "ride_events FINAL");

    // Supervised jobs on a fresh database: an overlapping submit is refused, a disjoint one
    // runs beside the first, and together they write the all-cities rows.
    let dir = common::temp_dir("cities-jobs");
    let layout = write_layout(&dir, 2, 1, &["west", "east", "other"]);
    let state = dir.join("jobs");
    let database = format!("{}_jobs", all.config.clickhouse.database);
    let jobs = all
        .with("clickhouse.database", &database)
        .with("cluster.layout", &layout)
        .with("cluster.state_dir", state.to_str().unwrap())
        .with("window.idle_timeout_secs", "1");
    jobs.migrate();
    let _west = StopOnDrop(&jobs, "west");
    let _east = StopOnDrop(&jobs, "east");
    let submitted = jobs.run(&[
        "job",
        "submit",
        "--name",
        "west",
        "--cities",
        "london,paris,munich",
    ]);
    assert!(submitted.contains("job west running"), "{submitted}");
    let refused = jobs.try_run(&[
        "job",
        "submit",
        "--name",
        "other",
        "--cities",
        "kosice,paris",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("city `paris` is already owned by running job `west`"),
        "{stderr}"
    );
    let refused = jobs.try_run(&["job", "submit", "--name", "other", "--all-cities"]);
    assert!(!refused.status.success());
    jobs.run(&["job", "submit", "--name", "east", "--cities", east]);
    let list = jobs.run(&["job", "list"]);
    eprintln!("{list}");
    assert_eq!(
        line_of(&list, "west")[1..5],
        ["london,munich,paris", "2x1", "running", "0"]
    );
    assert_eq!(line_of(&list, "east")[2..5], ["2x1", "running", "0"]);
    assert!(!list.contains("other"), "{list}");

    // Both caught up: every window up to 30 s behind the newest event is final.
    let through = all
        .scalar("SELECT toUInt64(intDiv(max(timestamp_ms) - 30000, 60000) - 1) FROM ride_events");
    let deadline = Instant::now() + Duration::from_secs(180);
    for group in ["ridepulse-job-west", "ridepulse-job-east"] {
        let caught_up = format!(
            "SELECT count() = 12 AND min(finalized_through) >= {through} FROM checkpoints FINAL WHERE consumer_group = '{group}' AND topic = '{}'",
            all.config.topics.ride_events
        );
        while jobs.scalar(&caught_up) == 0 {
            assert!(Instant::now() < deadline, "{group} did not catch up");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let finals = format!(
        "SELECT city, toUnixTimestamp(window_start), total_events, requests, completions, cancellations, avg_fare, unique_riders, version FROM city_metrics FINAL WHERE is_final = 1 AND toUnixTimestamp(window_end) <= {} ORDER BY city, window_start",
        through * 60
    );
    let want = all.query(&finals);
    assert!(want.len() > 50, "{}", want.len());
    assert_eq!(
        jobs.query(&finals),
        want,
        "side-by-side jobs vs one all-cities job"
    );
    assert_eq!(snapshot(&jobs)[1], snapshot(&all)[1], "ride_events FINAL");
    jobs.run(&["job", "stop", "west"]);
    jobs.run(&["job", "stop", "east"]);
    let list = jobs.run(&["job", "list"]);
    assert_eq!(line_of(&list, "west")[3], "stopped", "{list}");
    assert_eq!(line_of(&list, "east")[3], "stopped", "{list}");
    std::fs::remove_dir_all(&dir).ok();
}

fn line_of(list: &str, name: &str) -> Vec<String> {
    list.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Final rows on an `analytics-aggregated` topic by (city, window_start); every copy of a
/// final row (at-least-once across kills) must be identical.
fn final_rows_on(ns: &Namespace, topic: &str) -> BTreeMap<(String, String), serde_json::Value> {
    let mut finals = BTreeMap::new();
    for record in read_all(&ns.config.kafka.brokers, topic).unwrap() {
        let mut row: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        if row["is_final"] != 1 {
            continue;
        }
        row.as_object_mut().unwrap().remove("updated_at");
        let key = (
            row["city"].as_str().unwrap().to_string(),
            row["window_start"].to_string(),
        );
        if let Some(earlier) = finals.insert(key.clone(), row.clone()) {
            assert_eq!(earlier, row, "two different final rows for {key:?}");
        }
    }
    finals
}

/// The seeded dataset is in `ride-events` before the job starts (as after an outage of the
/// ride service's consumers); the job works through it while its processes are killed.
/// (Events arriving while a live job runs may find their partition idle and their minute
/// closed: SPEC §3 then counts them late, so a live run over trickling data is not
/// comparable with a backfill. A backlog is, and it is where a crash hurts most.)
#[test]
fn a_supervised_job_killed_three_times_ends_as_a_clean_run() {
    let clean = Namespace::new("crash");
    clean.create_topics();
    clean.migrate();
    let dir = common::temp_dir("crash");
    let path = common::dataset(&clean, &dir, 60_000, 5_000, "2026-11-23T10:00:00Z");
    let (lines, valid) = common::lines_of(&path);
    let max_ms = lines
        .iter()
        .filter_map(|l| RideEvent::parse(l.as_bytes()).ok())
        .map(|e| e.timestamp.0)
        .max()
        .unwrap();
    clean.run(&["simulate", "--replay", path.to_str().unwrap()]);

    let database = format!("{}_crashed", clean.config.clickhouse.database);
    let layout = write_layout(&dir, 2, 2, &[]);
    let state = dir.join("jobs");
    let crashed = clean
        .with("clickhouse.database", &database)
        .with("cluster.layout", &layout)
        .with("cluster.state_dir", state.to_str().unwrap())
        .with("window.idle_timeout_secs", "1");
    crashed.migrate();
    let _stop = StopOnDrop(&crashed, "crash");
    crashed.run(&["job", "submit", "--name", "crash", "--all-cities"]);
    let job_state = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(state.join("crash/state.json")).unwrap())
            .unwrap()
    };

    // Three times SIGKILL a random process of the job: first at a random moment (up to
    // 200 ms) after it has written its first events, so it dies mid-run whatever the
    // broker's speed (a fresh Tansu delivers this backlog within a second or two); then
    // at random moments 0.3-2.5 s after it runs again.
    // After recovery the job catches up; every partition then goes idle and the windows up
    // to the watermark (30 s behind the newest event) close.
    let through = ((max_ms - 30_000) / 60_000 - 1) as u64;
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut at_kills = Vec::new();
    for round in 0..3u64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        while job_state()["phase"] != "running" {
            assert!(
                Instant::now() < deadline,
                "not running again: {}",
                job_state()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if round == 0 {
            while crashed.scalar("SELECT count() FROM ride_events") == 0 {
                assert!(
                    Instant::now() < deadline,
                    "nothing written: {}",
                    job_state()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(300..2_500)));
        }
        let pids = job_state()["pids"].as_array().unwrap().clone();
        let victim = rng.random_range(0..pids.len());
        send_signal(pids[victim].as_u64().unwrap() as u32, "KILL");
        let written = crashed.scalar("SELECT count() FROM ride_events");
        let closed = crashed.scalar(&format!(
            "SELECT count() = 12 AND min(finalized_through) >= {through} FROM checkpoints FINAL WHERE topic = '{}'",
            crashed.config.topics.ride_events
        )) == 1;
        eprintln!("round {round}: SIGKILL process {victim} (pid {}) with {written} of {valid} events written, all windows closed: {closed}", pids[victim]);
        at_kills.push((written, closed));
        let deadline = Instant::now() + Duration::from_secs(30);
        while job_state()["restarts"] != round + 1 {
            assert!(Instant::now() < deadline, "no restart: {}", job_state());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The first kill came before the job had done its work (written every event and
    // closed every window it can close).
    assert!(
        at_kills[0].0 < valid || !at_kills[0].1,
        "the first kill came after the job had finished: {at_kills:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    while job_state()["phase"] != "running" {
        assert!(
            Instant::now() < deadline,
            "not running again: {}",
            job_state()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let caught_up = format!(
        "SELECT count() = 12 AND min(finalized_through) >= {through} FROM checkpoints FINAL WHERE topic = '{}'",
        crashed.config.topics.ride_events
    );
    while crashed.scalar("SELECT count() FROM ride_events FINAL") < valid
        || crashed.scalar(&caught_up) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the job did not catch up: {}\n{}",
            job_state(),
            crashed.run(&["job", "logs", "crash", "--lines", "30"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The rows and checkpoints above may predate the last restart, whose process then still
    // re-reads from its checkpoint: it has caught up once its lag (from its own /metrics)
    // is zero.
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let list = crashed.run(&["job", "list"]);
        if line_of(&list, "crash")[7] == "0" {
            break list;
        }
        assert!(Instant::now() < deadline, "caught up: no lag\n{list}");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{list}");
    let line = line_of(&list, "crash");
    assert_eq!(line[3..5], ["running", "3"], "{list}");
    crashed.run(&["job", "stop", "crash"]);

    // The clean run: the same topic, its own database and aggregated topic.
    let reference = clean.with(
        "topics.aggregated",
        &format!("{}-clean", clean.config.topics.aggregated),
    );
    reference.run(&["topics", "create"]);
    let summary =
        summary_of(&reference.try_run(&["run", "--until-end", "-w", "2", "--group", "clean"]));
    assert_eq!(field::<u64>(&summary, "written_events"), valid);

    let bound = format!("toUnixTimestamp(window_end) <= {}", through * 60);
    let finals = format!(
        "SELECT city, toUnixTimestamp(window_start), total_events, requests, completions, cancellations, avg_fare, unique_riders, version FROM city_metrics FINAL WHERE is_final = 1 AND {bound} ORDER BY city, window_start"
    );
    let (want, got) = (clean.query(&finals), crashed.query(&finals));
    assert!(want.len() > 50, "{}", want.len());
    assert_eq!(
        got.len(),
        want.len(),
        "final city_metrics rows up to the watermark"
    );
    assert_eq!(got, want, "city_metrics FINAL");
    let events = "SELECT kafka_partition, kafka_offset, event_type, ride_id, timestamp_ms, city, user_id, estimated_fare, is_late FROM ride_events FINAL ORDER BY kafka_partition, kafka_offset";
    assert_eq!(
        crashed.query(events),
        clean.query(events),
        "ride_events FINAL"
    );

    let within = |rows: BTreeMap<(String, String), serde_json::Value>| {
        rows.into_iter()
            .filter(|(_, row)| {
                chrono::DateTime::parse_from_rfc3339(row["window_end"].as_str().unwrap())
                    .unwrap()
                    .timestamp()
                    <= (through * 60) as i64
            })
            .collect::<BTreeMap<_, _>>()
    };
    let want = within(final_rows_on(
        &reference,
        &reference.config.topics.aggregated,
    ));
    let got = within(final_rows_on(&crashed, &crashed.config.topics.aggregated));
    assert_eq!(got.len(), want.len(), "final rows on analytics-aggregated");
    assert_eq!(got, want, "final rows on analytics-aggregated");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn scripts_cluster_runs_every_process_of_a_layout_and_prints_remote_commands() {
    let ns = Namespace::new("script");
    ns.create_topics();
    ns.migrate();
    let valid = replay_dataset(&ns, 6_000, 2_000);
    let dir = common::temp_dir("script");
    let layout = write_layout(&dir, 2, 1, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
    let mut args: Vec<String> = vec![layout.clone(), "--".into()];
    args.extend(ns.args().iter().cloned());
    args.extend(["--until-end", "--group", "script"].map(String::from));
    let output = std::process::Command::new("bash")
        .arg(&script)
        .args(&args)
        .env("RIDEPULSE_BIN", env!("CARGO_BIN_EXE_ridepulse"))
        .env("RIDEPULSE_STACK_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("all 2 processes connected"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("every process finished"), "{stdout}");
    assert_eq!(ns.scalar("SELECT count() FROM ride_events FINAL"), valid);
    assert!(ns.scalar("SELECT count() FROM city_metrics FINAL WHERE is_final = 1") > 50);

    // A layout across hosts is not started here: each host's command is printed.
    let remote = dir.join("remote.toml");
    std::fs::write(
        &remote,
        "[[process]]\naddress = \"10.0.0.5:2101\"\nworkers = 4\n[[process]]\naddress = \"10.0.0.6:2101\"\nworkers = 4\n",
    )
    .unwrap();
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(&remote)
        .env("RIDEPULSE_BIN", env!("CARGO_BIN_EXE_ridepulse"))
        .env("RIDEPULSE_STACK_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let remote = remote.to_str().unwrap();
    assert!(
        stdout.contains(&format!(
            "[10.0.0.5]  ridepulse run --workers {remote} --process 0"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "[10.0.0.6]  ridepulse run --workers {remote} --process 1"
        )),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
