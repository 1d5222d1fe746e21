//! The Kafka source operator: the partitions of an input topic drive timely's frontier.
//!
//! One operator per input topic and worker: `ride-events`
//! ([`RideEvent`](dataflows::event::RideEvent)) and `driver-locations`
//! ([`DriverLocation`](dataflows::event::DriverLocation)) are read by the same code, generic
//! over [`SourceRecord`] (how a message is parsed, its city, whether it is stored raw). Each
//! topic has its own partitions, lateness clocks, checkpoints (per group, topic and
//! partition) and dead letters (headers name the topic); both post their marks to one
//! [`MarksBoard`](dataflows::watermark::MarksBoard), so the job's watermark is the minimum over the non-idle partitions of
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
//! few milliseconds instead of spinning a core. Each partition's fetched messages wait in a
//! queue of their own, read in turn, so that watermark alignment (`align`) can hold a
//! partition that runs ahead without dropping what was fetched.
//!
//! An activation is a sequence of named steps: `next_message` and `Reading::message`
//! (stamping each message with the [`Stamping`] the file source uses too), `pause`,
//! `note_ends`,
//! the [`Checkpointer`] (in `crate::source::checkpoint`, with the per-partition
//! [`PartitionLog`]), `record_gauges`, the marks, and `align`.
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
use std::ffi::CString;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::event::check_not_ahead;
use dataflows::partitioned_source::{minute_of, EventStamper};
use dataflows::watermark::{LocalMarks, MarksPost, WatermarkTracker};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{BorrowedMessage, Message};
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
use crate::source::checkpoint::{resume_point, Checkpointer, PartitionLog, PartitionView};
use crate::source::pending::Pending;
use crate::source::{
    IngestProgress, Ingested, SourceCounters, SourceRecord, SourceShared, Stamping,
};

/// Messages handled per activation, so other operators get to run.
const MAX_MESSAGES_PER_ACTIVATION: usize = 4096;
/// How soon to look again when nothing arrived.
const QUIET_POLL: Duration = Duration::from_millis(10);
/// Rows waiting for the writer (per process) above which sources stop reading.
const MAX_INFLIGHT_ROWS: usize = 60_000;
/// How often a source records its partitions' lag and clocks for `/metrics`.
const GAUGES_INTERVAL: Duration = Duration::from_millis(250);

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
    /// This source's first slot on the shared
    /// [`MarksBoard`](dataflows::watermark::MarksBoard) (worker `w` posts as
    /// `board_offset + w`): 0 for ride events, the total worker count for locations.
    pub board_offset: usize,
    /// How often to checkpoint.
    pub checkpoint_interval: Duration,
    /// Watermark alignment: how far a partition's mark may run ahead of the job's watermark
    /// before it is held (zero: never).
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

/// One owned partition's reading state.
struct OwnedPartition {
    partition: i32,
    /// The end offset to stop at (`until_end`).
    end: Option<i64>,
    /// The next offset to read.
    next: i64,
    finished: bool,
    /// Held by watermark alignment (too far ahead of the job's watermark): not polled.
    held: bool,
    /// The event time of the first on-time event this run read from it (alignment's
    /// reference while the job's watermark is still unknown).
    first_ms: Option<i64>,
    /// What its checkpoints are made from.
    log: PartitionLog,
}

impl OwnedPartition {
    /// How far this partition has been read (never past its `until_end` end).
    fn read_to(&self) -> i64 {
        self.end.map_or(self.next, |end| self.next.min(end))
    }
}

/// The partitions as the checkpointer sees them, with their clocks now.
fn views<'a>(
    owned: &'a mut [OwnedPartition],
    stamper: &'a EventStamper,
) -> impl Iterator<Item = PartitionView<'a>> {
    owned.iter_mut().map(|slot| PartitionView {
        partition: slot.partition,
        read_to: slot.read_to(),
        clock: stamper.tracker.max_ms(slot.partition as u32),
        log: &mut slot.log,
    })
}

