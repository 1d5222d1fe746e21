//! `driver-locations` is compacted (SPEC §1), and Tansu compacts at its next periodic sweep
//! (minutes after a produce), ignoring `min.compaction.lag.ms`: a job that reads the topic after the
//! sweep (a restart re-reading its rebuild window, a second group) finds only each driver's
//! latest position. That is what made supply_e2e's crash step fail now and then (273 final
//! rows missing, the restart reading `locations=25`: the 25 drivers' latest positions): its
//! restart re-read, after the sweep, locations the killed run had read before it.
//!
//! Here the sweep is waited for, so the state is deterministic: a job reading the compacted
//! topic must say what it never saw. `compacted_locations` counts exactly the offsets the
//! cleaner removed inside the partitions' read range, and the valid locations it read are
//! exactly the survivors.

mod common;

#[path = "../dataflows/tests/support/supply_oracle.rs"]
mod supply_oracle;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{field, summary_of, Namespace};
use dataflows::event::DriverLocation;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use ridepulse::kafka::partitioner::driver_id_key;
use ridepulse::kafka::producer::CountingProducer;

/// Per partition: the offsets present, and how many times each key is there.
type Backlog = BTreeMap<i32, (Vec<i64>, BTreeMap<Vec<u8>, u64>)>;

fn backlog(ns: &Namespace) -> Backlog {
    let mut partitions = Backlog::new();
    ridepulse::kafka::plain_consumer::read_backlog(
        &ns.config.kafka.brokers,
        &ns.config.topics.driver_locations,
        Duration::from_secs(60),
        |message| {
            let (offsets, keys) = partitions.entry(message.partition()).or_default();
            offsets.push(message.offset());
            if let Some(key) = message.key() {
                *keys.entry(key.to_vec()).or_default() += 1;
            }
        },
    )
    .unwrap();
    partitions
}

#[test]
fn a_job_reading_compacted_locations_counts_what_compaction_removed() {
    let ns = Namespace::new("compaction");
    ns.create_topics();
    ns.migrate();
    let locations: Vec<DriverLocation> = supply_oracle::generate_locations(17, 1, 2_000).remove(0);
    let producer = CountingProducer::new(
        &ns.config.kafka,
        &ns.config.topics.driver_locations,
        "it-compaction",
    )
    .unwrap();
    for location in &locations {
        let line = location.to_json();
        let key = driver_id_key(line.as_bytes()).map(|k| k.into_owned());
        producer
            .send(key.as_deref().map(str::as_bytes), line.as_bytes(), None)
            .unwrap();
    }
    producer.finish(Duration::from_secs(120)).unwrap();

    // Wait for the broker's cleaner (its sweep came 214 s and 411 s after the produce in two
    // runs): compacted once no key is left twice in a partition.
    let started = Instant::now();
    let compacted = loop {
        let now = backlog(&ns);
        if now
            .values()
            .all(|(_, keys)| keys.values().all(|count| *count == 1))
        {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the broker did not compact driver-locations within 15 minutes"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let survivors: usize = compacted.values().map(|(offsets, _)| offsets.len()).sum();
    assert!(survivors < locations.len() / 10, "{survivors}");
    // The offsets a job reading from each partition's low watermark to its end never sees.
    let consumer: BaseConsumer = ridepulse::kafka::settings::consumer(
        &ns.config.kafka.brokers,
        "it-compaction-watermarks",
        "it-compaction",
    )
    .create()
    .unwrap();
    let (mut holes, mut ends) = (0u64, 0u64);
    for (partition, (offsets, _)) in &compacted {
        let (low, high) = consumer
            .fetch_watermarks(
                &ns.config.topics.driver_locations,
                *partition,
                Duration::from_secs(15),
            )
            .unwrap();
        assert_eq!(
            offsets.last().map(|o| o + 1),
            Some(high),
            "the latest message survives"
        );
        holes += (high - low) as u64 - offsets.len() as u64;
        ends += high as u64;
    }
    println!(
        "locations compaction: {} produced, {survivors} left after {:.0} s, {holes} holes in the read range",
        locations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(holes > 0);

    let summary = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "late"]));
    println!("locations compaction: run after the sweep: {summary}");
    assert_eq!(field::<u64>(&summary, "locations"), survivors as u64);
    assert_eq!(
        field::<u64>(&summary, "compacted_locations"),
        holes,
        "{summary}"
    );

    // supply_e2e's failing instant: the killed run had checkpointed driver-locations at the
    // partitions' first offsets (its durable frontier was still 0), and the restart came
    // after the sweep. Every removed message is accounted for: those below the low
    // watermark (which moved to the first survivor) and the holes above it.
    let partitions = (0..24)
        .map(|p| {
            format!(
                "('restart', '{}', {p}, 0, NULL, 0, 0, 1)",
                ns.config.topics.driver_locations
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    ns.query(&format!(
        "INSERT INTO checkpoints (consumer_group, topic, kafka_partition, next_offset, max_event_ms, written_to, finalized_through, written_at_us) VALUES {partitions}"
    ));
    let restart = summary_of(&ns.try_run(&["run", "--until-end", "-w", "2", "--group", "restart"]));
    println!("locations compaction: restart from offset 0 after the sweep: {restart}");
    assert_eq!(field::<u64>(&restart, "locations"), survivors as u64);
    assert_eq!(
        field::<u64>(&restart, "compacted_locations"),
        ends - survivors as u64,
        "{restart}"
    );
}
