//! The simulator against the real broker: rate, validity, keys and per-ride order; seed
//! reproducibility; `--replay` byte-for-byte.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{field, Namespace};
use dataflows::event::{DriverLocation, EventType, RideEvent};
use ridepulse::kafka::plain_consumer::read_all;

#[test]
fn sixty_seconds_at_50k_per_minute_arrive_valid_keyed_and_in_order() {
    let ns = Namespace::new("sim60");
    ns.create_topics();
    let out = ns.run(&[
        "simulate",
        "--duration",
        "60s",
        "--rate",
        "50000",
        "--seed",
        "42",
        "--drivers",
        "500",
    ]);
    assert_eq!(field::<u64>(&out, "delivery_errors"), 0, "{out}");

    let brokers = &ns.config.kafka.brokers;
    let records = read_all(brokers, &ns.config.topics.ride_events).unwrap();
    let delivered = records.len() as f64;
    assert!(
        (delivered - 50_000.0).abs() <= 500.0,
        "{delivered} ride events delivered, want 50,000 ± 1 %"
    );
    assert_eq!(field::<u64>(&out, "ride_events"), records.len() as u64);

    // Every message is valid, keyed by its ride, and a ride lives on one partition in order.
    let mut rides: HashMap<String, (i32, Vec<RideEvent>)> = HashMap::new();
    for record in &records {
        let event = RideEvent::parse(&record.payload).unwrap_or_else(|e| {
            panic!(
                "invalid event {e}: {:?}",
                String::from_utf8_lossy(&record.payload)
            )
        });
        assert_eq!(record.key.as_deref(), Some(event.ride_id.as_bytes()));
        let entry = rides
            .entry(event.ride_id.to_string())
            .or_insert((record.partition, Vec::new()));
        assert_eq!(
            entry.0, record.partition,
            "ride {} on two partitions",
            event.ride_id
        );
        entry.1.push(event); // records are sorted by (partition, offset): read order
    }
    let lifecycle = [
        EventType::Requested,
        EventType::Accepted,
        EventType::Started,
        EventType::Completed,
    ];
    for (ride, (_, events)) in &rides {
        assert!(
            events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
            "{ride} out of time order"
        );
        for pair in events.windows(2) {
            let a = lifecycle
                .iter()
                .position(|k| *k == pair[0].event_type)
                .expect("nothing follows a cancellation");
            let ok = match pair[1].event_type {
                EventType::Cancelled => a < 2,
                next => lifecycle.get(a + 1) == Some(&next),
            };
            assert!(
                ok,
                "{ride}: {:?} then {:?}",
                pair[0].event_type, pair[1].event_type
            );
        }
    }
    // Cities are skewed: the most popular has several times the least popular's events.
    let mut per_city: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, events) in rides.values() {
        for e in events {
            *per_city.entry(&e.city).or_default() += 1;
        }
    }
    let (min, max) = (
        per_city.values().min().unwrap(),
        per_city.values().max().unwrap(),
    );
    assert!(per_city.len() == 12 && *max > 5 * *min, "{per_city:?}");

    // Every driver reports every 5 s: 500 drivers × 12 reports, keyed by driver.
    let locations = read_all(brokers, &ns.config.topics.driver_locations).unwrap();
    let mut per_driver: HashMap<String, usize> = HashMap::new();
    for record in &locations {
        let location = DriverLocation::parse(&record.payload).unwrap();
        assert_eq!(record.key.as_deref(), Some(location.driver_id.as_bytes()));
        *per_driver.entry(location.driver_id).or_default() += 1;
    }
    assert!(
        per_driver.values().all(|&n| n == 12),
        "{:?}",
        per_driver.values().collect::<Vec<_>>()
    );
    assert_eq!(
        field::<u64>(&out, "driver_locations"),
        locations.len() as u64
    );
}

