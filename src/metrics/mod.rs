//! Operational metrics: what a running job process says about its own health, for Prometheus.
//!
//! A supervised job never prints its end-of-run summary, so the ops team needs the same
//! counters while it runs: consumer lag, watermark delay, late events, dead letters, the
//! writer's queue, latency and retries, checkpoint age and restarts (docs/metrics.md lists
//! every metric). The hot path is left alone: [`collector::JobCollector`] *reads* the
//! counters the source and the writer already keep (`SourceCounters`, `WriterStats`,
//! `Writer::inflight_rows`) when Prometheus scrapes, and the numbers that did not exist
//! are kept where they change least often — [`SourceGauges`] once per source activation
//! (per partition, not per event), [`TableMetrics`] once per ClickHouse insert.
//! [`server`] serves them on `metrics.listen` with tiny_http; [`scrape`] reads them back
//! for `job list` and the built-in dashboard.

pub mod collector;
pub mod scrape;
pub mod server;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// One partition's state as the source last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PartitionGauge {
    /// Messages behind the high watermark of the last fetch (`None` before the first fetch).
    pub lag: Option<i64>,
    /// Largest event time read from it (ms since the epoch).
    pub max_event_ms: Option<i64>,
    /// Whether it stopped holding the watermark back (finished, or at its end and quiet for
    /// the idle timeout).
    pub idle: bool,
}

/// Source-side numbers the job's counters do not already hold, updated by each source once
/// per activation (every few milliseconds at most), never per event.
#[derive(Debug, Default)]
pub struct SourceGauges {
    /// By (topic, partition).
    partitions: Mutex<BTreeMap<(String, i32), PartitionGauge>>,
    /// The job's published watermark (ms) by topic; the largest any worker published.
    watermarks: Mutex<BTreeMap<String, i64>>,
    /// Partition offsets committed to the consumer group (one per partition per commit).
    pub offsets_committed: AtomicU64,
    /// Time sources spent not reading because the writer's queue was full, summed over
    /// workers (nanoseconds).
    backpressure_nanos: AtomicU64,
    /// Set when the process serves no `/metrics`: nothing reads these, so nothing records.
    off: AtomicBool,
}

