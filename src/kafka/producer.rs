//! A producer that accounts for every message: delivered, failed, or still in flight.
//!
//! librdkafka reports each message's fate asynchronously; this wraps its producer (with a
//! thread serving those reports, `PolledProducer`) with a context that counts them, pushes
//! back (instead of dropping) when the local queue is full, and turns any failure into a
//! [`KafkaError::Delivery`] at the end.
//!
//! [`CountingProducer::deliver`] is the job's way to write: it keeps a bounded number of
//! messages unconfirmed (so a flood of dead letters is paced at the rate the broker accepts
//! writes), sends again only the messages whose delivery failed for a transient reason
//! (never the whole set), sets aside those the broker refuses for good (too large, invalid),
//! and stops on failures no retry can fix (authorization). The producer is idempotent, so
//! librdkafka's own retries neither duplicate nor reorder a partition's messages.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::{debug, warn};

use super::{delivery_disposition, settings, Disposition, KafkaError};
use crate::config::KafkaConfig;

/// Messages [`CountingProducer::deliver`] keeps unconfirmed at once: enough to fill the
/// producer's batches, few enough that a slow broker is never flooded.
const MAX_UNCONFIRMED: usize = 5_000;
/// Longest pause between two rounds of re-sending failed messages.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// How long the polling thread sleeps at most between two looks at librdkafka's queue when
/// no wake-up comes (a safety net: librdkafka wakes it when a report is queued).
const IDLE_POLL_MS: libc::c_int = 100;
/// Events served per wake-up at most before the thread pauses for [`BUSY_POLL_MS`].
const MAX_EVENTS_PER_WAKE: usize = 10_000;
/// The pause after a wake-up that left events queued (a flood of reports), instead of the
/// idle sleep: librdkafka writes to the eventfd only when the queue was empty.
const BUSY_POLL_MS: libc::c_int = 1;

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

/// librdkafka's producer and a thread that serves its delivery reports, stopped at once
/// when it is dropped. rdkafka's `ThreadedProducer` polls in a loop of 100 ms deadlines,
/// which spins through each deadline's last millisecond (its timeout rounds down to 0 ms:
/// ~1 % of a core per producer) and which every drop waited out (up to 0.1 s of each run's
/// exit: the writer drops its three producers at the end of every job). This thread
/// sleeps on an eventfd that librdkafka writes to when a report is queued (its "IO event"
/// API, made for such loops) and that a drop writes to as well.
struct PolledProducer {
    producer: Arc<BaseProducer<CountingContext>>,
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    poller: Option<JoinHandle<()>>,
}

impl PolledProducer {
    fn new(producer: BaseProducer<CountingContext>) -> PolledProducer {
        // SAFETY: eventfd has no preconditions; a negative result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(
            fd >= 0,
            "cannot create an eventfd for a producer: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop, wake) = (producer.clone(), stop.clone(), wake.clone());
            std::thread::Builder::new()
                .name("producer pollin".into())
                .spawn(move || serve_reports(&producer, wake.as_raw_fd(), &stop))
                .expect("a producer's polling thread can be spawned")
        };
        PolledProducer {
            producer,
            stop,
            wake,
            poller: Some(poller),
        }
    }
}

/// The polling thread: serves every queued event, then sleeps until librdkafka (or a drop)
/// writes to `wake`.
fn serve_reports(producer: &BaseProducer<CountingContext>, wake: RawFd, stop: &AtomicBool) {
    use rdkafka::bindings as rd;
    let one = 1u64.to_ne_bytes();
    // SAFETY: the client outlives this thread (the caller holds it); the main queue handle is
    // a new reference to the queue `BaseProducer::poll` serves, released below; librdkafka
    // copies the payload and writes it to `wake` when an event lands in the empty queue.
    let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
    unsafe { rd::rd_kafka_queue_io_event_enable(queue, wake, one.as_ptr().cast(), one.len()) };
    loop {
        let mut served = 0;
        // SAFETY: `queue` is valid until destroyed below.
        while unsafe { rd::rd_kafka_queue_length(queue) } > 0 && served < MAX_EVENTS_PER_WAKE {
            producer.poll(Duration::ZERO);
            served += 1;
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        let timeout = if served < MAX_EVENTS_PER_WAKE {
            IDLE_POLL_MS
        } else {
            BUSY_POLL_MS
        };
        let mut ready = libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut counter = [0u8; 8];
        // SAFETY: one valid pollfd; `counter` holds the eventfd's eight bytes (the read
        // resets it; on an empty one it fails with EAGAIN, which is fine).
        unsafe {
            libc::poll(&mut ready, 1, timeout);
            libc::read(wake, counter.as_mut_ptr().cast(), counter.len());
        }
    }
    // SAFETY: as above; the queue handle is not used after this.
    unsafe {
        rd::rd_kafka_queue_io_event_enable(queue, -1, std::ptr::null(), 0);
        rd::rd_kafka_queue_destroy(queue);
    }
}

impl std::ops::Deref for PolledProducer {
    type Target = BaseProducer<CountingContext>;
    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing eight bytes to the eventfd wakes the polling thread.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        // The producer itself (the last `Arc`) goes now: librdkafka purges and flushes it.
    }
}

/// A producer for one topic that counts deliveries.
pub struct CountingProducer {
    producer: PolledProducer,
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
        let producer = PolledProducer::new(config.create_with_context(CountingContext {
            stats: stats.clone(),
        })?);
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
