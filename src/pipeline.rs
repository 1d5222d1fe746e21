//! `ridepulse run`: one process of the job (one process with N worker threads, or process I
//! of a cluster layout, see `cluster`).
//!
//! On every worker: two sources, `ride-events` and `driver-locations` (Kafka, or files with
//! `--from-file` / `--locations-file`) → the city-metrics dataflow (ride events only, SPEC
//! §3) and the supply dataflow (both, SPEC §5) → sinks. The ingest sinks write raw events
//! to `ride_events` and dead letters of both topics to the dead-letter topic; the metrics
//! sink upserts rows into `city_metrics` and sends them to `analytics-aggregated`, the
//! rollup sink upserts per-minute rows into `city_minutes` (what the dashboards read); the
//! supply sink upserts rows into `city_supply` and sends them to `city-supply`. Supply and demand
//! needs driver locations: with `supply.enabled = false`, or `auto` in a file run without
//! location files, the supply dataflow is not built, and `driver-locations` is not read
//! (an empty file source marks its slots on the marks board finished). A probe on
//! every sink is the durable frontier both sources checkpoint behind (see
//! `kafka::source`), so a checkpoint never passes a metrics or supply row that is not
//! durable. Both sources post to one marks board: the job's watermark is the minimum over
//! the non-idle partitions of both topics.
//!
//! Restarts: each topic resumes from its own checkpoints, which reach back
//! `max(window length, supply horizon)` minutes before the first unfinished minute (10 by
//! default), so the supply state is rebuilt exactly; both dataflows get the largest
//! `finalized_through` of either topic's checkpoints, so rows already final and durable are
//! not emitted again. A final row that is emitted again after a restart (a minute between
//! two checkpoints) is computed from the same records, so it is identical, version
//! included, and collapses with the first in ReplacingMergeTree. All of this needs the
//! re-read range still in the log: `driver-locations` is compacted, and positions compacted
//! away before a restart re-reads them are missing from the rebuilt minutes (counted as
//! `compacted_locations`; see "Compaction" in `kafka::source`).
//!
//! Before the dataflow starts, the job checks the tables' columns (a wrong schema stops it
//! here, naming table and column) and loads the group's checkpoints to resume from. While
//! it runs, the main thread watches the writer: a fatal write error ends the job with that
//! error. `--until-end` runs write their final checkpoints after the dataflow completes.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dataflows::city_metrics::{build, WindowConfig};
use dataflows::event::{DriverLocation, RideEvent};
use dataflows::supply::SupplyConfig;
use dataflows::watermark::MarksBoard;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tracing::info;

use crate::clickhouse::rows::CheckpointRecord;
use crate::clickhouse::writer::{Batch, WriteInterval, Writer};
use crate::clickhouse::{self, schema};
use crate::cluster::Layout;
use crate::config::Config;
use crate::kafka::settings;
use crate::kafka::source::{kafka_source, SourceConfig};
use crate::kafka::topics;
use crate::sinks::ingest::{ingest_sink, split_ingested};
use crate::sinks::metrics::metrics_sink;
use crate::sinks::minutes::minutes_sink;
use crate::sinks::supply::supply_sink;
use crate::source::file::{file_source, FileSourceConfig};
use crate::source::line_chunks::LineChunks;
use crate::source::{IngestProgress, Resume, SourceCounters, SourceShared};

/// How to run the job.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The processes of the job and their worker threads (one local process by default).
    pub layout: Layout,
    /// Which process of `layout` this is.
    pub process: usize,
    /// Only these cities (`None`: all).
    pub cities: Option<BTreeSet<String>>,
    /// Whether this job writes malformed messages to the dead-letter topic.
    pub dead_letters: bool,
    /// Read these JSON-lines files instead of `ride-events` (always to their end; see
    /// `file_source`).
    pub files: Vec<std::path::PathBuf>,
    /// Read these JSON-lines files instead of `driver-locations` (with `files`, or alone:
    /// either turns the job into a file run).
    pub location_files: Vec<std::path::PathBuf>,
    /// Read up to the end offsets that exist at start, finalize every window, and exit.
    pub until_end: bool,
    /// Also print emitted rows as JSON lines.
    pub print: bool,
    /// Print only final rows.
    pub final_only: bool,
    /// The consumer group (checkpoints are kept per group).
    pub group_id: String,
    /// Ignore the group's checkpoints and read every retained message.
    pub from_beginning: bool,
}

