//! The broker stopped and started again (`scripts/stack down tansu` + `up`) under a live
//! job (issue 11): the job rides it out (librdkafka reconnects, deliveries are retried per
//! message, checkpoints wait), carries on once the broker is back, and a final
//! `--until-end` run on the same group ends with exactly what a clean run writes.
//!
//! Runs its own broker on a free port with its own state folder, so it never disturbs the
//! shared local stack or tests running beside it.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{send_signal, snapshot, temp_dir, Namespace};

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_live_job_rides_out_a_broker_restart_and_ends_as_a_clean_run() {
    let (port, postgres_port) = common::free_ports();
    let state = temp_dir("broker-live");
    common::private_broker(&state, port, postgres_port, "up");
    let ns = Namespace::new("brokerlive").with("kafka.brokers", &format!("127.0.0.1:{port}"));
    ns.create_topics();
    ns.migrate();
    let clean = ns.with(
        "clickhouse.database",
        &format!("{}_clean", ns.config.clickhouse.database),
    );
    clean.migrate();
    let dir = temp_dir("broker-live-data");
    let data = common::dataset(&ns, &dir, 20_000, 20_000, "2026-11-23T10:00:00Z");
    let (lines, valid) = common::lines_of(&data);
    let half = dir.join("first.jsonl");
    let rest = dir.join("second.jsonl");
    std::fs::write(&half, lines[..lines.len() / 2].join("\n") + "\n").unwrap();
    std::fs::write(&rest, lines[lines.len() / 2..].join("\n") + "\n").unwrap();
    ns.run(&["simulate", "--replay", half.to_str().unwrap()]);

    let mut job = ns
        .command(&["run", "-w", "2", "--group", "live"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first half", Duration::from_secs(180), || {
        ns.scalar("SELECT count() FROM ride_events") > 0
            && ns.scalar("SELECT count() FROM dead_letters") > 0
    });

    // The broker goes away under the running job, and comes back 5 s later.
    common::private_broker(&state, port, postgres_port, "down");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job must wait, not fail"
    );
    common::private_broker(&state, port, postgres_port, "up");
    ns.run(&["simulate", "--replay", rest.to_str().unwrap()]);
    wait_for(
        "every event after the restart",
        Duration::from_secs(300),
        || ns.scalar("SELECT count() FROM ride_events FINAL") == valid,
    );
    assert!(job.try_wait().unwrap().is_none(), "the job carried on");
    send_signal(job.id(), "KILL");
    job.wait().unwrap();

    // Finish from the live job's checkpoints, and compare with a clean run.
    ns.run(&["run", "--until-end", "-w", "2", "--group", "live"]);
    clean.run(&["run", "--until-end", "-w", "2", "--group", "clean"]);
    assert_eq!(snapshot(&ns), snapshot(&clean));
    let dead = |n: &Namespace| n.scalar("SELECT count() FROM dead_letters FINAL");
    assert_eq!(dead(&ns), dead(&clean));
    common::private_broker(&state, port, postgres_port, "down");
    std::fs::remove_dir_all(&state).ok();
    std::fs::remove_dir_all(&dir).ok();
}