#[test]
fn the_same_seed_gives_the_same_events_in_kafka_and_in_a_file() {
    let ns = Namespace::new("seed");
    ns.create_topics();
    let dir = std::env::temp_dir().join(format!("ridepulse-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let base = [
        "simulate",
        "--rate",
        "6000",
        "--duration",
        "5s",
        "--start",
        "2026-11-23T10:00:00Z",
        "--cities",
        "4",
    ];
    let with = |seed: &str, out: &str| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--seed", seed]);
        if !out.is_empty() {
            args.extend(["--out", out]);
        }
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    for (seed, name) in [("7", "a"), ("7", "b"), ("8", "c")] {
        let args = with(seed, &file(name));
        ns.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read("a").lines().count(), 500);
    assert_eq!(read("a"), read("b"), "same seed, same bytes");
    assert_ne!(read("a"), read("c"), "another seed, other events");

    // Produced to Kafka with the same seed and start: the same messages.
    let args = with("7", "");
    ns.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut produced: Vec<Vec<u8>> =
        read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
    let mut written: Vec<Vec<u8>> = read("a").lines().map(|l| l.as_bytes().to_vec()).collect();
    produced.sort();
    written.sort();
    assert_eq!(produced, written);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn replay_round_trips_every_line_byte_for_byte() {
    let ns = Namespace::new("replay");
    ns.create_topics();
    let dir = std::env::temp_dir().join(format!("ridepulse-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.jsonl");
    ns.run(&[
        "simulate",
        "--rate",
        "12000",
        "--duration",
        "10s",
        "--seed",
        "5",
        "--out",
        path.to_str().unwrap(),
    ]);
    let mut bytes = std::fs::read(&path).unwrap();
    // Lines the job will dead-letter, included as they are.
    for bad in [
        &b"this is not json"[..],
        b"{\"event_type\": \"requested\", \"ride_id\": \"ride-bad-1\"}",
        b"{\"event_type\": \"teleported\", \"ride_id\": \"ride-bad-2\", \"timestamp\": \"2026-11-23T10:00:00Z\", \"city\": \"x\", \"user_id\": \"u\"}",
        b"   {\"ride_id\": \"ride-bad-3\"}  \r",
        b"\xff\xfe not utf-8",
        b"",
    ] {
        bytes.extend_from_slice(bad);
        bytes.push(b'\n');
    }
    std::fs::write(&path, &bytes).unwrap();
    let lines: Vec<&[u8]> = bytes
        .strip_suffix(b"\n")
        .unwrap()
        .split(|b| *b == b'\n')
        .collect();

    let out = ns.run(&["simulate", "--replay", path.to_str().unwrap()]);
    assert!(
        out.contains(&format!("replayed {} lines", lines.len())),
        "{out}"
    );
    let records = read_all(&ns.config.kafka.brokers, &ns.config.topics.ride_events).unwrap();
    assert_eq!(records.len(), lines.len());

    // Byte for byte, and each key's lines in file order on one partition.
    let mut read: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let mut expected = lines.clone();
    read.sort();
    expected.sort();
    assert_eq!(read, expected);
    let mut by_key: HashMap<&[u8], Vec<&[u8]>> = HashMap::new();
    for record in &records {
        if let Some(key) = &record.key {
            by_key.entry(key).or_default().push(&record.payload);
        }
    }
    for line in &lines {
        if let Ok(event) = RideEvent::parse(line) {
            assert!(
                by_key.contains_key(event.ride_id.as_bytes()),
                "{} not keyed by ride_id",
                event.ride_id
            );
        }
    }
    for (key, payloads) in &by_key {
        let in_file: Vec<&[u8]> = lines
            .iter()
            .copied()
            .filter(|l| {
                serde_json::from_slice::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["ride_id"].as_str().map(|s| s.as_bytes() == *key))
                    .unwrap_or(false)
            })
            .collect();
        assert_eq!(
            payloads,
            &in_file,
            "order of key {}",
            String::from_utf8_lossy(key)
        );
    }
    let bad_three = records
        .iter()
        .find(|r| r.payload.starts_with(b"   {\"ride_id\""))
        .unwrap();
    assert_eq!(
        bad_three.key.as_deref(),
        Some(&b"ride-bad-3"[..]),
        "an invalid event with a ride_id keeps its key"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--supply-drop` shows in the `--locations-out` file (distinct available drivers of the
/// city per minute, counted from the file), and `--replay-locations` puts every line of it
/// on `driver-locations` keyed by `driver_id`, on the partition the producer's murmur2 gives
/// that key, in file order per driver.
#[test]
fn a_supply_drop_shows_in_the_locations_file_and_its_replay_is_keyed_by_driver() {
    let ns = Namespace::new("simlocs");
    ns.create_topics();
    let dir = common::temp_dir("simlocs");
    let (rides, locations) = (dir.join("rides.jsonl"), dir.join("locations.jsonl"));
    let out = ns.run(&[
        "simulate",
        "--rate",
        "3000",
        "--duration",
        "4m",
        "--drivers",
        "300",
        "--cities",
        "3",
        "--seed",
        "8",
        "--start",
        "2026-11-23T10:00:00Z",
        "--supply-drop",
        "paris:50%:1m:3m",
        "--out",
        rides.to_str().unwrap(),
        "--locations-out",
        locations.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&locations).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(field::<u64>(&out, "driver_locations"), lines.len() as u64);
    // Every driver (300 in all, give or take the rounding per city) reports every 5 s:
    // 12 pings a minute for 4 minutes.
    let drivers: std::collections::BTreeSet<String> = lines
        .iter()
        .map(|l| DriverLocation::parse(l.as_bytes()).unwrap().driver_id)
        .collect();
    assert!((297..=303).contains(&drivers.len()), "{}", drivers.len());
    assert_eq!(lines.len(), drivers.len() * 12 * 4, "{out}");
    let start = dataflows::event::Timestamp::parse("2026-11-23T10:00:00Z")
        .unwrap()
        .millis();
    let mut available: BTreeMap<i64, std::collections::BTreeSet<String>> = BTreeMap::new();
    for line in &lines {
        let location = DriverLocation::parse(line.as_bytes()).unwrap();
        if location.city == "paris" && location.status == dataflows::event::DriverStatus::Available
        {
            available
                .entry((location.timestamp.millis() - start) / 60_000)
                .or_default()
                .insert(location.driver_id);
        }
    }
    let per_minute: Vec<usize> = (0..4)
        .map(|m| available.get(&m).map_or(0, |d| d.len()))
        .collect();
    eprintln!("paris: available drivers per minute {per_minute:?}");
    assert!(per_minute[0] >= 10, "{per_minute:?}");
    // Half the fleet goes offline (the 1 in 20 drivers that are always offline are part of
    // the fleet, so a little more than half of the available ones remain).
    for m in 1..3 {
        assert!(per_minute[m] * 10 <= per_minute[0] * 6, "{per_minute:?}");
    }
    assert!(per_minute[3] * 10 >= per_minute[0] * 8, "{per_minute:?}");

    let replayed = ns.run(&[
        "simulate",
        "--replay-locations",
        locations.to_str().unwrap(),
    ]);
    assert!(
        replayed.contains(&format!(
            "replayed {} lines from {} into {}",
            lines.len(),
            locations.display(),
            ns.config.topics.driver_locations
        )),
        "{replayed}"
    );
    let records = read_all(&ns.config.kafka.brokers, &ns.config.topics.driver_locations).unwrap();
    assert_eq!(records.len(), lines.len());
    let partitions = records.iter().map(|r| r.partition).max().unwrap() + 1;
    assert_eq!(
        partitions, 24,
        "SPEC §1: driver-locations has 24 partitions"
    );
    let mut by_driver: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for record in &records {
        let location = DriverLocation::parse(&record.payload).unwrap();
        assert_eq!(record.key.as_deref(), Some(location.driver_id.as_bytes()));
        assert_eq!(
            record.partition,
            ridepulse::kafka::partitioner::partition_for(record.key.as_deref(), 24, 0),
            "{}",
            location.driver_id
        );
        by_driver
            .entry(location.driver_id)
            .or_default()
            .push(&record.payload);
    }
    // records are sorted by (partition, offset): each driver's pings in file order.
    for (driver, payloads) in &by_driver {
        let in_file: Vec<&[u8]> = lines
            .iter()
            .map(|l| l.as_bytes())
            .filter(|l| DriverLocation::parse(l).unwrap().driver_id == *driver)
            .collect();
        assert_eq!(payloads, &in_file, "order of {driver}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
