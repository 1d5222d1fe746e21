//! A kill -9 half way through a 1,000,000-event catch-up (issue 17): with watermark
//! alignment the partitions advance together, windows close progressively and the
//! checkpoints' resume point follows, so the restart re-reads less than a third of the
//! backlog, and the final state equals a clean run's.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{field, send_signal, snapshot, summary_of, temp_dir, Namespace};

const BACKLOG: u64 = 1_000_000;

#[test]
fn a_crash_half_way_through_a_catch_up_rereads_little_and_ends_as_a_clean_run() {
    let ns = Namespace::new("catchup");
    ns.create_topics();
    ns.migrate();
    let clean = ns.with(
        "clickhouse.database",
        &format!("{}_clean", ns.config.clickhouse.database),
    );
    clean.migrate();
    let dir = temp_dir("catchup");
    let file = dir.join("backlog.jsonl");
    // 10,000 events a minute: the backlog spans 100 minutes of event time, so the open
    // windows (5 minutes) plus the alignment drift are a small part of it.
    ns.run(&[
        "simulate",
        "--out",
        file.to_str().unwrap(),
        "--count",
        &BACKLOG.to_string(),
        "--rate",
        "10000",
        "--seed",
        "31",
        "--start",
        "2026-11-23T08:00:00Z",
    ]);
    ns.run(&["simulate", "--replay", file.to_str().unwrap()]);
    std::fs::remove_file(&file).ok();

    let clean_summary =
        summary_of(&clean.try_run(&["run", "--until-end", "-w", "2", "--group", "clean"]));
    assert_eq!(
        field::<u64>(&clean_summary, "events"),
        BACKLOG,
        "{clean_summary}"
    );

    let mut job = ns
        .command(&["run", "--until-end", "-w", "2", "--group", "crash"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job finished before half way"
        );
        assert!(Instant::now() < deadline, "the job did not get half way");
        if ns.scalar("SELECT count() FROM ride_events") >= BACKLOG / 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    send_signal(job.id(), "KILL");
    job.wait().unwrap();
    let resumed_from: u64 =
        ns.scalar("SELECT sum(next_offset) FROM checkpoints FINAL WHERE consumer_group = 'crash'");
    let finals_before = ns.scalar("SELECT count() FROM city_metrics FINAL WHERE is_final = 1");
    println!("catch-up crash: at the kill the checkpoints resume at {resumed_from} of {BACKLOG} messages; {finals_before} final rows written");

    let summary = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "crash"]));
    let replayed: u64 = field(&summary, "replayed");
    println!("catch-up crash: the restart re-read {replayed} messages already written ({summary})");
    assert!(finals_before > 0, "windows closed before the kill");
    assert!(
        replayed < BACKLOG / 3,
        "the restart re-read {replayed} of {BACKLOG} messages"
    );
    assert_eq!(snapshot(&ns), snapshot(&clean));
    std::fs::remove_dir_all(&dir).ok();
}
