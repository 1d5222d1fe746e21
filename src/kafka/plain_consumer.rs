//! A bare consumer that reads a topic's backlog, from the oldest message to the end offsets
//! that exist when it starts, as fast as the broker serves it.
//!
//! Two uses: the throughput baseline that every job figure is compared with
//! (`ridepulse consume --stats`), and reading back what a test or a demo wrote.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{settings, topics, KafkaError};

/// One message as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Vec<u8>,
    /// Its headers as (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a pass over the backlog measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadStats {
    /// Messages read.
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// From the first poll to the last message.
    pub elapsed: Duration,
    /// The longest gap between two consecutive messages.
    pub longest_pause: Duration,
    /// Partitions read.
    pub partitions: usize,
}

impl ReadStats {
    /// Messages per second over the pass.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `key=value` line `ridepulse consume` prints for a pass over `topic`.
    pub fn report(&self, topic: &str) -> String {
        format!(
            "topic={topic} partitions={} messages={} bytes={} seconds={:.3} messages_per_sec={:.0} longest_pause_ms={:.1}",
            self.partitions,
            self.messages,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.longest_pause.as_secs_f64() * 1000.0
        )
    }
}

/// What `ridepulse consume` found in a topic's backlog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BacklogReport {
    /// The topic.
    pub topic: String,
    /// What the pass measured.
    pub stats: ReadStats,
    /// For the ride-events topic: (valid events, messages that are not), by SPEC §2.
    pub ride_events: Option<(u64, u64)>,
}

/// The lines `ridepulse consume` prints after the messages: the pass's `key=value` line and,
/// for ride events, `valid_events=N invalid_messages=M`.
impl std::fmt::Display for BacklogReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.stats.report(&self.topic))?;
        if let Some((valid, invalid)) = self.ride_events {
            write!(f, "\nvalid_events={valid} invalid_messages={invalid}")?;
        }
        Ok(())
    }
}

/// `ridepulse consume`: reads `topic`'s backlog, hands the first `print` messages to `line`
/// as `p<partition> @<offset> <payload>`, and (when `ride_events`) checks each message as a
/// ride event.
pub fn inspect_backlog(
    brokers: &str,
    topic: &str,
    ride_events: bool,
    print: usize,
    mut line: impl FnMut(&str),
) -> Result<BacklogReport, KafkaError> {
    let mut printed = 0;
    let (mut valid, mut invalid) = (0u64, 0u64);
    let stats = read_backlog(brokers, topic, Duration::from_secs(30), |message| {
        let payload = message.payload().unwrap_or_default();
        if ride_events {
            match dataflows::event::RideEvent::parse(payload) {
                Ok(_) => valid += 1,
                Err(_) => invalid += 1,
            }
        }
        if printed < print {
            printed += 1;
            line(&format!(
                "p{} @{} {}",
                message.partition(),
                message.offset(),
                String::from_utf8_lossy(payload)
            ));
        }
    })?;
    Ok(BacklogReport {
        topic: topic.to_string(),
        stats,
        ride_events: ride_events.then_some((valid, invalid)),
    })
}

/// Reads every partition of `topic` from its low watermark to the high watermark it has at
/// the start, calling `each` for every message. Gives up after `timeout` without progress.
pub fn read_backlog(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<ReadStats, KafkaError> {
    let partitions = topics::partition_count(brokers, topic)?;
    let group = format!("ridepulse-plain-consumer-{}", std::process::id());
    let consumer: BaseConsumer<settings::ConsumerLog> =
        settings::consumer(brokers, &group, "ridepulse-plain-consumer")
            .create_with_context(settings::ConsumerLog)?;
    let mut remaining = 0usize;
    let mut ends = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(15))?;
        ends.push(high);
        if high > low {
            remaining += 1;
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    let mut stats = ReadStats {
        partitions: partitions as usize,
        ..ReadStats::default()
    };
    if remaining == 0 {
        return Ok(stats);
    }
    consumer.assign(&assignment)?;
    let start = Instant::now();
    let mut last = start;
    while remaining > 0 {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last.elapsed() > timeout {
                    return Err(KafkaError::Unreachable {
                        brokers: brokers.into(),
                        detail: format!("no message from `{topic}` for {timeout:?} with {remaining} partitions unfinished"),
                    });
                }
            }
            Some(Err(RdKafkaError::PartitionEOF(_))) => {}
            Some(Err(error))
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(Err(error)) => return Err(KafkaError::Client(error)),
            Some(Ok(message)) => {
                let partition = message.partition() as usize;
                if message.offset() >= ends[partition] {
                    continue;
                }
                let now = Instant::now();
                stats.longest_pause = stats.longest_pause.max(now - last);
                last = now;
                stats.messages += 1;
                stats.bytes += message.payload_len() as u64;
                each(&message);
                if message.offset() + 1 == ends[partition] {
                    remaining -= 1;
                    let mut done = TopicPartitionList::new();
                    done.add_partition(topic, partition as i32);
                    // stop fetching a finished partition so the others get the bandwidth.
                    consumer.pause(&done)?;
                }
            }
        }
    }
    stats.elapsed = last - start;
    Ok(stats)
}

/// Reads a topic's whole backlog into memory (tests and small demos).
pub fn read_all(brokers: &str, topic: &str) -> Result<Vec<Record>, KafkaError> {
    let mut records = Vec::new();
    read_backlog(brokers, topic, Duration::from_secs(30), |message| {
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    })?;
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// What following a topic's new messages measured: per message, the time from its
/// producer's create timestamp to its arrival here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FollowStats {
    /// Messages received.
    pub messages: u64,
    /// Latencies in milliseconds, sorted.
    pub latencies_ms: Vec<i64>,
}

impl FollowStats {
    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile(&self, q: f64) -> i64 {
        if self.latencies_ms.is_empty() {
            return 0;
        }
        let index = ((self.latencies_ms.len() - 1) as f64 * q).round() as usize;
        self.latencies_ms[index]
    }

    /// The `key=value` line `ridepulse consume --follow` prints for `topic`.
    pub fn report(&self, topic: &str) -> String {
        format!(
            "topic={topic} messages={} latency_ms_p50={} latency_ms_p95={} latency_ms_p99={} latency_ms_max={}",
            self.messages,
            self.quantile(0.5),
            self.quantile(0.95),
            self.quantile(0.99),
            self.quantile(1.0)
        )
    }
}

/// Reads only messages produced after the start, for `duration`, and measures each one's
/// delivery latency (producer create time → consumer receipt). The freshness baseline: how
/// soon the job could possibly see an event.
pub fn follow(brokers: &str, topic: &str, duration: Duration) -> Result<FollowStats, KafkaError> {
    let partitions = topics::partition_count(brokers, topic)?;
    let group = format!("ridepulse-follow-{}", std::process::id());
    let consumer: BaseConsumer<settings::ConsumerLog> =
        settings::consumer(brokers, &group, "ridepulse-follow")
            .create_with_context(settings::ConsumerLog)?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(15))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    let mut stats = FollowStats::default();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let now = chrono::Utc::now().timestamp_millis();
                if let Some(created) = message.timestamp().to_millis() {
                    stats.latencies_ms.push(now - created);
                }
                stats.messages += 1;
            }
            Some(Err(RdKafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error))
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(Err(error)) => return Err(KafkaError::Client(error)),
        }
    }
    stats.latencies_ms.sort_unstable();
    Ok(stats)
}
