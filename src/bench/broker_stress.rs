//! `ridepulse bench broker-stress`: does the local Kafka-protocol broker hold up under what a
//! new user gives it (issue 17)? Tansu 0.6.0 on sqlite wedged at 100 % CPU after a few hundred
//! thousand events and a burst of dead letters; this scenario reproduces that load against
//! any broker address, so each candidate engine is judged on the same figures.
//!
//! Phases, all on this run's own topics (`bench-<run>-stress*`), loopback only:
//! 1. **topics**: 20 topics (five sets of SPEC §1's four), 200 messages in each of the 18
//!    that the load does not use.
//! 2. **produce**: a backlog of `--events` simulator events (default 2,000,000) on the
//!    12-partition ride-events topic, keyed like the job's producer, while
//!    `--dead-letters` messages (default 100,000) with the job's four dead-letter headers go
//!    to the 3-partition dead-letter topic, and a consumer reads both topics as they grow.
//! 3. **catch-up**: a fresh consumer reads everything from the oldest offset: its rate, the
//!    longest pause between two messages, the longest a partition waited for its next
//!    message, and how evenly the 12 partitions advance (max − min of their progress
//!    fractions, sampled every second).
//! 4. **restart** (with `--restart CMD`): the broker is stopped and started by `sh -c CMD`,
//!    then every partition of every topic is read again and compared with the catch-up,
//!    message count and checksum per partition.
//!
//! Throughout, a consumer group commits an offset every second (the job's checkpoint path):
//! latency and failures say whether the group coordinator kept answering.
//!
//! Each read gives up after `--stall-limit` seconds without a message, so a wedged broker
//! yields figures (and a failed verdict), not a hung benchmark.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{json, Value};

use super::Bench;
use crate::kafka::producer::CountingProducer;
use crate::kafka::{partitioner, settings, topics};

/// The acceptance limits of issue 17.
const STALL_LIMIT_S: f64 = 5.0;
/// Filler messages in each topic the load does not use.
const FILLER_MESSAGES: u64 = 200;

/// Options of `ridepulse bench broker-stress` (the broker is `--brokers` / `kafka.brokers`).
#[derive(Clone, Debug, clap::Args)]
pub struct StressOptions {
    /// broker-stress: dead-letter-like messages (four headers each) on the 3-partition topic.
    #[arg(long, default_value_t = 100_000)]
    pub dead_letters: u64,
    /// broker-stress: a shell command that stops and starts the broker after the catch-up;
    /// without it the restart phase is skipped (an engine that keeps nothing, memory://).
    #[arg(long)]
    pub restart: Option<String>,
    /// broker-stress: the broker's name in the results file and table, e.g. tansu-sqlite.
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// broker-stress: seconds without a message after which a read is declared stalled.
    #[arg(long, default_value_t = 120)]
    pub stall_limit: u64,
}

/// Messages and a checksum of (offset, key, value) for one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
struct Tally {
    count: u64,
    checksum: u64,
}

/// What one producer delivered.
#[derive(Clone, Debug, Serialize)]
struct Produced {
    delivered: u64,
    failed: u64,
    seconds: f64,
    error: Option<String>,
}

impl Produced {
    /// Waits for every delivery report (up to 10 minutes) and counts them.
    fn finish(producer: &CountingProducer, started: Instant) -> Produced {
        let result = producer.finish(Duration::from_secs(600));
        let stats = producer.stats();
        Produced {
            delivered: stats.delivered.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            error: result.err().map(|e| e.to_string()),
        }
    }

    fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds.max(1e-9)
    }
}

/// One topic to read: its name, partition count and whether its messages carry the four
/// dead-letter headers.
#[derive(Clone, Debug)]
struct TopicRead {
    name: String,
    partitions: i32,
    dead_letters: bool,
}

