//! ClickHouse stopped for 60 s (issue 11) under a running job: the writer retries with backoff, the
//! source stops reading while writes are pending, and once ClickHouse is back everything
//! arrives — nothing lost, nothing counted twice.
//!
//! Runs its own ClickHouse (scripts/stack with a private state folder and free ports), so
//! stopping it never disturbs the shared local stack or tests running beside it.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Namespace;
use dataflows::event::RideEvent;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stack(state: &Path, http: u16, tcp: u16, action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
    let output = Command::new("bash")
        .arg(script)
        .args([action, "clickhouse"])
        .env("RIDEPULSE_STACK_DIR", state)
        .env("RIDEPULSE_STACK_CLICKHOUSE_HTTP_PORT", http.to_string())
        .env("RIDEPULSE_STACK_CLICKHOUSE_TCP_PORT", tcp.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stack {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until `condition` holds, checking that the job is still running.
fn wait_for(job: &mut std::process::Child, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !condition() {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended while waiting for {what}"
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_waits_out_a_clickhouse_outage_and_loses_nothing() {
    let (http, tcp) = (free_port(), free_port());
    let state = common::temp_dir("outage-stack");
    stack(&state, http, tcp, "up");
    let ns = Namespace::new("outage").with("clickhouse.url", &format!("http://127.0.0.1:{http}"));
    ns.create_topics();
    ns.migrate();

    let dir = common::temp_dir("outage");
    let path = common::dataset(&ns, &dir, 12_000, 2_000, "2026-11-23T10:00:00Z");
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let valid = |part: &[String]| {
        part.iter()
            .filter(|l| RideEvent::parse(l.as_bytes()).is_ok())
            .count() as u64
    };
    let half = lines.len() / 2;
    let (first, second) = (dir.join("first.jsonl"), dir.join("second.jsonl"));
    std::fs::write(&first, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[half..].join("\n") + "\n").unwrap();
    ns.run(&["simulate", "--replay", first.to_str().unwrap()]);

    let log = dir.join("job.log");
    let mut job = ns
        .command(&[
            "--set",
            "window.idle_timeout_secs=1",
            "run",
            "-w",
            "2",
            "--group",
            "outage",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let first_valid = valid(&lines[..half]);
    wait_for(&mut job, "the first half in ClickHouse", || {
        ns.scalar("SELECT count() FROM ride_events") == first_valid
    });

    // ClickHouse goes away; the second half arrives meanwhile; 60 s later it is back.
    stack(&state, http, tcp, "down");
    let stopped = Instant::now();
    ns.run(&["simulate", "--replay", second.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(60).saturating_sub(stopped.elapsed()));
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job must wait, not fail"
    );
    stack(&state, http, tcp, "up");

    let all_valid = valid(&lines);
    wait_for(&mut job, "every event in ClickHouse", || {
        ns.scalar("SELECT count() FROM ride_events") == all_valid
    });
    // Windows keep closing: the last final window is the one the idle watermark allows.
    let last_end = lines
        .iter()
        .filter_map(|l| RideEvent::parse(l.as_bytes()).ok())
        .map(|e| e.timestamp.0)
        .max()
        .unwrap();
    let expected_final_end = (last_end - 30_000).div_euclid(60_000) * 60;
    wait_for(&mut job, "the last final window", || {
        ns.scalar("SELECT toUInt64(max(toUnixTimestamp(window_end))) FROM city_metrics FINAL WHERE is_final = 1")
            >= expected_final_end as u64
    });
    send_term(&mut job);

    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("write failed; retrying"),
        "the writer retried:\n{log}"
    );
    assert!(log.contains("write succeeded after retrying"), "{log}");

    // Nothing lost or doubled: every valid event once, every final window equal to
    // ClickHouse's recomputation from the raw events.
    assert_eq!(
        ns.scalar("SELECT count() FROM ride_events FINAL"),
        all_valid
    );
    let finals = ns.query(
        "SELECT city, toUnixTimestamp(window_start), total_events, requests, completions, cancellations, unique_riders
         FROM city_metrics FINAL WHERE is_final = 1 ORDER BY city, window_start",
    );
    assert!(finals.len() > 50, "{}", finals.len());
    let reference = ns.query(&format!(
        "SELECT city, (minute - k) * 60 AS start, count(), countIf(event_type = 'requested'),
                countIf(event_type = 'completed'), countIf(event_type = 'cancelled'), uniqExact(user_id)
         FROM (SELECT city, event_type, user_id, intDiv(timestamp_ms, 60000) AS minute, arrayJoin(range(5)) AS k
               FROM ride_events FINAL WHERE is_late = 0)
         GROUP BY city, start HAVING start + 300 <= {expected_final_end}
         ORDER BY city, start"
    ));
    assert_eq!(finals, reference);

    stack(&state, http, tcp, "down");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&state).ok();
}

fn send_term(job: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    job.wait().unwrap();
}
