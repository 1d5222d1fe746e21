//! Checkpointing, the part of a source that makes a restart exact (see "Checkpoints" in
//! `kafka::source` for the reasoning): where a restart resumes ([`Resume`]), what each
//! partition must remember for its next checkpoint ([`PartitionLog`]), how far the ingest
//! sink has made its messages durable ([`IngestProgress`]), and the [`Checkpointer`] that
//! turns those into checkpoint rows about once a second and says when the broker may be
//! told the same offsets. Only the Kafka source checkpoints: a file run starts from the top.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataflows::partitioned_source::minute_of;
use timely::scheduling::SyncActivator;

use crate::clickhouse::rows::CheckpointRecord;
use crate::clickhouse::writer::{Batch, Ticket, Writer};

/// Where a job resumes reading one topic: the newest checkpoint of each partition (none
/// for a fresh start).
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Checkpoints by partition.
    pub partitions: BTreeMap<u32, CheckpointRecord>,
    /// The `finalized_through` of the job's other input topic's checkpoints: every
    /// checkpoint records the job's durable frontier, so the largest over both topics is
    /// durable (0: none).
    pub other_finalized: u64,
}

impl Resume {
    /// Windows ending at or before this minute (and supply rows of minutes before it) were
    /// final and durable before the restart.
    pub fn finalized_through(&self) -> u64 {
        self.own_finalized().max(self.other_finalized)
    }

    /// The largest `finalized_through` of this topic's own checkpoints.
    pub fn own_finalized(&self) -> u64 {
        self.partitions
            .values()
            .map(|c| c.finalized_through)
            .max()
            .unwrap_or(0)
    }

    /// The first minute an open window can need: events before it are late on resumption.
    pub fn first_open_minute(&self, length: u64) -> u64 {
        (self.finalized_through() + 1).saturating_sub(length)
    }
}

/// Where a partition resumes: its checkpoint's offset, or the oldest retained offset `low`
/// when retention deleted messages after the checkpoint (or there is none); and how many
/// messages the job lost that way (0 for a fresh start, which has nothing to lose).
pub fn resume_point(checkpoint: Option<i64>, low: i64) -> (i64, u64) {
    match checkpoint {
        Some(next) if next < low => (low, (low - next) as u64),
        Some(next) => (next, 0),
        None => (low, 0),
    }
}

/// Per partition (of this worker and topic), the offset below which every message the
/// source handed to the ingest sink is durable. Written by the ingest sink, read by the
/// source of the same worker.
#[derive(Debug, Default)]
pub struct IngestProgress {
    durable: BTreeMap<u32, i64>,
}

impl IngestProgress {
    /// The offset below which `partition`'s messages are durable (`None`: none sent yet).
    pub fn durable(&self, partition: u32) -> Option<i64> {
        self.durable.get(&partition).copied()
    }

    /// The ingest sink's writes reached `next` in `partition`.
    pub fn confirm(&mut self, partition: u32, next: i64) {
        let entry = self.durable.entry(partition).or_insert(next);
        *entry = (*entry).max(next);
    }
}

/// What one partition remembers for its checkpoints: which messages are written, and for
/// each minute an open window may still need, where to re-read it from.
#[derive(Debug)]
pub struct PartitionLog {
    /// Messages below this offset were written before a restart.
    written_to: i64,
    /// One past the last offset handed to the ingest sink.
    sent: i64,
    /// Per event minute (of on-time events), the first offset and the partition's clock
    /// just before it: where to resume so that every open window can be rebuilt.
    rebuild: BTreeMap<u64, (i64, Option<i64>)>,
}

impl PartitionLog {
    /// A partition read from `start`, whose messages below `written_to` are written.
    pub fn new(start: i64, written_to: i64) -> PartitionLog {
        PartitionLog {
            written_to,
            sent: start,
            rebuild: BTreeMap::new(),
        }
    }

    /// Whether the message at `offset` is to be written (it was not before a restart).
    pub fn rewrites(&self, offset: i64) -> bool {
        offset >= self.written_to
    }