/// What one read measured.
#[derive(Clone, Debug, Default, Serialize)]
struct ReadReport {
    messages: u64,
    seconds: f64,
    messages_per_sec: f64,
    /// The longest time without any message (from the start, or from the first message for
    /// a read that begins before anything is produced).
    longest_pause_s: f64,
    /// The longest time an unfinished partition waited for its next message.
    longest_partition_wait_s: f64,
    /// Dead letters without exactly four headers.
    bad_headers: u64,
    /// Every partition reached its end (false: stalled past the limit).
    completed: bool,
    /// (seconds, max − min of the evenness topic's per-partition progress fractions).
    spread: Vec<(f64, f64)>,
    /// (seconds, messages read so far).
    progress: Vec<(f64, u64)>,
    #[serde(skip)]
    tallies: Vec<Vec<Tally>>,
}

impl ReadReport {
    fn max_spread(&self) -> f64 {
        self.spread.iter().map(|s| s.1).fold(0.0, f64::max)
    }

    fn mean_spread(&self) -> f64 {
        if self.spread.is_empty() {
            return 0.0;
        }
        self.spread.iter().map(|s| s.1).sum::<f64>() / self.spread.len() as f64
    }
}

/// Per topic, per partition: the offset one past the last message (the high watermark).
type Ends = Vec<Vec<i64>>;

