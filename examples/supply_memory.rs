//! Memory of the supply dataflow over a long run, without I/O: the simulator's events at
//! 50,000 rides/min and 2,000 drivers, fed minute by minute in event time, with RSS printed
//! after every minute is final. A diagnostic for the soak's growth (issue 12).
//!
//! Run: `cargo run --release --example supply_memory -- MINUTES [WORKERS]`.

use std::hash::{Hash, Hasher};

use dataflows::partitioned_source::{minute_of, Sourced};
use dataflows::supply::{build, SupplyConfig};
use ridepulse::simulator::cities;
use ridepulse::simulator::world::{Message, World, WorldConfig};
use timely::dataflow::operators::vec::UnorderedInput;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;

/// jemalloc: faster than glibc's malloc for the dataflows' many small allocations, and it
/// returns freed memory, so RSS follows what is live (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn partition_of(key: &str, partitions: u64) -> u32 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % partitions) as u32
}

fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() {
    let mut args = std::env::args().skip(1);
    let minutes: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let start_ms = 1_795_428_000_000;
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let probe = ProbeHandle::new();
        let ((mut rides, rides_cap), (mut locations, locations_cap)) = worker
            .dataflow::<u64, _, _>(|scope| {
                let (rides_in, rides) = scope.new_unordered_input();
                let (locations_in, locations) = scope.new_unordered_input();
                let config = SupplyConfig {
                    open_minutes: std::env::var("OPEN_MINUTES")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(3),
                    ..SupplyConfig::default()
                };
                let supply = build(rides, locations, &config);
                supply.rows.inspect(|_| {}).probe_with(&probe);
                (rides_in, locations_in)
            });
        // Every worker runs the same simulator and keeps the events of its share of keys.
        let mut world = World::new(WorldConfig {
            seed: 3,
            rate_per_minute: 50_000.0,
            cities: cities::resolve(None).unwrap(),
            drivers: 2_000,
            surges: vec![],
            supply_drops: vec![],
            start_ms,
        });
        let peers = worker.peers() as u32;
        let mut out = Vec::new();
        let mut offset = 0u64;
        let mut minute = minute_of(start_ms);
        // Re-bound (not shadowed): the initial capabilities at time 0 must be dropped.
        let (mut rides_cap, mut locations_cap) = {
            let (r, l) = (rides_cap, locations_cap);
            (r.delayed(&minute), l.delayed(&minute))
        };
        while world.now_ms() < start_ms + minutes * 60_000 {
            out.clear();
            world.tick(&mut out);
            let mut ride_batches: std::collections::BTreeMap<u64, Vec<_>> = Default::default();
            let mut location_batches: std::collections::BTreeMap<u64, Vec<_>> = Default::default();
            for message in out.drain(..) {
                offset += 1;
                match message {
                    Message::Ride(event) => {
                        let partition = partition_of(&event.ride_id, 12);
                        let m = minute_of(event.timestamp.millis());
                        if partition % peers == index as u32 && m >= minute {
                            ride_batches.entry(m).or_default().push(Sourced {
                                partition,
                                offset,
                                event,
                                late: false,
                            });
                        }
                    }
                    Message::Location(event) => {
                        let partition = partition_of(&event.driver_id, 24);
                        let m = minute_of(event.timestamp.millis());
                        if partition % peers == index as u32 && m >= minute {
                            location_batches.entry(m).or_default().push(Sourced {
                                partition,
                                offset,
                                event,
                                late: false,
                            });
                        }
                    }
                }
            }
            for (m, batch) in ride_batches {
                rides
                    .activate()
                    .session(&rides_cap.delayed(&m))
                    .give_iterator(batch.into_iter());
            }
            for (m, batch) in location_batches {
                locations
                    .activate()
                    .session(&locations_cap.delayed(&m))
                    .give_iterator(batch.into_iter());
            }
            worker.step();
            // The watermark: 30 s behind the simulator's clock.
            let mark = minute_of(world.now_ms() - 30_000);
            if mark > minute {
                minute = mark;
                rides_cap = rides_cap.delayed(&minute);
                locations_cap = locations_cap.delayed(&minute);
                while probe.less_than(&minute) {
                    worker.step();
                }
                if index == 0 {
                    println!(
                        "minute {:>3} rss_mb {}",
                        minute - minute_of(start_ms),
                        rss_mb()
                    );
                }
            }
        }
    })
    .unwrap();
}
