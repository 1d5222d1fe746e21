//! The counters a process's sources keep (the run summary and `/metrics` read them) and the
//! handles they share with each other and the job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dataflows::event::EventError;
use dataflows::watermark::MarksBoard;

use super::checkpoint::Resume;
use crate::clickhouse::rows::CheckpointRecord;
use crate::clickhouse::writer::Writer;

/// Whether a job limited to `cities` (`None`: all) keeps an event of `city`. Shared by
/// every source, so a city-set job filters the same way whatever it reads.
pub fn owns(cities: &Option<std::collections::BTreeSet<String>>, city: &str) -> bool {
    cities.as_ref().is_none_or(|c| c.contains(city))
}

/// Counters the source keeps for the job's report.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Valid events read.
    pub events: AtomicU64,
    /// Late events among them.
    pub late: AtomicU64,
    /// Messages that were not valid events (sent to the dead-letter topic).
    pub invalid: AtomicU64,
    /// The same, by [`EventError::reason`] (in the order of [`EventError::REASONS`]).
    pub invalid_by_reason: [AtomicU64; EventError::REASONS.len()],
    /// Messages a restarted job could not read because retention deleted them after its
    /// checkpoint (the windows they belonged to are final from fewer events).
    pub retention_gap: AtomicU64,
    /// Messages re-read after a restart that were already written.
    pub replayed: AtomicU64,
    /// Offsets missing inside a partition's read range: messages log compaction removed
    /// before this job read them (`driver-locations` is compacted, see the module doc).
    pub compacted: AtomicU64,
    /// Valid events of cities this job does not own (read, not counted).
    pub other_cities: AtomicU64,
    /// Per-partition lag, event time and idleness, the watermark, commits and backpressure,
    /// updated once per activation for `/metrics` (see `crate::metrics`).
    pub gauges: crate::metrics::SourceGauges,
}

impl SourceCounters {
    /// Counts an invalid message under its reason; returns how many came before it (for
    /// logging the first few and then every power of two).
    pub fn count_invalid(&self, error: &EventError) -> u64 {
        if let Some(index) = EventError::REASONS
            .iter()
            .position(|r| *r == error.reason())
        {
            self.invalid_by_reason[index].fetch_add(1, Ordering::Relaxed);
        }
        self.invalid.fetch_add(1, Ordering::Relaxed)
    }

    /// The non-zero invalid counts by reason, as `reason:count,...` (empty when none).
    pub fn invalid_by_reason_text(&self) -> String {
        EventError::REASONS
            .iter()
            .zip(&self.invalid_by_reason)
            .map(|(reason, count)| (reason, count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .map(|(reason, count)| format!("{reason}:{count}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the sources of a process share with each other and the job.
#[derive(Clone)]
pub struct SourceShared {
    /// Counters for the report.
    pub counters: Arc<SourceCounters>,
    /// The workers' watermark marks.
    pub board: Arc<MarksBoard>,
    /// The process's writer (checkpoints, backpressure).
    pub writer: Arc<Writer>,
    /// Where to resume.
    pub resume: Arc<Resume>,
    /// Final checkpoints of partitions read to their end (`until_end`), written by the job
    /// once everything before them is durable.
    pub finals: Arc<Mutex<Vec<CheckpointRecord>>>,
}
