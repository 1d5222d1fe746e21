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
//! dead letters (their position is the line's), as on the Kafka path. Every worker reads the
//! files and keeps the lines of its own partitions (`partition % workers`). There is no
//! checkpoint: a file run starts from the top, and rows are upserted, so running it again
//! changes nothing.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dataflows::partitioned_source::EventStamper;
use dataflows::watermark::WatermarkTracker;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use tracing::info;

use super::pending::Pending;
use super::{Ingested, SourceRecord, SourceShared, Stamping};
use crate::kafka::partitioner::partition_for;

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

/// Bytes read from a file at a time (lines are handed out as slices of them).
const CHUNK_BYTES: usize = 1 << 20;

/// The reading position across the files: large reads, and each line a slice of the read
/// buffer found with `memchr`, rather than a copy per line (with two workers, each reading
/// every line, `read_until`'s search and copy were ~7 % of a file run).
struct Reader {
    files: std::vec::IntoIter<PathBuf>,
    /// The file being read; `None` before the first and after the last.
    current: Option<File>,
    /// Read but not yet handed out: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Lines read so far, over all files (the fallback partition of keyless lines).
    lines: u64,
}

impl Reader {
    fn new(files: Vec<PathBuf>) -> Reader {
        Reader {
            files: files.into_iter(),
            current: None,
            buf: vec![0; CHUNK_BYTES],
            start: 0,
            end: 0,
            lines: 0,
        }
    }

    /// Where the next line (without its newline) is in [`Reader::buf`], or `None` at the
    /// end of the last file.
    fn next_line(&mut self) -> std::io::Result<Option<std::ops::Range<usize>>> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.start..self.start + at;
                self.start += at + 1;
                self.lines += 1;
                return Ok(Some(line));
            }
            let Some(file) = self.current.as_mut() else {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                let file = File::open(&path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                self.current = Some(file);
                continue;
            };
            // Keep the partial line, then read more after it (a line longer than the
            // buffer grows it).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let read = file.read(&mut self.buf[self.end..])?;
            if read > 0 {
                self.end += read;
                continue;
            }
            // The end of this file: its last line may lack a newline.
            self.current = None;
            if self.start < self.end {
                let line = self.start..self.end;
                self.start = self.end;
                self.lines += 1;
                return Ok(Some(line));
            }
        }
    }
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

/// The source for this worker. Fails the job (panics the worker with the path in the
/// message) only if a file cannot be read.
pub fn file_source<'scope, R: SourceRecord>(
    scope: Scope<'scope, u64>,
    config: &FileSourceConfig,
    shared: SourceShared,
) -> StreamVec<'scope, u64, Ingested<R>> {
    let (worker, peers) = (scope.index(), scope.peers());
    let config = config.clone();
    source(scope, "FileSource", move |capability, info| {
        let activator = scope.activator_for(info.address.clone());
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
        let mut reader = Reader::new(config.files.clone());
        // Per partition, the next offset.
        let mut next_offset = vec![0i64; config.partitions as usize];
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
            let backpressure =
                shared.writer.inflight_rows() > MAX_INFLIGHT_ROWS || alignment.wait(&stamper, now);
            let mut handled = 0;
            while !finished && !backpressure && handled < MAX_LINES_PER_ACTIVATION {
                let line = match reader.next_line() {
                    Ok(Some(range)) => &reader.buf[range],
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(error) => panic!("the file source cannot read on: {error}"),
                };
                handled += 1;
                let key = R::key_of(line);
                let partition = partition_for(
                    key.as_deref().map(str::as_bytes),
                    config.partitions,
                    reader.lines - 1,
                );
                let offset = next_offset[partition as usize];
                next_offset[partition as usize] += 1;
                if partition as usize % peers != worker {
                    continue;
                }
                match R::parse(line) {
                    Ok(record) => {
                        let judged = stamping.judge(
                            &mut stamper,
                            partition as u32,
                            offset as u64,
                            record,
                            now,
                        );
                        if judged.owned {
                            let event = Ingested::Event(judged.sourced);
                            pending.push(judged.time, event, &stamper, output);
                        }
                    }
                    Err(error) => {
                        let key = key.as_deref().map(str::as_bytes);
                        let line_number = Some(reader.lines);
                        let dead = stamping.reject(
                            &error,
                            partition as u32,
                            offset as u64,
                            line_number,
                            key,
                            line,
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
                info!(worker, lines = reader.lines, "file source finished");
                return;
            }
            if backpressure {
                activator.activate_after(Duration::from_millis(10));
            } else {
                activator.activate();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of every file, in order, whatever the buffer boundaries.
    fn read_all(files: Vec<PathBuf>) -> Vec<Vec<u8>> {
        let mut reader = Reader::new(files);
        let mut lines = Vec::new();
        while let Some(range) = reader.next_line().unwrap() {
            lines.push(reader.buf[range].to_vec());
        }
        assert_eq!(reader.lines, lines.len() as u64);
        lines
    }

    #[test]
    fn lines_come_whole_across_reads_files_and_a_missing_last_newline() {
        let dir = std::env::temp_dir().join(format!("ridepulse-reader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Lines of many lengths, so some straddle each read; one longer than the buffer.
        let mut expected: Vec<Vec<u8>> = (0..40_000)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 97)).into_bytes())
            .collect();
        expected.insert(20_000, vec![b'y'; 3 * CHUNK_BYTES + 17]);
        expected.insert(30_000, Vec::new());
        let mut first = expected[..25_000].join(&b'\n');
        first.push(b'\n');
        let second = expected[25_000..].join(&b'\n'); // no newline at its end
        let (a, b, empty) = (dir.join("a"), dir.join("b"), dir.join("empty"));
        std::fs::write(&a, first).unwrap();
        std::fs::write(&b, second).unwrap();
        std::fs::write(&empty, b"").unwrap();
        let lines = read_all(vec![a, empty, b]);
        assert_eq!(lines.len(), expected.len());
        assert!(lines == expected, "lines differ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let mut reader = Reader::new(vec![PathBuf::from("/nonexistent/rides.jsonl")]);
        let error = reader.next_line().unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/rides.jsonl"),
            "{error}"
        );
    }
}
