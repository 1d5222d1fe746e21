//! A broker restart (`scripts/stack down` + `up`) keeps the topics and their messages.
//!
//! Runs its own Tansu (and, on the postgres engine, its own PostgreSQL) on free ports with
//! its own state folder, so it never disturbs the shared local stack or tests running beside
//! it. It runs on the stack's default engine, or on RIDEPULSE_STACK_KAFKA_ENGINE when that
//! names one that keeps data (memory:// keeps nothing, so it is never used here).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use common::Namespace;
use ridepulse::kafka::plain_consumer::read_all;

/// Two distinct free ports (both held while asked for, so they differ).
fn free_ports() -> (u16, u16) {
    let (a, b) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn stack(state: &Path, port: u16, postgres_port: u16, action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
    let mut command = Command::new("bash");
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

#[test]
fn topics_and_messages_survive_a_broker_restart() {
    let (port, postgres_port) = free_ports();
    let state = std::env::temp_dir().join(format!("ridepulse-restart-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    stack(&state, port, postgres_port, "up");
    std::env::set_var("RIDEPULSE_KAFKA_BROKERS", format!("127.0.0.1:{port}"));
    let ns = Namespace::new("restart");
    ns.create_topics();
    ns.run(&[
        "simulate",
        "--rate",
        "12000",
        "--duration",
        "5s",
        "--seed",
        "11",
    ]);
    let before = read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events).unwrap();
    let locations_before =
        read_all(&ns.config.kafka.brokers, &ns.config.topics.driver_locations).unwrap();
    assert_eq!(before.len(), 1000);

    stack(&state, port, postgres_port, "down");
    stack(&state, port, postgres_port, "up");

    let again = ns.run(&["topics", "create"]);
    assert_eq!(
        again.lines().filter(|l| l.starts_with("exists")).count(),
        4,
        "{again}"
    );
    let after = read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events).unwrap();
    assert_eq!(
        after, before,
        "same messages at the same partitions and offsets"
    );
    let locations_after =
        read_all(&ns.config.kafka.brokers, &ns.config.topics.driver_locations).unwrap();
    assert_eq!(locations_after, locations_before);
    stack(&state, port, postgres_port, "down");
    std::fs::remove_dir_all(&state).ok();
}
