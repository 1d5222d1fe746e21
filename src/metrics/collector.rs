//! The job's metrics, read at scrape time from the counters the job already keeps.
//!
//! Nothing here runs on the event path: each scrape loads a few dozen atomics and copies
//! the per-partition table (see [`super::SourceGauges`]). Names follow Prometheus's
//! conventions (`ridepulse_` prefix, base units, counters end in `_total`, which the
//! encoder appends); labels are `topic`, `partition`, `table`, `reason`, `kind`, `job`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dataflows::event::EventError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::clickhouse::writer::{Writer, REJECTED_BY_CLICKHOUSE};
use crate::jobs::JobDir;
use crate::source::SourceCounters;

/// One source of the job: the topic it reads (the `topic` label of its counters) and its
/// counters (and gauges).
pub type Source = (String, Arc<SourceCounters>);

/// Everything one job process reports.
#[derive(Clone)]
pub struct JobCollector {
    /// Every source of the process, the ride-events source first (ClickHouse's refusals of
    /// ride events are dead letters of its topic).
    pub sources: Vec<Source>,
    /// The process's writer.
    pub writer: Arc<Writer>,
    /// A job run by `ridepulse job`: its name and the state file the supervisor keeps its
    /// restart count in.
    pub supervised: Option<(String, JobDir)>,
}

