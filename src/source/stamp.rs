//! Stamping, the step both sources take for every message they read: a parsed record is
//! judged on time or late by its partition's clock (the shared
//! [`EventStamper`](dataflows::partitioned_source::EventStamper)), kept or not by the job's
//! city set, and counted; a message that is not a valid record is counted under its
//! reason, logged, and made a dead letter when this job writes them. What each source then
//! emits (and, on the Kafka path, what it remembers for checkpoints) is its own.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use dataflows::event::EventError;
use dataflows::partitioned_source::{minute_of, EventStamper, Sourced};
use tracing::warn;

use super::counters::{owns, SourceCounters};
use super::record::SourceRecord;
use crate::clickhouse::writer::DeadLetter;

/// How one source stamps its messages.
pub struct Stamping {
    /// The worker (for logs).
    pub worker: usize,
    /// The topic read, or that a file's lines stand for (named in logs and dead letters).
    pub topic: String,
    /// Only records of these cities go downstream (`None`: every city).
    pub cities: Option<BTreeSet<String>>,
    /// Whether this job sends invalid messages to the dead-letter topic.
    pub dead_letters: bool,
    /// Minutes before this one were final and durable before a restart (0: a fresh start,
    /// and every file run); see [`crate::source::Ingested::Settled`].
    pub settled_before: u64,
    /// The process's source counters.
    pub counters: Arc<SourceCounters>,
}

/// A valid record, judged.
pub struct Judged<R> {
    /// The timely time to emit it at.
    pub time: u64,
    /// The record with its position and lateness (never late when `settled`).
    pub sourced: Sourced<R>,
    /// Its partition's clock before it: a restart that needs this record's minute
    /// resumes with that clock.
    pub clock_before: Option<i64>,
    /// Re-read after a restart, in a minute the job had finalized, and on time by its
    /// partition's restored clock: counted before the restart.
    pub settled: bool,
    /// Of a city this job keeps (a record of another city only moved its partition's clock).
    pub owned: bool,
}

impl Stamping {
    /// Judges a valid record read at `offset` of `partition`, and counts it.
    pub fn judge<R: SourceRecord>(
        &self,
        stamper: &mut EventStamper,
        partition: u32,
        offset: u64,
        record: R,
        now: Instant,
    ) -> Judged<R> {
        let clock_before = stamper.tracker.max_ms(partition);
        let ms = record.event_ms();
        // A partition whose checkpoint is older than the job's (another worker's landed
        // later) re-reads minutes the job has finalized: its clock judges them as before
        // the restart, and those on time were counted then.
        let settled =
            minute_of(ms) < self.settled_before && !stamper.tracker.is_late(partition, ms);
        let (time, mut sourced) = stamper.judge(partition, offset, record, now);
        sourced.late &= !settled;
        let owned = owns(&self.cities, sourced.event.city());
        let counters = &self.counters;
        if owned {
            counters.events.fetch_add(1, Ordering::Relaxed);
            if sourced.late {
                counters.late.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            counters.other_cities.fetch_add(1, Ordering::Relaxed);
        }
        Judged {
            time,
            sourced,
            clock_before,
            settled,
            owned,
        }
    }

    /// An invalid message at `offset` of `partition` (`line`: its line in a file run):
    /// counted under its reason, logged (the first ten, then every power of two), and its
    /// dead letter when this job writes them.
    pub fn reject(
        &self,
        error: &EventError,
        partition: u32,
        offset: u64,
        line: Option<u64>,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Option<DeadLetter> {
        let count = self.counters.count_invalid(error);
        if count < 10 || count.is_power_of_two() {
            warn!(worker = self.worker, topic = %self.topic, partition, offset, line, %error, reason = error.reason(), invalid_so_far = count + 1, to_dead_letters = self.dead_letters, "invalid message");
        }
        self.dead_letters.then(|| {
            DeadLetter::invalid(
                partition,
                offset,
                key.map(<[u8]>::to_vec),
                payload.to_vec(),
                error,
            )
            .from_topic(&self.topic)
        })
    }
}