impl SourceGauges {
    /// Records the partitions one worker owns of `topic`, and the job's watermark as that
    /// worker last published it.
    pub fn record(
        &self,
        topic: &str,
        partitions: impl IntoIterator<Item = (i32, PartitionGauge)>,
        watermark_ms: Option<i64>,
    ) {
        if self.off.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut map = self.partitions.lock().expect("not poisoned");
            for (partition, gauge) in partitions {
                match map.get_mut(&(topic.to_string(), partition)) {
                    Some(slot) => *slot = gauge,
                    None => {
                        map.insert((topic.to_string(), partition), gauge);
                    }
                }
            }
        }
        if let Some(ms) = watermark_ms {
            let mut marks = self.watermarks.lock().expect("not poisoned");
            let mark = marks.entry(topic.to_string()).or_insert(ms);
            *mark = (*mark).max(ms);
        }
    }

    /// Stops recording: the process serves no `/metrics` (see [`serve_job`]).
    pub fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Adds time a source spent backpressured.
    pub fn add_backpressure(&self, time: Duration) {
        self.backpressure_nanos
            .fetch_add(time.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Every partition recorded so far.
    pub fn partitions(&self) -> Vec<((String, i32), PartitionGauge)> {
        let map = self.partitions.lock().expect("not poisoned");
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The watermark (ms) by topic.
    pub fn watermarks(&self) -> Vec<(String, i64)> {
        let marks = self.watermarks.lock().expect("not poisoned");
        marks.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Messages behind the high watermark, summed over partitions (what `job list` and the
    /// dashboard show).
    pub fn total_lag(&self) -> Option<i64> {
        let map = self.partitions.lock().expect("not poisoned");
        map.values().map(|g| g.lag).sum()
    }

    /// Backpressured time so far.
    pub fn backpressure(&self) -> Duration {
        Duration::from_nanos(self.backpressure_nanos.load(Ordering::Relaxed))
    }
}

/// The ClickHouse tables the writer inserts into, in [`TableMetrics`]' order (an insert into
/// a table not listed here is not reported).
pub const TABLES: [&str; 6] = [
    "ride_events",
    "dead_letters",
    "city_metrics",
    "city_supply",
    "city_minutes",
    "checkpoints",
];

/// Per-table insert figures, updated once per successful insert by the writer thread.
#[derive(Debug)]
pub struct TableMetrics {
    rows: [AtomicU64; TABLES.len()],
    /// RowBinary bytes of those rows (see `clickhouse::row_size`).
    bytes: [AtomicU64; TABLES.len()],
    latency: [Histogram; TABLES.len()],
    /// When the last checkpoint insert was acknowledged (ms since the epoch; 0: none yet).
    last_checkpoint_ms: AtomicI64,
    /// Set when the process serves no `/metrics`: the writer then neither sizes rows nor
    /// times inserts.
    off: AtomicBool,
}

impl Default for TableMetrics {
    fn default() -> Self {
        // 1 ms .. ~16 s: a healthy insert takes milliseconds, one behind a retry seconds.
        let histogram = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        TableMetrics {
            rows: Default::default(),
            bytes: Default::default(),
            latency: std::array::from_fn(|_| histogram()),
            last_checkpoint_ms: AtomicI64::new(0),
            off: AtomicBool::new(false),
        }
    }
}

impl TableMetrics {
    /// Whether inserts are recorded (the process serves `/metrics`).
    pub fn recording(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// Stops recording: the process serves no `/metrics` (see [`serve_job`]).
    pub fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Records an acknowledged insert of `rows` rows (`bytes` bytes of RowBinary) into
    /// `table` that took `took` (its last attempt).
    pub fn inserted(&self, table: &str, rows: usize, bytes: u64, took: Duration) {
        if !self.recording() {
            return;
        }
        let Some(index) = TABLES.iter().position(|t| *t == table) else {
            return;
        };
        self.rows[index].fetch_add(rows as u64, Ordering::Relaxed);
        self.bytes[index].fetch_add(bytes, Ordering::Relaxed);
        self.latency[index].observe(took.as_secs_f64());
        if table == "checkpoints" {
            self.last_checkpoint_ms
                .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
    }

    /// Every table's figures so far.
    pub fn tables(&self) -> impl Iterator<Item = TableFigures<'_>> {
        TABLES.iter().enumerate().map(|(i, table)| TableFigures {
            table,
            rows: self.rows[i].load(Ordering::Relaxed),
            bytes: self.bytes[i].load(Ordering::Relaxed),
            latency: &self.latency[i],
        })
    }

    /// When the last checkpoint became durable (ms since the epoch), if one has.
    pub fn last_checkpoint_ms(&self) -> Option<i64> {
        Some(self.last_checkpoint_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }
}

/// One table's insert figures, as [`TableMetrics::tables`] reads them.
#[derive(Debug)]
pub struct TableFigures<'a> {
    /// The table.
    pub table: &'static str,
    /// Rows inserted.
    pub rows: u64,
    /// RowBinary bytes of those rows.
    pub bytes: u64,
    /// Acknowledged inserts' durations.
    pub latency: &'a Histogram,
}

/// Starts process `process`'s `/metrics` endpoint for a job reading `sources` (topic and
/// counters, the ride-events source first) as consumer group `group`, at the address the
/// layout and `metrics.listen` give it (none when the key is empty and the layout names
/// none).
pub fn serve_job(
    config: &crate::config::Config,
    layout: &crate::cluster::Layout,
    process: usize,
    group: &str,
    sources: Vec<collector::Source>,
    writer: std::sync::Arc<crate::clickhouse::writer::Writer>,
) -> Option<server::MetricsServer> {
    let Some(address) = layout.metrics_address(process, &config.metrics.listen) else {
        // Nobody can read them: record nothing (the engine path's cost of the metrics is
        // measured against this, docs/metrics.md).
        for (_, counters) in &sources {
            counters.gauges.turn_off();
        }
        writer.stats().tables.turn_off();
        return None;
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector::JobCollector::new(
        sources,
        writer,
        group,
        &config.cluster.state_dir(),
    )));
    server::serve(&address, registry)
}

/// What the process's allocator says of its heap, if the binary installed a probe: bytes
/// the program has allocated, and bytes the allocator holds resident for them.
pub type HeapProbe = fn() -> Option<HeapFigures>;

/// One reading of a [`HeapProbe`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeapFigures {
    /// Bytes allocated by the program and not yet freed.
    pub allocated: u64,
    /// Bytes in physically resident pages the allocator maps (≥ `allocated`).
    pub resident: u64,
}

static HEAP_PROBE: OnceLock<HeapProbe> = OnceLock::new();

/// Installs the binary's allocator probe (`main` does, for jemalloc): the library does not
/// choose the global allocator, so it cannot read it by itself.
pub fn set_heap_probe(probe: HeapProbe) {
    let _ = HEAP_PROBE.set(probe);
}

/// The heap's figures now, when a probe is installed and answers.
pub fn heap() -> Option<HeapFigures> {
    HEAP_PROBE.get().and_then(|probe| probe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_replaced_and_the_watermark_only_rises() {
        let gauges = SourceGauges::default();
        let gauge = |lag, idle| PartitionGauge {
            lag: Some(lag),
            max_event_ms: Some(60_000),
            idle,
        };
        gauges.record(
            "t",
            [(0, gauge(5, false)), (1, gauge(7, false))],
            Some(1_000),
        );
        // Another worker's partitions, and a later record of partition 0 replacing the first.
        gauges.record("t", [(2, gauge(1, true))], Some(3_000));
        gauges.record("t", [(0, gauge(0, true))], Some(2_000));
        assert_eq!(gauges.total_lag(), Some(8));
        assert_eq!(gauges.partitions().len(), 3);
        assert_eq!(gauges.watermarks(), [("t".to_string(), 3_000)]);
        gauges.record("t", [(3, PartitionGauge::default())], None);
        assert_eq!(
            gauges.total_lag(),
            None,
            "unknown until every partition fetched"
        );
    }

    #[test]
    fn without_an_endpoint_nothing_is_recorded() {
        let (gauges, tables) = (SourceGauges::default(), TableMetrics::default());
        gauges.turn_off();
        tables.turn_off();
        gauges.record("t", [(0, PartitionGauge::default())], Some(1_000));
        tables.inserted("ride_events", 100, 9_000, Duration::from_millis(20));
        assert!(gauges.partitions().is_empty());
        assert!(gauges.watermarks().is_empty());
        assert!(!tables.recording());
        assert!(tables.tables().all(|t| t.rows == 0 && t.bytes == 0));
        assert_eq!(tables.last_checkpoint_ms(), None);
    }

    #[test]
    fn inserts_are_counted_per_table_and_checkpoints_dated() {
        let tables = TableMetrics::default();
        assert_eq!(tables.last_checkpoint_ms(), None);
        tables.inserted("ride_events", 100, 9_000, Duration::from_millis(20));
        tables.inserted("ride_events", 50, 4_000, Duration::from_millis(40));
        tables.inserted("checkpoints", 12, 600, Duration::from_millis(5));
        tables.inserted("elsewhere", 1, 10, Duration::from_millis(5));
        let rows: Vec<(&str, u64, u64)> = tables
            .tables()
            .map(|t| (t.table, t.rows, t.bytes))
            .collect();
        assert_eq!(
            rows,
            [
                ("ride_events", 150, 13_000),
                ("dead_letters", 0, 0),
                ("city_metrics", 0, 0),
                ("city_supply", 0, 0),
                ("city_minutes", 0, 0),
                ("checkpoints", 12, 600)
            ]
        );
        assert!(tables.last_checkpoint_ms().is_some());
    }
}
