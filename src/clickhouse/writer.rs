//! The job's durable writes, on one thread per process.
//!
//! Sink operators hand [`Batch`]es to the [`Writer`] and get a [`Ticket`] back; the writer
//! thread performs each batch in order — raw events into `ride_events`, dead-letter rows into
//! `dead_letters`, metric rows into `city_metrics`, supply rows into `city_supply`,
//! per-minute rollup rows into `city_minutes`, while the metric and supply rows go to
//! `analytics-aggregated` and `city-supply` on a scoped thread and the batch's dead letters
//! to the dead-letter topic on a thread of their own; then checkpoints — and marks the
//! ticket done only when every part is durable (ClickHouse answered 200, Kafka confirmed
//! every delivery). Then it wakes the operator that submitted it, which is how durability
//! flows back into the dataflow (see `sinks`). Batches queued together, or submitted within the writer's [`WriteInterval`] of the
//! previous write's start, are written as one (one insert per table), and each of their
//! sinks is woken when it is durable; the sinks' last batches at the end of a run are
//! written together ([`Writer::open_sink`]). That last write, when the workers are done,
//! inserts its tables concurrently and splits its minute rows (hundreds of thousands of
//! riders in a backfill) into two concurrent inserts: ClickHouse handles an insert on one
//! thread.
//!
//! Failures are classified (see [`Severity`] and [`crate::kafka::Disposition`]):
//! - transient ones (connection refused, timeouts, 5xx, overload codes, undelivered
//!   messages) are retried with exponential backoff and jitter, forever: the queue in front
//!   of the writer is bounded, and sources stop reading while [`Writer::inflight_rows`] is
//!   high, so an outage backpressures the job instead of filling memory. Kafka deliveries
//!   are retried per message, never as a whole batch, and paced (see
//!   [`CountingProducer::deliver`]), so a flood of dead letters cannot stall the job;
//! - failures tied to the rows of an insert (a value the server refuses, a block spanning
//!   too many partitions) split the insert in halves until the offending rows are
//!   isolated: every other row is written, and a refused raw event becomes a dead letter
//!   with the server's message (reason `rejected_by_clickhouse`);
//! - failures no retry can fix (schema, credentials, disk full, authorization) are kept in
//!   [`Writer::fatal`]; the job stops with that one message and exit code
//!   [`crate::pipeline::FATAL_EXIT_CODE`], which tells the supervisor not to restart it in a loop.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataflows::metrics_row::CityMetricsRow;
use dataflows::minute_row::CityMinuteRow;
use dataflows::partitioned_source::SourcedEvent;
use dataflows::supply_row::CitySupplyRow;
use rdkafka::message::{Header, OwnedHeaders};
use timely::scheduling::SyncActivator;
use tracing::{error, info, warn};

use super::row_size::row_binary_size;
use super::rows::{
    CheckpointRecord, DeadLetterRecord, EventRecord, MetricsRecord, MinuteRecord, SupplyRecord,
};
use super::schema::Layout;
use super::{ClickHouseError, Severity, INSERT_TIMEOUT};
use crate::config::Config;
use crate::kafka::producer::{jitter, CountingProducer, Outgoing};
use crate::kafka::KafkaError;
use dataflows::event::EventError;

/// Batches waiting for the writer before `submit` blocks.
const QUEUE_DEPTH: usize = 16;
/// Dead letters the dead-letter thread delivers in one go at most.
const MAX_LETTERS_PER_DELIVERY: usize = 50_000;
/// Least time between the starts of two writes: batches submitted meanwhile are merged
/// into one insert per table (ClickHouse wants about one insert per second per table; each
/// insert makes a part of a file per column, to merge later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteInterval {
    /// 200 ms, for a job that follows Kafka: below the emit interval, so a live row waits at
    /// most this long, and only when a write began just before (each worker submits its
    /// rows on its own timer, so a longer interval would delay one worker's rows by it).
    Live,
    /// 1 s, for a run from files without raw events (a backfill of result rows only, all
    /// due at the end): its sinks submit at every minute of event time, a few hundred rows
    /// a second, and each insert costs the local ClickHouse ~25 ms of CPU (creating a
    /// part's files), taken from the workers' cores.
    Backfill,
}

impl WriteInterval {
    /// The least time between the starts of two writes.
    pub fn duration(self) -> Duration {
        match self {
            WriteInterval::Live => Duration::from_millis(200),
            WriteInterval::Backfill => Duration::from_secs(1),
        }
    }
}

/// How long each producer's warm-up waits for its topic's metadata at most.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(1);

/// Rows merged into one write at most (the merge stops waiting once it has this many).
const MAX_MERGED_ROWS: usize = 50_000;
/// Longest wait between two attempts of a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The dead-letter reason of a valid event that ClickHouse refused to store.
pub const REJECTED_BY_CLICKHOUSE: &str = "rejected_by_clickhouse";

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
    /// The short code it is counted by ([`EventError::reason`] or
    /// [`REJECTED_BY_CLICKHOUSE`]).
    pub reason: String,
    /// The topic it was read from (`None`: the ride-events topic).
    pub source_topic: Option<String>,
}

