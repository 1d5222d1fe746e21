//! The file source: `ridepulse run --from-file PATH...` reads JSON-lines files of the
//! `ride-events` format, and `--locations-file PATH...` files of the `driver-locations`
//! format, through the same dataflow and sinks as the Kafka path, with `--until-end`
//! semantics (every window final, then exit). For backfilling archived events, and for
//! measuring the engine without a broker in the way. One source per topic, generic over
//! [`SourceRecord`] like the Kafka source.
//!
//! Arrival order is file order. Each line goes to the partition the Kafka producer would
//! give it (librdkafka's murmur2 of its `ride_id`, or `driver_id` for locations, among that
//! topic's partitions; see `kafka::partitioner`) and gets the next offset of that partition, so lateness is judged per partition exactly as when the
//! same file is replayed into a fresh `ride-events` topic and read back: the engine path and
//! the Kafka path write the same `city_metrics` rows. Lines that are not valid events become
//! dead letters (their position is the line's), as on the Kafka path. Each line is read
//! and parsed by one worker and handled by the owner of its partition
//! (`partition % workers`; see [`super::line_chunks`]). There is no checkpoint: a file run starts from the top, and rows are upserted, so running it again
//! changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::partitioned_source::EventStamper;
use dataflows::watermark::WatermarkTracker;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use tracing::info;

use super::line_chunks::{LineChunks, Step, WorkerLines};
use super::pending::Pending;
use super::{Ingested, SourceRecord, SourceShared, Stamping};

/// Lines handled per activation, so other operators get to run.
const MAX_LINES_PER_ACTIVATION: usize = 4096;
/// Rows waiting for the writer (per process) above which the source stops reading.
const MAX_INFLIGHT_ROWS: usize = 60_000;

/// What the file source reads and how.
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// The files, read one after the other.
    pub files: Vec<PathBuf>,
    /// Partitions to spread lines over (those of the topic the lines stand for).
    pub partitions: i32,
    /// That topic (named in dead letters).
    pub topic: String,
    /// This source's first slot on the shared marks board (see `kafka::source`).
    pub board_offset: usize,
    /// SPEC §3's allowed lateness.
    pub allowed_lateness: Duration,
    /// Only events of these cities go downstream (`None`: all).
    pub cities: Option<std::collections::BTreeSet<String>>,
    /// Whether malformed lines go to the dead-letter topic.
    pub dead_letters: bool,
    /// Watermark alignment (`job.max_drift_secs`): reading pauses while this source's slowest
    /// partition runs more than this ahead of the job's watermark (zero: never).
    pub max_drift: Duration,
}

/// Watermark alignment for a file: the lines come in file order, so the whole file waits
/// while even the slowest partition this worker reads runs more than `max_drift_ms` ahead of
/// the job's watermark, and reads on once it is within half of that. Without it a source
/// whose file is quick to read (or a worker ahead of the other) would hand the dataflow
/// every record up to the end of its file while the watermark, held by the slower source,
/// keeps them all pending, so memory would grow with the file. The slowest partition, not
/// the newest event, decides: when one of this worker's own partitions holds the watermark
/// (a partition whose events run behind the others in the file), only reading on can move
/// it, and waiting would stall the job for good (it did, before: a file with one partition
/// ten minutes behind never finished). The Kafka source aligns per partition, where a
/// paused partition never holds back another. (A 2,000,000-ride file, 40 minutes of event
/// time, with its 959,520 locations, `-w 2`: peak RSS 522 MB with the default 300 s, 488 MB
/// with `job.max_drift_secs = 60`; most of it is the supply dataflow's ten minutes of state.)
/// A file's workers read shared chunks and run at most a few chunks apart
/// ([`super::line_chunks`]), so a worker whose waiting would hold the others back reads on
/// instead: otherwise the worker whose partition holds the watermark could wait on one that
/// waits for the watermark.
struct Alignment {
    max_drift_ms: i64,
    waiting: bool,
}

