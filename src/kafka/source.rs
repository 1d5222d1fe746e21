//! The Kafka source operator: the partitions of an input topic drive timely's frontier.
//!
//! One operator per input topic and worker: `ride-events` ([`RideEvent`]) and
//! `driver-locations` ([`DriverLocation`]) are read by the same code, generic over
//! [`SourceRecord`] (how a message is parsed, its city, whether it is stored raw). Each
//! topic has its own partitions, lateness clocks, checkpoints (per group, topic and
//! partition) and dead letters (headers name the topic); both post their marks to one
//! [`MarksBoard`], so the job's watermark is the minimum over the non-idle partitions of
//! *both* topics (SPEC §5: a supply row is final once both watermarks pass its minute; a
//! topic whose partitions are all idle or empty holds nothing back, as an idle partition
//! does in SPEC §3).
//!
//! Every worker owns a fixed set of partitions (partition `p` goes to worker
//! `p % peers`: explicit assignment, its own consumer, no group rebalancing, no auto-commit),
//! parses each message, judges lateness per partition with the shared
//! [`EventStamper`](dataflows::partitioned_source::EventStamper), and keeps its capability at
//! the watermark's minute. A partition that has reached its end offset and stays quiet for
//! the idle timeout stops holding the watermark back; a worker without partitions releases
//! its capability at once. Work per activation is bounded, and a quiet topic is polled every
//! few milliseconds instead of spinning a core.
//!
//! With `until_end`, each partition is read up to the end offset it had at start and then
//! finished, so every window becomes final and the dataflow completes: the mode for
//! backfills, tests and benchmarks.
//!
//! **Checkpoints.** Output is durable only behind the sinks' durable frontier `F` (a probe
//! on the sinks, see `sinks`): every window ending at or before minute `F` has its final
//! row written, and every supply row of a minute before `F`. Windows still open need every
//! event of minute `F + 1 - length` or later, and the supply row of minute `F` (the first
//! not yet final) needs every record of minute `F + 1 - H` or later (`H` = the supply
//! horizon, `max(stale_after, request_timeout)`, 10 by default; see `dataflows::supply`).
//! So the source rebuilds from minute `F + 1 - R`, `R = max(length, H)`
//! ([`SourceConfig::rebuild_minutes`]), for both topics: per partition the source remembers the first offset of each such minute and the
//! partition's clock just before it. About once a second it writes, through the writer, a
//! checkpoint per partition: resume offset (the earliest of those), that clock (so
//! lateness is judged exactly as before), the offset below which raw events and dead
//! letters are durable (they are not written twice), and `F`. Once the checkpoint is
//! durable the same offsets are committed to the consumer group. A restarted job reads
//! the checkpoints, rebuilds its open windows from the resume offsets, and does not emit
//! the windows that were already final: ClickHouse ends as without the restart. A
//! partition's checkpoint can be older than the job's finalized minute (another worker's
//! landed later, or its raw rows were not yet durable), so it re-reads records of minutes
//! the job has finalized: each is judged by its partition's restored clock, and one on
//! time then was counted then ([`Ingested::Settled`]: to no view, its raw row rewritten
//! unchanged), while a late one is late again.
//! (Checkpoints live in ClickHouse beside the results, not only in Kafka's commit
//! metadata, which some Kafka-compatible brokers, Tansu among them, do not keep.)
//!
//! **Compaction.** `driver-locations` is compacted (SPEC §1): once the broker's cleaner has
//! run, only each driver's latest position is left, so a restart re-reading its rebuild
//! window would rebuild the supply state without the positions compacted away, and end
//! with other final rows than a run that read them. The topic's `min.compaction.lag.ms`
//! (see `kafka::topics`) keeps every position for an hour, longer than a restart's rebuild
//! window; a broker that ignores it (Tansu compacts at its next periodic sweep) or a job
//! down for longer loses them. The source never hides that: an offset past the next one
//! expected in a partition it reads in order is a hole compaction made, counted in
//! [`SourceCounters::compacted`] and logged; offsets after a checkpoint below the oldest
//! one left (compaction moved it, as retention does) are the `retention_gap` below. For
//! `driver-locations` the run summary reports both as `compacted_locations`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::borrow::Cow;

