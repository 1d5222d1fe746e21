//! Criterion micro-benchmark of the first thing the job does with every message: parse and
//! validate a `ride-events` value (SPEC §2), and the simulator's reverse, serializing one.
//!
//! Run: `cargo bench --bench event_parsing -- --warm-up-time 1 --measurement-time 5`
//! (figures in the README).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dataflows::event::{RideEvent, Timestamp};
use ridepulse::simulator::cities;
use ridepulse::simulator::world::{Message, World, WorldConfig};

/// Ten thousand realistic events from the simulator, as JSON lines.
fn sample() -> Vec<String> {
    let mut world = World::new(WorldConfig {
        seed: 1,
        rate_per_minute: 60_000.0,
        cities: cities::resolve(None).unwrap(),
        drivers: 100,
        surges: vec![],
        supply_drops: vec![],
        start_ms: 1_795_428_000_000,
    });
    let mut out = Vec::new();
    let mut lines = Vec::new();
    while lines.len() < 10_000 {
        out.clear();
        world.tick(&mut out);
        lines.extend(out.iter().filter_map(|m| match m {
            Message::Ride(event) => Some(event.to_json()),
            Message::Location(_) => None,
        }));
    }
    lines
}

fn bench(c: &mut Criterion) {
    let lines = sample();
    let events: Vec<RideEvent> = lines
        .iter()
        .map(|l| RideEvent::parse(l.as_bytes()).unwrap())
        .collect();
    let mut group = c.benchmark_group("ride_event");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            for line in &lines {
                std::hint::black_box(RideEvent::parse(line.as_bytes()).unwrap());
            }
        })
    });
    group.bench_function("serialize", |b| {
        b.iter(|| {
            for event in &events {
                std::hint::black_box(event.to_json());
            }
        })
    });
    group.bench_function("parse_timestamp", |b| {
        let texts: Vec<String> = events.iter().map(|e| e.timestamp.to_string()).collect();
        b.iter_batched(
            || texts.clone(),
            |texts| {
                for text in &texts {
                    std::hint::black_box(Timestamp::parse(text).unwrap());
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
