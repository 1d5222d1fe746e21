//! A producer that accounts for every message: delivered, failed, or still in flight.
//!
//! librdkafka reports each message's fate asynchronously; this wraps its threaded producer
//! with a context that counts those reports, pushes back (instead of dropping) when the
//! local queue is full, and turns any failure into a [`KafkaError::Delivery`] at the end.
//!
//! [`CountingProducer::deliver`] is the job's way to write: it keeps a bounded number of
//! messages unconfirmed (so a flood of dead letters is paced at the rate the broker accepts
//! writes), sends again only the messages whose delivery failed for a transient reason
//! (never the whole set), sets aside those the broker refuses for good (too large, invalid),
//! and stops on failures no retry can fix (authorization). The producer is idempotent, so
//! librdkafka's own retries neither duplicate nor reorder a partition's messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::{debug, warn};

use super::{delivery_disposition, settings, Disposition, KafkaError};
use crate::config::KafkaConfig;

/// Messages [`CountingProducer::deliver`] keeps unconfirmed at once: enough to fill the
/// producer's batches, few enough that a slow broker is never flooded.
const MAX_UNCONFIRMED: usize = 5_000;
/// Longest pause between two rounds of re-sending failed messages.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Running totals of delivery reports.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Messages handed to the producer.
    pub sent: AtomicU64,
    /// Messages the broker acknowledged.
    pub delivered: AtomicU64,
    /// Messages that failed for good.
    pub failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl DeliveryStats {
    /// The first failure's text, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("not poisoned").clone()
    }
}

/// The outcome of one round of [`CountingProducer::deliver`]: how many messages still wait
/// for their report, and the failures by message index.
#[derive(Debug, Default)]
struct RoundState {
    unconfirmed: usize,
    failures: Vec<(usize, RdKafkaError)>,
}

/// Tracks the delivery reports of one round of [`CountingProducer::deliver`].
#[derive(Debug, Default)]
pub struct Round {
    state: Mutex<RoundState>,
    changed: Condvar,
}

impl Round {
    fn report(&self, index: usize, failure: Option<RdKafkaError>) {
        let mut state = self.state.lock().expect("not poisoned");
        state.unconfirmed -= 1;
        if let Some(error) = failure {
            state.failures.push((index, error));
        }
        self.changed.notify_all();
    }

    /// Waits until at most `most` messages are unconfirmed.
    fn wait_until_at_most(&self, most: usize) {
        let mut state = self.state.lock().expect("not poisoned");
        while state.unconfirmed > most {
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .expect("not poisoned")
                .0;
        }
    }
}

/// Which message of which round a delivery report is for (`None`: an untracked `send`).
pub type Tracked = Box<Option<(Arc<Round>, usize)>>;

/// The producer context: counts each delivery report.
pub struct CountingContext {
    stats: Arc<DeliveryStats>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = Tracked;

    fn delivery(&self, result: &DeliveryResult<'_>, tracked: Tracked) {
        let failure = match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err((error, message)) => {
                use rdkafka::Message;
                let failed = self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if failed == 0 {
                    warn!(topic = message.topic(), partition = message.partition(), %error, "delivery failed");
                    *self.stats.first_error.lock().expect("not poisoned") = Some(error.to_string());
                }
                Some(error.clone())
            }
        };
        if let Some((round, index)) = *tracked {
            round.report(index, failure);
        }
    }
}

/// One message for [`CountingProducer::deliver`].
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The key (`None`: a random partition).
    pub key: Option<&'a [u8]>,
    /// The value.
    pub payload: &'a [u8],
    /// Headers.
    pub headers: Option<OwnedHeaders>,
}

/// Messages the broker refused for good, by index into the delivered slice, with the reason.
pub type Refused = Vec<(usize, String)>;

/// A producer for one topic that counts deliveries.
pub struct CountingProducer {
    producer: ThreadedProducer<CountingContext>,
    topic: String,
    stats: Arc<DeliveryStats>,
}

impl CountingProducer {
    /// A producer to `topic` on the broker `kafka` names.
    pub fn new(
        kafka: &KafkaConfig,
        topic: &str,
        client_id: &str,
    ) -> Result<CountingProducer, KafkaError> {
        Self::with_settings(
            settings::producer(&kafka.brokers, client_id, kafka.idempotence),
            topic,
        )
    }

    /// A producer for the job's writer (whole batches, sent at once: see
    /// [`settings::writer_producer`]).
    pub fn for_writer(
        kafka: &KafkaConfig,
        topic: &str,
        client_id: &str,
    ) -> Result<CountingProducer, KafkaError> {
        Self::with_settings(
            settings::writer_producer(&kafka.brokers, client_id, kafka.idempotence),
            topic,
        )
    }

    fn with_settings(
        config: rdkafka::ClientConfig,
        topic: &str,
    ) -> Result<CountingProducer, KafkaError> {
        let stats = Arc::new(DeliveryStats::default());
        let producer = config.create_with_context(CountingContext {
            stats: stats.clone(),
        })?;
        Ok(CountingProducer {
            producer,
            topic: topic.to_string(),
            stats,
        })
    }