use dataflows::event::{check_not_ahead, DriverLocation, EventError, RideEvent};
use dataflows::partitioned_source::{minute_of, EventStamper, EventTime, Sourced};
use dataflows::watermark::{LocalMarks, MarksBoard, MarksPost, WatermarkTracker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{Scope, StreamVec};
use tracing::{info, warn};

use super::{settings, KafkaError};
use crate::clickhouse::rows::CheckpointRecord;
use crate::clickhouse::writer::{Batch, DeadLetter, Ticket, Writer};
use crate::pending::Pending;
use crate::sinks::ingest::IngestProgress;

/// Messages handled per activation, so other operators get to run.
const MAX_MESSAGES_PER_ACTIVATION: usize = 4096;
/// How soon to look again when nothing arrived.
const QUIET_POLL: Duration = Duration::from_millis(10);
/// Rows waiting for the writer (per process) above which sources stop reading.
const MAX_INFLIGHT_ROWS: usize = 60_000;
/// How often a source records its partitions' lag and clocks for `/metrics`.
const GAUGES_INTERVAL: Duration = Duration::from_millis(250);

/// A kind of input record: ride events or driver locations.
pub trait SourceRecord:
    EventTime + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// Whether valid records are written raw to ClickHouse (`ride_events`); locations are
    /// not (no table keeps them), so only their dead letters reach the ingest sink.
    const STORED: bool;
    /// Parses and validates a message value (SPEC §2).
    fn parse(bytes: &[u8]) -> Result<Self, EventError>;
    /// Its city (what a job's city set filters on).
    fn city(&self) -> &str;
    /// The Kafka key of a raw line (`ride_id`, `driver_id`), if it has one: which partition
    /// the producer gives it.
    fn key_of(line: &[u8]) -> Option<Cow<'_, str>>;
    /// Adds a valid record to a writer batch (a no-op unless [`SourceRecord::STORED`]).
    fn store(sourced: Sourced<Self>, batch: &mut Batch);
}

impl SourceRecord for RideEvent {
    const STORED: bool = true;
    fn parse(bytes: &[u8]) -> Result<Self, EventError> {
        RideEvent::parse(bytes)
    }
    fn city(&self) -> &str {
        &self.city
    }
    fn key_of(line: &[u8]) -> Option<Cow<'_, str>> {
        crate::kafka::partitioner::ride_id_key(line)
    }
    fn store(sourced: Sourced<Self>, batch: &mut Batch) {
        batch.events.push(sourced);
    }
}

impl SourceRecord for DriverLocation {
    const STORED: bool = false;
    fn parse(bytes: &[u8]) -> Result<Self, EventError> {
        DriverLocation::parse(bytes)
    }
    fn city(&self) -> &str {
        &self.city
    }
    fn key_of(line: &[u8]) -> Option<Cow<'_, str>> {
        crate::kafka::partitioner::driver_id_key(line)
    }
    fn store(_sourced: Sourced<Self>, _batch: &mut Batch) {}
}

/// Where and how the source reads.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic (`ride-events` or `driver-locations`).
    pub topic: String,
    /// Partition count of the topic (looked up once before the dataflow starts).
    pub partitions: i32,
    /// The consumer group offsets will be committed under.
    pub group_id: String,
    /// SPEC §3's allowed lateness.
    pub allowed_lateness: Duration,
    /// SPEC §3's idle timeout.
    pub idle_timeout: Duration,
    /// SPEC §2's `max_future`: how far an event time may be ahead of its message's
    /// timestamp before the event is a dead letter.
    pub max_future: Duration,
    /// Stop at the end offsets that exist at start.
    pub until_end: bool,
    /// Window length in minutes (the final checkpoints of an `until_end` run say every
    /// window through the last event's minute plus this is final).
    pub window_length_minutes: u64,
    /// How many minutes back from the first unfinished minute a restart must re-read:
    /// `max(window length, supply horizon)` (see the module doc).
    pub rebuild_minutes: u64,
    /// This source's first slot on the shared [`MarksBoard`] (worker `w` posts as
    /// `board_offset + w`): 0 for ride events, the total worker count for locations.
    pub board_offset: usize,
    /// How often to checkpoint.
    pub checkpoint_interval: Duration,
    /// Watermark alignment: how far a partition's mark may run ahead of the job's watermark
    /// before it is paused (zero: never).
    pub max_drift: Duration,
    /// Only events of these cities go downstream (`None`: every city). Lateness and the
    /// watermark still see every event of a partition, so a job per city set computes
    /// exactly the rows an all-cities job computes for those cities.
    pub cities: Option<std::collections::BTreeSet<String>>,
    /// Whether this job sends malformed messages to the dead-letter topic (with several
    /// jobs on one topic, exactly one of them does).
    pub dead_letters: bool,
    /// Whether valid records are written raw (`sinks.raw_events`; only ride events ever
    /// are, see [`SourceRecord::STORED`]).
    pub raw: bool,
}

