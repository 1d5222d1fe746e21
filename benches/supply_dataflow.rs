//! Criterion benchmark of the supply-and-demand dataflow (SPEC §5) on in-memory input: the
//! engine's own speed, with no broker in the way. The simulator at 50,000 rides/min with
//! 2,000 drivers (a location every 5 s each) gives 200,000 ride events in 12 partitions (by
//! ride) and the ~96,000 driver locations of the same minutes in 24 partitions (by driver);
//! both go through their partitioned sources, differential's reduces and the live view, with
//! 1 and 2 worker threads. Throughput counts both topics' records.
//!
//! Run: `cargo bench --bench supply_dataflow -- --warm-up-time 2 --measurement-time 20 --sample-size 10`
//! (figures in `dataflows/src/supply.rs`'s module doc).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataflows::event::{DriverLocation, RideEvent};
use dataflows::partitioned_source::{replay, ReplayConfig};
use dataflows::supply::{build, SupplyConfig};
use ridepulse::simulator::cities;
use ridepulse::simulator::world::{Message, World, WorldConfig};
use timely::dataflow::operators::Inspect;

/// The job's allocator (src/main.rs), so the figures are the job's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const RIDE_EVENTS: usize = 200_000;

type Input = (Vec<Vec<RideEvent>>, Vec<Vec<DriverLocation>>);

fn partition_of(key: &str, partitions: u64) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % partitions) as usize
}

fn input() -> Input {
    let mut world = World::new(WorldConfig {
        seed: 3,
        rate_per_minute: 50_000.0,
        cities: cities::resolve(None).unwrap(),
        drivers: 2_000,
        surges: vec![],
        supply_drops: vec![],
        start_ms: 1_795_428_000_000,
    });
    let (mut rides, mut locations) = (vec![Vec::new(); 12], vec![Vec::new(); 24]);
    let (mut out, mut count) = (Vec::new(), 0);
    while count < RIDE_EVENTS {
        out.clear();
        world.tick(&mut out);
        for message in out.drain(..) {
            match message {
                Message::Ride(event) => {
                    rides[partition_of(&event.ride_id, 12)].push(event);
                    count += 1;
                }
                Message::Location(location) => {
                    locations[partition_of(&location.driver_id, 24)].push(location)
                }
            }
        }
    }
    (rides, locations)
}

fn run(input: &Arc<Input>, workers: usize) {
    let input = input.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let input = input.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let rides = replay(scope, &input.0, ReplayConfig::default());
            let locations = replay(scope, &input.1, ReplayConfig::default());
            let supply = build(
                rides,
                locations,
                &SupplyConfig {
                    emit_interval: Duration::from_secs(1),
                    ..SupplyConfig::default()
                },
            );
            supply.rows.inspect(|row| {
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
    let input = Arc::new(input());
    let records =
        input.0.iter().map(Vec::len).sum::<usize>() + input.1.iter().map(Vec::len).sum::<usize>();
    eprintln!(
        "{} ride events, {} driver locations",
        input.0.iter().map(Vec::len).sum::<usize>(),
        input.1.iter().map(Vec::len).sum::<usize>()
    );
    let mut group = c.benchmark_group("supply");
    group.throughput(Throughput::Elements(records as u64));
    for workers in [1, 2] {
        group.bench_function(format!("{workers}_workers"), |b| {
            b.iter(|| run(&input, workers))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