    /// An on-time record of `minute` at `offset`, read when the partition's clock was
    /// `clock_before`: a restart needing that minute resumes here, with that clock.
    pub fn on_time(&mut self, minute: u64, offset: i64, clock_before: Option<i64>) {
        self.rebuild.entry(minute).or_insert((offset, clock_before));
    }

    /// The message at `offset` went to the ingest sink.
    pub fn handed(&mut self, offset: i64) {
        self.sent = offset + 1;
    }

    /// The checkpoint for windows from minute `first_open` on, when everything before its
    /// resume offset is durable: (resume offset, clock there, written-to). `read_to` is how
    /// far the partition has been read, `clock` its clock now, `durable` the ingest sink's
    /// durable offset.
    fn checkpoint(
        &mut self,
        first_open: u64,
        read_to: i64,
        clock: Option<i64>,
        durable: Option<i64>,
    ) -> Option<(i64, Option<i64>, i64)> {
        self.rebuild = self.rebuild.split_off(&first_open);
        let (offset, max) = self
            .rebuild
            .values()
            .min_by_key(|(offset, _)| *offset)
            .copied()
            .unwrap_or((read_to, clock));
        let durable = durable.unwrap_or(self.written_to).max(self.written_to);
        let written = if durable >= self.sent {
            read_to
        } else {
            durable
        };
        (offset <= written).then_some((offset, max, written))
    }
}

/// One partition as the [`Checkpointer`] sees it.
pub struct PartitionView<'a> {
    /// The partition.
    pub partition: i32,
    /// How far it has been read (never past an `until_end` end).
    pub read_to: i64,
    /// Its clock (largest event time) now.
    pub clock: Option<i64>,
    /// Its log.
    pub log: &'a mut PartitionLog,
}

/// Writes a source's checkpoints: about once per interval, one row per partition through
/// the writer, never a second before the first is durable; and once every partition is
/// read to its end (`until_end`), the final ones, which the job writes after the dataflow.
pub struct Checkpointer {
    group_id: String,
    topic: String,
    interval: Duration,
    /// `max(window length, supply horizon)`: how far back a restart re-reads.
    rebuild_minutes: u64,
    window_length: u64,
    /// The finalized minute the job resumed from (0: a fresh start).
    floor: u64,
    last: Instant,
    /// The checkpoint being written and its offsets, to commit once it is durable.
    in_flight: Option<(Ticket, Vec<(i32, i64)>)>,
    finals_posted: bool,
}

impl Checkpointer {
    /// A checkpointer for `topic` under `group_id`, resumed from minute `floor`.
    pub fn new(
        group_id: &str,
        topic: &str,
        interval: Duration,
        rebuild_minutes: u64,
        window_length: u64,
        floor: u64,
    ) -> Checkpointer {
        Checkpointer {
            group_id: group_id.to_string(),
            topic: topic.to_string(),
            interval,
            rebuild_minutes,
            window_length,
            floor,
            last: Instant::now(),
            in_flight: None,
            finals_posted: false,
        }
    }

    /// The offsets (partition, next offset) of a checkpoint the writer has made durable
    /// since the last call: the consumer group may now be told them.
    pub fn confirmed(&mut self) -> Option<Vec<(i32, i64)>> {
        if !self.in_flight.as_ref()?.0.is_done() {
            return None;
        }
        self.in_flight.take().map(|(_, offsets)| offsets)
    }

    /// Whether a checkpoint is due: none in flight, and the interval passed since the last.
    pub fn due(&self) -> bool {
        self.in_flight.is_none() && self.last.elapsed() >= self.interval
    }