impl DeadLetter {
    /// A message of `partition`/`offset` that is not a valid event.
    pub fn invalid(
        partition: u32,
        offset: u64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        error: &EventError,
    ) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            key,
            payload,
            error: error.to_string(),
            reason: error.reason().to_string(),
            source_topic: None,
        }
    }

    /// The same, read from `topic`.
    pub fn from_topic(self, topic: &str) -> DeadLetter {
        DeadLetter {
            source_topic: Some(topic.to_string()),
            ..self
        }
    }

    /// The topic it was read from, `ride_events` when it does not say.
    fn topic<'a>(&'a self, ride_events: &'a str) -> &'a str {
        self.source_topic.as_deref().unwrap_or(ride_events)
    }
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
    /// Supply rows for `city_supply` and `city-supply`.
    pub supply: Vec<CitySupplyRow>,
    /// Per-minute rollup rows for `city_minutes` (no topic: they serve the dashboards).
    pub minutes: Vec<CityMinuteRow>,
    /// Checkpoints, written after everything before them.
    pub checkpoints: Vec<CheckpointRecord>,
    /// The submitting sink's input is done (its last batch). Once every sink's last batch
    /// is in (see [`Writer::open_sink`]) the write starts without waiting for more batches
    /// to merge, so a run's last rows are not held back, and go out in one write.
    pub last: bool,
}

impl Batch {
    /// Rows in the batch (for backpressure).
    pub fn len(&self) -> usize {
        self.events.len()
            + self.dead.len()
            + self.metrics.len()
            + self.supply.len()
            + self.minutes.len()
            + self.checkpoints.len()
    }