fn message_hash(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    offset.hash(&mut hasher);
    key.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

/// What every read of the scenario shares: the broker, the topics (the first is the one whose
/// partitions' progress is sampled) and how long a read may go without a message.
#[derive(Clone, Debug)]
struct Reads {
    brokers: String,
    topics: Vec<TopicRead>,
    stall_limit: Duration,
}

/// Reads `reads.topics` from their oldest offsets until every partition reaches `ends` (which
/// a concurrent producer may set only once it has finished), or until the stall limit passes
/// without a message; `read_so_far` follows the count.
fn read(
    reads: &Reads,
    group: &str,
    ends: &OnceLock<Ends>,
    from_first_message: bool,
    read_so_far: &AtomicU64,
) -> anyhow::Result<ReadReport> {
    let (brokers, topics, stall_limit) = (reads.brokers.as_str(), &reads.topics, reads.stall_limit);
    let evenness = 0;
    let consumer: BaseConsumer<settings::ConsumerLog> =
        settings::consumer(brokers, group, "ridepulse-broker-stress")
            .create_with_context(settings::ConsumerLog)
            .with_context(|| format!("cannot create a consumer for {brokers}"))?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..topic.partitions {
            assignment.add_partition_offset(&topic.name, partition, Offset::Beginning)?;
        }
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot assign the stress topics on {brokers}"))?;
    let index: HashMap<&str, usize> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut report = ReadReport {
        tallies: topics
            .iter()
            .map(|t| vec![Tally::default(); t.partitions as usize])
            .collect(),
        ..ReadReport::default()
    };
    let mut done: Vec<Vec<bool>> = topics
        .iter()
        .map(|t| vec![false; t.partitions as usize])
        .collect();
    let start = Instant::now();
    let mut last: Option<Instant> = (!from_first_message).then_some(start);
    let mut partition_last: Vec<Vec<Option<Instant>>> = topics
        .iter()
        .map(|t| vec![last; t.partitions as usize])
        .collect();
    let mut next_sample = start + Duration::from_secs(1);
    let finished_at: Option<Instant>;
    loop {
        let now = Instant::now();
        if let Some(ends) = ends.get() {
            // a partition with nothing to read is done from the start.
            for (t, topic_ends) in ends.iter().enumerate() {
                for (p, &end) in topic_ends.iter().enumerate() {
                    if !done[t][p] && report.tallies[t][p].count as i64 >= end {
                        done[t][p] = true;
                    }
                }
            }
            if done.iter().flatten().all(|d| *d) {
                finished_at = Some(last.unwrap_or(now));
                report.completed = true;
                break;
            }
        }
        if now >= next_sample {
            next_sample += Duration::from_secs(1);
            let t = (now - start).as_secs_f64();
            report.progress.push((t, report.messages));
            if let Some(ends) = ends.get() {
                let fractions: Vec<f64> = report.tallies[evenness]
                    .iter()
                    .zip(&ends[evenness])
                    .filter(|(_, &end)| end > 0)
                    .map(|(tally, &end)| tally.count as f64 / end as f64)
                    .collect();
                if let (Some(min), Some(max)) = (
                    fractions.iter().copied().reduce(f64::min),
                    fractions.iter().copied().reduce(f64::max),
                ) {
                    report.spread.push((t, max - min));
                }
            }
        }
        let waited = last.map_or(Duration::ZERO, |l| now - l);
        if waited > stall_limit {
            finished_at = last;
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(RdKafkaError::PartitionEOF(_))) => {}
            Some(Err(error))
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(Err(error)) => {
                tracing::warn!(%error, brokers, "consumer error during the stress read");
            }
            Some(Ok(message)) => {
                let now = Instant::now();
                let Some(&t) = index.get(message.topic()) else {
                    continue;
                };
                let p = message.partition() as usize;
                let tally = &mut report.tallies[t][p];
                tally.count += 1;
                tally.checksum = tally.checksum.wrapping_add(message_hash(
                    message.offset(),
                    message.key(),
                    message.payload(),
                ));
                if topics[t].dead_letters && message.headers().map_or(0, |h| h.count()) != 4 {
                    report.bad_headers += 1;
                }
                if let Some(previous) = last {
                    report.longest_pause_s =
                        report.longest_pause_s.max((now - previous).as_secs_f64());
                }
                if let Some(previous) = partition_last[t][p] {
                    report.longest_partition_wait_s = report
                        .longest_partition_wait_s
                        .max((now - previous).as_secs_f64());
                } else if from_first_message {
                    // the partition's wait counts from the read's first message.
                    if let Some(first) = last {
                        report.longest_partition_wait_s = report
                            .longest_partition_wait_s
                            .max((now - first).as_secs_f64());
                    }
                }
                partition_last[t][p] = Some(now);
                last = Some(now);
                report.messages += 1;
                read_so_far.store(report.messages, Ordering::Relaxed);
                if let Some(ends) = ends.get() {
                    if !done[t][p] && message.offset() + 1 >= ends[t][p] {
                        done[t][p] = true;
                        let mut finished = TopicPartitionList::new();
                        finished.add_partition(&topics[t].name, p as i32);
                        // a finished partition stops taking fetch bandwidth from the others.
                        consumer.pause(&finished)?;
                    }
                }
            }
        }
    }
    // an unfinished partition's wait up to the end of the read counts too.
    let end = finished_at.unwrap_or_else(Instant::now);
    for (t, partitions) in partition_last.iter().enumerate() {
        for (p, seen) in partitions.iter().enumerate() {
            if !done[t][p] {
                if let Some(seen) = seen {
                    report.longest_partition_wait_s = report
                        .longest_partition_wait_s
                        .max((end.max(*seen) - *seen).as_secs_f64());
                }
            }
        }
    }
    report.seconds = (end - start).as_secs_f64();
    report.messages_per_sec = report.messages as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// One offset commit of the coordinator probe.
#[derive(Clone, Debug, Serialize)]
struct Commit {
    t: f64,
    phase: &'static str,
    latency_ms: f64,
    error: Option<String>,
}

impl Commit {
    fn answered(&self) -> bool {
        self.error.is_none() && self.latency_ms <= STALL_LIMIT_S * 1000.0
    }
}

/// Commits an offset for a consumer group every second, as the job's checkpoints do.
struct CoordinatorProbe {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    phase: Arc<Mutex<&'static str>>,
    commits: Arc<Mutex<Vec<Commit>>>,
    last_committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CoordinatorProbe {
    fn start(brokers: &str, group: &str, topic: &str, began: Instant) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<settings::ConsumerLog> =
            settings::consumer(brokers, group, "ridepulse-broker-stress-coordinator")
                .create_with_context(settings::ConsumerLog)
                .with_context(|| format!("cannot create the coordinator probe for {brokers}"))?;
        let probe = CoordinatorProbe {
            stop: Arc::default(),
            paused: Arc::default(),
            phase: Arc::new(Mutex::new("produce")),
            commits: Arc::default(),
            last_committed: Arc::default(),
            thread: None,
        };
        let (stop, paused, phase, commits, last_committed) = (
            probe.stop.clone(),
            probe.paused.clone(),
            probe.phase.clone(),
            probe.commits.clone(),
            probe.last_committed.clone(),
        );
        let topic = topic.to_string();
        let thread = std::thread::spawn(move || {
            let mut tick = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let due = Instant::now() + Duration::from_secs(1);
                if !paused.load(Ordering::Relaxed) {
                    tick += 1;
                    let mut offsets = TopicPartitionList::new();
                    let added = offsets
                        .add_partition_offset(&topic, 0, Offset::Offset(tick))
                        .is_ok();
                    let at = Instant::now();
                    let result = if added {
                        consumer.commit(&offsets, CommitMode::Sync)
                    } else {
                        Err(RdKafkaError::Subscription("bad offset".into()))
                    };
                    let commit = Commit {
                        t: (at - began).as_secs_f64(),
                        phase: *phase.lock().expect("not poisoned"),
                        latency_ms: at.elapsed().as_secs_f64() * 1000.0,
                        error: result.as_ref().err().map(ToString::to_string),
                    };
                    if result.is_ok() {
                        last_committed.store(tick as u64, Ordering::Relaxed);
                    }
                    commits.lock().expect("not poisoned").push(commit);
                }
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        });
        Ok(CoordinatorProbe {
            thread: Some(thread),
            ..probe
        })
    }

    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().expect("not poisoned") = phase;
    }

    /// Stops committing (a commit in flight finishes first).
    fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    fn finish(mut self) -> Vec<Commit> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let commits = self.commits.lock().expect("not poisoned").clone();
        commits
    }
}