/// The exit code of a job process stopped by a failure no restart can fix (schema,
/// credentials, disk full, authorization): the supervisor sees it and backs off for
/// minutes instead of restarting in a loop (78 is sysexits' EX_CONFIG).
pub const FATAL_EXIT_CODE: i32 = 78;

/// A failure no restart can fix; `main` prints it as `fatal: ...` and exits with
/// [`FATAL_EXIT_CODE`].
#[derive(Debug, thiserror::Error)]
#[error("the job stopped: {0}")]
pub struct JobFatal(pub String);

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Valid events read.
    pub events: u64,
    /// Late events among them.
    pub late: u64,
    /// Messages that were not valid events.
    pub invalid: u64,
    /// The same by reason, as `reason:count,...`.
    pub invalid_by_reason: String,
    /// Messages retention deleted after the job's checkpoint (never read).
    pub retention_gap: u64,
    /// Valid events ClickHouse refused (dead letters with reason `rejected_by_clickhouse`).
    pub rejected_events: u64,
    /// Messages re-read after a restart that were already written.
    pub replayed: u64,
    /// Valid events of cities another job owns.
    pub other_cities: u64,
    /// Rows written to `ride_events`.
    pub written_events: u64,
    /// Dead letters delivered.
    pub dead_letters: u64,
    /// Metric rows written (updates and finals).
    pub rows: u64,
    /// Final rows among them.
    pub finals: u64,
    /// Valid driver locations read.
    pub locations: u64,
    /// Late locations among them.
    pub late_locations: u64,
    /// Messages of `driver-locations` that were not valid locations.
    pub invalid_locations: u64,
    /// Messages of `driver-locations` the job should have read that the log no longer had:
    /// holes compaction made inside the read range, and messages after the job's checkpoint
    /// below the partition's oldest offset (see `kafka::source`); the supply rows of their
    /// minutes miss those positions.
    pub compacted_locations: u64,
    /// Supply rows written (updates and finals).
    pub supply_rows: u64,
    /// Final supply rows among them.
    pub supply_finals: u64,
    /// Write attempts that failed and were retried.
    pub retries: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The line `ridepulse run` prints on stderr when it ends (tests and scripts read its
/// `key=value` fields).
impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events={} late={} invalid={} invalid_by_reason={} retention_gap={} rejected_events={} replayed={} other_cities={} written_events={} dead_letters={} rows={} finals={} retries={} seconds={:.2} events_per_sec={:.0} locations={} late_locations={} invalid_locations={} supply_rows={} supply_finals={} compacted_locations={}",
            self.events,
            self.late,
            self.invalid,
            self.invalid_by_reason,
            self.retention_gap,
            self.rejected_events,
            self.replayed,
            self.other_cities,
            self.written_events,
            self.dead_letters,
            self.rows,
            self.finals,
            self.retries,
            self.elapsed.as_secs_f64(),
            self.events as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.locations,
            self.late_locations,
            self.invalid_locations,
            self.supply_rows,
            self.supply_finals,
            self.compacted_locations
        )
    }
}

/// Loads the newest checkpoint of each partition of `topic` for `group`.
pub async fn load_resume(
    config: &Config,
    group: &str,
    topic: &str,
) -> Result<Resume, clickhouse::ClickHouseError> {
    let client = clickhouse::connect(&config.clickhouse);
    let records = client
        .query("SELECT ?fields FROM checkpoints FINAL WHERE consumer_group = ? AND topic = ?")
        .bind(group)
        .bind(topic)
        .fetch_all::<CheckpointRecord>()
        .await
        .map_err(|e| {
            clickhouse::ClickHouseError::from_client(
                &config.clickhouse.url,
                "reading checkpoints",
                e,
            )
        })?;
    Ok(Resume {
        partitions: records
            .into_iter()
            .map(|r| (r.kafka_partition, r))
            .collect(),
        other_finalized: 0,
    })
}

