//! `ridepulse bench`: reproducible benchmarks of the whole job, run by `scripts/bench`.
//!
//! Scenarios (each on its own topics and database, named after the run):
//! - `engine`: a generated file of N events (`simulate --out`) → `run --from-file` →
//!   `city_metrics`; events/s and peak RSS with 1 and 2 workers, and the speed-up. No
//!   broker in the way. `--rounds N` runs the worker counts N times, interleaved, and
//!   reports medians and ranges: on a shared machine one run can land ±25 % from the next.
//! - `kafka`: the same events as a Kafka backlog → `run --until-end -w 2`; events/s next to
//!   a plain consumer reading the same backlog (the ratio is the figure that matters), and
//!   whether its final rows equal the engine run's.
//! - `freshness`: a live job while the simulator produces at fixed rates; probe events (one
//!   city of their own, one every 250 ms) measure the latency from an event being handed to
//!   the producer to the first `city_metrics` row that counts it being visible in
//!   ClickHouse (polled every 100 ms): p50, p95, p99, max.
//! - `soak`: a live job at 50,000 events/min for a while; RSS and throughput sampled.
//! - `broker-stress`: the broker alone under a large backlog, a dead-letter flood, 20
//!   topics and a restart ([`broker_stress`]).
//!
//! The job always runs as a child process (this binary), so its memory is its own. Each
//! scenario writes `bench-results/<scenario>-<run>.json` (machine, versions, parameters,
//! figures, samples) and PNG plots, and the run ends with a table of every figure.

pub mod broker_stress;
pub mod plot;
pub mod sampler;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::config::Config;
use sampler::{Sample, Sampler};

/// What to run (`ridepulse bench ...`).
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Scenarios to run, in order.
    #[arg(required = true, value_parser = ["engine", "kafka", "freshness", "soak", "broker-stress"])]
    pub scenarios: Vec<String>,
    /// Events in the generated file (engine, kafka; broker-stress's backlog).
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Worker counts for engine.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// engine: rounds of the worker counts, interleaved (1, 2, 1, 2, ... workers), each run
    /// on a fresh database; the table then gives each count's median and range, and the
    /// median of the rounds' speed-ups (a shared machine's speed drifts from minute to minute).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Producer rates in events/min for freshness.
    #[arg(long, value_delimiter = ',', default_value = "50000,1000000")]
    pub rates: Vec<f64>,
    /// How long each freshness rate runs.
    #[arg(long, value_parser = crate::simulator::world::parse_duration, default_value = "120s")]
    pub duration: Duration,
    /// How long soak runs.
    #[arg(long, value_parser = crate::simulator::world::parse_duration, default_value = "10m")]
    pub soak: Duration,
    /// Where JSON results and PNG plots go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Where generated event files are kept between runs.
    #[arg(long, default_value = "/tmp/ridepulse-bench")]
    pub data: PathBuf,
    /// broker-stress: the local broker under load, floods and a restart.
    #[command(flatten)]
    pub stress: broker_stress::StressOptions,
}

/// One figure for the final table.
struct Figure {
    scenario: &'static str,
    name: String,
    value: String,
}

struct Bench {
    base: Config,
    run: String,
    exe: PathBuf,
    options: BenchOptions,
    figures: Vec<Figure>,
    /// The engine run's database with the most workers, to compare the Kafka path with.
    engine_db: Option<String>,
}

/// Runs the scenarios and prints the table.
pub fn run(config: &Config, options: &BenchOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    std::fs::create_dir_all(&options.data)
        .with_context(|| format!("cannot create {}", options.data.display()))?;
    let mut bench = Bench {
        base: config.clone(),
        run: chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        exe: std::env::current_exe().context("cannot find the ridepulse binary")?,
        options: options.clone(),
        figures: Vec::new(),
        engine_db: None,
    };
    for scenario in &options.scenarios {
        match scenario.as_str() {
            "engine" => bench.engine()?,
            "kafka" => bench.kafka()?,
            "freshness" => bench.freshness()?,
            "soak" => bench.soak()?,
            "broker-stress" => broker_stress::run(&mut bench)?,
            other => bail!(
                "unknown scenario `{other}` (ridepulse bench knows engine, kafka, freshness, soak, broker-stress)"
            ),
        }
    }
    println!(
        "\nridepulse bench {} — run {}",
        options.scenarios.join(" "),
        bench.run
    );
    println!("{:<10} {:<58} value", "scenario", "figure");
    for f in &bench.figures {
        println!("{:<10} {:<58} {}", f.scenario, f.name, f.value);
    }
    Ok(())
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_message(message);
    bar
}

