//! `ridepulse job list`: each job's state from disk, plus what the outside world says about
//! its progress — the durable watermark from its checkpoints in ClickHouse, and its consumer
//! lag and watermark delay from its processes' `/metrics` (the numbers Prometheus scrapes;
//! from the broker and the checkpoints when no process answers). Any of them may be
//! unreachable; the listing then says `?` rather than failing, since `job list` is what an
//! operator runs when something is wrong.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{all_jobs, pid_alive, JobSpec, Phase};
use crate::clickhouse;
use crate::config::Config;
use crate::kafka::settings;

/// One line of `job list`.
#[derive(Clone, Debug)]
pub struct JobRow {
    /// What was submitted.
    pub spec: JobSpec,
    /// `starting`, `running`, `restarting`, `stopped`, or `lost` (its supervisor died).
    pub state: String,
    /// Restarts so far.
    pub restarts: u64,
    /// Every window ending at or before this time is final in ClickHouse (from the job's
    /// checkpoints), if known.
    pub watermark: Option<String>,
    /// Messages of ride-events the job has not yet read: its processes' consumer lag from
    /// `/metrics`, or, when none answers, what its checkpoints have not yet written.
    pub lag: Option<i64>,
    /// Now minus the job's watermark, in seconds, from its processes' `/metrics`.
    pub watermark_delay_seconds: Option<f64>,
    /// Why the job is in phase `failed` (the process's `fatal:` line), if it is.
    pub failure: Option<String>,
}

/// Every job in the state directory.
pub fn list(config: &Config) -> Vec<JobRow> {
    let mut rows = Vec::new();
    for (_, dir) in all_jobs(&config.cluster.state_dir()) {
        let Ok(spec) = dir.spec() else { continue };
        let state = dir.state();
        let phase = state.as_ref().map(|s| s.phase);
        let text = match (phase, &state) {
            (Some(Phase::Stopped), _) => "stopped".to_string(),
            (Some(phase), Some(s)) if pid_alive(s.supervisor) => serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            _ => "lost".to_string(),
        };
        let failure = state
            .as_ref()
            .filter(|s| s.phase == Phase::Failed)
            .and_then(|s| s.last_failure.clone());
        let health = if matches!(text.as_str(), "running" | "starting" | "restarting") {
            crate::metrics::scrape::health(
                &super::metrics_addresses(&dir, &spec, &config.metrics.listen),
                Duration::from_millis(500),
            )
        } else {
            crate::metrics::scrape::Health::default()
        };
        rows.push(JobRow {
            failure,
            watermark: watermark(config, &spec.group),
            lag: health.lag.or_else(|| lag(config, &spec.group)),
            watermark_delay_seconds: health.watermark_delay_seconds,
            restarts: state.as_ref().map_or(0, |s| s.restarts),
            state: text,
            spec,
        });
    }
    rows
}

fn watermark(config: &Config, group: &str) -> Option<String> {
    let client = clickhouse::connect(&config.clickhouse);
    let query = client
        .query("SELECT max(finalized_through) FROM checkpoints FINAL WHERE consumer_group = ? AND topic = ?")
        .bind(group)
        .bind(config.topics.ride_events.as_str());
    let minute: u64 = clickhouse::block_on(async {
        tokio::time::timeout(Duration::from_secs(5), query.fetch_one::<u64>()).await
    })
    .ok()?
    .ok()?;
    if minute == 0 {
        return None;
    }
    chrono::DateTime::from_timestamp(minute as i64 * 60, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
}

fn lag(config: &Config, group: &str) -> Option<i64> {
    // Processed = below the checkpoints' `written_to` (read and durably written); the
    // committed offsets are resume points a window length further back, so they would
    // show a window's worth of lag even when the job is fully caught up.
    let client = clickhouse::connect(&config.clickhouse);
    let query = client
        .query("SELECT kafka_partition, written_to FROM checkpoints FINAL WHERE consumer_group = ? AND topic = ?")
        .bind(group)
        .bind(config.topics.ride_events.as_str());
    let written: Vec<(u32, i64)> = clickhouse::block_on(async {
        tokio::time::timeout(Duration::from_secs(5), query.fetch_all::<(u32, i64)>()).await
    })
    .ok()?
    .ok()?;
    let consumer: BaseConsumer =
        settings::consumer(&config.kafka.brokers, group, "ridepulse-job-list")
            .create()
            .ok()?;
    let topic = &config.topics.ride_events;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let partitions = metadata.topics().first()?.partitions().len() as i32;
    let mut lag = 0;
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .ok()?;
        let at = written
            .iter()
            .find(|(p, _)| *p as i32 == partition)
            .map_or(low, |(_, w)| (*w).max(low));
        lag += (high - at).max(0);
    }
    Some(lag)
}
