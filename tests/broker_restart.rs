//! A broker restart (`scripts/stack down` + `up`) keeps the topics and their messages.
//!
//! Runs its own Tansu (and, on the postgres engine, its own PostgreSQL) on free ports with
//! its own state folder, so it never disturbs the shared local stack or tests running beside
//! it. It runs on the stack's default engine, or on RIDEPULSE_STACK_KAFKA_ENGINE when that
//! names one that keeps data (memory:// keeps nothing, so it is never used here).

mod common;

use common::Namespace;
use ridepulse::kafka::plain_consumer::read_all;

#[test]
fn topics_and_messages_survive_a_broker_restart() {
    let (port, postgres_port) = common::free_ports();
    let state = std::env::temp_dir().join(format!("ridepulse-restart-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    common::private_broker(&state, port, postgres_port, "up");
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

    common::private_broker(&state, port, postgres_port, "down");
    common::private_broker(&state, port, postgres_port, "up");

    let again = ns.run(&["topics", "create"]);
    assert_eq!(
        again.lines().filter(|l| l.starts_with("exists")).count(),
        5,
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
    common::private_broker(&state, port, postgres_port, "down");
    std::fs::remove_dir_all(&state).ok();
}