/// High watermarks of every partition of `topics` (low watermarks are 0: nothing is deleted
/// during the run).
fn high_watermarks(brokers: &str, topics: &[TopicRead]) -> anyhow::Result<Ends> {
    let consumer: BaseConsumer = settings::admin(brokers).create()?;
    topics
        .iter()
        .map(|topic| {
            (0..topic.partitions)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic.name, p, Duration::from_secs(30))
                        .map(|(_, high)| high)
                        .with_context(|| {
                            format!(
                                "no watermarks for {} partition {p} from {brokers}",
                                topic.name
                            )
                        })
                })
                .collect()
        })
        .collect()
}

/// Runs `sh -c command` with a time limit, failing with its output.
fn run_restart(command: &str, limit: Duration) -> anyhow::Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .spawn()
        .with_context(|| format!("cannot run the restart command `{command}`"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the restart command `{command}` failed with {status}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the restart command `{command}` did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn summary_of(commits: &[Commit]) -> serde_json::Value {
    let mut latencies: Vec<f64> = commits.iter().map(|c| c.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    json!({
        "commits": commits.len(),
        "failed_or_over_5s": commits.iter().filter(|c| !c.answered()).count(),
        "p50_ms": super::percentile(&latencies, 0.5),
        "p99_ms": super::percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
        "first_error": commits.iter().find_map(|c| c.error.clone()),
    })
}

/// Runs the scenario against `bench.base.kafka.brokers` and adds its figures to the table.
pub(super) fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let options = bench.options.stress.clone();
    let events = bench.options.events;
    let brokers = bench.base.kafka.brokers.clone();
    let stall_limit = Duration::from_secs(options.stall_limit);
    let label = options.label.clone();
    let file = bench.data_file(events)?;
    topics::fetch_metadata(&brokers, None)?;
    let began = Instant::now();

    // 1. topics: five sets of the contract's four, 200 messages in each unused one.
    let bar = super::spinner(format!(
        "broker-stress {label}: creating 20 topics on {brokers}"
    ));
    let sets: Vec<_> = (0..5)
        .map(|i| bench.namespace(&format!("stress{i}"), &bench.database("stress")))
        .collect();
    let created = Instant::now();
    for set in &sets {
        topics::create(set)?;
    }
    let topics_seconds = created.elapsed().as_secs_f64();
    let mut all: Vec<TopicRead> = Vec::new();
    for set in &sets {
        for spec in topics::contract_topics(set) {
            all.push(TopicRead {
                dead_letters: spec.name == sets[0].topics.dead_letters,
                name: spec.name,
                partitions: spec.partitions,
            });
        }
    }
    // the load's two topics first: the ride events (evenness is measured on them) and the
    // dead letters.
    let (rides, dead) = (
        sets[0].topics.ride_events.clone(),
        sets[0].topics.dead_letters.clone(),
    );
    all.sort_by_key(|t| (t.name != rides, t.name != dead));
    for topic in &all[2..] {
        bar.set_message(format!("broker-stress {label}: filling {}", topic.name));
        let producer =
            CountingProducer::new(&bench.base.kafka, &topic.name, "ridepulse-broker-stress")?;
        for i in 0..FILLER_MESSAGES {
            let key = format!("filler-{i}");
            producer.send(
                Some(key.as_bytes()),
                format!("{{\"filler\":{i}}}").as_bytes(),
                None,
            )?;
        }
        producer.finish(Duration::from_secs(120))?;
    }
    bar.finish_and_clear();

    let probe = CoordinatorProbe::start(
        &brokers,
        &format!("bench-{}-stress-coordinator", bench.run),
        &rides,
        began,
    )?;

    // 2. produce while a consumer follows.
    let bar = super::spinner(format!(
        "broker-stress {label}: producing {events} events and {} dead letters while a consumer reads",
        options.dead_letters
    ));
    let live_ends: Arc<OnceLock<Ends>> = Arc::default();
    let live_read = Arc::new(AtomicU64::new(0));
    let live = {
        let reads = Reads {
            brokers: brokers.clone(),
            topics: all[..2].to_vec(),
            stall_limit,
        };
        let (group, ends, read_so_far) = (
            format!("bench-{}-stress-live", bench.run),
            live_ends.clone(),
            live_read.clone(),
        );
        std::thread::spawn(move || read(&reads, &group, &ends, true, &read_so_far))
    };
    let (load, every, fillers) = (
        Reads {
            brokers: brokers.clone(),
            topics: all[..2].to_vec(),
            stall_limit,
        },
        Reads {
            brokers: brokers.clone(),
            topics: all.clone(),
            stall_limit,
        },
        Reads {
            brokers: brokers.clone(),
            topics: all[2..].to_vec(),
            stall_limit,
        },
    );
    let produce_started = Instant::now();
    let dead_letters = {
        let (kafka, dead, count, source) = (
            bench.base.kafka.clone(),
            dead.clone(),
            options.dead_letters,
            rides.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<Produced> {
            let producer = CountingProducer::new(&kafka, &dead, "ridepulse-broker-stress-dlq")?;
            let started = Instant::now();
            for i in 0..count {
                if i % 4096 == 0 && producer.stats().failed.load(Ordering::Relaxed) > 0 {
                    break;
                }
                let key = format!("ride-dead-{i}");
                let payload = format!(
                    "{{\"event_type\":\"requested\",\"ride_id\":\"ride-dead-{i}\",\"timestamp\":\"not a time\",\"city\":\"london\",\"user_id\":\"user-{i}\"}}"
                );
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "source_topic", value: Some(source.as_str()) })
                    .insert(Header { key: "source_partition", value: Some(&(i % 12).to_string()) })
                    .insert(Header { key: "source_offset", value: Some(&i.to_string()) })
                    .insert(Header {
                        key: "error",
                        value: Some("invalid value: string \"not a time\", expected an RFC 3339 timestamp at line 1 column 70 (field `timestamp`)"),
                    });
                producer.send(Some(key.as_bytes()), payload.as_bytes(), Some(headers))?;
            }
            Ok(Produced::finish(&producer, started))
        })
    };
    let rides_produced = {
        let producer =
            CountingProducer::new(&bench.base.kafka, &rides, "ridepulse-broker-stress-rides")?;
        let reader = BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?,
        );
        for (n, line) in reader.split(b'\n').enumerate() {
            // a broker that lost a message will lose the rest: stop, and report it.
            if n % 4096 == 0 && producer.stats().failed.load(Ordering::Relaxed) > 0 {
                break;
            }
            let line = line.with_context(|| format!("cannot read {}", file.display()))?;
            let key = partitioner::ride_id_key(&line);
            producer.send(key.as_deref().map(str::as_bytes), &line, None)?;
        }
        Produced::finish(&producer, produce_started)
    };
    let dead_produced = dead_letters
        .join()
        .map_err(|_| anyhow::anyhow!("the dead-letter producer panicked"))??;
    let produce_seconds = produce_started.elapsed().as_secs_f64();
    let read_when_produced = live_read.load(Ordering::Relaxed);
    // a wedged broker may not even answer for its watermarks: give it two minutes, then
    // report what was measured instead of failing without figures.
    let deadline = Instant::now() + Duration::from_secs(120);
    let ends = loop {
        match high_watermarks(&brokers, &all) {
            Ok(ends) => break ends,
            Err(error) if Instant::now() > deadline => {
                bar.finish_and_clear();
                let commits = probe.finish();
                let unanswered = commits.iter().filter(|c| !c.answered()).count();
                let f = |bench: &mut Bench, name: &str, value: String| {
                    bench.figure("broker", format!("{label}: {name}"), value);
                };
                for (name, produced, wanted) in [
                    ("ride events", &rides_produced, events),
                    ("dead letters", &dead_produced, options.dead_letters),
                ] {
                    f(
                        bench,
                        &format!("produce: {name} acknowledged"),
                        format!(
                            "{} of {wanted} in {:.1} s, {} failed: {}",
                            produced.delivered,
                            produced.seconds,
                            produced.failed,
                            produced.error.as_deref().unwrap_or("-")
                        ),
                    );
                }
                f(
                    bench,
                    "coordinator: commits, unanswered (>5 s or error)",
                    format!("{}, {unanswered}", commits.len()),
                );
                f(
                    bench,
                    "accept: all",
                    format!("FAIL: no watermarks within 120 s after producing ({error:#})"),
                );
                let path = bench.save(
                    &format!("broker-stress-{label}"),
                    json!({"label": label, "brokers": brokers, "events": events, "dead_letters": options.dead_letters}),
                    Value::Null,
                    json!({"produce": {"ride_events": rides_produced, "dead_letters": dead_produced,
                                       "seconds": produce_seconds},
                           "while_producing": {"read_by_end_of_produce": read_when_produced},
                           "coordinator": summary_of(&commits),
                           "wedged": format!("{error:#}"),
                           "acceptance": {"every_message_acknowledged": false}}),
                    json!({"commits": commits}),
                )?;
                bench.figure(
                    "broker",
                    format!("{label}: results"),
                    path.display().to_string(),
                );
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(%error, brokers, "no watermarks yet; retrying");
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    };
    let _ = live_ends.set(ends[..2].to_vec());
    bar.set_message(format!(
        "broker-stress {label}: the following consumer finishes"
    ));
    let live = live
        .join()
        .map_err(|_| anyhow::anyhow!("the following consumer panicked"))??;
    bar.finish_and_clear();

    // 3. catch-up: a fresh group reads the load's two topics from the oldest offset, as the
    // job does after a pause; then the 18 small topics are read too (the restart compares
    // every partition).
    probe.set_phase("catch-up");
    let bar = super::spinner(format!(
        "broker-stress {label}: catch-up over the whole backlog"
    ));
    let catch_up_ends = OnceLock::new();
    let _ = catch_up_ends.set(ends[..2].to_vec());
    let catch_up = read(
        &load,
        &format!("bench-{}-stress-catch-up", bench.run),
        &catch_up_ends,
        false,
        &AtomicU64::new(0),
    )?;
    let filler_ends = OnceLock::new();
    let _ = filler_ends.set(ends[2..].to_vec());
    let filler_read = read(
        &fillers,
        &format!("bench-{}-stress-fillers", bench.run),
        &filler_ends,
        false,
        &AtomicU64::new(0),
    )?;
    let before: Vec<Vec<Tally>> = catch_up
        .tallies
        .iter()
        .chain(&filler_read.tallies)
        .cloned()
        .collect();
    bar.finish_and_clear();
    let produced: u64 = ends.iter().flatten().map(|&e| e as u64).sum();

    // 4. restart, then everything again.
    let restart = match &options.restart {
        None => None,
        Some(command) => {
            let bar = super::spinner(format!("broker-stress {label}: restarting the broker"));
            probe.pause();
            probe.set_phase("after-restart");
            let committed_before = probe.last_committed.load(Ordering::Relaxed);
            let stopped = Instant::now();
            run_restart(command, Duration::from_secs(300))?;
            let restart_seconds = stopped.elapsed().as_secs_f64();
            let deadline = Instant::now() + Duration::from_secs(120);
            while topics::fetch_metadata(&brokers, None).is_err() {
                if Instant::now() > deadline {
                    bail!("the broker at {brokers} did not answer within 120 s of its restart");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let ready_seconds = stopped.elapsed().as_secs_f64();
            // the group's committed offset is part of what must survive.
            let checker: BaseConsumer = settings::consumer(
                &brokers,
                &format!("bench-{}-stress-coordinator", bench.run),
                "ridepulse-broker-stress-check",
            )
            .create()?;
            let mut partition0 = TopicPartitionList::new();
            partition0.add_partition(&rides, 0);
            let committed_after = checker
                .committed_offsets(partition0, Duration::from_secs(30))
                .ok()
                .and_then(|list| list.elements().first().map(|e| e.offset()))
                .and_then(|offset| offset.to_raw());
            probe.resume();
            let ends_after = high_watermarks(&brokers, &all)?;
            bar.set_message(format!(
                "broker-stress {label}: reading everything after the restart"
            ));
            let after_ends = OnceLock::new();
            let _ = after_ends.set(ends_after.clone());
            let after = read(
                &every,
                &format!("bench-{}-stress-after-restart", bench.run),
                &after_ends,
                false,
                &AtomicU64::new(0),
            )?;
            bar.finish_and_clear();
            let differing: Vec<String> = all
                .iter()
                .enumerate()
                .flat_map(|(t, topic)| {
                    let (before, after) = (&before[t], &after.tallies[t]);
                    (0..topic.partitions as usize)
                        .filter(move |&p| before[p] != after[p])
                        .map(move |p| {
                            format!(
                                "{}[{p}]: {} → {}",
                                topic.name, before[p].count, after[p].count
                            )
                        })
                })
                .collect();
            Some(json!({
                "restart_command_seconds": restart_seconds,
                "answering_after_seconds": ready_seconds,
                "watermarks_equal": ends_after == ends,
                "partitions_differing": differing,
                "committed_offset_before": committed_before,
                "committed_offset_after": committed_after,
                "read_after_restart": after,
                "every_message_survived": differing.is_empty() && after.completed && catch_up.completed && filler_read.completed,
            }))
        }
    };
    let commits = probe.finish();

    // figures
    let produce_ok = rides_produced.error.is_none()
        && dead_produced.error.is_none()
        && rides_produced.delivered == events
        && dead_produced.delivered == options.dead_letters;
    // what the broker says it holds (high watermarks) against what it acknowledged: fewer
    // means acknowledged messages were lost or overwritten.
    let retained = |t: usize| ends[t].iter().map(|&e| e as u64).sum::<u64>();
    let (rides_retained, dead_retained) = (retained(0), retained(1));
    let retained_ok =
        rides_retained == rides_produced.delivered && dead_retained == dead_produced.delivered;
    let unanswered = commits.iter().filter(|c| !c.answered()).count();
    let max_commit = commits.iter().map(|c| c.latency_ms).fold(0.0, f64::max);
    let stall_ok = catch_up.completed && catch_up.longest_pause_s <= STALL_LIMIT_S;
    let coordinator_ok = unanswered == 0 && !commits.is_empty();
    let survived = restart
        .as_ref()
        .map(|r| r["every_message_survived"].as_bool().unwrap_or(false));
    let f = |bench: &mut Bench, name: &str, value: String| {
        bench.figure("broker", format!("{label}: {name}"), value);
    };
    f(
        bench,
        "20 topics created (s)",
        format!("{topics_seconds:.1}"),
    );
    f(
        bench,
        "produce: ride events/s (12 partitions)",
        format!(
            "{:.0} ({} of {events} acknowledged in {:.1} s, {} failed)",
            rides_produced.rate(),
            rides_produced.delivered,
            rides_produced.seconds,
            rides_produced.failed
        ),
    );
    f(
        bench,
        "produce: dead letters/s (3 partitions, 4 headers)",
        format!(
            "{:.0} ({} of {} acknowledged in {:.1} s, {} failed)",
            dead_produced.rate(),
            dead_produced.delivered,
            options.dead_letters,
            dead_produced.seconds,
            dead_produced.failed
        ),
    );
    f(
        bench,
        "while producing: consumer read, longest pause (s)",
        format!(
            "{read_when_produced} of {} by the end, {:.1}",
            rides_produced.delivered + dead_produced.delivered,
            live.longest_pause_s
        ),
    );
    f(
        bench,
        "catch-up: messages/s",
        format!(
            "{:.0} ({} in {:.1} s)",
            catch_up.messages_per_sec, catch_up.messages, catch_up.seconds
        ),
    );
    f(
        bench,
        "catch-up: dead letters without their 4 headers",
        catch_up.bad_headers.to_string(),
    );
    f(
        bench,
        "catch-up: longest pause between messages (s)",
        format!("{:.2}", catch_up.longest_pause_s),
    );
    f(
        bench,
        "catch-up: longest wait of one partition (s)",
        format!("{:.1}", catch_up.longest_partition_wait_s),
    );
    f(
        bench,
        "catch-up: partition progress spread max / mean",
        format!(
            "{:.2} / {:.2}",
            catch_up.max_spread(),
            catch_up.mean_spread()
        ),
    );
    f(
        bench,
        "coordinator: commits, unanswered (>5 s or error), max ms",
        format!("{}, {unanswered}, {max_commit:.0}", commits.len()),
    );
    if let Some(r) = &restart {
        f(
            bench,
            "restart: command s / answering after s",
            format!(
                "{:.1} / {:.1}",
                r["restart_command_seconds"].as_f64().unwrap_or(0.0),
                r["answering_after_seconds"].as_f64().unwrap_or(0.0)
            ),
        );
        f(
            bench,
            "restart: every message survived (count+checksum/partition)",
            format!(
                "{} ({} partitions differ)",
                r["every_message_survived"],
                r["partitions_differing"].as_array().map_or(0, Vec::len)
            ),
        );
        f(
            bench,
            "restart: group offset before → after",
            format!(
                "{} → {}",
                r["committed_offset_before"], r["committed_offset_after"]
            ),
        );
        f(
            bench,
            "after restart: messages/s",
            format!(
                "{:.0}",
                r["read_after_restart"]["messages_per_sec"]
                    .as_f64()
                    .unwrap_or(0.0)
            ),
        );
    }
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" }.to_string();
    f(bench, "accept: no stall over 5 s", verdict(stall_ok));
    f(
        bench,
        "accept: every message produced was acknowledged",
        verdict(produce_ok),
    );
    f(
        bench,
        "accept: the broker holds every acknowledged message",
        format!(
            "{} (high watermarks: {rides_retained} + {dead_retained})",
            verdict(retained_ok)
        ),
    );
    f(
        bench,
        "accept: the coordinator answered throughout",
        verdict(coordinator_ok),
    );
    f(
        bench,
        "accept: every message present after the restart",
        survived.map_or("not run (no --restart)".into(), verdict),
    );
    let path = bench.save(
        &format!("broker-stress-{label}"),
        json!({"label": label, "brokers": brokers, "events": events, "dead_letters": options.dead_letters,
               "topics": all.len(), "partitions": all.iter().map(|t| t.partitions).sum::<i32>(),
               "filler_messages_per_topic": FILLER_MESSAGES, "restart_command": options.restart,
               "stall_limit_s": options.stall_limit, "file": file.display().to_string()}),
        Value::Null,
        json!({
            "topics_seconds": topics_seconds,
            "produce": {"ride_events": rides_produced, "ride_events_per_sec": rides_produced.rate(),
                        "dead_letters": dead_produced, "dead_letters_per_sec": dead_produced.rate(),
                        "seconds": produce_seconds, "messages_retained": produced},
            "while_producing": {"read_by_end_of_produce": read_when_produced, "report": live},
            "catch_up": catch_up,
            "coordinator": summary_of(&commits),
            "restart": restart,
            "acceptance": {"every_message_acknowledged": produce_ok, "every_acknowledged_message_held": retained_ok, "no_stall_over_5s": stall_ok, "coordinator_answered": coordinator_ok,
                           "every_message_survived": survived},
        }),
        json!({"commits": commits}),
    )?;
    bench.figure(
        "broker",
        format!("{label}: results"),
        path.display().to_string(),
    );
    Ok(())
}