/// Whether a job limited to `cities` (`None`: all) keeps an event of `city`. Shared by
/// every source, so a city-set job filters the same way whatever it reads.
pub fn owns(cities: &Option<std::collections::BTreeSet<String>>, city: &str) -> bool {
    cities.as_ref().is_none_or(|c| c.contains(city))
}

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

/// What the source emits: every message of its partitions, in offset order per partition.
#[derive(Clone, Debug, PartialEq)]
pub enum Ingested<R = RideEvent> {
    /// A valid record, to be counted in windows (and, for ride events, written to
    /// `ride_events`).
    Event(Sourced<R>),
    /// A valid record re-read after a restart that is already written: it only rebuilds
    /// windows and supply state.
    Replayed(Sourced<R>),
    /// A valid record re-read after a restart that its partition's clock says is on time
    /// but whose minute is before the restart's first open minute: every window, minute
    /// and supply row it belongs to was final and durable before the restart, and counted
    /// it, so it goes to no view; its raw row (on time, as before) is written again only
    /// because the checkpoint cannot say it is durable (`ride_events` keeps one row per
    /// partition and offset).
    Settled(Sourced<R>),
    /// A message that is not a valid event, for the dead-letter topic.
    Dead(DeadLetter),
}

impl<R> Ingested<R> {
    /// Its partition and offset.
    pub fn position(&self) -> (u32, u64) {
        match self {
            Ingested::Event(e) | Ingested::Replayed(e) | Ingested::Settled(e) => {
                (e.partition, e.offset)
            }
            Ingested::Dead(d) => (d.partition, d.offset),
        }
    }

    /// The record, for the windows and the supply state.
    pub fn into_event(self) -> Option<Sourced<R>> {
        match self {
            Ingested::Event(e) | Ingested::Replayed(e) => Some(e),
            Ingested::Settled(_) | Ingested::Dead(_) => None,
        }
    }
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

/// One owned partition's reading state.
#[derive(Debug)]
struct OwnedPartition {
    partition: i32,
    /// The end offset to stop at (`until_end`).
    end: Option<i64>,
    /// The next offset to read.
    next: i64,
    finished: bool,
    /// Messages below this offset were written before a restart.
    written_to: i64,
    /// One past the last offset handed to the ingest sink.
    sent: i64,
    /// Per event minute (of on-time events), the first offset and the partition's clock
    /// just before it: where to resume so that every open window can be rebuilt.
    rebuild: BTreeMap<u64, (i64, Option<i64>)>,
    /// Paused by watermark alignment (too far ahead of the job's watermark).
    paused: bool,
    /// The event time of the first on-time event this run read from it (alignment's
    /// reference while the job's watermark is still unknown).
    first_ms: Option<i64>,
}

impl OwnedPartition {
    /// How far this partition has been read (never past its `until_end` end).
    fn read_to(&self) -> i64 {
        self.end.map_or(self.next, |end| self.next.min(end))
    }

