//! `ridepulse run`: the city-metrics job in one process with N worker threads.
//!
//! Builds, on every worker, Kafka source → city-metrics dataflow → output. Rows are
//! printed as JSON lines (SPEC §4's column names) until the sinks take over; the summary
//! (events, late, invalid) goes to stderr.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::city_metrics::{build, WindowConfig};
use dataflows::watermark::MarksBoard;
use timely::dataflow::operators::Inspect;
use tracing::info;

use crate::config::Config;
use crate::kafka::source::{kafka_source, SourceConfig, SourceCounters};
use crate::kafka::topics;

/// How to run the job.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads in this process.
    pub workers: usize,
    /// Read up to the end offsets that exist at start, finalize every window, and exit.
    pub until_end: bool,
    /// Print only final rows.
    pub final_only: bool,
    /// The consumer group.
    pub group_id: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Valid events read.
    pub events: u64,
    /// Late events among them.
    pub late: u64,
    /// Messages that were not valid events.
    pub invalid: u64,
    /// Rows emitted (final or not).
    pub rows: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs the job, writing rows as JSON lines to `out`.
pub fn run<W: Write + Send + 'static>(
    config: &Config,
    options: &RunOptions,
    out: W,
) -> anyhow::Result<RunSummary> {
    let partitions = topics::partition_count(&config.kafka.brokers, &config.topics.ride_events)?;
    let source = SourceConfig {
        brokers: config.kafka.brokers.clone(),
        topic: config.topics.ride_events.clone(),
        partitions,
        group_id: options.group_id.clone(),
        allowed_lateness: Duration::from_secs(config.window.allowed_lateness_secs),
        idle_timeout: Duration::from_secs(config.window.idle_timeout_secs),
        until_end: options.until_end,
    };
    let window = WindowConfig {
        length_minutes: config.window.length_minutes,
        slide_minutes: config.window.slide_minutes,
        emit_interval: Duration::from_millis(config.window.emit_interval_ms),
    };
    let counters = Arc::new(SourceCounters::default());
    // The workers combine their partitions' marks into the job's watermark here.
    let board = Arc::new(MarksBoard::new(options.workers));
    let out = Arc::new(Mutex::new(out));
    let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let final_only = options.final_only;
    info!(workers = options.workers, partitions, topic = %source.topic, until_end = options.until_end, "starting job");
    let (counters2, out2, rows2) = (counters.clone(), out.clone(), rows.clone());
    let guards = timely::execute(timely::Config::process(options.workers), move |worker| {
        let (counters, out, rows, board) = (
            counters2.clone(),
            out2.clone(),
            rows2.clone(),
            board.clone(),
        );
        worker.dataflow::<u64, _, _>(|scope| -> Result<(), String> {
            let events =
                kafka_source(scope, &source, counters, board).map_err(|e| e.to_string())?;
            let metrics = build(events, &window);
            metrics.rows.inspect(move |row| {
                if final_only && row.is_final == 0 {
                    return;
                }
                rows.fetch_add(1, Ordering::Relaxed);
                let line = serde_json::to_string(row).expect("rows serialize");
                let mut out = out.lock().expect("not poisoned");
                let _ = writeln!(out, "{line}");
            });
            Ok(())
        })
    })
    .map_err(|e| anyhow::anyhow!("cannot start the timely workers: {e}"))?;
    for result in guards.join() {
        result
            .map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
            .map_err(anyhow::Error::msg)?;
    }
    out.lock().expect("not poisoned").flush()?;
    Ok(RunSummary {
        events: counters.events.load(Ordering::Relaxed),
        late: counters.late.load(Ordering::Relaxed),
        invalid: counters.invalid.load(Ordering::Relaxed),
        rows: rows.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
