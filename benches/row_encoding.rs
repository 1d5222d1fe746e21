//! Criterion micro-benchmark of the per-row work on the way out of the dataflow: turning a
//! sourced event into its `ride_events` record (the struct the official clickhouse crate
//! serializes as RowBinary; its serializer is internal to the crate), a metrics row into
//! its `city_metrics` record and its `analytics-aggregated` JSON, and the bincode encoding
//! timely uses when an event crosses to another process.
//!
//! Run: `cargo bench --bench row_encoding -- --warm-up-time 1 --measurement-time 5`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataflows::event::Timestamp;
use dataflows::metrics_row::CityMetricsRow;
use dataflows::partitioned_source::SourcedEvent;
use ridepulse::clickhouse::rows::{EventRecord, MetricsRecord};
use ridepulse::simulator::cities;
use ridepulse::simulator::world::{Message, World, WorldConfig};

/// Ten thousand realistic events from the simulator, as the source emits them.
fn sample() -> Vec<SourcedEvent> {
    let mut world = World::new(WorldConfig {
        seed: 1,
        rate_per_minute: 60_000.0,
        cities: cities::resolve(None).unwrap(),
        drivers: 100,
        surges: vec![],
        supply_drops: vec![],
        start_ms: 1_795_428_000_000,
    });
    let (mut out, mut events) = (Vec::new(), Vec::new());
    while events.len() < 10_000 {
        out.clear();
        world.tick(&mut out);
        for message in &out {
            if let Message::Ride(event) = message {
                events.push(SourcedEvent {
                    partition: (events.len() % 12) as u32,
                    offset: events.len() as u64,
                    event: event.clone(),
                    late: false,
                });
            }
        }
    }
    events.truncate(10_000);
    events
}

fn bench(c: &mut Criterion) {
    let events = sample();
    let rows: Vec<CityMetricsRow> = (0..10_000u64)
        .map(|i| CityMetricsRow {
            window_start: Timestamp(1_795_428_000_000 + (i as i64 % 600) * 60_000),
            window_end: Timestamp(1_795_428_300_000 + (i as i64 % 600) * 60_000),
            city: cities::resolve(None).unwrap()[(i % 12) as usize]
                .name
                .to_string(),
            total_events: 1000 + i,
            requests: 300,
            completions: 250,
            cancellations: 40,
            avg_fare: Some(12.5),
            unique_riders: 400,
            is_final: 1,
            version: u64::MAX,
            updated_at: Timestamp(1_795_428_400_000),
        })
        .collect();
    let mut group = c.benchmark_group("row_encoding");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("EventRecord::new (ride_events row)", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| EventRecord::new(e, true, 1_795_428_400_000))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("bincode SourcedEvent (timely exchange)", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| bincode::serialize(e).unwrap().len())
                .sum::<usize>()
        })
    });
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("MetricsRecord::new (city_metrics row)", |b| {
        b.iter(|| {
            rows.iter()
                .map(|r| MetricsRecord::new(r, true))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("metrics row JSON (analytics-aggregated)", |b| {
        b.iter(|| {
            rows.iter()
                .map(|r| serde_json::to_vec(r).unwrap().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