    /// Asks the broker for its topic's metadata twice, so an idempotent producer has its
    /// producer id before its first message. librdkafka asks for an id when metadata
    /// arrives while a known broker is up, and otherwise on a 500 ms timer, which a new
    /// writer's first delivery waited for (0.48 s of a short file run): the first answer
    /// names the broker and prompts a connection to it, the second finds it up. A failure
    /// here is the first delivery's to report: this only saves time.
    pub fn warm_up(&self, timeout: Duration) {
        for attempt in 0..2 {
            if attempt > 0 {
                // Time for the connection the first answer prompted to come up.
                std::thread::sleep(Duration::from_millis(30));
            }
            if let Err(error) = self
                .producer
                .client()
                .fetch_metadata(Some(&self.topic), timeout)
            {
                debug!(topic = %self.topic, %error, "no metadata before the first delivery");
                return;
            }
        }
    }

    /// The topic it writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The delivery counters.
    pub fn stats(&self) -> &Arc<DeliveryStats> {
        &self.stats
    }

    /// Queues one message; when librdkafka's queue is full, waits for room instead of
    /// dropping it. A message without a key goes to a random partition.
    pub fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), KafkaError> {
        self.send_tracked(key, payload, headers, Box::new(None))
    }

    fn send_tracked(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        tracked: Tracked,
    ) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8], Tracked> =
            BaseRecord::with_opaque_to(&self.topic, tracked).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    self.stats.sent.fetch_sub(1, Ordering::Relaxed);
                    return Err(KafkaError::Client(error));
                }
            }
        }
    }

    /// Delivers `messages`, paced: at most [`MAX_UNCONFIRMED`] wait for their report at
    /// once. A message whose delivery failed for a transient reason is sent again, alone,
    /// after a backoff with jitter, until it is delivered; one the broker refuses for good
    /// (too large, invalid) is returned in [`Refused`] for the caller to record; a failure
    /// no retry can fix (authorization, a fatal idempotence error) is an error. `retried`
    /// counts the re-sent messages.
    pub fn deliver(
        &self,
        messages: &[Outgoing<'_>],
        retried: &AtomicU64,
    ) -> Result<Refused, KafkaError> {
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut refused = Refused::new();
        let mut backoff = Duration::from_millis(100);
        let mut rounds = 0u32;
        while !pending.is_empty() {
            let round = Arc::new(Round::default());
            for &index in &pending {
                round.wait_until_at_most(MAX_UNCONFIRMED - 1);
                round.state.lock().expect("not poisoned").unconfirmed += 1;
                let message = &messages[index];
                let tracked = Box::new(Some((round.clone(), index)));
                if let Err(error) = self.send_tracked(
                    message.key,
                    message.payload,
                    message.headers.clone(),
                    tracked,
                ) {
                    // Refused before it was queued (e.g. larger than message.max.bytes).
                    let KafkaError::Client(error) = error else {
                        return Err(error);
                    };
                    round.report(index, Some(error));
                }
            }
            // librdkafka reports every queued message within message.timeout.ms.
            round.wait_until_at_most(0);
            let failures = std::mem::take(&mut round.state.lock().expect("not poisoned").failures);
            pending.clear();
            for (index, error) in failures {
                match error
                    .rdkafka_error_code()
                    .map_or(Disposition::Retry, delivery_disposition)
                {
                    Disposition::Retry => pending.push(index),
                    Disposition::Refuse => refused.push((index, error.to_string())),
                    Disposition::Fatal => {
                        return Err(KafkaError::Fatal {
                            topic: self.topic.clone(),
                            detail: error.to_string(),
                        })
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            pending.sort_unstable(); // keep each partition's order on the next round
            rounds += 1;
            retried.fetch_add(pending.len() as u64, Ordering::Relaxed);
            if rounds == 1 || rounds.is_power_of_two() {
                warn!(topic = %self.topic, failed = pending.len(), rounds, retry_in = ?backoff, first_error = ?self.stats.first_error(), "deliveries failed; sending those again");
            }
            std::thread::sleep(jitter(backoff));
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
        Ok(refused)
    }

    /// Waits until every queued message has a delivery report, then fails if any was not
    /// delivered.
    pub fn finish(&self, timeout: Duration) -> Result<u64, KafkaError> {
        self.producer.flush(timeout)?;
        let sent = self.stats.sent.load(Ordering::Relaxed);
        let failed = self.stats.failed.load(Ordering::Relaxed);
        let delivered = self.stats.delivered.load(Ordering::Relaxed);
        if failed > 0 || delivered != sent {
            return Err(KafkaError::Delivery {
                topic: self.topic.clone(),
                failed: sent - delivered,
                total: sent,
                first_error: self
                    .stats
                    .first_error()
                    .unwrap_or_else(|| "no delivery report before the flush timeout".into()),
            });
        }
        Ok(delivered)
    }
}

/// `base` scaled by a factor in [0.5, 1.5), so writers that failed together do not retry in
/// lockstep.
pub fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..1.5))
}