    /// Submits a checkpoint per partition when one is [due](Checkpointer::due). `durable`
    /// is the sinks' durable frontier (a minute), `progress` the ingest sink's durable
    /// offsets; `wake` activates the source once the checkpoint is durable.
    pub fn tick<'a>(
        &mut self,
        partitions: impl Iterator<Item = PartitionView<'a>>,
        durable: u64,
        progress: &IngestProgress,
        writer: &Writer,
        wake: &SyncActivator,
    ) {
        if !self.due() {
            return;
        }
        self.last = Instant::now();
        let finalized = durable.max(self.floor);
        let first_open = finalized
            .saturating_add(1)
            .saturating_sub(self.rebuild_minutes);
        let written_at_us = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let mut records = Vec::new();
        let mut offsets = Vec::new();
        for view in partitions {
            let partition = view.partition as u32;
            let checkpoint = view.log.checkpoint(
                first_open,
                view.read_to,
                view.clock,
                progress.durable(partition),
            );
            if let Some((next_offset, max_event_ms, written_to)) = checkpoint {
                records.push(CheckpointRecord {
                    consumer_group: self.group_id.clone(),
                    topic: self.topic.clone(),
                    kafka_partition: partition,
                    next_offset,
                    max_event_ms,
                    written_to,
                    finalized_through: finalized,
                    written_at_us,
                });
                offsets.push((view.partition, next_offset));
            }
        }
        if !records.is_empty() {
            let batch = Batch {
                checkpoints: records,
                ..Batch::default()
            };
            self.in_flight = Some((writer.submit(batch, Some(wake.clone())), offsets));
        }
    }

    /// Once, when every partition is read to its end: the final checkpoints, for the job to
    /// write once the dataflow (and so every sink) is done. Every window through the last
    /// event's minute plus the window length is final then.
    pub fn post_finals<'a>(
        &mut self,
        partitions: impl Iterator<Item = PartitionView<'a>>,
        finals: &Mutex<Vec<CheckpointRecord>>,
    ) {
        if self.finals_posted {
            return;
        }
        self.finals_posted = true;
        let written_at_us = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let mut finals = finals.lock().expect("not poisoned");
        for view in partitions {
            let last_window_end = view
                .clock
                .map_or(0, |ms| minute_of(ms) + self.window_length);
            finals.push(CheckpointRecord {
                consumer_group: self.group_id.clone(),
                topic: self.topic.clone(),
                kafka_partition: view.partition as u32,
                next_offset: view.read_to,
                max_event_ms: view.clock,
                written_to: view.read_to,
                finalized_through: last_window_end.max(self.floor),
                written_at_us,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_behind_retention_is_counted_not_silently_skipped() {
        assert_eq!(resume_point(Some(100), 40), (100, 0));
        assert_eq!(resume_point(Some(40), 40), (40, 0));
        assert_eq!(resume_point(Some(10), 40), (40, 30));
        assert_eq!(resume_point(None, 40), (40, 0));
    }

    #[test]
    fn a_checkpoint_resumes_at_the_first_offset_of_the_first_open_minute_once_it_is_durable() {
        let mut log = PartitionLog::new(0, 0);
        log.on_time(10, 0, None);
        log.on_time(11, 5, Some(11_000));
        log.on_time(12, 9, Some(12_000));
        log.on_time(11, 7, Some(12_500)); // minute 11 again: its first offset stands
        log.handed(9);
        // Nothing handed is durable yet: the resume offset is not behind what is written.
        assert_eq!(log.checkpoint(11, 12, Some(13_000), Some(4)), None);
        // Everything handed is durable: written up to what was read.
        assert_eq!(
            log.checkpoint(11, 12, Some(13_000), Some(10)),
            Some((5, Some(11_000), 12))
        );
        // Minute 11 closed: minute 12 is the first open one.
        assert_eq!(
            log.checkpoint(12, 12, Some(13_000), Some(10)),
            Some((9, Some(12_000), 12))
        );
        // No open minute left: resume where reading stopped, with the clock there.
        assert_eq!(
            log.checkpoint(13, 12, Some(13_000), Some(10)),
            Some((12, Some(13_000), 12))
        );
        // Written before a restart: durable from there even with nothing handed since.
        let mut resumed = PartitionLog::new(3, 8);
        assert!(!resumed.rewrites(7) && resumed.rewrites(8));
        assert_eq!(
            resumed.checkpoint(0, 10, Some(1), None),
            Some((10, Some(1), 10))
        );
    }
}