    /// The checkpoint for windows from minute `first_open` on, when everything before its
    /// resume offset is durable: (resume offset, clock there, written-to).
    fn checkpoint(
        &mut self,
        first_open: u64,
        clock: Option<i64>,
        durable: Option<i64>,
    ) -> Option<(i64, Option<i64>, i64)> {
        self.rebuild = self.rebuild.split_off(&first_open);
        let (offset, max) = self
            .rebuild
            .values()
            .min_by_key(|(offset, _)| *offset)
            .copied()
            .unwrap_or((self.read_to(), clock));
        let durable = durable.unwrap_or(self.written_to).max(self.written_to);
        let written = if durable >= self.sent {
            self.read_to()
        } else {
            durable
        };
        (offset <= written).then_some((offset, max, written))
    }
}

/// The source for this worker. Fails only if the consumer cannot be created or assigned.
/// `durable` is the probe on the sinks; `progress` is the ingest sink's per-partition
/// durable offsets (same worker).
pub fn kafka_source<'scope, R: SourceRecord>(
    scope: Scope<'scope, u64>,
    config: &SourceConfig,
    shared: SourceShared,
    durable: ProbeHandle<u64>,
    progress: Rc<RefCell<IngestProgress>>,
) -> Result<StreamVec<'scope, u64, Ingested<R>>, KafkaError> {
    let (worker, peers) = (scope.index(), scope.peers());
    let mine: Vec<i32> = (0..config.partitions)
        .filter(|p| *p as usize % peers == worker)
        .collect();
    let consumer: BaseConsumer<settings::ConsumerLog> = settings::consumer(
        &config.brokers,
        &config.group_id,
        &format!("ridepulse-worker-{worker}"),
    )
    .create_with_context(settings::ConsumerLog)?;
    let mut assignment = TopicPartitionList::new();
    let mut owned: Vec<OwnedPartition> = Vec::new();
    for &partition in &mine {
        let (low, high) =
            consumer.fetch_watermarks(&config.topic, partition, Duration::from_secs(15))?;
        let checkpoint = shared.resume.partitions.get(&(partition as u32));
        let (start, gap) = resume_point(checkpoint.map(|c| c.next_offset), low);
        if gap > 0 {
            // Never silent: the open windows of the checkpoint lose these messages.
            warn!(worker, partition, checkpoint = checkpoint.map(|c| c.next_offset), low, lost = gap, topic = %config.topic, "retention deleted messages after the job's checkpoint; resuming at the oldest retained offset (windows those messages belonged to end with fewer events; their complete final rows, if written, are kept)");
            shared
                .counters
                .retention_gap
                .fetch_add(gap, Ordering::Relaxed);
        }
        assignment.add_partition_offset(&config.topic, partition, Offset::Offset(start))?;
        let written_to = checkpoint.map_or(start, |c| c.written_to.max(start));
        owned.push(OwnedPartition {
            partition,
            end: config.until_end.then_some(high),
            next: start,
            // An until_end partition with nothing left (its end at its start, which is not
            // always 0 once retention has deleted messages) has nothing to wait for.
            finished: config.until_end && high <= start,
            written_to,
            sent: start,
            rebuild: BTreeMap::new(),
            paused: false,
            first_ms: None,
        });
    }
    consumer.assign(&assignment)?;
    info!(worker, partitions = ?mine, topic = %config.topic, resumed = !shared.resume.partitions.is_empty(), "source assigned");
    let config = config.clone();
    let length = config.window_length_minutes;
    let rebuild_minutes = config.rebuild_minutes;
    let slot_on_board = config.board_offset + worker;
    let board = shared.board.clone();
    let mut builder = OperatorBuilder::new("KafkaSource".to_owned(), scope);
    let info = builder.operator_info();
    let (data_output, stream) = builder.new_output::<Vec<Ingested<R>>>();
    let (marks_output, marks_stream) = builder.new_output::<Vec<MarksPost>>();
    let mut data_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Ingested<R>>>>::from(data_output);
    let mut marks_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<MarksPost>>>::from(marks_output);
    builder.build(move |mut capabilities| {
        // This worker's watermark marks go to every worker's board (other processes too).
        let mut marks_capability = capabilities.pop();
        let mut last_marks: Option<LocalMarks> = None;
        let mut capability = capabilities.pop().expect("one capability per output");
        let activator = scope.activator_for(info.address.clone());
        let wake = scope.worker().sync_activator_for(info.address.to_vec());
        let now = Instant::now();
        let resume = shared.resume.clone();
        let floor = resume.finalized_through();
        // Minutes before the first open window are final already: events there are late,
        // unless their partition's clock says they were on time before the restart (see
        // `Ingested::Settled`).
        let settled_before = resume.first_open_minute(rebuild_minutes);
        capability.downgrade(&settled_before);
        let mut tracker = WatermarkTracker::new(config.allowed_lateness, config.idle_timeout);
        for slot in &owned {
            let partition = slot.partition as u32;
            tracker.add_partition(partition, now);
            if let Some(checkpoint) = resume.partitions.get(&partition) {
                tracker.restore(partition, checkpoint.max_event_ms, now);
            }
            if slot.finished {
                tracker.finish(partition);
            }
        }
        let topic = CString::new(config.topic.clone()).expect("topic names have no NUL");
        let mut stamper = EventStamper::new(tracker, capability);
        let mut last_checkpoint = Instant::now();
        let mut checkpoint_in_flight: Option<(Ticket, TopicPartitionList)> = None;
        let mut finals_posted = false;
        let counters = shared.counters.clone();
        let max_future_ms = config.max_future.as_millis() as i64;
        let max_drift_ms = config.max_drift.as_millis() as i64;
        let (mut gauges_at, mut last_activation) = (Instant::now(), Instant::now());
        let mut pending = Pending::new();
        move |_frontiers| {
            if stamper.capability().is_none() {
                return;
            }
            let mut data = data_output.activate();
            let output = &mut data;
            let now = Instant::now();
            let mut handled = 0;
            let backpressure = shared.writer.inflight_rows() > MAX_INFLIGHT_ROWS;
            if backpressure {
                counters.gauges.add_backpressure(now.saturating_duration_since(last_activation));
            }
            last_activation = now;
            while !backpressure && handled < MAX_MESSAGES_PER_ACTIVATION {
                let message = match consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => message,
                    // End of a partition is read from positions below, not from these events.
                    Some(Err(RdKafkaError::PartitionEOF(_))) => continue,
                    Some(Err(error)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => continue,
                    Some(Err(error)) => {
                        // Transient client errors (broker restarts) are retried by librdkafka.
                        warn!(worker, %error, "kafka consumer error");
                        break;
                    }
                };
                handled += 1;
                let partition = message.partition();
                let offset = message.offset();
                let Some(slot) = owned.iter_mut().find(|s| s.partition == partition) else { continue };
                if offset > slot.next {
                    // A hole in a partition read in order: compaction removed these messages
                    // (driver-locations is compacted) before this job read them. Never silent.
                    let gap = (offset - slot.next) as u64;
                    let before = counters.compacted.fetch_add(gap, Ordering::Relaxed);
                    if before == 0 || (before + gap).is_power_of_two() {
                        warn!(worker, partition, expected = slot.next, offset, missing = gap, compacted_so_far = before + gap, topic = %config.topic, "offsets missing from the partition (compacted away before this job read them): supply state is rebuilt without them");
                    }
                }
                slot.next = slot.next.max(offset + 1);
                if slot.finished || slot.end.is_some_and(|end| offset >= end) {
                    continue;
                }
                let rewrite = offset >= slot.written_to;
                // Whether the message goes to the ingest sink (which reports it durable).
                let mut handed = rewrite;
                let payload = message.payload().unwrap_or_default();
                let parsed = R::parse(payload).and_then(|event| {
                    let at = dataflows::event::Timestamp(event.event_ms());
                    check_not_ahead(at, message.timestamp().to_millis(), max_future_ms)?;
                    Ok(event)
                });
                match parsed {
                    Ok(event) => {
                        let before = stamper.tracker.max_ms(partition as u32);
                        // A partition whose last checkpoint is older than the job's (another
                        // worker's landed later) re-reads minutes the job has finalized:
                        // its clock judges them as before the restart, and those on time
                        // were counted then (see `Ingested::Settled`).
                        let settled = minute_of(event.event_ms()) < settled_before
                            && !stamper.tracker.is_late(partition as u32, event.event_ms());
                        let (time, mut sourced) = stamper.judge(partition as u32, offset as u64, event, now);
                        sourced.late &= !settled;
                        if !sourced.late {
                            let minute = minute_of(sourced.event.event_ms());
                            slot.rebuild.entry(minute).or_insert((offset, before));
                            slot.first_ms.get_or_insert(sourced.event.event_ms());
                        }
                        // Records that are not written raw (locations; ride events with
                        // `sinks.raw_events = false`) are never handed: only their
                        // dead letters move the partition's written-to offset.
                        handed &= R::STORED && config.raw;
                        if owns(&config.cities, sourced.event.city()) {
                            counters.events.fetch_add(1, Ordering::Relaxed);
                            if sourced.late {
                                counters.late.fetch_add(1, Ordering::Relaxed);
                            }
                            let item = if settled {
                                counters.replayed.fetch_add(1, Ordering::Relaxed);
                                handed.then_some(Ingested::Settled(sourced))
                            } else if rewrite {
                                Some(Ingested::Event(sourced))
                            } else {
                                counters.replayed.fetch_add(1, Ordering::Relaxed);
                                Some(Ingested::Replayed(sourced))
                            };
                            if let Some(item) = item {
                                pending.push(time, item, &stamper, output);
                            }
                        } else {
                            // Another job's city: it moved the clock, nothing to write.
                            counters.other_cities.fetch_add(1, Ordering::Relaxed);
                            handed = false;
                        }
                    }
                    Err(error) => {
                        let count = counters.count_invalid(&error);
                        if count < 10 || count.is_power_of_two() {
                            warn!(worker, partition, offset, %error, reason = error.reason(), invalid_so_far = count + 1, to_dead_letters = config.dead_letters, "invalid message");
                        }
                        handed &= config.dead_letters;
                        if handed {
                            let dead = DeadLetter::invalid(
                                partition as u32,
                                offset as u64,
                                message.key().map(<[u8]>::to_vec),
                                payload.to_vec(),
                                &error,
                            )
                            .from_topic(&config.topic);
                            let held = *stamper.capability().expect("held while reading").time();
                            pending.push(held, Ingested::Dead(dead), &stamper, output);
                        }
                    }
                }
                if handed {
                    slot.sent = offset + 1;
                }
                if slot.end.is_some_and(|end| offset + 1 >= end) {
                    slot.finished = true;
                    stamper.tracker.finish(partition as u32);
                    let mut done = TopicPartitionList::new();
                    done.add_partition(&config.topic, partition);
                    let _ = consumer.pause(&done);
                }
            }
            pending.send(&stamper, output);
            // Drained what was fetched: which partitions are at their end? (librdkafka's
            // partition-EOF events reach the client context without their partition, so the
            // position is compared with the high watermark of the last fetch response.)
            if !backpressure && handled < MAX_MESSAGES_PER_ACTIVATION {
                // The consumer's position also moves past offsets that are never delivered
                // (transaction markers), which the last message alone would not show.
                if let Ok(positions) = consumer.position() {
                    for slot in owned.iter_mut() {
                        let position = positions.find_partition(&config.topic, slot.partition).map(|p| p.offset());
                        if let Some(Offset::Offset(position)) = position {
                            slot.next = slot.next.max(position);
                        }
                    }
                }
                for slot in owned.iter_mut().filter(|s| !s.finished) {
                    let partition = slot.partition as u32;
                    if slot.end.is_some_and(|end| slot.next >= end) {
                        slot.finished = true;
                        stamper.tracker.finish(partition);
                        continue;
                    }
                    if let Some(high) = cached_high_watermark(&consumer, &topic, slot.partition) {
                        stamper.tracker.set_at_end(partition, slot.next >= high, now);
                    }
                }
            }

            // A checkpoint was confirmed: commit the same offsets to the consumer group.
            if checkpoint_in_flight.as_ref().is_some_and(|(ticket, _)| ticket.is_done()) {
                let (_, offsets) = checkpoint_in_flight.take().expect("checked");
                match consumer.commit(&offsets, CommitMode::Async) {
                    Ok(()) => {
                        counters.gauges.offsets_committed.fetch_add(offsets.count() as u64, Ordering::Relaxed);
                    }
                    Err(error) => warn!(worker, %error, "offset commit failed (the checkpoint in ClickHouse stands)"),
                }
            }
            if checkpoint_in_flight.is_none() && last_checkpoint.elapsed() >= config.checkpoint_interval {
                last_checkpoint = Instant::now();
                let frontier = durable.with_frontier(|f| f.first().copied()).unwrap_or(u64::MAX);
                let finalized = frontier.max(floor);
                let first_open = finalized.saturating_add(1).saturating_sub(rebuild_minutes);
                let progress = progress.borrow();
                let written_at_us = chrono::Utc::now().timestamp_micros().max(0) as u64;
                let mut records = Vec::new();
                let mut offsets = TopicPartitionList::new();
                for slot in owned.iter_mut() {
                    let partition = slot.partition as u32;
                    let clock = stamper.tracker.max_ms(partition);
                    if let Some((next_offset, max_event_ms, written_to)) = slot.checkpoint(first_open, clock, progress.durable(partition)) {
                        records.push(CheckpointRecord {
                            consumer_group: config.group_id.clone(),
                            topic: config.topic.clone(),
                            kafka_partition: partition,
                            next_offset,
                            max_event_ms,
                            written_to,
                            finalized_through: finalized,
                            written_at_us,
                        });
                        let _ = offsets.add_partition_offset(&config.topic, slot.partition, Offset::Offset(next_offset));
                    }
                }
                if !records.is_empty() {
                    let batch = Batch { checkpoints: records, ..Batch::default() };
                    checkpoint_in_flight = Some((shared.writer.submit(batch, Some(wake.clone())), offsets));
                }
            }

            // Every partition read to its end: leave the final checkpoints for the job, which
            // writes them once the dataflow (and so every sink) is done.
            if !finals_posted && stamper.tracker.all_finished() {
                finals_posted = true;
                let written_at_us = chrono::Utc::now().timestamp_micros().max(0) as u64;
                let mut finals = shared.finals.lock().expect("not poisoned");
                for slot in &owned {
                    let partition = slot.partition as u32;
                    let clock = stamper.tracker.max_ms(partition);
                    let last_window_end = clock.map_or(0, |ms| minute_of(ms) + length);
                    finals.push(CheckpointRecord {
                        consumer_group: config.group_id.clone(),
                        topic: config.topic.clone(),
                        kafka_partition: partition,
                        next_offset: slot.read_to(),
                        max_event_ms: clock,
                        written_to: slot.read_to(),
                        finalized_through: last_window_end.max(floor),
                        written_at_us,
                    });
                }
            }
            // For /metrics: this worker's partitions, a few times a second (not per event).
            if now.saturating_duration_since(gauges_at) >= GAUGES_INTERVAL {
                gauges_at = now;
                let partitions = owned.iter().map(|slot| {
                    let partition = slot.partition as u32;
                    let high = cached_high_watermark(&consumer, &topic, slot.partition);
                    let gauge = crate::metrics::PartitionGauge {
                        lag: high.map(|high| (high - slot.read_to()).max(0)),
                        max_event_ms: stamper.tracker.max_ms(partition),
                        idle: stamper.tracker.is_idle(partition, now),
                    };
                    (slot.partition, gauge)
                });
                counters.gauges.record(&config.topic, partitions, stamper.tracker.published_ms());
            }
            let post = stamper.post_marks(now, &shared.board, slot_on_board);
            if last_marks != Some(post.marks) {
                if let Some(held) = marks_capability.as_ref() {
                    marks_output.activate().session(held).give(post);
                }
                last_marks = Some(post.marks);
            }
            if !stamper.advance_from(&shared.board) {
                marks_capability = None;
                info!(worker, "source finished");
                return;
            }
            if max_drift_ms > 0 {
                align(&consumer, &config.topic, &mut owned, &stamper, max_drift_ms, worker);
            }
            if handled == MAX_MESSAGES_PER_ACTIVATION {
                activator.activate();
            } else {
                activator.activate_after(QUIET_POLL);
            }
        }
    });
    marks_stream
        .broadcast()
        .sink(Pipeline, "MarksBoard", move |(input, _)| {
            input.for_each(|_, posts| {
                for post in posts.drain(..) {
                    board.record(post);
                }
            });
        });
    Ok(stream)
}

