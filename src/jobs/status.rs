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

/// `job list`'s table: a header, one line per job, and under a failed job why it failed.
pub fn table(rows: &[JobRow]) -> String {
    let line = |cells: [&str; 8]| {
        format!(
            "{:<16} {:<28} {:<10} {:<10} {:>8}  {:<16} {:>8} {:>9}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    let mut out = line([
        "NAME",
        "CITIES",
        "PROCESSES",
        "STATE",
        "RESTARTS",
        "WATERMARK",
        "LAG",
        "WM DELAY",
    ]);
    for row in rows {
        out.push_str(&line([
            &row.spec.name,
            &row.spec.cities_text(),
            &format!(
                "{}x{}",
                row.spec.processes.len(),
                row.spec.processes[0].workers
            ),
            &row.state,
            &row.restarts.to_string(),
            row.watermark.as_deref().unwrap_or("?"),
            &row.lag.map_or_else(|| "?".into(), |l| l.to_string()),
            &row.watermark_delay_seconds
                .map_or_else(|| "?".into(), |d| format!("{d:.0}s")),
        ]));
        if let Some(failure) = &row.failure {
            out.push_str(&format!("  failed: {failure}\n"));
        }
    }
    out
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

/// Messages of both input topics not yet processed (what `/metrics` reports as
/// `ridepulse_consumer_lag_messages`, summed), for a job no process of which answers.
fn lag(config: &Config, group: &str) -> Option<i64> {
    let client = clickhouse::connect(&config.clickhouse);
    let consumer: BaseConsumer =
        settings::consumer(&config.kafka.brokers, group, "ridepulse-job-list")
            .create()
            .ok()?;
    let mut lag = 0;
    for topic in [&config.topics.ride_events, &config.topics.driver_locations] {
        lag += topic_lag(&client, &consumer, group, topic)?;
    }
    Some(lag)
}

fn topic_lag(
    client: &::clickhouse::Client,
    consumer: &BaseConsumer,
    group: &str,
    topic: &str,
) -> Option<i64> {
    // Processed = below the checkpoints' `written_to` (read and durably written); the
    // committed offsets are resume points a window length further back, so they would
    // show a window's worth of lag even when the job is fully caught up.
    let query = client
        .query("SELECT kafka_partition, written_to FROM checkpoints FINAL WHERE consumer_group = ? AND topic = ?")
        .bind(group)
        .bind(topic);
    let written: Vec<(u32, i64)> = clickhouse::block_on(async {
        tokio::time::timeout(Duration::from_secs(5), query.fetch_all::<(u32, i64)>()).await
    })
    .ok()?
    .ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ProcessSpec;

    fn spec(name: &str, cities: Option<&[&str]>) -> JobSpec {
        JobSpec {
            name: name.into(),
            cities: cities.map(|c| c.iter().map(|s| s.to_string()).collect()),
            dead_letters: true,
            group: format!("ridepulse-{name}"),
            processes: vec![
                ProcessSpec {
                    address: "127.0.0.1:2101".into(),
                    workers: 2,
                    metrics: None,
                };
                2
            ],
            submitted_at: 0,
        }
    }

    /// The table is exactly what `main.rs` printed before it moved here (issue 15), the
    /// widths written out by hand.
    #[test]
    fn the_job_table_keeps_its_columns() {
        let rows = [
            JobRow {
                spec: spec("east", Some(&["brno", "kosice"])),
                state: "running".into(),
                restarts: 3,
                watermark: Some("2026-11-26 14:00:00".into()),
                lag: Some(1234),
                watermark_delay_seconds: Some(7.4),
                failure: None,
            },
            JobRow {
                spec: spec("all", None),
                state: "failed".into(),
                restarts: 0,
                watermark: None,
                lag: None,
                watermark_delay_seconds: None,
                failure: Some("cannot read the layout".into()),
            },
        ];
        let expected = concat!(
            "NAME             CITIES                       PROCESSES  STATE      RESTARTS  WATERMARK             LAG  WM DELAY\n",
            "east             brno,kosice                  2x2        running           3  2026-11-26 14:00:00     1234        7s\n",
            "all              *                            2x2        failed            0  ?                       ?         ?\n",
            "  failed: cannot read the layout\n",
        );
        assert_eq!(table(&rows), expected);
        assert_eq!(
            rows[0].spec.submitted_text(),
            "job east running: cities brno,kosice, 2 processes x 2 workers, group ridepulse-east, \
             writes dead letters\nlogs: ridepulse job logs east    stop: ridepulse job stop east\n"
        );
    }
}