/// This worker's consumer, assigned its partitions at their resume offsets, with each
/// partition's fetched messages in a queue of its own (in the order of the partitions), so
/// that alignment holds a partition by not polling it and keeps what librdkafka fetched
/// (`pause` would drop it, and it would be fetched again).
fn assign(
    config: &SourceConfig,
    worker: usize,
    peers: usize,
    shared: &SourceShared,
) -> Result<Assigned, KafkaError> {
    let mine: Vec<i32> = (0..config.partitions)
        .filter(|p| *p as usize % peers == worker)
        .collect();
    let consumer: BaseConsumer<settings::ConsumerLog> = settings::partitioned_consumer(
        &config.brokers,
        &config.group_id,
        &format!("ridepulse-worker-{worker}"),
    )
    .create_with_context(settings::ConsumerLog)?;
    let consumer = Arc::new(consumer);
    let mut assignment = TopicPartitionList::new();
    let mut starts = Vec::new();
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
        starts.push((partition, start, high, written_to));
    }
    consumer.assign(&assignment)?;
    // Split after `assign` (which undoes splits) and before the first poll (so no message of
    // the partition waits in the consumer's own queue).
    let (mut owned, mut queues) = (Vec::new(), Vec::new());
    for (partition, start, high, written_to) in starts {
        let queue = consumer
            .split_partition_queue(&config.topic, partition)
            .ok_or(KafkaError::Client(RdKafkaError::Subscription(format!(
                "librdkafka has no queue for partition {partition} of `{}`",
                config.topic
            ))))?;
        queues.push(queue);
        owned.push(OwnedPartition {
            partition,
            end: config.until_end.then_some(high),
            next: start,
            // An until_end partition with nothing left (its end at its start, which is not
            // always 0 once retention has deleted messages) has nothing to wait for.
            finished: config.until_end && high <= start,
            held: false,
            first_ms: None,
            log: PartitionLog::new(start, written_to),
        });
    }
    info!(worker, partitions = ?mine, topic = %config.topic, resumed = !shared.resume.partitions.is_empty(), "source assigned");
    Ok((consumer, owned, queues))
}

/// What [`assign`] sets up: the consumer, the owned partitions and their queues.
type Assigned = (
    Arc<BaseConsumer<settings::ConsumerLog>>,
    Vec<OwnedPartition>,
    Vec<PartitionQueue<settings::ConsumerLog>>,
);

/// Messages the read loop takes from one partition's queue before it turns to the next.
const PER_TURN: usize = 512;

/// Which partition queue the read loop polls next: each in turn, up to [`PER_TURN`]
/// messages, so that no partition waits behind another's backlog.
#[derive(Debug, Default)]
struct Rotation {
    at: usize,
    taken: usize,
}

/// The next message fetched, if any: from the consumer's own queue (which serves librdkafka's
/// events; it holds messages only if some were fetched before the split), then from the
/// partition queues in turn, skipping the held and the finished. Partition ends are read from
/// positions, not from librdkafka's end-of-partition events; client errors are logged, and
/// librdkafka retries.
fn next_message<'c>(
    consumer: &'c BaseConsumer<settings::ConsumerLog>,
    queues: &'c [PartitionQueue<settings::ConsumerLog>],
    owned: &[OwnedPartition],
    rotation: &mut Rotation,
    worker: usize,
) -> Option<BorrowedMessage<'c>> {
    if let Some(message) = take(consumer.poll(Duration::ZERO), worker) {
        return Some(message);
    }
    for _ in 0..=owned.len() {
        let at = rotation.at % owned.len().max(1);
        let ready = owned
            .get(at)
            .is_some_and(|slot| !slot.held && !slot.finished);
        if ready && rotation.taken < PER_TURN {
            if let Some(message) = take(queues[at].poll(Duration::ZERO), worker) {
                rotation.taken += 1;
                return Some(message);
            }
        }
        rotation.at = (at + 1) % owned.len().max(1);
        rotation.taken = 0;
    }
    None
}

/// A message from a poll, if it was one (end-of-partition events are skipped).
fn take<'c>(
    polled: Option<Result<BorrowedMessage<'c>, RdKafkaError>>,
    worker: usize,
) -> Option<BorrowedMessage<'c>> {
    match polled? {
        Ok(message) => Some(message),
        Err(RdKafkaError::PartitionEOF(_)) => None,
        Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => None,
        Err(error) => {
            // Transient client errors (broker restarts) are retried by librdkafka.
            warn!(worker, %error, "kafka consumer error");
            None
        }
    }
}

