//! The job's durable writes, on one thread per process.
//!
//! Sink operators hand [`Batch`]es to the [`Writer`] and get a [`Ticket`] back; the writer
//! thread performs each batch in order — raw events into `ride_events`, dead letters to the
//! dead-letter topic and `dead_letters`, metric rows into `city_metrics` and to
//! `analytics-aggregated`, then checkpoints — and marks the ticket done only when every part is durable (ClickHouse
//! answered 200, Kafka confirmed every delivery). Then it wakes the operator that submitted
//! it, which is how durability flows back into the dataflow (see `sinks`).
//!
//! Transient failures (connection refused, timeouts, 5xx, overload codes, undelivered
//! messages) are retried with exponential backoff, forever: the queue in front of the writer
//! is bounded, and sources stop reading while [`Writer::inflight_rows`] is high, so an
//! outage backpressures the job instead of filling memory. A fatal error (schema, auth) is
//! kept in [`Writer::fatal`]; the job reports it and exits.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use dataflows::metrics_row::CityMetricsRow;
use dataflows::partitioned_source::SourcedEvent;
use rdkafka::message::{Header, OwnedHeaders};
use timely::scheduling::SyncActivator;
use tracing::{error, info, warn};

use super::rows::{CheckpointRecord, DeadLetterRecord, EventRecord, MetricsRecord};
use super::schema::Layout;
use super::{ClickHouseError, INSERT_TIMEOUT};
use crate::config::Config;
use crate::kafka::producer::CountingProducer;
use crate::kafka::KafkaError;

/// Batches waiting for the writer before `submit` blocks.
const QUEUE_DEPTH: usize = 16;
/// Longest wait between two attempts of a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a batch's Kafka deliveries may take before they are retried.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(150);

/// A message that is not a valid event, on its way to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// The source partition.
    pub partition: u32,
    /// The source offset.
    pub offset: u64,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub payload: Vec<u8>,
    /// Why it was rejected (names the field).
    pub error: String,
}

/// Work for the writer: everything in it becomes durable together.
#[derive(Debug, Default)]
pub struct Batch {
    /// Valid events for `ride_events`.
    pub events: Vec<SourcedEvent>,
    /// Dead letters for the dead-letter topic.
    pub dead: Vec<DeadLetter>,
    /// Metric rows for `city_metrics` and `analytics-aggregated`.
    pub metrics: Vec<CityMetricsRow>,
    /// Checkpoints, written after everything before them.
    pub checkpoints: Vec<CheckpointRecord>,
}