/// The `key=value` fields of a job's or consumer's summary line.
fn field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

fn machine() -> Value {
    let memory_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
    });
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "memory_mb": memory_kb.map(|k| k / 1024),
        "kernel": kernel.trim(),
    })
}

/// A figure's median and range over rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `None` for no values; the median of an even count is the mean of the middle two.
    fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }

    fn to_json(self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Events per second between consecutive samples.
fn throughput(samples: &[Sample]) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (w[0], w[1]);
            let (x, y) = (a.written?, b.written?);
            let dt = b.t - a.t;
            (dt > 0.0).then(|| (b.t, (y.saturating_sub(x)) as f64 / dt))
        })
        .collect()
}

fn rss_mb(samples: &[Sample]) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter_map(|s| s.rss_kb.map(|kb| (s.t, kb as f64 / 1024.0)))
        .collect()
}

impl Bench {
    /// A configuration on this run's own topics and `database`.
    fn namespace(&self, tag: &str, database: &str) -> Config {
        let mut c = self.base.clone();
        let prefix = format!("bench-{}-{tag}", self.run);
        c.topics.ride_events = format!("{prefix}-ride-events");
        c.topics.driver_locations = format!("{prefix}-driver-locations");
        c.topics.aggregated = format!("{prefix}-aggregated");
        c.topics.dead_letters = format!("{prefix}-dlq");
        c.topics.city_supply = format!("{prefix}-city-supply");
        c.clickhouse.database = database.to_string();
        c
    }

    fn database(&self, tag: &str) -> String {
        format!("bench_{}_{tag}", self.run).to_lowercase()
    }

    /// This binary with `config` (written to a file) and `args`.
    fn command(&self, config: &Config, args: &[&str]) -> anyhow::Result<Command> {
        let path = self.options.data.join(format!(
            "config-{}-{}.toml",
            self.run, config.clickhouse.database
        ));
        config.write_private(
            &path,
            "Written by `ridepulse bench` for one scenario's job.",
        )?;
        let mut command = Command::new(&self.exe);
        command.arg("--config").arg(&path).args(args);
        command.env_remove("RIDEPULSE_CONFIG");
        Ok(command)
    }