/// How the source turns one message of a partition into what it emits.
struct Reading {
    stamping: Stamping,
    /// SPEC §2's `max_future`, in ms.
    max_future_ms: i64,
    /// Whether valid records are handed to the ingest sink (`STORED` and `sinks.raw_events`).
    store: bool,
}

impl Reading {
    /// What a message becomes (with the time to emit it at), if anything; notes holes, its
    /// rebuild point and what was handed to the ingest sink in the partition's state.
    fn message<R: SourceRecord>(
        &self,
        slot: &mut OwnedPartition,
        message: &BorrowedMessage<'_>,
        stamper: &mut EventStamper,
        now: Instant,
    ) -> Option<(u64, Ingested<R>)> {
        let counters = &self.stamping.counters;
        let (partition, offset) = (slot.partition, message.offset());
        if offset > slot.next {
            // A hole in a partition read in order: compaction removed these messages
            // (driver-locations is compacted) before this job read them. Never silent.
            let gap = (offset - slot.next) as u64;
            let before = counters.compacted.fetch_add(gap, Ordering::Relaxed);
            if before == 0 || (before + gap).is_power_of_two() {
                warn!(worker = self.stamping.worker, partition, expected = slot.next, offset, missing = gap, compacted_so_far = before + gap, topic = %self.stamping.topic, "offsets missing from the partition (compacted away before this job read them): supply state is rebuilt without them");
            }
        }
        slot.next = slot.next.max(offset + 1);
        if slot.finished || slot.end.is_some_and(|end| offset >= end) {
            return None;
        }
        // Not written before a restart (a message that was only rebuilds state).
        let rewrite = slot.log.rewrites(offset);
        let payload = message.payload().unwrap_or_default();
        let parsed = R::parse(payload).and_then(|record| {
            let at = dataflows::event::Timestamp(record.event_ms());
            check_not_ahead(at, message.timestamp().to_millis(), self.max_future_ms)?;
            Ok(record)
        });
        let emitted = match parsed {
            Ok(record) => {
                let judged =
                    self.stamping
                        .judge(stamper, partition as u32, offset as u64, record, now);
                if !judged.sourced.late {
                    let ms = judged.sourced.event.event_ms();
                    slot.log.on_time(minute_of(ms), offset, judged.clock_before);
                    slot.first_ms.get_or_insert(ms);
                }
                // Records that are not written raw (locations; ride events with
                // `sinks.raw_events = false`) are never handed: only their dead letters
                // move the partition's written-to offset.
                let handed = rewrite && self.store && judged.owned;
                let sourced = judged.sourced;
                let item = if !judged.owned {
                    // Another job's city: it moved the clock, nothing to write.
                    None
                } else if judged.settled {
                    counters.replayed.fetch_add(1, Ordering::Relaxed);
                    handed.then_some(Ingested::Settled(sourced))
                } else if rewrite {
                    Some(Ingested::Event(sourced))
                } else {
                    counters.replayed.fetch_add(1, Ordering::Relaxed);
                    Some(Ingested::Replayed(sourced))
                };
                if handed {
                    slot.log.handed(offset);
                }
                item.map(|item| (judged.time, item))
            }
            Err(error) => {
                let dead = self.stamping.reject(
                    &error,
                    partition as u32,
                    offset as u64,
                    None,
                    message.key(),
                    payload,
                );
                match dead {
                    Some(dead) if rewrite => {
                        slot.log.handed(offset);
                        let held = *stamper.capability().expect("held while reading").time();
                        Some((held, Ingested::Dead(dead)))
                    }
                    _ => None,
                }
            }
        };
        if slot.end.is_some_and(|end| offset + 1 >= end) {
            slot.finished = true;
            stamper.tracker.finish(partition as u32);
        }
        emitted
    }
}