impl Batch {
    /// Rows in the batch (for backpressure).
    pub fn len(&self) -> usize {
        self.events.len() + self.dead.len() + self.metrics.len() + self.checkpoints.len()
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tells a sink when its batch is durable.
#[derive(Clone, Debug, Default)]
pub struct Ticket(Arc<AtomicBool>);

impl Ticket {
    /// Whether every write of the batch is durable.
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the writer has done so far.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Rows written to `ride_events`.
    pub events: AtomicU64,
    /// Dead letters delivered.
    pub dead_letters: AtomicU64,
    /// Rows written to `city_metrics` (and delivered to `analytics-aggregated`).
    pub metrics: AtomicU64,
    /// Final rows among them.
    pub finals: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
}

struct Shared {
    inflight_rows: AtomicUsize,
    fatal: Mutex<Option<String>>,
    stats: WriterStats,
}

type Job = (Batch, Ticket, Option<SyncActivator>);

/// The handle sinks and sources share (one per process).
pub struct Writer {
    sender: Mutex<Option<SyncSender<Job>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Everything the writer thread needs.
struct Destinations {
    client: clickhouse::Client,
    url: String,
    database: String,
    layout: Layout,
    aggregated: CountingProducer,
    dead_letters: CountingProducer,
    source_topic: String,
}

impl Writer {
    /// Starts the writer thread for `config`, writing tables whose time columns are encoded
    /// as `layout` says (from `schema::verify`).
    pub fn start(config: &Config, layout: Layout, client_id: &str) -> Result<Writer, KafkaError> {
        let destinations = Destinations {
            client: super::connect(&config.clickhouse),
            url: config.clickhouse.url.clone(),
            database: config.clickhouse.database.clone(),
            layout,
            aggregated: CountingProducer::new(
                &config.kafka.brokers,
                &config.topics.aggregated,
                &format!("{client_id}-aggregated"),
            )?,
            dead_letters: CountingProducer::new(
                &config.kafka.brokers,
                &config.topics.dead_letters,
                &format!("{client_id}-dlq"),
            )?,
            source_topic: config.topics.ride_events.clone(),
        };
        let shared = Arc::new(Shared {
            inflight_rows: AtomicUsize::new(0),
            fatal: Mutex::new(None),
            stats: WriterStats::default(),
        });
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ridepulse-writer".into())
            .spawn(move || run(destinations, receiver, thread_shared))
            .expect("the writer thread can be spawned");
        Ok(Writer {
            sender: Mutex::new(Some(sender)),
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a batch; blocks only when the queue is full (the source backs off before
    /// that). `activator` is woken when the batch is durable.
    pub fn submit(&self, batch: Batch, activator: Option<SyncActivator>) -> Ticket {
        let ticket = Ticket::default();
        self.shared
            .inflight_rows
            .fetch_add(batch.len(), Ordering::Relaxed);
        let sender = self.sender.lock().expect("not poisoned").clone();
        if let Some(sender) = sender {
            // A closed channel means the writer thread ended after a fatal error; the ticket
            // then never completes and the job reports the error.
            let _ = sender.send((batch, ticket.clone(), activator));
        }
        ticket
    }

    /// Rows submitted but not yet durable.
    pub fn inflight_rows(&self) -> usize {
        self.shared.inflight_rows.load(Ordering::Relaxed)
    }

    /// The fatal error that stopped the writer, if any.
    pub fn fatal(&self) -> Option<String> {
        self.shared.fatal.lock().expect("not poisoned").clone()
    }

    /// What has been written.
    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// Lets the queue drain and waits for the thread (after the dataflow completed).
    pub fn shutdown(&self) {
        self.sender.lock().expect("not poisoned").take();
        if let Some(thread) = self.thread.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
    }
}

fn run(destinations: Destinations, receiver: Receiver<Job>, shared: Arc<Shared>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can always be built");
    while let Ok((batch, ticket, activator)) = receiver.recv() {
        let rows = batch.len();
        if let Err(error) = runtime.block_on(write(&destinations, &batch, &shared)) {
            error!(%error, "stopping: a write failed and retrying cannot help");
            *shared.fatal.lock().expect("not poisoned") = Some(error);
            return;
        }
        shared.inflight_rows.fetch_sub(rows, Ordering::Relaxed);
        ticket.0.store(true, Ordering::Release);
        if let Some(activator) = activator {
            let _ = activator.activate();
        }
    }
    info!("writer finished");
}

/// Writes one batch, retrying transient failures; returns the fatal error's text.
async fn write(d: &Destinations, batch: &Batch, shared: &Shared) -> Result<(), String> {
    let stats = &shared.stats;
    let now_ms = chrono::Utc::now().timestamp_millis();
    if !batch.events.is_empty() {
        let records: Vec<EventRecord> = batch
            .events
            .iter()
            .map(|e| EventRecord::new(e, d.layout.events_ms, now_ms))
            .collect();
        retry(stats, "ride_events", || insert(d, "ride_events", &records)).await?;
        stats
            .events
            .fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    if !batch.dead.is_empty() {
        retry(stats, "dead letters", || async {
            let messages = batch.dead.iter().map(|dead| {
                let headers = OwnedHeaders::new()
                    .insert(header("source_topic", &d.source_topic))
                    .insert(header("source_partition", &dead.partition.to_string()))
                    .insert(header("source_offset", &dead.offset.to_string()))
                    .insert(header("error", &dead.error));
                (dead.key.as_deref(), dead.payload.as_slice(), Some(headers))
            });
            d.dead_letters
                .send_confirmed(messages, DELIVERY_TIMEOUT)
                .map_err(Failure::Kafka)
        })
        .await?;
        let records: Vec<DeadLetterRecord> = batch
            .dead
            .iter()
            .map(|dead| DeadLetterRecord {
                source_topic: d.source_topic.clone(),
                kafka_partition: dead.partition,
                kafka_offset: dead.offset,
                error: dead.error.clone(),
                payload: String::from_utf8_lossy(&dead.payload).into_owned(),
                received_at: (now_ms / 1000).max(0) as u32,
            })
            .collect();
        retry(stats, "dead_letters", || {
            insert(d, "dead_letters", &records)
        })
        .await?;
        stats
            .dead_letters
            .fetch_add(batch.dead.len() as u64, Ordering::Relaxed);
    }
    if !batch.metrics.is_empty() {
        let records: Vec<MetricsRecord> = batch
            .metrics
            .iter()
            .map(|row| MetricsRecord::new(row, d.layout.metrics_ms))
            .collect();
        retry(stats, "city_metrics", || {
            insert(d, "city_metrics", &records)
        })
        .await?;
        let json: Vec<(String, Vec<u8>)> = batch
            .metrics
            .iter()
            .map(|row| {
                let bytes = serde_json::to_vec(row).expect("rows serialize");
                (row.city.clone(), bytes)
            })
            .collect();
        retry(stats, "analytics-aggregated", || async {
            let messages = json
                .iter()
                .map(|(city, bytes)| (Some(city.as_bytes()), bytes.as_slice(), None));
            d.aggregated
                .send_confirmed(messages, DELIVERY_TIMEOUT)
                .map_err(Failure::Kafka)
        })
        .await?;
        let finals = batch.metrics.iter().filter(|r| r.is_final == 1).count();
        stats
            .metrics
            .fetch_add(batch.metrics.len() as u64, Ordering::Relaxed);
        stats.finals.fetch_add(finals as u64, Ordering::Relaxed);
    }
    if !batch.checkpoints.is_empty() {
        retry(stats, "checkpoints", || {
            insert(d, "checkpoints", &batch.checkpoints)
        })
        .await?;
        stats
            .checkpoints
            .fetch_add(batch.checkpoints.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// Why one attempt failed.
enum Failure {
    ClickHouse(ClickHouseError),
    Kafka(KafkaError),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::ClickHouse(e) => e.is_retryable(),
            Failure::Kafka(e) => e.is_retryable(),
        }
    }

    fn text(&self) -> String {
        match self {
            Failure::ClickHouse(e) => e.to_string(),
            Failure::Kafka(e) => e.to_string(),
        }
    }
}

/// Inserts `records` into `database.table` as one INSERT (one block: all or nothing).
async fn insert<R>(d: &Destinations, table: &str, records: &[R]) -> Result<(), Failure>
where
    R: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let qualified = format!("{}.{}", d.database, table);
    let what = format!("insert into {qualified}");
    let fail = |e| Failure::ClickHouse(ClickHouseError::from_client(&d.url, &what, e));
    let mut insert = d
        .client
        .insert::<R>(table)
        .await
        .map_err(fail)?
        .with_timeouts(Some(INSERT_TIMEOUT), Some(INSERT_TIMEOUT));
    for record in records {
        insert.write(record).await.map_err(fail)?;
    }
    insert.end().await.map_err(fail)
}

/// Runs `attempt` until it succeeds or fails for good, backing off exponentially.
async fn retry<F, Fut>(stats: &WriterStats, what: &str, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        match attempt().await {
            Ok(()) => {
                if failures > 0 {
                    info!(what, failures, "write succeeded after retrying");
                }
                return Ok(());
            }
            Err(failure) if failure.retryable() => {
                failures += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                if failures == 1 || failures.is_power_of_two() {
                    warn!(what, failures, retry_in = ?delay, error = %failure.text(), "write failed; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(failure) => return Err(failure.text()),
        }
    }
}