impl Alignment {
    /// Whether to wait now (with hysteresis).
    fn wait(&mut self, stamper: &EventStamper, now: Instant) -> bool {
        let marks = stamper.tracker.local_marks(now);
        let (Some(watermark), Some(slowest), false) = (
            stamper.tracker.published_ms(),
            marks.least_active,
            marks.holding,
        ) else {
            // A partition that has read nothing yet holds the watermark: read on.
            self.waiting = false;
            return false;
        };
        if self.max_drift_ms == 0 {
            return false;
        }
        let ahead = slowest - watermark;
        self.waiting = if self.waiting {
            ahead > self.max_drift_ms / 2
        } else {
            ahead > self.max_drift_ms
        };
        self.waiting
    }
}

/// The source for this worker, reading its share of `lines` (one [`LineChunks`] for all the
/// process's workers, over `config.files`). Fails the job (panics the worker with the path
/// in the message) only if a file cannot be read.
pub fn file_source<'scope, R: SourceRecord>(
    scope: Scope<'scope, u64>,
    config: &FileSourceConfig,
    lines: Arc<LineChunks<R>>,
    shared: SourceShared,
) -> StreamVec<'scope, u64, Ingested<R>> {
    let (worker, peers) = (scope.index(), scope.peers());
    let config = config.clone();
    source(scope, "FileSource", move |capability, info| {
        let activator = scope.activator_for(info.address.clone());
        lines.register(
            worker,
            scope.worker().sync_activator_for(info.address.to_vec()),
        );
        let now = Instant::now();
        // Idle partitions do not exist here: each one is finished at the end of the files.
        let mut tracker = WatermarkTracker::new(config.allowed_lateness, Duration::MAX);
        let owned: Vec<u32> = (0..config.partitions as u32)
            .filter(|p| *p as usize % peers == worker)
            .collect();
        for &partition in &owned {
            tracker.add_partition(partition, now);
        }
        let mut stamper = EventStamper::new(tracker, capability);
        let mut reader = WorkerLines::new(lines, worker);
        info!(worker, partitions = ?owned, files = config.files.len(), "file source reading");
        let mut pending = Pending::new();
        let mut finished = false;
        let stamping = Stamping {
            worker,
            topic: config.topic.clone(),
            cities: config.cities.clone(),
            dead_letters: config.dead_letters,
            settled_before: 0,
            counters: shared.counters.clone(),
        };
        let mut alignment = Alignment {
            max_drift_ms: config.max_drift.as_millis() as i64,
            waiting: false,
        };
        move |output| {
            if stamper.capability().is_none() {
                return;
            }
            let now = Instant::now();
            let backpressure = shared.writer.inflight_rows() > MAX_INFLIGHT_ROWS
                || (alignment.wait(&stamper, now) && !reader.holds_back_others());
            let mut starved = false;
            let mut handled = 0;
            while !finished && !backpressure && handled < MAX_LINES_PER_ACTIVATION {
                let line = match reader.next_line() {
                    Ok(Step::Line(line)) => line,
                    Ok(Step::Wait) => {
                        starved = true;
                        break;
                    }
                    Ok(Step::End) => {
                        finished = true;
                        break;
                    }
                    Err(error) => panic!("the file source cannot read on: {error}"),
                };
                handled += 1;
                let (partition, offset) = (line.partition as u32, line.offset as u64);
                match line.record {
                    Ok(record) => {
                        let judged = stamping.judge(&mut stamper, partition, offset, record, now);
                        if judged.owned {
                            let event = Ingested::Event(judged.sourced);
                            pending.push(judged.time, event, &stamper, output);
                        }
                    }
                    Err(error) => {
                        let key = R::key_of(line.bytes);
                        let dead = stamping.reject(
                            &error,
                            partition,
                            offset,
                            Some(line.number),
                            key.as_deref().map(str::as_bytes),
                            line.bytes,
                        );
                        if let Some(dead) = dead {
                            let held = *stamper.capability().expect("held while reading").time();
                            pending.push(held, Ingested::Dead(dead), &stamper, output);
                        }
                    }
                }
            }
            pending.send(&stamper, output);
            if finished {
                for &partition in &owned {
                    stamper.tracker.finish(partition);
                }
            }
            if !stamper.advance_shared(now, &shared.board, config.board_offset + worker) {
                info!(worker, lines = reader.lines_read(), "file source finished");
                return;
            }
            // A starved worker is also woken as soon as its next share is ready.
            if backpressure || starved {
                activator.activate_after(Duration::from_millis(10));
            } else {
                activator.activate();
            }
        }
    })
}
