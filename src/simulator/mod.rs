//! `ridepulse simulate`: a realistic ride service that produces SPEC §2 events.
//!
//! Three ways to run it:
//! - to Kafka, paced in real time: ride events to `ride-events` keyed by `ride_id`, driver
//!   positions to `driver-locations` keyed by `driver_id`, every delivery counted;
//! - `--out FILE`: the same ride events as JSON lines, as fast as they can be made (for
//!   backfills, file-source runs and benchmarks), and with `--locations-out FILE` the driver
//!   locations of the same run in a file of their own;
//! - `--replay FILE` / `--replay-locations FILE`: an existing JSON-lines file into
//!   `ride-events` (keyed by `ride_id`) / `driver-locations` (keyed by `driver_id`), as fast
//!   as the broker takes it, lines that are not valid included as they are.
//!
//! [`world`] holds the model itself; [`cities`] the built-in cities; [`supply_drop`] the
//! `--supply-drop` scenario.

pub mod cities;
pub mod supply_drop;
pub mod world;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::config::Config;
use crate::kafka::producer::CountingProducer;
use world::{Message, World, WorldConfig, TICK_MS};

/// What a simulator run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Ride events written or delivered.
    pub ride_events: u64,
    /// Driver locations delivered.
    pub locations: u64,
    /// Messages that were not delivered.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Ride events per second of wall time.
    pub fn rate(&self) -> f64 {
        self.ride_events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The line `ridepulse simulate` prints at the end of a run written to `target`.
    pub fn report(&self, target: &str) -> String {
        format!(
            "ride_events={} to {target}, driver_locations={}, delivery_errors={}, seconds={:.2}, events_per_sec={:.0}",
            self.ride_events,
            self.locations,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }

    /// The line `ridepulse simulate --replay` prints for one file replayed into `topic`.
    pub fn replay_report(&self, path: &Path, topic: &str) -> String {
        let lines = self.ride_events + self.locations;
        format!(
            "replayed {lines} lines from {} into {topic} in {:.2}s ({:.0} msgs/s), delivery errors: {}",
            path.display(),
            self.elapsed.as_secs_f64(),
            lines as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.errors
        )
    }
}

/// When to stop generating.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this much simulated time.
    After(Duration),
    /// After exactly this many ride events.
    Count(u64),
}

fn progress(length: u64, unit: &str) -> ProgressBar {
    // indicatif draws only on a terminal; logs and CI see the summary lines instead.
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}) {{msg}}"
        ))
        .expect("valid template"),
    );
    bar
}

