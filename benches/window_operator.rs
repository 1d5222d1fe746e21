//! Criterion benchmark of the city-metrics dataflow on in-memory events: the engine's own
//! speed, with no broker in the way. 200,000 simulated events in 12 partitions (by ride),
//! through the partitioned source and the windows (the exchange by city and rider, the
//! per-worker counts, the exchange by city and the rows), with 1 and 2 worker threads.
//!
//! Run: `cargo bench --bench window_operator -- --warm-up-time 2 --measurement-time 20 --sample-size 10`
//! (figures in the README).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataflows::city_metrics::{build, WindowConfig};
use dataflows::event::RideEvent;
use dataflows::partitioned_source::{replay, ReplayConfig};
use ridepulse::simulator::cities;
use ridepulse::simulator::world::{Message, World, WorldConfig};
use timely::dataflow::operators::Inspect;

const EVENTS: usize = 200_000;

fn partitions() -> Vec<Vec<RideEvent>> {
    let mut world = World::new(WorldConfig {
        seed: 3,
        rate_per_minute: 50_000.0,
        cities: cities::resolve(None).unwrap(),
        drivers: 100,
        surges: vec![],
        supply_drops: vec![],
        start_ms: 1_795_428_000_000,
    });
    let mut partitions = vec![Vec::new(); 12];
    let (mut out, mut count) = (Vec::new(), 0);
    while count < EVENTS {
        out.clear();
        world.tick(&mut out);
        for message in out.drain(..) {
            if let Message::Ride(event) = message {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                event.ride_id.hash(&mut hasher);
                partitions[(hasher.finish() % 12) as usize].push(event);
                count += 1;
            }
        }
    }
    partitions
}

fn run(input: &Arc<Vec<Vec<RideEvent>>>, workers: usize) {
    let input = input.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let input = input.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let events = replay(scope, &input, ReplayConfig::default());
            let metrics = build(
                events,
                &WindowConfig {
                    emit_interval: Duration::from_secs(1),
                    ..WindowConfig::default()
                },
            );
            metrics.rows.inspect(|row| {
                std::hint::black_box(row);
            });
        });
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|result| result.unwrap());
}

fn bench(c: &mut Criterion) {
    let input = Arc::new(partitions());
    let mut group = c.benchmark_group("city_metrics");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for workers in [1, 2] {
        group.bench_function(format!("{workers}_workers"), |b| {
            b.iter(|| run(&input, workers))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