    /// Adds `other`'s rows after this batch's (its checkpoints after all of them).
    pub fn append(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.dead.extend(other.dead);
        self.metrics.extend(other.metrics);
        self.supply.extend(other.supply);
        self.minutes.extend(other.minutes);
        self.checkpoints.extend(other.checkpoints);
        self.last |= other.last;
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
    /// Rows written to `city_supply` (and delivered to `city-supply`).
    pub supply: AtomicU64,
    /// Final rows among them.
    pub supply_finals: AtomicU64,
    /// Rows written to `city_minutes`.
    pub minutes: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Failed attempts that were retried (a Kafka message sent again counts once).
    pub retries: AtomicU64,
    /// Valid events ClickHouse refused for good (turned into dead letters).
    pub rejected_events: AtomicU64,
    /// Other rows ClickHouse refused for good (metric rows, dead-letter rows; logged).
    pub rejected_rows: AtomicU64,
    /// Messages the broker refused for good (too large; logged, and a dead letter still
    /// lands in the `dead_letters` table).
    pub refused_messages: AtomicU64,
    /// Those of `retries` that were ClickHouse inserts (the rest are Kafka deliveries).
    pub clickhouse_retries: AtomicU64,
    /// Rows, insert latency and the last checkpoint per table, for `/metrics`.
    pub tables: crate::metrics::TableMetrics,
}

struct Shared {
    inflight_rows: AtomicUsize,
    /// Sinks that have not submitted their last batch yet.
    open_sinks: AtomicUsize,
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
    city_supply: CountingProducer,
    dead_letters: CountingProducer,
    source_topic: String,
}

impl Writer {
    /// Starts the writer thread for `config`, writing tables whose time columns are encoded
    /// as `layout` says (from `schema::verify`).
    pub fn start(
        config: &Config,
        layout: Layout,
        client_id: &str,
        interval: WriteInterval,
    ) -> Result<Writer, KafkaError> {
        let destinations = Destinations {
            client: super::connect(&config.clickhouse),
            url: config.clickhouse.url.clone(),
            database: config.clickhouse.database.clone(),
            layout,
            aggregated: CountingProducer::for_writer(
                &config.kafka,
                &config.topics.aggregated,
                &format!("{client_id}-aggregated"),
            )?,
            city_supply: CountingProducer::for_writer(
                &config.kafka,
                &config.topics.city_supply,
                &format!("{client_id}-supply"),
            )?,
            dead_letters: CountingProducer::for_writer(
                &config.kafka,
                &config.topics.dead_letters,
                &format!("{client_id}-dlq"),
            )?,
            source_topic: config.topics.ride_events.clone(),
        };
        let shared = Arc::new(Shared {
            inflight_rows: AtomicUsize::new(0),
            open_sinks: AtomicUsize::new(0),
            fatal: Mutex::new(None),
            stats: WriterStats::default(),
        });
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ridepulse-writer".into())
            .spawn(move || run(destinations, receiver, thread_shared, interval))
            .expect("the writer thread can be spawned");
        Ok(Writer {
            sender: Mutex::new(Some(sender)),
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Counts a sink that will submit a last batch ([`Batch::last`]) when its input ends.
    /// While any counted sink is open, a last batch does not cut the gathering of a write
    /// short: the sinks of a run end within milliseconds of each other, and their last
    /// batches were written one after the other (two or three writes of ~50–120 ms at the
    /// end of every file run, where one does).
    pub fn open_sink(&self) {
        self.shared.open_sinks.fetch_add(1, Ordering::AcqRel);
    }

    /// Queues a batch; blocks only when the queue is full (the source backs off before
    /// that). `activator` is woken when the batch is durable.
    pub fn submit(&self, batch: Batch, activator: Option<SyncActivator>) -> Ticket {
        let ticket = Ticket::default();
        self.shared
            .inflight_rows
            .fetch_add(batch.len(), Ordering::Relaxed);
        if batch.last {
            // Before the batch is sent, so the writer never sees it with the sink open.
            let _ =
                self.shared
                    .open_sinks
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                        open.checked_sub(1)
                    });
        }
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

/// What is left of one batch before its ticket is done: the writer thread's part and, for a
/// batch with dead letters, the dead-letter thread's part. Whichever finishes last releases
/// the batch's rows from the backpressure count and wakes the sink.
/// Batches the writer merged are one batch here, with every sink's ticket.
struct Completion {
    parts: AtomicUsize,
    rows: usize,
    waiting: Vec<(Ticket, Option<SyncActivator>)>,
}

impl Completion {
    fn part_done(&self, shared: &Shared) {
        if self.parts.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.inflight_rows.fetch_sub(self.rows, Ordering::Relaxed);
            for (ticket, activator) in &self.waiting {
                ticket.0.store(true, Ordering::Release);
                if let Some(activator) = activator {
                    let _ = activator.activate();
                }
            }
        }
    }
}

/// Dead letters of one batch on their way to the dead-letter thread.
type Letters = (Vec<DeadLetter>, Arc<Completion>);

/// What one write puts in the tables.
#[derive(Clone, Copy)]
struct Tables<'a> {
    /// The gathered batch (its minute rows' riders moved to `minutes`).
    batch: &'a Batch,
    /// The records of the batch's minute rows, in order.
    minutes: &'a [MinuteRecord],
    /// The run's last write (every sink's last batch is in). It has the machine to itself,
    /// the workers being done: its tables are inserted at once, and its minute rows in two
    /// concurrent inserts (ClickHouse handles an insert on one thread). Other writes insert
    /// one table after another, leaving the cores to the workers and the broker.
    last: bool,
}

fn run(
    destinations: Destinations,
    receiver: Receiver<Job>,
    shared: Arc<Shared>,
    interval: WriteInterval,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can always be built");
    let destinations = Arc::new(destinations);
    let warm_up = {
        // The producers' ids are fetched meanwhile (see `CountingProducer::warm_up`), off
        // this thread: an unreachable broker must not hold up the first ClickHouse insert.
        let destinations = destinations.clone();
        std::thread::Builder::new()
            .name("ridepulse-warmup".into())
            .spawn(move || {
                let d = &destinations;
                std::thread::scope(|scope| {
                    for producer in [&d.aggregated, &d.city_supply, &d.dead_letters] {
                        scope.spawn(move || producer.warm_up(WARM_UP_TIMEOUT));
                    }
                });
            })
            .ok()
    };
    let (letters, letters_receiver) = std::sync::mpsc::channel::<Letters>();
    let letters_thread = {
        let (destinations, shared) = (destinations.clone(), shared.clone());
        std::thread::Builder::new()
            .name("ridepulse-dlq".into())
            .spawn(move || deliver_letters(&destinations, letters_receiver, &shared))
            .expect("the dead-letter thread can be spawned")
    };
    let mut last_write: Option<Instant> = None;
    while let Ok(first) = receiver.recv() {
        if shared.fatal.lock().expect("not poisoned").is_some() {
            break; // the dead-letter thread stopped the job
        }
        let (mut batch, waiting) = gather(
            first,
            &receiver,
            last_write,
            interval.duration(),
            &shared.open_sinks,
        );
        last_write = Some(Instant::now());
        let dead = std::mem::take(&mut batch.dead);
        let completion = Arc::new(Completion {
            parts: AtomicUsize::new(if dead.is_empty() { 1 } else { 2 }),
            rows: batch.len() + dead.len(),
            waiting,
        });
        let now_ms = chrono::Utc::now().timestamp_millis();
        let dead_rows = dead_letter_records(&destinations, &dead, now_ms);
        if !dead.is_empty() {
            // The receiver lives until this loop ends, unless it stopped on a fatal error
            // (then the ticket never completes and the job reports the error).
            let _ = letters.send((dead, completion.clone()));
        }
        let minutes: Vec<MinuteRecord> = (batch.minutes.iter_mut())
            .map(|row| MinuteRecord::new(row, destinations.layout.minutes_ms))
            .collect();
        let tables = Tables {
            batch: &batch,
            minutes: &minutes,
            last: batch.last && shared.open_sinks.load(Ordering::Acquire) == 0,
        };
        if let Err(error) = write(&runtime, &destinations, tables, dead_rows, &shared) {
            error!(%error, "stopping: a write failed and retrying cannot help");
            *shared.fatal.lock().expect("not poisoned") = Some(error);
            break;
        }
        completion.part_done(&shared);
    }
    drop(letters);
    let _ = letters_thread.join();
    // Its hold on the producers ends first, so they are dropped here, at once (below).
    if let Some(warm_up) = warm_up {
        let _ = warm_up.join();
    }
    // Dropping a producer joins its polling thread and lets librdkafka close its
    // connections: the three at once, not in turn.
    if let Ok(destinations) = Arc::try_unwrap(destinations) {
        let Destinations {
            aggregated,
            city_supply,
            dead_letters,
            ..
        } = destinations;
        std::thread::scope(|scope| {
            for producer in [aggregated, city_supply, dead_letters] {
                scope.spawn(move || drop(producer));
            }
        });
    }
    info!("writer finished");
}

/// The batches written as one: `first`, every batch already queued behind it, and those
/// that arrive until `interval` has passed since the previous write began (or
/// [`MAX_MERGED_ROWS`] are gathered, or every sink's last batch is in: a last batch came
/// and `open_sinks` is 0). A live job's sinks submit about once per emit interval, so it
/// seldom waits; a file run's sinks submit at every minute of event time, forty times a
/// second, and each insert costs ClickHouse a new part (then merges) and Tansu a produce
/// (see [`WriteInterval`]).
fn gather(
    first: Job,
    receiver: &Receiver<Job>,
    last_write: Option<Instant>,
    interval: Duration,
    open_sinks: &AtomicUsize,
) -> (Batch, Vec<(Ticket, Option<SyncActivator>)>) {
    let (mut batch, ticket, activator) = first;
    let mut waiting = vec![(ticket, activator)];
    let due = last_write.map(|at| at + interval);
    while batch.len() < MAX_MERGED_ROWS {
        let next = match receiver.try_recv() {
            Ok(job) => job,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                let ended = batch.last && open_sinks.load(Ordering::Acquire) == 0;
                let Some(wait) = due
                    .filter(|_| !ended)
                    .and_then(|due| due.checked_duration_since(Instant::now()))
                else {
                    break;
                };
                match receiver.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
        };
        let (more, ticket, activator) = next;
        batch.append(more);
        waiting.push((ticket, activator));
    }
    (batch, waiting)
}

/// The dead-letter thread: delivers each batch's dead letters to the dead-letter topic, in
/// order, while the writer thread goes on with the next batches, so a flood of dead letters
/// costs the broker's write rate and never the round trips of one batch after another.
/// Letters that queued up meanwhile go out together, as one paced delivery.
fn deliver_letters(d: &Destinations, receiver: Receiver<Letters>, shared: &Shared) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can always be built");
    while let Ok(first) = receiver.recv() {
        let mut queued = vec![first];
        let mut count = queued[0].0.len();
        while count < MAX_LETTERS_PER_DELIVERY {
            let Ok(next) = receiver.try_recv() else { break };
            count += next.0.len();
            queued.push(next);
        }
        let mut all = Vec::with_capacity(count);
        let mut completions = Vec::with_capacity(queued.len());
        for (letters, completion) in queued {
            all.extend(letters);
            completions.push(completion);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let delivered = deliver_dead_letters(d, &shared.stats, &all)
            .and_then(|refused| amend_refused(&runtime, d, &shared.stats, &all, refused, now_ms));
        if let Err(error) = delivered {
            error!(%error, "stopping: a dead-letter delivery failed and retrying cannot help");
            *shared.fatal.lock().expect("not poisoned") = Some(error);
            return;
        }
        for completion in completions {
            completion.part_done(shared);
        }
    }
}

/// Writes one batch's rows, retrying transient failures and isolating refused rows; returns
/// the fatal error's text. (Its dead letters are the dead-letter thread's part;
/// `dead_rows` are their `dead_letters` rows.)
///
/// Checkpoints come last. They are made by the sources from the durable frontier, which no
/// batch passes before both its parts are done, so a checkpoint never covers a dead letter
/// the broker has not acknowledged.
fn write(
    runtime: &tokio::runtime::Runtime,
    d: &Destinations,
    tables: Tables<'_>,
    dead_rows: Vec<DeadLetterRecord>,
    shared: &Shared,
) -> Result<(), String> {
    let stats = &shared.stats;
    let batch = tables.batch;
    let now_ms = chrono::Utc::now().timestamp_millis();
    // The result rows go to their topics meanwhile, on their own thread: a delivery waits
    // for the broker's acknowledgements (~40 ms a write with the local Tansu), which the
    // inserts need not wait for. Neither depends on the other's outcome.
    let (inserted, topics) = std::thread::scope(|scope| {
        let topics = (!batch.metrics.is_empty() || !batch.supply.is_empty())
            .then(|| scope.spawn(|| publish_result_rows(d, stats, batch)));
        let inserted = runtime.block_on(write_tables(d, tables, dead_rows, stats, now_ms));
        let topics = topics.map_or(Ok(()), |thread| {
            thread
                .join()
                .unwrap_or_else(|_| Err("the result rows' delivery panicked".into()))
        });
        (inserted, topics)
    });
    // Rows ClickHouse refused are dead letters too (rare: after the rest, in one go).
    let rejected = inserted?;
    topics?;
    if !rejected.is_empty() {
        let refused = deliver_dead_letters(d, stats, &rejected)?;
        write_dead_letter_rows(runtime, d, stats, &rejected, now_ms)?;
        amend_refused(runtime, d, stats, &rejected, refused, now_ms)?;
    }
    if !batch.checkpoints.is_empty() {
        runtime
            .block_on(retry(stats, "checkpoints", || {
                insert(d, stats, "checkpoints", &batch.checkpoints)
            }))
            .map_err(|failure| failure.to_string())?;
        stats
            .checkpoints
            .fetch_add(batch.checkpoints.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The ClickHouse part of a batch and the metric rows' topic: raw events, dead-letter rows
/// and metric rows. Returns the raw events ClickHouse refused, as dead letters.
async fn write_tables(
    d: &Destinations,
    tables: Tables<'_>,
    dead_rows: Vec<DeadLetterRecord>,
    stats: &WriterStats,
    now_ms: i64,
) -> Result<Vec<DeadLetter>, String> {
    let batch = tables.batch;
    let mut dead: Vec<DeadLetter> = Vec::new();
    if !batch.events.is_empty() {
        let records: Vec<EventRecord> = batch
            .events
            .iter()
            .map(|e| EventRecord::new(e, d.layout.events_ms, now_ms))
            .collect();
        let rejected = insert_isolating(d, stats, "ride_events", &records).await?;
        stats
            .events
            .fetch_add((records.len() - rejected.len()) as u64, Ordering::Relaxed);
        stats
            .rejected_events
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        dead.extend(rejected.into_iter().map(|(index, error)| {
            let sourced = &batch.events[index];
            warn!(partition = sourced.partition, offset = sourced.offset, %error, "ClickHouse refused an event: a dead letter");
            DeadLetter {
                partition: sourced.partition,
                offset: sourced.offset,
                key: Some(sourced.event.ride_id.as_bytes().to_vec()),
                payload: sourced.event.to_json().into_bytes(),
                error: format!("ClickHouse refused the row: {error}"),
                reason: REJECTED_BY_CLICKHOUSE.to_string(),
                source_topic: None,
            }
        }));
    }
    if !dead_rows.is_empty() {
        insert_dead_letter_rows(d, stats, dead_rows).await?;
    }
    let metrics = async {
        if batch.metrics.is_empty() {
            return Ok(());
        }
        let records: Vec<MetricsRecord> = (batch.metrics.iter())
            .map(|row| MetricsRecord::new(row, d.layout.metrics_ms))
            .collect();
        let finals = write_result_rows(d, stats, "city_metrics", &batch.metrics, &records).await?;
        stats
            .metrics
            .fetch_add(batch.metrics.len() as u64, Ordering::Relaxed);
        stats.finals.fetch_add(finals, Ordering::Relaxed);
        Ok::<(), String>(())
    };
    let supply = async {
        if batch.supply.is_empty() {
            return Ok(());
        }
        let records: Vec<SupplyRecord> = (batch.supply.iter())
            .map(|row| SupplyRecord::new(row, d.layout.supply_ms))
            .collect();
        let finals = write_result_rows(d, stats, "city_supply", &batch.supply, &records).await?;
        stats
            .supply
            .fetch_add(batch.supply.len() as u64, Ordering::Relaxed);
        stats.supply_finals.fetch_add(finals, Ordering::Relaxed);
        Ok(())
    };
    let shares = rider_shares(tables.minutes, if tables.last { 2 } else { 1 });
    let minutes = futures_util::future::try_join_all(shares.into_iter().map(|range| {
        let (rows, records) = (&batch.minutes[range.clone()], &tables.minutes[range]);
        async move {
            write_result_rows(d, stats, "city_minutes", rows, records).await?;
            stats
                .minutes
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            Ok::<(), String>(())
        }
    }));
    if tables.last {
        futures_util::future::try_join3(metrics, supply, minutes).await?;
    } else {
        metrics.await?;
        supply.await?;
        minutes.await?;
    }
    Ok(dead)
}

/// `records` as at most `shares` consecutive ranges of about equal riders (fewer if there are
/// fewer records).
fn rider_shares(records: &[MinuteRecord], shares: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = records.iter().map(|record| record.riders.len()).sum();
    let each = total.div_ceil(shares.max(1)).max(1);
    let mut ranges = Vec::with_capacity(shares);
    let (mut start, mut riders) = (0, 0);
    for (index, record) in records.iter().enumerate() {
        riders += record.riders.len();
        if riders >= each && ranges.len() + 1 < shares {
            ranges.push(start..index + 1);
            (start, riders) = (index + 1, 0);
        }
    }
    if start < records.len() {
        ranges.push(start..records.len());
    }
    ranges
}

/// A result row of the job (SPEC §4's metrics, SPEC §5's supply): upserted into its table and
/// sent as JSON, keyed by city, to its topic.
trait ResultRow: serde::Serialize {
    fn city(&self) -> &str;
    /// The row's window or minute, for log lines.
    fn when(&self) -> String;
    fn is_final(&self) -> bool;
}

impl ResultRow for CityMetricsRow {
    fn city(&self) -> &str {
        &self.city
    }
    fn when(&self) -> String {
        self.window_start.to_string()
    }
    fn is_final(&self) -> bool {
        self.is_final == 1
    }
}

impl ResultRow for CityMinuteRow {
    fn city(&self) -> &str {
        &self.city
    }
    fn when(&self) -> String {
        self.minute.to_string()
    }
    fn is_final(&self) -> bool {
        self.is_final == 1
    }
}

impl ResultRow for CitySupplyRow {
    fn city(&self) -> &str {
        &self.city
    }
    fn when(&self) -> String {
        self.minute.to_string()
    }
    fn is_final(&self) -> bool {
        self.is_final == 1
    }
}

/// Writes result rows to `table` as `records` (one per row; a row ClickHouse refuses is
/// logged and counted); returns how many of them are final.
async fn write_result_rows<Row, Record>(
    d: &Destinations,
    stats: &WriterStats,
    table: &str,
    rows: &[Row],
    records: &[Record],
) -> Result<u64, String>
where
    Row: ResultRow,
    Record: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let rejected = insert_isolating(d, stats, table, records).await?;
    for (index, error) in &rejected {
        let row = &rows[*index];
        error!(city = %row.city(), at = %row.when(), table, %error, "ClickHouse refused a result row");
    }
    stats
        .rejected_rows
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    Ok(rows.iter().filter(|r| r.is_final()).count() as u64)
}

/// Sends a batch's metric and supply rows to their topics (the minute rows have none).
fn publish_result_rows(d: &Destinations, stats: &WriterStats, batch: &Batch) -> Result<(), String> {
    publish(stats, &d.aggregated, &batch.metrics)?;
    publish(stats, &d.city_supply, &batch.supply)
}

/// Sends result rows as JSON, keyed by city, to `producer`'s topic (a row the topic refuses
/// is logged and counted).
fn publish<Row: ResultRow>(
    stats: &WriterStats,
    producer: &CountingProducer,
    rows: &[Row],
) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let json: Vec<Vec<u8>> = rows
        .iter()
        .map(|row| serde_json::to_vec(row).expect("rows serialize"))
        .collect();
    let messages: Vec<Outgoing<'_>> = rows
        .iter()
        .zip(&json)
        .map(|(row, bytes)| Outgoing {
            key: Some(row.city().as_bytes()),
            payload: bytes,
            headers: None,
        })
        .collect();
    for (index, error) in deliver(stats, producer, &messages)? {
        let row = &rows[index];
        error!(city = %row.city(), at = %row.when(), topic = %producer.topic(), %error, "the topic refused a result row");
    }
    Ok(())
}

/// Sends `dead` to the dead-letter topic (counted once delivered); returns the ones the
/// broker refused for good.
fn deliver_dead_letters(
    d: &Destinations,
    stats: &WriterStats,
    dead: &[DeadLetter],
) -> Result<Vec<(usize, String)>, String> {
    let source_partitions: Vec<String> = dead.iter().map(|x| x.partition.to_string()).collect();
    let source_offsets: Vec<String> = dead.iter().map(|x| x.offset.to_string()).collect();
    let messages: Vec<Outgoing<'_>> = dead
        .iter()
        .enumerate()
        .map(|(i, dead)| Outgoing {
            key: dead.key.as_deref(),
            payload: &dead.payload,
            headers: Some(
                OwnedHeaders::new_with_capacity(5)
                    .insert(header("source_topic", dead.topic(&d.source_topic)))
                    .insert(header("source_partition", &source_partitions[i]))
                    .insert(header("source_offset", &source_offsets[i]))
                    .insert(header("error", &dead.error))
                    .insert(header("error_reason", &dead.reason)),
            ),
        })
        .collect();
    let refused = deliver(stats, &d.dead_letters, &messages)?;
    stats
        .dead_letters
        .fetch_add(dead.len() as u64, Ordering::Relaxed);
    Ok(refused)
}

/// The `dead_letters` rows of `dead`.
fn dead_letter_records(
    d: &Destinations,
    dead: &[DeadLetter],
    now_ms: i64,
) -> Vec<DeadLetterRecord> {
    dead.iter()
        .map(|dead| DeadLetterRecord {
            source_topic: dead.topic(&d.source_topic).to_string(),
            kafka_partition: dead.partition,
            kafka_offset: dead.offset,
            error: dead.error.clone(),
            reason: dead.reason.clone(),
            payload: String::from_utf8_lossy(&dead.payload).into_owned(),
            received_at: (now_ms / 1000).max(0) as u32,
        })
        .collect()
}

/// Inserts dead-letter rows; a row ClickHouse refuses is logged (its message is on the topic).
async fn insert_dead_letter_rows(
    d: &Destinations,
    stats: &WriterStats,
    records: Vec<DeadLetterRecord>,
) -> Result<(), String> {
    let rejected = insert_isolating(d, stats, "dead_letters", &records).await?;
    for (index, error) in &rejected {
        let record = &records[*index];
        warn!(partition = record.kafka_partition, offset = record.kafka_offset, %error, "ClickHouse refused a dead-letter row (it is on the dead-letter topic)");
    }
    stats
        .rejected_rows
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// The same, from the writer thread (outside the runtime).
fn write_dead_letter_rows(
    runtime: &tokio::runtime::Runtime,
    d: &Destinations,
    stats: &WriterStats,
    dead: &[DeadLetter],
    now_ms: i64,
) -> Result<(), String> {
    runtime.block_on(insert_dead_letter_rows(
        d,
        stats,
        dead_letter_records(d, dead, now_ms),
    ))
}

/// Rewrites the `dead_letters` rows of the messages the dead-letter topic refused, saying so
/// (the table is a ReplacingMergeTree keyed by the message's origin: the newer row wins).
fn amend_refused(
    runtime: &tokio::runtime::Runtime,
    d: &Destinations,
    stats: &WriterStats,
    dead: &[DeadLetter],
    refused: Vec<(usize, String)>,
    now_ms: i64,
) -> Result<(), String> {
    if refused.is_empty() {
        return Ok(());
    }
    let amended: Vec<DeadLetter> = refused
        .into_iter()
        .map(|(index, error)| {
            let mut letter = dead[index].clone();
            warn!(partition = letter.partition, offset = letter.offset, %error, "the dead-letter topic refused a message; it is kept in the dead_letters table");
            letter.error = format!("{} (not on the dead-letter topic: {error})", letter.error);
            letter
        })
        .collect();
    write_dead_letter_rows(runtime, d, stats, &amended, now_ms)
}

/// Delivers `messages` through `producer` (blocking the writer thread, which is what
/// paces it); returns the ones refused for good.
fn deliver(
    stats: &WriterStats,
    producer: &CountingProducer,
    messages: &[Outgoing<'_>],
) -> Result<Vec<(usize, String)>, String> {
    let refused = producer
        .deliver(messages, &stats.retries)
        .map_err(|e| e.to_string())?;
    stats
        .refused_messages
        .fetch_add(refused.len() as u64, Ordering::Relaxed);
    Ok(refused)
}

/// Inserts `records`, retrying transient failures; when the server refuses the insert for
/// a reason tied to its rows, splits it in halves until the refused rows are isolated and
/// writes every other row. Returns the refused rows (index, server message); a fatal error
/// is returned as its text.
async fn insert_isolating<R>(
    d: &Destinations,
    stats: &WriterStats,
    table: &str,
    records: &[R],
) -> Result<Vec<(usize, String)>, String>
where
    R: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let mut refused = Vec::new();
    // Parts still to insert, as (start, end) of `records`.
    let mut parts = vec![(0, records.len())];
    while let Some((start, end)) = parts.pop() {
        let rows = &records[start..end];
        match retry(stats, table, || insert(d, stats, table, rows)).await {
            Ok(()) => {}
            Err(error) if error.severity() == Severity::Rows => {
                if end - start == 1 {
                    refused.push((start, error.to_string()));
                } else {
                    if end - start == records.len() {
                        warn!(table, rows = records.len(), %error, "an insert was refused for its rows; splitting it to isolate them");
                    }
                    let middle = start + (end - start) / 2;
                    parts.push((middle, end));
                    parts.push((start, middle));
                }
            }
            Err(failure) => return Err(failure.to_string()),
        }
    }
    Ok(refused)
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// Inserts `records` into `database.table` as one INSERT (one block: all or nothing).
async fn insert<R>(
    d: &Destinations,
    stats: &WriterStats,
    table: &str,
    records: &[R],
) -> Result<(), ClickHouseError>
where
    R: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let started = std::time::Instant::now();
    let qualified = format!("{}.{}", d.database, table);
    let what = format!("insert into {qualified}");
    let fail = |e| ClickHouseError::from_client(&d.url, &what, e);
    let mut insert = d
        .client
        .insert::<R>(table)
        .await
        .map_err(fail)?
        .with_timeouts(Some(INSERT_TIMEOUT), Some(INSERT_TIMEOUT));
    // What the crate encodes, sized by walking the same `Serialize` (it reports no sizes).
    // A row that cannot be sized is a metrics bug, never a reason to fail the insert.
    // Skipped when the process serves no /metrics (`TableMetrics::recording`).
    let sizing = stats.tables.recording();
    let (mut bytes, mut unsized_rows) = (0, 0);
    for record in records {
        if sizing {
            match row_binary_size(record) {
                Ok(size) => bytes += size,
                Err(_) => unsized_rows += 1,
            }
        }
        insert.write(record).await.map_err(fail)?;
    }
    if unsized_rows > 0 {
        warn!(
            table,
            rows = unsized_rows,
            "rows not counted in ridepulse_writer_bytes_total"
        );
    }
    insert.end().await.map_err(fail)?;
    stats
        .tables
        .inserted(table, records.len(), bytes, started.elapsed());
    Ok(())
}

/// Runs `attempt` until it succeeds or fails for a reason retrying cannot fix, backing off
/// exponentially with jitter.
async fn retry<F, Fut>(
    stats: &WriterStats,
    what: &str,
    mut attempt: F,
) -> Result<(), ClickHouseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClickHouseError>>,
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
            Err(failure) if failure.is_retryable() => {
                failures += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                stats.clickhouse_retries.fetch_add(1, Ordering::Relaxed);
                if failures == 1 || failures.is_power_of_two() {
                    warn!(what, failures, retry_in = ?delay, error = %failure, "write failed; retrying");
                }
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(failure) => return Err(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live job's interval (the gathering rules do not depend on which).
    const INTERVAL: Duration = Duration::from_millis(200);
    /// No sink counted (a last batch ends the gathering at once).
    static NO_SINKS: AtomicUsize = AtomicUsize::new(0);

    fn job(checkpoints: usize) -> (Job, Ticket) {
        let checkpoint = CheckpointRecord {
            consumer_group: "g".into(),
            topic: "t".into(),
            kafka_partition: 0,
            next_offset: 0,
            max_event_ms: None,
            written_to: 0,
            finalized_through: 0,
            written_at_us: 0,
        };
        let batch = Batch {
            checkpoints: vec![checkpoint; checkpoints],
            ..Batch::default()
        };
        let ticket = Ticket::default();
        ((batch, ticket.clone(), None), ticket)
    }

    #[test]
    fn a_first_write_takes_what_is_queued_and_does_not_wait() {
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let (first, _) = job(1);
        for rows in [2, 3] {
            sender.send(job(rows).0).unwrap();
        }
        let started = Instant::now();
        let (batch, waiting) = gather(first, &receiver, None, INTERVAL, &NO_SINKS);
        assert_eq!((batch.checkpoints.len(), waiting.len()), (6, 3));
        assert!(started.elapsed() < INTERVAL);
    }

    #[test]
    fn a_write_soon_after_the_last_gathers_what_arrives_meanwhile() {
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let (first, _) = job(1);
        let late = std::thread::spawn(move || {
            std::thread::sleep(INTERVAL / 4);
            sender.send(job(4).0).unwrap();
            // Kept open past the interval: the gathering ends on time, not on a hang-up.
            std::thread::sleep(INTERVAL * 2);
        });
        let (batch, waiting) = gather(first, &receiver, Some(Instant::now()), INTERVAL, &NO_SINKS);
        assert_eq!((batch.checkpoints.len(), waiting.len()), (5, 2));
        late.join().unwrap();
    }

    #[test]
    fn a_sinks_last_batch_is_written_without_waiting() {
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let ((mut batch, ticket, activator), _) = job(1);
        batch.last = true;
        sender.send(job(2).0).unwrap();
        let started = Instant::now();
        let (batch, waiting) = gather(
            (batch, ticket, activator),
            &receiver,
            Some(started),
            INTERVAL,
            &NO_SINKS,
        );
        assert_eq!((batch.checkpoints.len(), waiting.len()), (3, 2));
        assert!(started.elapsed() < INTERVAL / 2);
        drop(sender);
    }

    /// With two sinks open, the first one's last batch waits for the second one's, and
    /// the write starts as soon as that is in (not at the end of the interval).
    #[test]
    fn the_sinks_last_batches_are_written_together() {
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let open = Arc::new(AtomicUsize::new(2));
        let ((mut first, ticket, activator), _) = job(1);
        first.last = true;
        open.fetch_sub(1, Ordering::AcqRel);
        let other = {
            let open = open.clone();
            std::thread::spawn(move || {
                std::thread::sleep(INTERVAL / 8);
                sender.send(job(2).0).unwrap();
                std::thread::sleep(INTERVAL / 8);
                let ((mut last, ticket, activator), _) = job(3);
                last.last = true;
                open.fetch_sub(1, Ordering::AcqRel);
                sender.send((last, ticket, activator)).unwrap();
                // Kept open: the gathering ends on the last batch, not on a hang-up.
                std::thread::sleep(INTERVAL * 4);
            })
        };
        let started = Instant::now();
        let long = INTERVAL * 4;
        let (batch, waiting) = gather(
            (first, ticket, activator),
            &receiver,
            Some(started),
            long,
            &open,
        );
        assert_eq!((batch.checkpoints.len(), waiting.len()), (6, 3));
        assert!(batch.last);
        assert!(started.elapsed() < long / 2, "it waited for the interval");
        other.join().unwrap();
    }

    #[test]
    fn gathering_stops_at_the_row_limit() {
        let (sender, receiver) = sync_channel::<Job>(QUEUE_DEPTH);
        let (first, _) = job(MAX_MERGED_ROWS);
        sender.send(job(1).0).unwrap();
        let (batch, waiting) = gather(first, &receiver, Some(Instant::now()), INTERVAL, &NO_SINKS);
        assert_eq!(
            (batch.checkpoints.len(), waiting.len()),
            (MAX_MERGED_ROWS, 1)
        );
        assert_eq!(receiver.try_recv().map(|(b, _, _)| b.len()).ok(), Some(1));
    }

    #[test]
    fn a_merged_write_completes_every_ticket_and_releases_every_row() {
        let shared = Shared {
            inflight_rows: AtomicUsize::new(9),
            open_sinks: AtomicUsize::new(0),
            fatal: Mutex::new(None),
            stats: WriterStats::default(),
        };
        let tickets: Vec<Ticket> = (0..3).map(|_| Ticket::default()).collect();
        let completion = Completion {
            parts: AtomicUsize::new(2),
            rows: 9,
            waiting: tickets.iter().map(|t| (t.clone(), None)).collect(),
        };
        completion.part_done(&shared);
        assert!(
            tickets.iter().all(|t| !t.is_done()),
            "one part is still out"
        );
        completion.part_done(&shared);
        assert!(tickets.iter().all(Ticket::is_done));
        assert_eq!(shared.inflight_rows.load(Ordering::Relaxed), 0);
    }

    /// Minute records of one city, minute after minute, with these numbers of riders.
    fn minute_records(riders: &[usize]) -> (Vec<CityMinuteRow>, Vec<MinuteRecord>) {
        let mut rows: Vec<CityMinuteRow> = (riders.iter().enumerate())
            .map(|(i, &n)| CityMinuteRow {
                minute: dataflows::event::Timestamp(i as i64 * 60_000),
                city: "London".into(),
                events: n as u64,
                requested: 0,
                accepted: 0,
                started: 0,
                completed: 0,
                cancelled: 0,
                fare_sum: 0.0,
                fares: 0,
                unique_riders: n as u64,
                riders: (0..n).map(|r| format!("rider-{i}-{r}").into()).collect(),
                max_event_ms: 0,
                is_final: 1,
                version: 1,
                updated_at: dataflows::event::Timestamp(0),
            })
            .collect();
        let records = (rows.iter_mut())
            .map(|row| MinuteRecord::new(row, false))
            .collect();
        (rows, records)
    }

    #[test]
    fn minute_records_take_their_rows_riders() {
        let (rows, records) = minute_records(&[2, 3]);
        assert!(rows.iter().all(|row| row.riders.is_empty()));
        assert_eq!(records[1].riders, ["rider-1-0", "rider-1-1", "rider-1-2"]);
        assert_eq!(records[1].unique_riders, 3);
    }

    #[test]
    fn a_last_write_splits_its_minute_rows_in_shares_of_about_equal_riders() {
        let (_, records) = minute_records(&[1, 1, 1, 1, 1, 1]);
        assert_eq!(rider_shares(&records, 2), [0..3, 3..6]);
        assert_eq!(rider_shares(&records, 3), [0..2, 2..4, 4..6]);
        assert_eq!(rider_shares(&records, 1), vec![0..6]);
        // A row of many riders is a share of its own; the rest go together.
        let (_, records) = minute_records(&[8, 1, 1, 1, 1]);
        assert_eq!(rider_shares(&records, 2), [0..1, 1..5]);
        let (_, records) = minute_records(&[1, 1, 1, 1, 8]);
        assert_eq!(rider_shares(&records, 2), vec![0..5]);
        // Fewer rows than shares, no rows, rows without riders.
        let (_, records) = minute_records(&[4]);
        assert_eq!(rider_shares(&records, 2), vec![0..1]);
        assert!(rider_shares(&[], 2).is_empty());
        let (_, records) = minute_records(&[0, 0, 0]);
        assert_eq!(rider_shares(&records, 2), vec![0..3]);
    }
}