impl std::fmt::Debug for JobCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCollector")
            .field(
                "topics",
                &self.sources.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JobCollector {
    /// The collector for a job reading `sources` whose consumer group is `group` (jobs
    /// submitted with `ridepulse job submit` use `ridepulse-job-<name>`, whose state lives
    /// in `state_dir`).
    pub fn new(
        sources: Vec<Source>,
        writer: Arc<Writer>,
        group: &str,
        state_dir: &std::path::Path,
    ) -> JobCollector {
        let supervised = group
            .strip_prefix("ridepulse-job-")
            .map(|name| (name.to_string(), JobDir::new(state_dir, name)));
        JobCollector {
            sources,
            writer,
            supervised,
        }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Clone + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, V)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value.clone()).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter_f64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

impl Collector for JobCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.writer.stats();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

        // Per topic and partition (each source records its own topic's partitions).
        let partitions: Vec<_> = self
            .sources
            .iter()
            .flat_map(|(_, c)| c.gauges.partitions())
            .collect();
        let numbers: Vec<String> = partitions.iter().map(|((_, p), _)| p.to_string()).collect();
        let labels = |i: usize| -> Labels {
            vec![
                ("topic", partitions[i].0 .0.as_str()),
                ("partition", numbers[i].as_str()),
            ]
        };
        let lag: Vec<_> = (0..partitions.len())
            .filter_map(|i| partitions[i].1.lag.map(|lag| (labels(i), lag)))
            .collect();
        gauge(&mut e, "ridepulse_consumer_lag_messages", "Messages between the partition's high watermark (last fetch) and the next offset the job reads.", &lag)?;
        let max_event: Vec<_> = (0..partitions.len())
            .filter_map(|i| {
                partitions[i]
                    .1
                    .max_event_ms
                    .map(|ms| (labels(i), ms as f64 / 1000.0))
            })
            .collect();
        gauge(
            &mut e,
            "ridepulse_partition_max_event_time_seconds",
            "Largest event time read from the partition (Unix seconds).",
            &max_event,
        )?;
        let idle: Vec<_> = (0..partitions.len())
            .map(|i| (labels(i), i64::from(partitions[i].1.idle)))
            .collect();
        gauge(&mut e, "ridepulse_partition_idle", "1 when the partition no longer holds the watermark back (finished, or at its end and quiet for the idle timeout).", &idle)?;

        // The watermark per topic.
        let marks: Vec<_> = self
            .sources
            .iter()
            .flat_map(|(_, c)| c.gauges.watermarks())
            .collect();
        let watermark: Vec<_> = marks
            .iter()
            .map(|(t, ms)| (vec![("topic", t.as_str())], *ms as f64 / 1000.0))
            .collect();
        gauge(&mut e, "ridepulse_watermark_seconds", "The job's event-time watermark (Unix seconds): windows ending at or before it are final.", &watermark)?;
        let delay: Vec<_> = marks
            .iter()
            .map(|(t, ms)| {
                (
                    vec![("topic", t.as_str())],
                    (now_ms - ms).max(0) as f64 / 1000.0,
                )
            })
            .collect();
        gauge(
            &mut e,
            "ridepulse_watermark_delay_seconds",
            "Wall-clock time now minus the job's watermark.",
            &delay,
        )?;

        // What was read, per topic.
        let per_topic = |count: fn(&SourceCounters) -> &std::sync::atomic::AtomicU64| {
            self.sources
                .iter()
                .map(|(topic, c)| (vec![("topic", topic.as_str())], load(count(c))))
                .collect::<Vec<_>>()
        };
        counter(
            &mut e,
            "ridepulse_events_read",
            "Valid records read (of the cities this job owns), by topic.",
            &per_topic(|c| &c.events),
        )?;
        counter(&mut e, "ridepulse_late_events", "Late records among them (behind their partition's clock by more than the allowed lateness), by topic.", &per_topic(|c| &c.late))?;
        let mut dead: Vec<(Labels, u64)> = Vec::new();
        for (topic, c) in &self.sources {
            dead.extend(EventError::REASONS.iter().zip(&c.invalid_by_reason).map(
                |(reason, count)| {
                    (
                        vec![("topic", topic.as_str()), ("reason", *reason)],
                        load(count),
                    )
                },
            ));
        }
        if let Some((topic, _)) = self.sources.first() {
            dead.push((
                vec![
                    ("topic", topic.as_str()),
                    ("reason", REJECTED_BY_CLICKHOUSE),
                ],
                load(&stats.rejected_events),
            ));
        }
        counter(&mut e, "ridepulse_dead_letters", "Messages that are dead letters, by topic and reason (invalid messages as read; valid events ClickHouse refused).", &dead)?;
        counter(
            &mut e,
            "ridepulse_other_city_events",
            "Valid records of cities another job owns (read, not counted).",
            &per_topic(|c| &c.other_cities),
        )?;
        counter(
            &mut e,
            "ridepulse_replayed_events",
            "Records re-read after a restart that were already written.",
            &per_topic(|c| &c.replayed),
        )?;
        counter(
            &mut e,
            "ridepulse_retention_gap_messages",
            "Messages retention deleted after the job's checkpoint (never read).",
            &per_topic(|c| &c.retention_gap),
        )?;
        counter(
            &mut e,
            "ridepulse_compacted_messages",
            "Offsets missing inside a partition's read range: compaction removed them first.",
            &per_topic(|c| &c.compacted),
        )?;
        let (rows, finals) = (load(&stats.metrics), load(&stats.finals));
        counter(
            &mut e,
            "ridepulse_rows_emitted",
            "Metric rows written, by kind (final or update).",
            &[
                (vec![("kind", "final")], finals),
                (vec![("kind", "update")], rows.saturating_sub(finals)),
            ],
        )?;

        // The writer.
        gauge(
            &mut e,
            "ridepulse_writer_queue_rows",
            "Rows submitted to the writer and not yet durable.",
            &[(vec![], self.writer.inflight_rows() as i64)],
        )?;
        let tables: Vec<_> = stats.tables.tables().collect();
        counter(
            &mut e,
            "ridepulse_writer_rows",
            "Rows inserted into ClickHouse, by table.",
            &tables
                .iter()
                .map(|t| (vec![("table", t.table)], t.rows))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "ridepulse_writer_bytes",
            "Bytes of RowBinary inserted into ClickHouse (the rows' encoding, before HTTP compression), by table.",
            &tables
                .iter()
                .map(|t| (vec![("table", t.table)], t.bytes))
                .collect::<Vec<_>>(),
        )?;
        let mut latency = e.encode_descriptor(
            "ridepulse_writer_insert_duration_seconds",
            "Time of an acknowledged ClickHouse insert (its last attempt), by table.",
            None,
            MetricType::Histogram,
        )?;
        for t in &tables {
            t.latency
                .encode(latency.encode_family(&vec![("table", t.table)])?)?;
        }
        let (retries, clickhouse) = (load(&stats.retries), load(&stats.clickhouse_retries));
        counter(&mut e, "ridepulse_writer_retries", "Failed write attempts that were retried, by kind (clickhouse insert or kafka delivery).", &[(vec![("kind", "clickhouse")], clickhouse), (vec![("kind", "kafka")], retries.saturating_sub(clickhouse))])?;
        counter(
            &mut e,
            "ridepulse_dead_letters_delivered",
            "Dead letters delivered to the dead-letter topic.",
            &[(vec![], load(&stats.dead_letters))],
        )?;
        let backpressure: f64 = self
            .sources
            .iter()
            .map(|(_, c)| c.gauges.backpressure().as_secs_f64())
            .sum();
        counter_f64(&mut e, "ridepulse_backpressure_seconds", "Time sources did not read because the writer's queue was full (summed over worker threads and sources).", backpressure)?;

        // Checkpoints.
        if let Some(ms) = stats.tables.last_checkpoint_ms() {
            gauge(
                &mut e,
                "ridepulse_checkpoint_age_seconds",
                "Time since the last checkpoint became durable.",
                &[(vec![], (now_ms - ms).max(0) as f64 / 1000.0)],
            )?;
        }
        counter(
            &mut e,
            "ridepulse_checkpoints_written",
            "Partition checkpoints written to ClickHouse.",
            &[(vec![], load(&stats.checkpoints))],
        )?;
        counter(
            &mut e,
            "ridepulse_offsets_committed",
            "Partition offsets committed to the consumer group.",
            &per_topic(|c| &c.gauges.offsets_committed),
        )?;

        // The process's heap, as its allocator sees it: a growing `allocated` is live data
        // growing; `resident` above it is memory the allocator keeps (RSS adds librdkafka's
        // C heap and the binary).
        if let Some(heap) = super::heap() {
            gauge(
                &mut e,
                "ridepulse_heap_allocated_bytes",
                "Bytes the process has allocated and not freed (jemalloc's stats.allocated).",
                &[(vec![], heap.allocated as i64)],
            )?;
            gauge(
                &mut e,
                "ridepulse_heap_resident_bytes",
                "Bytes of resident pages jemalloc maps for the process's heap (stats.resident).",
                &[(vec![], heap.resident as i64)],
            )?;
        }

        // The supervisor's restarts, from the state it keeps (0 for a job run by hand, whose
        // `job` label is the scrape target's).
        let restarts = match &self.supervised {
            Some((name, dir)) => (
                vec![("job", name.as_str())],
                dir.state().map_or(0, |state| state.restarts),
            ),
            None => (vec![], 0),
        };
        counter(
            &mut e,
            "ridepulse_job_restarts",
            "Times the supervisor restarted the job's processes.",
            &[restarts],
        )?;
        Ok(())
    }
}