/// Which partitions are at their end, once the fetched messages are drained: a finished
/// `until_end` partition stops holding the watermark, and one at its high watermark may
/// turn idle. (librdkafka's partition-EOF events reach the client context without their
/// partition, so the position is compared with the high watermark of the last fetch
/// response.)
fn note_ends(
    consumer: &BaseConsumer<settings::ConsumerLog>,
    topic: &str,
    topic_c: &CString,
    owned: &mut [OwnedPartition],
    stamper: &mut EventStamper,
    now: Instant,
) {
    // The consumer's position also moves past offsets that are never delivered
    // (transaction markers), which the last message alone would not show.
    if let Ok(positions) = consumer.position() {
        for slot in owned.iter_mut() {
            let position = positions
                .find_partition(topic, slot.partition)
                .map(|p| p.offset());
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
        if let Some(high) = cached_high_watermark(consumer, topic_c, slot.partition) {
            stamper
                .tracker
                .set_at_end(partition, slot.next >= high, now);
        }
    }
}

/// Stops fetching a partition read to its `until_end` end, so the others get the bandwidth.
fn pause(consumer: &BaseConsumer<settings::ConsumerLog>, topic: &str, partition: i32) {
    let mut done = TopicPartitionList::new();
    done.add_partition(topic, partition);
    let _ = consumer.pause(&done);
}

/// Tells the consumer group the offsets of a durable checkpoint (the checkpoint in
/// ClickHouse is what a restart reads; the group's offsets are for Kafka's own tools).
fn commit(
    consumer: &BaseConsumer<settings::ConsumerLog>,
    topic: &str,
    offsets: &[(i32, i64)],
    counters: &SourceCounters,
    worker: usize,
) {
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    match consumer.commit(&list, CommitMode::Async) {
        Ok(()) => {
            counters
                .gauges
                .offsets_committed
                .fetch_add(list.count() as u64, Ordering::Relaxed);
        }
        Err(error) => {
            warn!(worker, %error, "offset commit failed (the checkpoint in ClickHouse stands)")
        }
    }
}

/// For /metrics: this worker's partitions' lag, clocks and idleness.
fn record_gauges(
    consumer: &BaseConsumer<settings::ConsumerLog>,
    topic: &str,
    topic_c: &CString,
    owned: &[OwnedPartition],
    stamper: &EventStamper,
    counters: &SourceCounters,
    now: Instant,
) {
    let partitions = owned.iter().map(|slot| {
        let partition = slot.partition as u32;
        let high = cached_high_watermark(consumer, topic_c, slot.partition);
        let gauge = crate::metrics::PartitionGauge {
            lag: high.map(|high| (high - slot.read_to()).max(0)),
            max_event_ms: stamper.tracker.max_ms(partition),
            idle: stamper.tracker.is_idle(partition, now),
        };
        (slot.partition, gauge)
    });
    counters
        .gauges
        .record(topic, partitions, stamper.tracker.published_ms());
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
    let (consumer, mut owned, queues) = assign(config, worker, peers, &shared)?;
    let config = config.clone();
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
        let settled_before = resume.first_open_minute(config.rebuild_minutes);
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
        let topic_c = CString::new(config.topic.clone()).expect("topic names have no NUL");
        let mut stamper = EventStamper::new(tracker, capability);
        let reading = Reading {
            stamping: Stamping {
                worker,
                topic: config.topic.clone(),
                cities: config.cities.clone(),
                dead_letters: config.dead_letters,
                settled_before,
                counters: shared.counters.clone(),
            },
            max_future_ms: config.max_future.as_millis() as i64,
            store: R::STORED && config.raw,
        };
        let mut checkpointer = Checkpointer::new(
            &config.group_id,
            &config.topic,
            config.checkpoint_interval,
            config.rebuild_minutes,
            config.window_length_minutes,
            floor,
        );
        let counters = shared.counters.clone();
        let max_drift_ms = config.max_drift.as_millis() as i64;
        let (mut gauges_at, mut last_activation) = (Instant::now(), Instant::now());
        let mut pending = Pending::new();
        let mut rotation = Rotation::default();
        move |_frontiers| {
            if stamper.capability().is_none() {
                return;
            }
            let mut data = data_output.activate();
            let output = &mut data;
            let now = Instant::now();

            // Reading and stamping: a bounded number of messages, unless the writer is behind.
            let mut handled = 0;
            let backpressure = shared.writer.inflight_rows() > MAX_INFLIGHT_ROWS;
            if backpressure {
                counters
                    .gauges
                    .add_backpressure(now.saturating_duration_since(last_activation));
            }
            last_activation = now;
            while !backpressure && handled < MAX_MESSAGES_PER_ACTIVATION {
                let Some(message) = next_message(&consumer, &queues, &owned, &mut rotation, worker)
                else {
                    break;
                };
                handled += 1;
                let partition = message.partition();
                let Some(slot) = owned.iter_mut().find(|s| s.partition == partition) else {
                    continue;
                };
                let was_finished = slot.finished;
                if let Some((time, item)) = reading.message(slot, &message, &mut stamper, now) {
                    pending.push(time, item, &stamper, output);
                }
                if slot.finished && !was_finished {
                    pause(&consumer, &config.topic, partition);
                }
            }
            pending.send(&stamper, output);
            if !backpressure && handled < MAX_MESSAGES_PER_ACTIVATION {
                note_ends(
                    &consumer,
                    &config.topic,
                    &topic_c,
                    &mut owned,
                    &mut stamper,
                    now,
                );
            }

            // Checkpointing: commit a confirmed checkpoint's offsets, write the next one.
            if let Some(offsets) = checkpointer.confirmed() {
                commit(&consumer, &config.topic, &offsets, &counters, worker);
            }
            if checkpointer.due() {
                let frontier = durable
                    .with_frontier(|f| f.first().copied())
                    .unwrap_or(u64::MAX);
                let partitions = views(&mut owned, &stamper);
                checkpointer.tick(
                    partitions,
                    frontier,
                    &progress.borrow(),
                    &shared.writer,
                    &wake,
                );
            }
            // Every partition read to its end: leave the final checkpoints for the job,
            // which writes them once the dataflow (and so every sink) is done.
            if stamper.tracker.all_finished() {
                checkpointer.post_finals(views(&mut owned, &stamper), &shared.finals);
            }

            // The watermark: this worker's marks to every worker, the capability after it.
            if now.saturating_duration_since(gauges_at) >= GAUGES_INTERVAL {
                gauges_at = now;
                record_gauges(
                    &consumer,
                    &config.topic,
                    &topic_c,
                    &owned,
                    &stamper,
                    &counters,
                    now,
                );
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
                align(&mut owned, &stamper, max_drift_ms, worker);
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

/// Watermark alignment (as Flink's): holds every owned partition whose mark (largest event
/// time minus the allowed lateness) runs more than `max_drift_ms` ahead of the job's
/// watermark, and releases it once it is within half of that. Brokers that answer a fetch
/// with one partition's large chunk (Tansu) would otherwise deliver a catch-up partition by
/// partition, holding the watermark (the minimum) still until the last one arrives; held,
/// the leaders are not read, their queues fill to librdkafka's prefetch limit and stop being
/// fetched, and the laggards are, so windows close progressively and the checkpoints'
/// resume point advances. The partition holding the watermark is never ahead of it, so
/// alignment cannot stall the job; finished and idle partitions do not hold it.
///
/// Holding is not librdkafka's `pause`, which drops the partition's prefetched messages:
/// with Tansu's chunks of several minutes of event time, more than the allowed drift, every
/// chunk paused its partition, and the job fetched much of the backlog twice
/// (docs/benchmarks.md, issue 13's sixth step).
///
/// While the watermark is still unknown (a partition has delivered nothing yet), the
/// reference is the earliest first event time this worker read: a partition that ran
/// `max_drift_ms` past it waits, so the broker serves the partitions that have delivered
/// nothing, and the watermark becomes known after one chunk of each rather than after
/// whole partitions. Once every partition has delivered, the watermark takes over.
fn align(owned: &mut [OwnedPartition], stamper: &EventStamper, max_drift_ms: i64, worker: usize) {
    let lateness = stamper.tracker.lateness_ms();
    let earliest_start = owned.iter().filter_map(|s| s.first_ms).min();
    let Some(watermark) = stamper
        .tracker
        .published_ms()
        .or(earliest_start.map(|ms| ms - lateness))
    else {
        return;
    };
    for slot in owned.iter_mut().filter(|s| !s.finished) {
        let ahead = stamper
            .tracker
            .max_ms(slot.partition as u32)
            .map_or(0, |max| max - lateness - watermark);
        let hold = !slot.held && ahead > max_drift_ms;
        let release = slot.held && ahead <= max_drift_ms / 2;
        if hold || release {
            slot.held = hold;
            tracing::debug!(
                worker,
                partition = slot.partition,
                ahead_ms = ahead,
                held = hold,
                "watermark alignment"
            );
        }
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