/// Watermark alignment (as Flink's): pauses every owned partition whose mark (largest event
/// time minus the allowed lateness) runs more than `max_drift_ms` ahead of the job's
/// watermark, and resumes it once it is within half of that. Brokers that answer a fetch
/// with one partition's large chunk (Tansu) would otherwise deliver a catch-up partition by
/// partition, holding the watermark (the minimum) still until the last one arrives; paused,
/// the leaders wait and the laggards are fetched, so windows close progressively and the
/// checkpoints' resume point advances. The partition holding the watermark is never ahead
/// of it, so alignment cannot stall the job; finished and idle partitions do not hold it.
///
/// While the watermark is still unknown (a partition has delivered nothing yet), the
/// reference is the earliest first event time this worker read: a partition that ran
/// `max_drift_ms` past it waits, so the broker serves the partitions that have delivered
/// nothing, and the watermark becomes known after one chunk of each rather than after
/// whole partitions. Once every partition has delivered, the watermark takes over.
fn align(
    consumer: &BaseConsumer<settings::ConsumerLog>,
    topic: &str,
    owned: &mut [OwnedPartition],
    stamper: &EventStamper,
    max_drift_ms: i64,
    worker: usize,
) {
    let lateness = stamper.tracker.lateness_ms();
    let earliest_start = owned.iter().filter_map(|s| s.first_ms).min();
    let Some(watermark) = stamper
        .tracker
        .published_ms()
        .or(earliest_start.map(|ms| ms - lateness))
    else {
        return;
    };
    // A finished partition is paused for good by the read loop.
    for slot in owned.iter_mut().filter(|s| !s.finished) {
        let ahead = stamper
            .tracker
            .max_ms(slot.partition as u32)
            .map_or(0, |max| max - lateness - watermark);
        let pause = !slot.paused && ahead > max_drift_ms;
        let resume = slot.paused && ahead <= max_drift_ms / 2;
        if !pause && !resume {
            continue;
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, slot.partition);
        let result = if pause {
            consumer.pause(&list)
        } else {
            consumer.resume(&list)
        };
        match result {
            Ok(()) => {
                slot.paused = pause;
                tracing::debug!(
                    worker,
                    partition = slot.partition,
                    ahead_ms = ahead,
                    paused = pause,
                    "watermark alignment"
                );
            }
            Err(error) => {
                warn!(worker, partition = slot.partition, %error, "cannot pause or resume a partition for watermark alignment")
            }
        }
    }
}