/// Runs the job; with `options.print`, rows also go to `out` as JSON lines.
pub fn run<W: Write + Send + 'static>(
    config: &Config,
    options: &RunOptions,
    out: W,
) -> anyhow::Result<RunSummary> {
    // Every topic the job reads or writes must exist, and every table: the broker and
    // ClickHouse are asked at once (~15 ms each).
    let (counts, layout) = std::thread::scope(|scope| {
        let counts = scope.spawn(|| {
            topics::partition_counts(
                &config.kafka.brokers,
                &[
                    &config.topics.ride_events,
                    &config.topics.driver_locations,
                    &config.topics.aggregated,
                    &config.topics.dead_letters,
                    &config.topics.city_supply,
                ],
            )
        });
        let layout = clickhouse::block_on(schema::verify(&config.clickhouse));
        (
            counts.join().expect("a metadata request does not panic"),
            layout,
        )
    });
    let counts = counts?;
    let (partitions, location_partitions) = (counts[0], counts[1]);
    let layout = layout.map_err(|error| {
        if error.is_retryable() {
            anyhow::Error::new(error)
        } else {
            JobFatal(error.to_string()).into()
        }
    })?;
    let from_files = !options.files.is_empty() || !options.location_files.is_empty();
    // Supply and demand needs driver locations: a file run of ride events alone computes
    // the city metrics only (unless `supply.enabled = true`), and without supply the job
    // does not read `driver-locations` at all.
    let with_supply = config
        .supply
        .runs(from_files && options.location_files.is_empty());
    if from_files && options.layout.processes.len() > 1 {
        bail!("--from-file runs in one process: use -w N for more worker threads");
    }
    for file in &options.files {
        std::fs::metadata(file).with_context(|| format!("--from-file {}", file.display()))?;
    }
    for file in &options.location_files {
        std::fs::metadata(file).with_context(|| format!("--locations-file {}", file.display()))?;
    }
    let (mut resume, mut location_resume) = if options.from_beginning || from_files {
        (Resume::default(), Resume::default())
    } else {
        (
            clickhouse::block_on(load_resume(
                config,
                &options.group_id,
                &config.topics.ride_events,
            ))?,
            clickhouse::block_on(load_resume(
                config,
                &options.group_id,
                &config.topics.driver_locations,
            ))?,
        )
    };
    // Every checkpoint records the job's durable frontier: the larger of the two topics'
    // is durable for both dataflows.
    resume.other_finalized = location_resume.own_finalized();
    location_resume.other_finalized = resume.own_finalized();
    // With raw events a file run's batches fill by rows (50,000) and a longer interval only
    // keeps the next write from overlapping the reading (12 % slower, measured).
    let interval = if from_files && !config.sinks.raw_events {
        WriteInterval::Backfill
    } else {
        WriteInterval::Live
    };
    let writer = Arc::new(Writer::start(
        config,
        layout,
        &format!("ridepulse-{}", options.group_id),
        interval,
    )?);
    let source = SourceConfig {
        brokers: config.kafka.brokers.clone(),
        topic: config.topics.ride_events.clone(),
        partitions,
        group_id: options.group_id.clone(),
        allowed_lateness: Duration::from_secs(config.window.allowed_lateness_secs),
        idle_timeout: Duration::from_secs(config.window.idle_timeout_secs),
        max_future: Duration::from_secs(config.window.max_future_secs),
        until_end: options.until_end,
        window_length_minutes: config.window.length_minutes,
        rebuild_minutes: config
            .window
            .length_minutes
            .max(config.supply.horizon_minutes()),
        board_offset: 0,
        checkpoint_interval: Duration::from_millis(config.job.checkpoint_interval_ms),
        max_drift: Duration::from_secs(config.job.max_drift_secs),
        cities: options.cities.clone(),
        dead_letters: options.dead_letters,
        raw: config.sinks.raw_events,
    };
    let window = WindowConfig {
        length_minutes: config.window.length_minutes,
        slide_minutes: config.window.slide_minutes,
        emit_interval: Duration::from_millis(config.window.emit_interval_ms),
        finalized_through: resume.finalized_through(),
    };
    let workers = options.layout.total_workers();
    let location_source = SourceConfig {
        topic: config.topics.driver_locations.clone(),
        partitions: location_partitions,
        // Its worker slots on the shared marks board follow the ride-events source's.
        board_offset: workers,
        ..source.clone()
    };
    let supply = SupplyConfig {
        stale_after_minutes: config.supply.stale_after_minutes,
        request_timeout_minutes: config.supply.request_timeout_minutes,
        emit_interval: window.emit_interval,
        finalized_through: window.finalized_through,
        ..SupplyConfig::default()
    };
    info!(
        process = options.process,
        processes = options.layout.processes.len(),
        workers = options.layout.total_workers(),
        partitions,
        topic = %source.topic,
        until_end = options.until_end,
        resumed_partitions = resume.partitions.len(),
        resumed_location_partitions = location_resume.partitions.len(),
        location_partitions,
        finalized_through = window.finalized_through,
        supply = with_supply,
        "starting job"
    );
    let shared = SourceShared {
        counters: Arc::new(SourceCounters::default()),
        // The workers combine their partitions' marks into the job's watermark here: one
        // slot per worker and topic, so the watermark covers both topics.
        board: Arc::new(MarksBoard::new(2 * workers)),
        writer: writer.clone(),
        resume: Arc::new(resume),
        finals: Arc::new(Mutex::new(Vec::new())),
    };
    let location_shared = SourceShared {
        counters: Arc::new(SourceCounters::default()),
        resume: Arc::new(location_resume),
        ..shared.clone()
    };
    // Prometheus's /metrics, read from the counters above at scrape time (see `metrics`).
    let _metrics = crate::metrics::serve_job(
        config,
        &options.layout,
        options.process,
        &options.group_id,
        vec![
            (config.topics.ride_events.clone(), shared.counters.clone()),
            (
                config.topics.driver_locations.clone(),
                location_shared.counters.clone(),
            ),
        ],
        writer.clone(),
    );
    let out = Arc::new(Mutex::new(out));
    let started = Instant::now();
    let (print, final_only) = (options.print, options.final_only);
    let raw = config.sinks.raw_events;
    let (worker_shared, worker_location_shared, worker_out) =
        (shared.clone(), location_shared.clone(), out.clone());
    let files = FileSourceConfig {
        files: options.files.clone(),
        partitions,
        topic: config.topics.ride_events.clone(),
        board_offset: 0,
        allowed_lateness: source.allowed_lateness,
        cities: options.cities.clone(),
        dead_letters: options.dead_letters,
        max_drift: Duration::from_secs(config.job.max_drift_secs),
    };
    let location_files = FileSourceConfig {
        // Without supply, no location is read: an empty file source only marks the topic's
        // slots on the marks board finished.
        files: if with_supply {
            options.location_files.clone()
        } else {
            Vec::new()
        },
        partitions: location_partitions,
        topic: config.topics.driver_locations.clone(),
        board_offset: workers,
        ..files.clone()
    };
    // One reading position per file source, shared by the process's workers.
    let ride_lines = Arc::new(LineChunks::new(files.files.clone(), partitions, workers));
    let location_lines = Arc::new(LineChunks::new(
        location_files.files.clone(),
        location_partitions,
        workers,
    ));
    let timely_config = options
        .layout
        .timely_config(options.process)
        .map_err(anyhow::Error::msg)?;
    // With several processes this waits until all of them are connected.
    let guards = timely::execute(timely_config, move |worker| {
        let shared = worker_shared.clone();
        let location_shared = worker_location_shared.clone();
        let out = worker_out.clone();
        let writer = shared.writer.clone();
        let durable = ProbeHandle::<u64>::new();
        let progress = Rc::new(RefCell::new(IngestProgress::default()));
        let location_progress = Rc::new(RefCell::new(IngestProgress::default()));
        worker.dataflow::<u64, _, _>(|scope| -> Result<(), String> {
            let ingested = if from_files {
                file_source::<RideEvent>(scope, &files, ride_lines.clone(), shared)
            } else {
                kafka_source::<RideEvent>(scope, &source, shared, durable.clone(), progress.clone())
                    .map_err(|e| e.to_string())?
            };
            // Without supply the location files are none, so this reads nothing.
            let located = if from_files || !with_supply {
                file_source::<DriverLocation>(
                    scope,
                    &location_files,
                    location_lines.clone(),
                    location_shared,
                )
            } else {
                kafka_source::<DriverLocation>(
                    scope,
                    &location_source,
                    location_shared,
                    durable.clone(),
                    location_progress.clone(),
                )
                .map_err(|e| e.to_string())?
            };
            let (events, ingested) = split_ingested(ingested, raw);
            let (locations, located) = split_ingested(located, raw);
            let metrics = if with_supply {
                let metrics = build(events.clone(), &window);
                // Late records are counted by the sources; the supply's late streams are
                // unused.
                let city_supply = dataflows::supply::build(events, locations, &supply);
                supply_sink(city_supply.rows, writer.clone()).probe_with(&durable);
                metrics
            } else {
                build(events, &window)
            };
            let rows = metrics.rows.inspect(move |row| {
                if !print || (final_only && row.is_final == 0) {
                    return;
                }
                let line = serde_json::to_string(row).expect("rows serialize");
                let mut out = out.lock().expect("not poisoned");
                let _ = writeln!(out, "{line}");
            });
            ingest_sink(ingested, writer.clone(), progress, raw).probe_with(&durable);
            ingest_sink(located, writer.clone(), location_progress, raw).probe_with(&durable);
            metrics_sink(rows, writer.clone()).probe_with(&durable);
            minutes_sink(metrics.minutes, writer).probe_with(&durable);
            Ok(())
        })
    })
    .map_err(|e| anyhow::anyhow!("cannot start the timely workers: {e}"))?;
    info!(
        process = options.process,
        processes = options.layout.processes.len(),
        "cluster connected; workers running"
    );

    // Join the workers on a helper thread, so this one can watch for fatal write errors.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let results: Vec<Result<Result<(), String>, String>> = guards.join();
        let _ = done_tx.send(results);
    });
    let results = loop {
        if let Some(error) = writer.fatal() {
            return Err(JobFatal(error).into());
        }
        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(results) => break results,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(error) => bail!("the workers' thread ended without a result: {error}"),
        }
    };
    for result in results {
        result
            .map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
            .map_err(anyhow::Error::msg)?;
    }

    // Everything the sinks wrote is durable (they hold capabilities until it is); record
    // where a later run continues, then commit the same offsets to the group.
    let mut finals = std::mem::take(&mut *shared.finals.lock().expect("not poisoned"));
    if !finals.is_empty() {
        let through = finals
            .iter()
            .map(|c| c.finalized_through)
            .max()
            .unwrap_or(0);
        for record in &mut finals {
            record.finalized_through = through;
        }
        writer.submit(
            Batch {
                checkpoints: finals.clone(),
                last: true,
                ..Batch::default()
            },
            None,
        );
    }
    writer.shutdown();
    if let Some(error) = writer.fatal() {
        return Err(JobFatal(error).into());
    }
    if !finals.is_empty() {
        commit_offsets(config, &options.group_id, &finals)
            .context("committing the final offsets")?;
    }
    out.lock().expect("not poisoned").flush()?;
    let counters = &shared.counters;
    let location_counters = &location_shared.counters;
    let stats = writer.stats();
    Ok(RunSummary {
        events: counters.events.load(Ordering::Relaxed),
        late: counters.late.load(Ordering::Relaxed),
        invalid: counters.invalid.load(Ordering::Relaxed),
        invalid_by_reason: counters.invalid_by_reason_text(),
        retention_gap: counters.retention_gap.load(Ordering::Relaxed),
        rejected_events: stats.rejected_events.load(Ordering::Relaxed),
        replayed: counters.replayed.load(Ordering::Relaxed),
        other_cities: counters.other_cities.load(Ordering::Relaxed),
        written_events: stats.events.load(Ordering::Relaxed),
        dead_letters: stats.dead_letters.load(Ordering::Relaxed),
        rows: stats.metrics.load(Ordering::Relaxed),
        finals: stats.finals.load(Ordering::Relaxed),
        locations: location_counters.events.load(Ordering::Relaxed),
        late_locations: location_counters.late.load(Ordering::Relaxed),
        invalid_locations: location_counters.invalid.load(Ordering::Relaxed),
        // Offsets a compacted topic no longer had: holes in a read range, and (retention
        // or compaction moved the low watermark) offsets before it after a checkpoint.
        compacted_locations: location_counters.compacted.load(Ordering::Relaxed)
            + location_counters.retention_gap.load(Ordering::Relaxed),
        supply_rows: stats.supply.load(Ordering::Relaxed),
        supply_finals: stats.supply_finals.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Commits the checkpoints' offsets to the consumer group (what lag tools read).
fn commit_offsets(
    config: &Config,
    group: &str,
    records: &[CheckpointRecord],
) -> anyhow::Result<()> {
    let consumer: BaseConsumer =
        settings::consumer(&config.kafka.brokers, group, "ridepulse-commit").create()?;
    let mut offsets = TopicPartitionList::new();
    for record in records {
        offsets.add_partition_offset(
            &record.topic,
            record.kafka_partition as i32,
            Offset::Offset(record.next_offset),
        )?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    Ok(())
}