fn expected_events(world: &WorldConfig, stop: Stop) -> u64 {
    match stop {
        Stop::Count(n) => n,
        Stop::After(d) => (world.rate_per_minute * d.as_secs_f64() / 60.0).round() as u64,
    }
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file =
        File::create(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

/// Runs the world and writes its ride events as JSON lines to `path`, unpaced, and its
/// driver locations (SPEC §2, one JSON object a line) to `locations` when given.
pub fn to_file(
    world: WorldConfig,
    stop: Stop,
    path: &Path,
    locations: Option<&Path>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let bar = progress(expected_events(&world, stop), "events");
    let mut out = create(path)?;
    let mut locations_out = locations.map(create).transpose()?;
    let mut world = World::new(world);
    let mut summary = Summary::default();
    let mut batch = Vec::new();
    let end_ms = match stop {
        Stop::After(d) => world.now_ms() + d.as_millis() as i64,
        Stop::Count(_) => i64::MAX,
    };
    'run: while world.now_ms() < end_ms {
        batch.clear();
        world.tick(&mut batch);
        for message in &batch {
            match message {
                Message::Ride(event) => {
                    if let Stop::Count(n) = stop {
                        if summary.ride_events >= n {
                            break 'run;
                        }
                    }
                    serde_json::to_writer(&mut out, event)?;
                    out.write_all(b"\n")?;
                    summary.ride_events += 1;
                }
                Message::Location(location) => {
                    if let Some(file) = &mut locations_out {
                        file.write_all(location.to_json().as_bytes())?;
                        file.write_all(b"\n")?;
                        summary.locations += 1;
                    }
                }
            }
        }
        bar.set_position(summary.ride_events);
    }
    out.flush()?;
    if let Some(mut file) = locations_out {
        file.flush()?;
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Runs the world in real time, producing ride events and driver locations to Kafka.
pub fn to_kafka(config: &Config, world: WorldConfig, stop: Stop) -> anyhow::Result<Summary> {
    let brokers = &config.kafka.brokers;
    crate::kafka::topics::fetch_metadata(brokers, None)?;
    let rides = CountingProducer::new(
        &config.kafka,
        &config.topics.ride_events,
        "ridepulse-simulator",
    )?;
    let locations = CountingProducer::new(
        &config.kafka,
        &config.topics.driver_locations,
        "ridepulse-simulator-locations",
    )?;
    let expected = expected_events(&world, stop);
    let bar = progress(expected, "events");
    let mut world = World::new(world);
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut batch = Vec::new();
    let mut last_log = Instant::now();
    'run: loop {
        if let Stop::After(d) = stop {
            if world.ticks() as i64 * TICK_MS >= d.as_millis() as i64 {
                break;
            }
        }
        // Pace: tick k is produced no earlier than k * 100 ms after the start.
        let due = started + Duration::from_millis(world.ticks() * TICK_MS as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        batch.clear();
        world.tick(&mut batch);
        for message in &batch {
            match message {
                Message::Ride(event) => {
                    if matches!(stop, Stop::Count(n) if summary.ride_events >= n) {
                        break 'run;
                    }
                    rides.send(
                        Some(event.ride_id.as_bytes()),
                        event.to_json().as_bytes(),
                        None,
                    )?;
                    summary.ride_events += 1;
                }
                Message::Location(location) => {
                    locations.send(
                        Some(location.driver_id.as_bytes()),
                        location.to_json().as_bytes(),
                        None,
                    )?;
                }
            }
        }
        let errors = rides.stats().failed.load(Ordering::Relaxed)
            + locations.stats().failed.load(Ordering::Relaxed);
        bar.set_position(summary.ride_events);
        bar.set_message(format!("delivery errors: {errors}"));
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            info!(
                sent = summary.ride_events,
                delivered = rides.stats().delivered.load(Ordering::Relaxed),
                errors,
                "simulating"
            );
        }
    }
    bar.finish_and_clear();
    let ride_result = rides.finish(Duration::from_secs(150));
    let location_result = locations.finish(Duration::from_secs(150));
    summary.elapsed = started.elapsed();
    summary.locations = locations.stats().delivered.load(Ordering::Relaxed);
    summary.errors = rides.stats().failed.load(Ordering::Relaxed)
        + locations.stats().failed.load(Ordering::Relaxed);
    summary.ride_events = rides.stats().delivered.load(Ordering::Relaxed);
    ride_result?;
    location_result?;
    Ok(summary)
}

/// What a replayed file holds, so which topic and key its lines get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayKind {
    /// Ride events: `ride-events`, keyed by `ride_id`.
    Rides,
    /// Driver locations: `driver-locations`, keyed by `driver_id`.
    Locations,
}

/// Produces every line of `path` into `ride-events` as fast as the broker takes it, keyed
/// by `ride_id` (lines without one have no key), bytes unchanged.
pub fn replay(config: &Config, path: &Path) -> anyhow::Result<Summary> {
    replay_file(config, path, ReplayKind::Rides)
}

/// Like [`replay`], for either kind of file: ride events into `ride-events` keyed by
/// `ride_id`, driver locations into `driver-locations` keyed by `driver_id` (the key the
/// producer's murmur2 partitioner places; lines without one have no key). For locations the
/// summary counts the delivered lines in `locations`.
pub fn replay_file(config: &Config, path: &Path, kind: ReplayKind) -> anyhow::Result<Summary> {
    let brokers = &config.kafka.brokers;
    crate::kafka::topics::fetch_metadata(brokers, None)?;
    let file =
        File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (topic, client_id) = match kind {
        ReplayKind::Rides => (&config.topics.ride_events, "ridepulse-replay"),
        ReplayKind::Locations => (
            &config.topics.driver_locations,
            "ridepulse-replay-locations",
        ),
    };
    let producer = CountingProducer::new(&config.kafka, topic, client_id)?;
    let bar = progress(length, "bytes");
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let key = match kind {
            ReplayKind::Rides => crate::kafka::partitioner::ride_id_key(&line),
            ReplayKind::Locations => crate::kafka::partitioner::driver_id_key(&line),
        };
        producer.send(key.as_deref().map(str::as_bytes), &line, None)?;
        lines += 1;
        if lines % 4096 == 0 {
            bar.set_position(bytes);
            bar.set_message(format!(
                "{lines} lines, delivery errors: {}",
                producer.stats().failed.load(Ordering::Relaxed)
            ));
        }
    }
    bar.finish_and_clear();
    let result = producer.finish(Duration::from_secs(300));
    let delivered = producer.stats().delivered.load(Ordering::Relaxed);
    let (ride_events, locations) = match kind {
        ReplayKind::Rides => (delivered, 0),
        ReplayKind::Locations => (0, delivered),
    };
    let summary = Summary {
        ride_events,
        locations,
        errors: producer.stats().failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    result?;
    Ok(summary)
}