/// Where a partition resumes: its checkpoint's offset, or the oldest retained offset `low`
/// when retention deleted messages after the checkpoint (or there is none); and how many
/// messages the job lost that way (0 for a fresh start, which has nothing to lose).
fn resume_point(checkpoint: Option<i64>, low: i64) -> (i64, u64) {
    match checkpoint {
        Some(next) if next < low => (low, (low - next) as u64),
        Some(next) => (next, 0),
        None => (low, 0),
    }
}

/// The high watermark librdkafka cached from the last fetch response for a partition, with
/// no broker round trip (asking the broker would queue behind a long fetch on the same
/// connection). `None` until a fetch has answered for it.
fn cached_high_watermark(
    consumer: &BaseConsumer<settings::ConsumerLog>,
    topic: &CString,
    partition: i32,
) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives (borrowed here), `topic` is
    // a NUL-terminated string that outlives the call, and `low`/`high` are valid for writes;
    // rd_kafka_get_watermark_offsets only reads librdkafka's own cached state under its lock.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use super::resume_point;

    #[test]
    fn a_checkpoint_behind_retention_is_counted_not_silently_skipped() {
        assert_eq!(resume_point(Some(100), 40), (100, 0));
        assert_eq!(resume_point(Some(40), 40), (40, 0));
        assert_eq!(resume_point(Some(10), 40), (40, 30));
        assert_eq!(resume_point(None, 40), (40, 0));
    }
}
