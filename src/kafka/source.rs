//! The Kafka source operator: `ride-events` partitions drive timely's frontier.
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

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::event::RideEvent;
use dataflows::partitioned_source::{EventStamper, SourcedEvent};
use dataflows::watermark::{MarksBoard, WatermarkTracker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use tracing::{info, warn};

use super::{settings, KafkaError};

/// Messages handled per activation, so other operators get to run.
const MAX_MESSAGES_PER_ACTIVATION: usize = 4096;
/// How soon to look again when nothing arrived.
const QUIET_POLL: Duration = Duration::from_millis(10);

/// Where and how the source reads.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The ride-events topic.
    pub topic: String,
    /// Partition count of the topic (looked up once before the dataflow starts).
    pub partitions: i32,
    /// The consumer group offsets will be committed under.
    pub group_id: String,
    /// SPEC §3's allowed lateness.
    pub allowed_lateness: Duration,
    /// SPEC §3's idle timeout.
    pub idle_timeout: Duration,
    /// Stop at the end offsets that exist at start.
    pub until_end: bool,
}

/// Counters the source keeps for the job's report.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Valid events read.
    pub events: AtomicU64,
    /// Late events among them.
    pub late: AtomicU64,
    /// Messages that were not valid events (set aside for the dead-letter topic).
    pub invalid: AtomicU64,
}

/// The source for this worker. Fails only if the consumer cannot be created or assigned.
pub fn kafka_source<'scope>(
    scope: Scope<'scope, u64>,
    config: &SourceConfig,
    counters: Arc<SourceCounters>,
    board: Arc<MarksBoard>,
) -> Result<StreamVec<'scope, u64, SourcedEvent>, KafkaError> {
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
    // Per owned partition: the end offset to stop at (until_end) and where reading starts.
    let mut ends: Vec<(i32, Option<i64>)> = Vec::new();
    let mut starts: Vec<i64> = Vec::new();
    for &partition in &mine {
        let (low, high) =
            consumer.fetch_watermarks(&config.topic, partition, Duration::from_secs(15))?;
        assignment.add_partition_offset(&config.topic, partition, Offset::Offset(low))?;
        ends.push((partition, config.until_end.then_some(high)));
        starts.push(low);
    }
    consumer.assign(&assignment)?;
    info!(worker, partitions = ?mine, topic = %config.topic, "source assigned");
    let config = config.clone();
    Ok(source(scope, "KafkaSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let now = Instant::now();
        let mut tracker = WatermarkTracker::new(config.allowed_lateness, config.idle_timeout);
        // An until_end partition with nothing retained (its end at its start, which is not
        // always 0 once retention has deleted messages) has nothing to wait for.
        let mut finished: Vec<bool> = ends
            .iter()
            .zip(&starts)
            .map(|((_, end), start)| end.is_some_and(|end| end <= *start))
            .collect();
        for ((partition, _), done) in ends.iter().zip(&finished) {
            tracker.add_partition(*partition as u32, now);
            if *done {
                tracker.finish(*partition as u32);
            }
        }
        // The next offset to read per owned partition: at its end when it reaches the high
        // watermark librdkafka caches from every fetch response.
        let mut next: Vec<i64> = starts.clone();
        let topic = CString::new(config.topic.clone()).expect("topic names have no NUL");
        let mut stamper = EventStamper::new(tracker, capability);
        move |output| {
            if stamper.capability().is_none() {
                return;
            }
            let now = Instant::now();
            let mut handled = 0;
            while handled < MAX_MESSAGES_PER_ACTIVATION {
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
                let Some(slot) = ends.iter().position(|(p, _)| *p == partition) else { continue };
                next[slot] = next[slot].max(offset + 1);
                if finished[slot] {
                    continue;
                }
                if let Some(end) = ends[slot].1 {
                    if offset >= end {
                        continue;
                    }
                }
                match RideEvent::parse(message.payload().unwrap_or_default()) {
                    Ok(event) => {
                        let (capability, sourced) = stamper.stamp(partition as u32, offset as u64, event, now);
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        if sourced.late {
                            counters.late.fetch_add(1, Ordering::Relaxed);
                        }
                        output.session(&capability).give(sourced);
                    }
                    Err(error) => {
                        let count = counters.invalid.fetch_add(1, Ordering::Relaxed);
                        if count < 10 || count.is_power_of_two() {
                            warn!(worker, partition, offset, %error, invalid_so_far = count + 1, "invalid message set aside");
                        }
                    }
                }
                if let Some(end) = ends[slot].1 {
                    if offset + 1 >= end {
                        finished[slot] = true;
                        stamper.tracker.finish(partition as u32);
                        let mut done = TopicPartitionList::new();
                        done.add_partition(&config.topic, partition);
                        let _ = consumer.pause(&done);
                    }
                }
            }
            // Drained what was fetched: which partitions are at their end? (librdkafka's
            // partition-EOF events reach the client context without their partition, so the
            // position is compared with the high watermark of the last fetch response.)
            if handled < MAX_MESSAGES_PER_ACTIVATION {
                // The consumer's position also moves past offsets that are never delivered
                // (transaction markers), which the last message alone would not show.
                if let Ok(positions) = consumer.position() {
                    for (slot, (partition, _)) in ends.iter().enumerate() {
                        let position = positions.find_partition(&config.topic, *partition).map(|p| p.offset());
                        if let Some(Offset::Offset(position)) = position {
                            next[slot] = next[slot].max(position);
                        }
                    }
                }
                for (slot, (partition, end)) in ends.iter().enumerate() {
                    if finished[slot] {
                        continue;
                    }
                    if end.is_some_and(|end| next[slot] >= end) {
                        finished[slot] = true;
                        stamper.tracker.finish(*partition as u32);
                        continue;
                    }
                    if let Some(high) = cached_high_watermark(&consumer, &topic, *partition) {
                        stamper.tracker.set_at_end(*partition as u32, next[slot] >= high, now);
                    }
                }
            }
            if !stamper.advance_shared(now, &board, worker) {
                info!(worker, "source finished");
                return;
            }
            if handled == MAX_MESSAGES_PER_ACTIVATION {
                activator.activate();
            } else {
                activator.activate_after(QUIET_POLL);
            }
        }
    })
    .container::<Vec<_>>())
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