    /// Runs to completion and returns its output (stdout, stderr), failing with stderr.
    fn output(&self, config: &Config, args: &[&str]) -> anyhow::Result<(String, String)> {
        let output = self
            .command(config, args)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running ridepulse {}", args.join(" ")))?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        if !output.status.success() {
            bail!("ridepulse {} failed: {stderr}", args.join(" "));
        }
        Ok((stdout, stderr))
    }

    /// The generated event file of `events` events (made once, then reused).
    fn data_file(&self, events: u64) -> anyhow::Result<PathBuf> {
        let path = self.options.data.join(format!("events-{events}.jsonl"));
        if !path.exists() || std::fs::metadata(&path)?.len() == 0 {
            let bar = spinner(format!(
                "generating {events} events into {}",
                path.display()
            ));
            let temp = path.with_extension("partial");
            self.output(
                &self.base,
                &[
                    "simulate",
                    "--out",
                    temp.to_str().expect("utf-8 path"),
                    "--count",
                    &events.to_string(),
                    "--seed",
                    "1",
                    "--start",
                    "2026-11-23T10:00:00Z",
                ],
            )?;
            std::fs::rename(&temp, &path)?;
            bar.finish_and_clear();
        }
        Ok(path)
    }

    /// Runs a job child to completion while sampling it; returns its summary line, samples,
    /// peak RSS (kB).
    fn sampled_job(
        &self,
        config: &Config,
        args: &[&str],
        label: &str,
    ) -> anyhow::Result<(String, Vec<Sample>, u64)> {
        let mut child = self
            .command(config, args)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let sampler = Sampler::start(child.id(), config, Duration::from_millis(500));
        let stderr = child.stderr.take().expect("piped");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let collected = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().expect("not poisoned").push(line);
            }
        });
        let bar = spinner(label.to_string());
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = reader.join();
        let (samples, peak) = sampler.stop();
        bar.finish_and_clear();
        let lines = lines.lock().expect("not poisoned").clone();
        if !status.success() {
            bail!("{label} failed: {}", lines.join("\n"));
        }
        let summary = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("events="))
            .cloned()
            .unwrap_or_default();
        Ok((summary, samples, peak))
    }

    /// Writes a scenario's result file; `summary` (engine's medians and speed-ups over
    /// rounds, one entry per worker count) is left out when null.
    fn save(
        &self,
        scenario: &str,
        parameters: Value,
        summary: Value,
        figures: Value,
        samples: Value,
    ) -> anyhow::Result<PathBuf> {
        let ch_version = crate::clickhouse::block_on(crate::clickhouse::schema::server_version(
            &self.base.clickhouse,
        ))
        .unwrap_or_default();
        let mut result = json!({
            "scenario": scenario,
            "run": self.run,
            "date": chrono::Utc::now().to_rfc3339(),
            "machine": machine(),
            "versions": {
                "ridepulse": env!("CARGO_PKG_VERSION"),
                "clickhouse": ch_version,
                "kafka_brokers": self.base.kafka.brokers,
                "librdkafka": rdkafka::util::get_rdkafka_version().1,
            },
            "parameters": parameters,
            "figures": figures,
            "samples": samples,
        });
        if !summary.is_null() {
            result["summary"] = summary;
        }
        let path = self
            .options
            .out
            .join(format!("{scenario}-{}.json", self.run));
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
        Ok(path)
    }

    fn png(&self, name: &str) -> PathBuf {
        self.options.out.join(format!("{name}-{}.png", self.run))
    }

    fn figure(
        &mut self,
        scenario: &'static str,
        name: impl Into<String>,
        value: impl Into<String>,
    ) {
        self.figures.push(Figure {
            scenario,
            name: name.into(),
            value: value.into(),
        });
    }

    fn engine(&mut self) -> anyhow::Result<()> {
        let events = self.options.events;
        let file = self.data_file(events)?;
        let (counts, rounds) = (self.options.workers.clone(), self.options.rounds);
        let mut runs = Vec::new();
        let (mut tput, mut rss) = (Vec::new(), Vec::new());
        // Per worker count (in `counts` order): each round's events/s and peak RSS (kB).
        let mut eps: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
        let mut peaks: Vec<Vec<u64>> = vec![Vec::new(); counts.len()];
        for round in 1..=rounds {
            for (i, &workers) in counts.iter().enumerate() {
                let (tag, series, label) = if rounds == 1 {
                    (
                        format!("engine_w{workers}"),
                        format!("{workers} worker(s)"),
                        format!("engine: {events} events from a file, {workers} worker(s)"),
                    )
                } else {
                    (
                        format!("engine_w{workers}_r{round}"),
                        format!("{workers} worker(s), round {round}"),
                        format!(
                            "engine: {events} events from a file, {workers} worker(s), round {round} of {rounds}"
                        ),
                    )
                };
                let db = self.database(&tag);
                let config = self.namespace("engine", &db);
                self.output(&config, &["topics", "create"])?;
                self.output(&config, &["migrate"])?;
                let w = workers.to_string();
                let (summary, samples, peak) = self.sampled_job(
                    &config,
                    &[
                        "run",
                        "--from-file",
                        file.to_str().expect("utf-8"),
                        "-w",
                        &w,
                    ],
                    &label,
                )?;
                let rate = field(&summary, "events_per_sec").unwrap_or(0.0);
                eps[i].push(rate);
                peaks[i].push(peak);
                tput.push((series.clone(), throughput(&samples)));
                rss.push((series, rss_mb(&samples)));
                runs.push(
                    json!({"workers": workers, "round": round, "summary": summary,
                                 "events_per_sec": rate, "peak_rss_kb": peak, "database": db,
                                 "samples": samples}),
                );
                self.engine_db = Some(db);
            }
        }
        let mut summary = Vec::new();
        for (i, &workers) in counts.iter().enumerate() {
            let spread = Spread::of(&eps[i]).expect("at least one round");
            let peak = peaks[i].iter().copied().max().unwrap_or(0);
            if rounds == 1 {
                self.figure(
                    "engine",
                    format!("{workers} worker(s): events/s"),
                    format!("{:.0}", spread.median),
                );
                self.figure(
                    "engine",
                    format!("{workers} worker(s): peak RSS"),
                    format!("{} MB", peak / 1024),
                );
            } else {
                self.figure(
                    "engine",
                    format!("{workers} worker(s): events/s, median of {rounds} rounds"),
                    format!("{:.0} ({:.0}–{:.0})", spread.median, spread.min, spread.max),
                );
                self.figure(
                    "engine",
                    format!("{workers} worker(s): peak RSS, highest of {rounds} rounds"),
                    format!("{} MB", peak / 1024),
                );
            }
            let mut entry = json!({"workers": workers, "events_per_sec": spread.to_json(),
                                   "peak_rss_kb_max": peak});
            // Each round's speed-up over the first count, taken within the round.
            if i > 0 {
                let ratios: Vec<f64> = eps[i].iter().zip(&eps[0]).map(|(a, b)| a / b).collect();
                let ratio = Spread::of(&ratios).expect("at least one round");
                let name = format!("{workers} / {} worker(s), within a round", counts[0]);
                let value = if rounds == 1 {
                    format!("{:.2}×", ratio.median)
                } else {
                    format!(
                        "median {:.2}× ({:.2}–{:.2}×)",
                        ratio.median, ratio.min, ratio.max
                    )
                };
                self.figure("engine", name, value);
                entry["speedup"] = ratio.to_json();
            }
            summary.push(entry);
        }
        plot::lines(
            &self.png("engine-throughput"),
            "engine: events written per second",
            "seconds",
            "events/s",
            &tput,
        )?;
        plot::lines(
            &self.png("engine-rss"),
            "engine: resident memory",
            "seconds",
            "MB",
            &rss,
        )?;
        let path = self.save(
            "engine",
            json!({"events": events, "file": file, "workers": counts, "rounds": rounds}),
            json!(summary),
            json!(runs.iter().map(|r| json!({"workers": r["workers"], "round": r["round"], "events_per_sec": r["events_per_sec"], "peak_rss_kb": r["peak_rss_kb"]})).collect::<Vec<_>>()),
            json!(runs),
        )?;
        self.figure("engine", "results", path.display().to_string());
        Ok(())
    }

    fn kafka(&mut self) -> anyhow::Result<()> {
        let events = self.options.events;
        let file = self.data_file(events)?;
        let db = self.database("kafka");
        let config = self.namespace("kafka", &db);
        self.output(&config, &["topics", "create"])?;
        self.output(&config, &["migrate"])?;
        let bar = spinner(format!(
            "kafka: producing {events} events into {}",
            config.topics.ride_events
        ));
        self.output(
            &config,
            &["simulate", "--replay", file.to_str().expect("utf-8")],
        )?;
        bar.set_message("kafka: a plain consumer reads the backlog".to_string());
        let (consumed, _) = self.output(&config, &["consume"])?;
        bar.finish_and_clear();
        let consumer_rate =
            field(consumed.lines().next().unwrap_or(""), "messages_per_sec").unwrap_or(0.0);
        let (summary, samples, peak) = self.sampled_job(
            &config,
            &["run", "--until-end", "-w", "2", "--group", "bench"],
            "kafka: run --until-end -w 2 over the backlog",
        )?;
        let eps = field(&summary, "events_per_sec").unwrap_or(0.0);
        let ratio = if consumer_rate > 0.0 {
            eps / consumer_rate
        } else {
            f64::NAN
        };
        self.figure(
            "kafka",
            "job events/s (run --until-end -w 2)",
            format!("{eps:.0}"),
        );
        self.figure(
            "kafka",
            "plain consumer events/s",
            format!("{consumer_rate:.0}"),
        );
        self.figure("kafka", "job / plain consumer", format!("{ratio:.2}"));
        self.figure("kafka", "peak RSS", format!("{} MB", peak / 1024));
        let equal = match &self.engine_db {
            Some(engine_db) => {
                let rows = |database: &str| -> anyhow::Result<String> {
                    let mut c = config.clone();
                    c.clickhouse.database = database.to_string();
                    let client = crate::clickhouse::connect(&c.clickhouse);
                    Ok(crate::clickhouse::block_on(crate::clickhouse::query_text(
                        &client,
                        &c.clickhouse.url,
                        "SELECT city, window_start, total_events, requests, completions, cancellations, avg_fare, unique_riders, version FROM city_metrics FINAL WHERE is_final = 1 ORDER BY city, window_start",
                        "TabSeparated",
                    ))?)
                };
                let (a, b) = (rows(engine_db)?, rows(&db)?);
                self.figure(
                    "kafka",
                    "final city_metrics rows equal the engine run's",
                    format!("{} ({} rows)", a == b, b.lines().count()),
                );
                Some(a == b)
            }
            None => None,
        };
        plot::lines(
            &self.png("kafka-throughput"),
            "kafka: events written per second",
            "seconds",
            "events/s",
            &[("run -w 2".into(), throughput(&samples))],
        )?;
        plot::lines(
            &self.png("kafka-rss"),
            "kafka: resident memory",
            "seconds",
            "MB",
            &[("run -w 2".into(), rss_mb(&samples))],
        )?;
        let path = self.save(
            "kafka",
            json!({"events": events, "partitions": 12, "workers": 2}),
            Value::Null,
            json!({"job_events_per_sec": eps, "consumer_events_per_sec": consumer_rate, "ratio": ratio,
                   "peak_rss_kb": peak, "equal_to_engine": equal, "summary": summary, "consumer": consumed.trim()}),
            json!(samples),
        )?;
        self.figure("kafka", "results", path.display().to_string());
        Ok(())
    }

    fn live_job(&self, config: &Config) -> anyhow::Result<Child> {
        self.output(config, &["topics", "create"])?;
        self.output(config, &["migrate"])?;
        let child = self
            .command(config, &["run", "-w", "2", "--group", "bench"])?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(3));
        Ok(child)
    }

    fn freshness(&mut self) -> anyhow::Result<()> {
        let db = self.database("freshness");
        let config = self.namespace("freshness", &db);
        let mut job = self.live_job(&config)?;
        let mut results = Vec::new();
        let mut curves = Vec::new();
        for (index, &rate) in self.options.rates.clone().iter().enumerate() {
            let city = format!("probe-{index}");
            let bar = spinner(format!(
                "freshness: {rate:.0} events/min for {:?}",
                self.options.duration
            ));
            let mut simulator = self
                .command(
                    &config,
                    &[
                        "simulate",
                        "--rate",
                        &rate.to_string(),
                        "--duration",
                        &format!("{}s", self.options.duration.as_secs()),
                    ],
                )?
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let probes = self.probe(&config, &city, &mut simulator)?;
            bar.finish_and_clear();
            let produced = probes.len();
            let mut latencies: Vec<f64> = probes.iter().filter_map(|p| p.1).collect();
            latencies.sort_by(|a, b| a.total_cmp(b));
            let missing = produced - latencies.len();
            let (p50, p95, p99, max) = (
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.95),
                percentile(&latencies, 0.99),
                latencies.last().copied().unwrap_or(f64::NAN),
            );
            self.figure(
                "freshness",
                format!("{rate:.0}/min: p50 / p95 / p99 / max (s)"),
                format!("{p50:.2} / {p95:.2} / {p99:.2} / {max:.2}"),
            );
            if missing > 0 {
                self.figure(
                    "freshness",
                    format!("{rate:.0}/min: probes not visible within 60 s"),
                    format!("{missing} of {produced}"),
                );
            }
            curves.push((format!("{rate:.0} events/min"), latencies.clone()));
            results.push(json!({"rate_per_min": rate, "probes": produced, "not_visible": missing,
                                "p50_s": p50, "p95_s": p95, "p99_s": p99, "max_s": max, "latencies_s": latencies}));
        }
        let _ = job.kill();
        let _ = job.wait();
        plot::cdf(
            &self.png("freshness-latency"),
            "freshness: event produced → counted in city_metrics",
            &curves,
        )?;
        let path = self.save(
            "freshness",
            json!({"rates_per_min": self.options.rates, "duration_s": self.options.duration.as_secs(), "probe_every_ms": 250, "poll_every_ms": 100, "job": "run -w 2 (live)"}),
            Value::Null,
            json!(results.iter().map(|r| json!({"rate_per_min": r["rate_per_min"], "p50_s": r["p50_s"], "p95_s": r["p95_s"], "p99_s": r["p99_s"], "max_s": r["max_s"], "not_visible": r["not_visible"]})).collect::<Vec<_>>()),
            json!(results),
        )?;
        self.figure("freshness", "results", path.display().to_string());
        Ok(())
    }

    /// Produces a probe event every 250 ms while `simulator` runs and returns, per probe,
    /// its production time and latency until a `city_metrics` row counted it (None: not
    /// within 60 s of the end).
    fn probe(
        &self,
        config: &Config,
        city: &str,
        simulator: &mut Child,
    ) -> anyhow::Result<Vec<(f64, Option<f64>)>> {
        let producer = crate::kafka::producer::CountingProducer::new(
            &config.kafka,
            &config.topics.ride_events,
            "ridepulse-bench-probe",
        )?;
        let began = Instant::now();
        // (produced at, window start minute) per probe.
        let probes: Arc<Mutex<Vec<(f64, i64)>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Option<f64>>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let poller = {
            let (probes, seen, done) = (probes.clone(), seen.clone(), done.clone());
            let clickhouse = config.clickhouse.clone();
            let city = city.to_string();
            let length = config.window.length_minutes as i64;
            std::thread::spawn(move || {
                let client = crate::clickhouse::connect(&clickhouse);
                loop {
                    let finished = done.load(Ordering::Relaxed);
                    let counts: Vec<(u32, u64)> = crate::clickhouse::block_on(
                        client
                            .query("SELECT toUInt32(window_start) AS ws, max(total_events) FROM city_metrics WHERE city = ? GROUP BY ws")
                            .bind(city.as_str())
                            .fetch_all::<(u32, u64)>(),
                    )
                    .unwrap_or_default();
                    let now = began.elapsed().as_secs_f64();
                    let probes = probes.lock().expect("not poisoned").clone();
                    let mut seen = seen.lock().expect("not poisoned");
                    seen.resize(probes.len(), None);
                    for (i, &(at, minute)) in probes.iter().enumerate() {
                        if seen[i].is_some() {
                            continue;
                        }
                        // The window that ends right after the probe's minute: no later
                        // minute's probe is in it.
                        let first = minute - (length - 1);
                        let start = first * 60;
                        let needed =
                            probes[..=i].iter().filter(|(_, m)| *m >= first).count() as u64;
                        let count = counts
                            .iter()
                            .find(|(ws, _)| *ws as i64 == start)
                            .map_or(0, |(_, c)| *c);
                        if count >= needed {
                            seen[i] = Some(now - at);
                        }
                    }
                    let all = seen.iter().all(Option::is_some);
                    if finished && (all || now > probes.last().map_or(0.0, |p| p.0) + 60.0) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let mut i = 0u64;
        while simulator.try_wait()?.is_none() {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let event = dataflows::event::RideEvent {
                event_type: dataflows::event::EventType::Requested,
                ride_id: format!("{city}-{i}").into(),
                timestamp: dataflows::event::Timestamp(now_ms),
                city: city.into(),
                estimated_fare: Some(10.0),
                user_id: format!("{city}-rider").into(),
                driver_id: None,
                pickup: None,
                dropoff: None,
            };
            let at = began.elapsed().as_secs_f64();
            producer.send(
                Some(event.ride_id.as_bytes()),
                event.to_json().as_bytes(),
                None,
            )?;
            probes
                .lock()
                .expect("not poisoned")
                .push((at, now_ms.div_euclid(60_000)));
            i += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        done.store(true, Ordering::Relaxed);
        let _ = poller.join();
        let probes = probes.lock().expect("not poisoned").clone();
        let seen = seen.lock().expect("not poisoned").clone();
        Ok(probes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.0, seen.get(i).copied().flatten()))
            .collect())
    }

    fn soak(&mut self) -> anyhow::Result<()> {
        let db = self.database("soak");
        let config = self.namespace("soak", &db);
        let mut job = self.live_job(&config)?;
        let sampler = Sampler::start(job.id(), &config, Duration::from_secs(2));
        let bar = spinner(format!(
            "soak: 50,000 events/min for {:?}",
            self.options.soak
        ));
        self.output(
            &config,
            &[
                "simulate",
                "--rate",
                "50000",
                "--duration",
                &format!("{}s", self.options.soak.as_secs()),
            ],
        )?;
        std::thread::sleep(Duration::from_secs(5));
        bar.finish_and_clear();
        let (samples, peak) = sampler.stop();
        let _ = job.kill();
        let _ = job.wait();
        let rss = rss_mb(&samples);
        let heap: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| s.heap_kb.map(|kb| (s.t, kb as f64 / 1024.0)))
            .collect();
        let mean = |series: &[(f64, f64)], from: f64, to: f64| -> f64 {
            let window: Vec<f64> = series
                .iter()
                .filter(|(t, _)| *t >= from && *t <= to)
                .map(|(_, m)| *m)
                .collect();
            window.iter().sum::<f64>() / window.len().max(1) as f64
        };
        let total = samples.last().map_or(0.0, |s| s.t);
        let (early, late) = (
            mean(&rss, total * 0.1, total * 0.3),
            mean(&rss, total * 0.7, total * 0.95),
        );
        let (heap_early, heap_late) = (
            mean(&heap, total * 0.1, total * 0.3),
            mean(&heap, total * 0.7, total * 0.95),
        );
        let written = samples.iter().filter_map(|s| s.written).max().unwrap_or(0);
        self.figure(
            "soak",
            "RSS 10-30 % into the run → 70-95 %",
            format!("{early:.0} MB → {late:.0} MB"),
        );
        self.figure(
            "soak",
            "heap allocated 10-30 % into the run → 70-95 %",
            format!("{heap_early:.0} MB → {heap_late:.0} MB"),
        );
        self.figure("soak", "peak RSS", format!("{} MB", peak / 1024));
        self.figure(
            "soak",
            "events written",
            format!("{written} in {total:.0} s"),
        );
        plot::lines(
            &self.png("soak-rss"),
            "soak: resident memory at 50,000 events/min",
            "seconds",
            "MB",
            &[
                ("run -w 2: RSS".into(), rss),
                ("run -w 2: heap allocated".into(), heap),
            ],
        )?;
        plot::lines(
            &self.png("soak-throughput"),
            "soak: events written per second",
            "seconds",
            "events/s",
            &[("run -w 2".into(), throughput(&samples))],
        )?;
        let path = self.save(
            "soak",
            json!({"rate_per_min": 50000, "duration_s": self.options.soak.as_secs()}),
            Value::Null,
            json!({"rss_early_mb": early, "rss_late_mb": late, "heap_early_mb": heap_early, "heap_late_mb": heap_late, "peak_rss_kb": peak, "written": written}),
            json!(samples),
        )?;
        self.figure("soak", "results", path.display().to_string());
        Ok(())
    }
}

/// Whether `path` holds a PNG image (the plots; used by the harness's test).
pub fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[cfg(test)]
mod tests {
    use super::Spread;

    /// The median of an odd count is the middle value, of an even count the mean of the
    /// middle two, whatever the order the rounds came in; the range is the extremes.
    #[test]
    fn spread_is_the_median_and_range_of_the_rounds() {
        let odd = Spread::of(&[950.0, 610.0, 1_100.0, 880.0, 700.0]).unwrap();
        assert_eq!(
            odd,
            Spread {
                median: 880.0,
                min: 610.0,
                max: 1_100.0
            }
        );
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            even,
            Spread {
                median: 2.5,
                min: 1.0,
                max: 4.0
            }
        );
        assert_eq!(Spread::of(&[7.0]).unwrap().median, 7.0);
        assert_eq!(Spread::of(&[]), None);
    }
}
