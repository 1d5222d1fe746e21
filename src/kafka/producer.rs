//! A producer that accounts for every message: delivered, failed, or still in flight.
//!
//! librdkafka reports each message's fate asynchronously; this wraps its threaded producer
//! with a context that counts those reports, pushes back (instead of dropping) when the
//! local queue is full, and turns any failure into a [`KafkaError::Delivery`] at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::warn;

use super::{settings, KafkaError};

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

/// The producer context: counts each delivery report.
pub struct CountingContext {
    stats: Arc<DeliveryStats>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                use rdkafka::Message;
                let failed = self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if failed == 0 {
                    warn!(topic = message.topic(), partition = message.partition(), %error, "delivery failed");
                    *self.stats.first_error.lock().expect("not poisoned") = Some(error.to_string());
                }
            }
        }
    }
}

/// A producer for one topic that counts deliveries.
pub struct CountingProducer {
    producer: ThreadedProducer<CountingContext>,
    topic: String,
    stats: Arc<DeliveryStats>,
}

impl CountingProducer {
    /// A producer to `topic` on `brokers`.
    pub fn new(
        brokers: &str,
        topic: &str,
        client_id: &str,
    ) -> Result<CountingProducer, KafkaError> {
        let stats = Arc::new(DeliveryStats::default());
        let producer =
            settings::producer(brokers, client_id).create_with_context(CountingContext {
                stats: stats.clone(),
            })?;
        Ok(CountingProducer {
            producer,
            topic: topic.to_string(),
            stats,
        })
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
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).payload(payload);
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

    /// Sends `messages` and waits until each has its delivery report: Ok only when the
    /// broker confirmed every one (a failed attempt may have delivered some of them; the
    /// caller retries the whole set, so delivery is at least once).
    pub fn send_confirmed<'a, I>(&self, messages: I, timeout: Duration) -> Result<(), KafkaError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, &'a [u8], Option<OwnedHeaders>)>,
    {
        let delivered_before = self.stats.delivered.load(Ordering::Relaxed);
        let failed_before = self.stats.failed.load(Ordering::Relaxed);
        let mut total = 0u64;
        for (key, payload, headers) in messages {
            self.send(key, payload, headers)?;
            total += 1;
        }
        self.producer.flush(timeout)?;
        let delivered = self.stats.delivered.load(Ordering::Relaxed) - delivered_before;
        let failed = self.stats.failed.load(Ordering::Relaxed) - failed_before;
        if failed > 0 || delivered < total {
            return Err(KafkaError::Delivery {
                topic: self.topic.clone(),
                failed: total.saturating_sub(delivered),
                total,
                first_error: self
                    .stats
                    .first_error()
                    .unwrap_or_else(|| "no delivery report before the flush timeout".into()),
            });
        }
        Ok(())
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
