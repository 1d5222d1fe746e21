//! `ridepulse topics` against the real broker: idempotent creation, a wrong partition
//! count reported clearly, an unreachable broker named.

mod common;

use common::Namespace;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

#[test]
fn create_twice_is_a_no_op_and_list_shows_the_layout() {
    let ns = Namespace::new("topics");
    ns.create_topics();
    let again = ns.run(&["topics", "create"]);
    assert_eq!(
        again.lines().filter(|l| l.starts_with("exists")).count(),
        5,
        "{again}"
    );
    let list = ns.run(&["topics", "list"]);
    for (topic, partitions) in [
        (&ns.config.topics.ride_events, 12),
        (&ns.config.topics.driver_locations, 24),
        (&ns.config.topics.aggregated, 6),
        (&ns.config.topics.dead_letters, 3),
        (&ns.config.topics.city_supply, 6),
    ] {
        let line = list
            .lines()
            .find(|l| l.starts_with(topic.as_str()))
            .unwrap_or_else(|| panic!("{topic} missing: {list}"));
        assert!(
            line.contains(&format!("partitions={partitions} ")),
            "{line}"
        );
        assert!(line.contains("messages=0"), "{line}");
    }
}

#[test]
fn a_topic_with_the_wrong_partition_count_is_reported() {
    let ns = Namespace::new("wrongp");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &ns.config.kafka.brokers)
        .create()
        .unwrap();
    let topic = NewTopic::new(&ns.config.topics.ride_events, 5, TopicReplication::Fixed(1));
    let result = block_on(admin.create_topics(&[topic], &AdminOptions::new())).unwrap();
    assert!(result[0].is_ok(), "{result:?}");
    let output = ns.try_run(&["topics", "create"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "topic `{}` exists with 5 partitions but SPEC §1 wants 12",
            ns.config.topics.ride_events
        )),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_broker_is_named() {
    let ns = Namespace::new("unreach");
    let output = ns.try_run(&["--brokers", "127.0.0.1:1", "topics", "list"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the Kafka broker at 127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_names_the_key() {
    let ns = Namespace::new("badcfg");
    let output = ns.try_run(&["--set", "kafka.replication_factor=zero", "topics", "list"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kafka.replication_factor"), "{stderr}");
}

/// A job asks the broker for each of its topics by name; one that is missing is named, not
/// mistaken for another (an existing topic's name with a suffix, or a prefix of one).
#[test]
fn a_job_names_its_missing_topic() {
    let ns = Namespace::new("jobtopic");
    ns.create_topics();
    let missing = format!("{}-missing", ns.config.topics.dead_letters);
    let prefix = &ns.config.topics.city_supply[..ns.config.topics.city_supply.len() - 1];
    for topic in [missing.as_str(), prefix] {
        let ns = ns.with("topics.city_supply", topic);
        let output = ns.try_run(&["run", "--until-end"]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "topic `{topic}` does not exist (run `ridepulse topics create`)"
            )),
            "{stderr}"
        );
    }
}
