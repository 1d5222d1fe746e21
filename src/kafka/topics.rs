//! Creating and listing SPEC §1's topics through rdkafka's AdminClient.
//!
//! `ridepulse topics create` must be safe to run on every start: an existing topic with the
//! right partition count is left alone, one with the wrong count is reported (never
//! silently "fixed"), and a topic created by someone else in the meantime is not an error.
//! [`create_report`] and [`list_report`] are what the two commands print.

use std::fmt::Write;
use std::time::Duration;

use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use super::{settings, KafkaError};
use crate::config::Config;

/// How long to wait for the broker on admin calls.
const TIMEOUT: Duration = Duration::from_secs(15);

/// One topic of the contract with its layout and configs.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSpec {
    /// The configured name.
    pub name: String,
    /// Partition count from SPEC §1.
    pub partitions: i32,
    /// Topic configs, each with the SPEC's reason.
    pub configs: Vec<(&'static str, &'static str)>,
}

const SEVEN_DAYS_MS: &str = "604800000";
const ONE_DAY_MS: &str = "86400000";
const ONE_HOUR_MS: &str = "3600000";

/// SPEC §1's five topics under the configured names.
pub fn contract_topics(config: &Config) -> Vec<TopicSpec> {
    let topics = &config.topics;
    vec![
        TopicSpec {
            name: topics.ride_events.clone(),
            partitions: 12,
            configs: vec![("retention.ms", SEVEN_DAYS_MS), ("compression.type", "lz4")],
        },
        TopicSpec {
            name: topics.driver_locations.clone(),
            partitions: 24,
            configs: vec![
                ("retention.ms", ONE_DAY_MS),
                // the latest position per driver survives compaction; older ones age out.
                ("cleanup.policy", "compact,delete"),
                // a restarted job re-reads the positions of its last minutes to rebuild the
                // supply state: compaction must leave them for longer than a restart takes.
                ("min.compaction.lag.ms", ONE_HOUR_MS),
            ],
        },
        TopicSpec {
            name: topics.aggregated.clone(),
            partitions: 6,
            configs: vec![],
        },
        TopicSpec {
            name: topics.dead_letters.clone(),
            partitions: 3,
            configs: vec![("retention.ms", SEVEN_DAYS_MS)],
        },
        TopicSpec {
            name: topics.city_supply.clone(),
            partitions: 6,
            configs: vec![],
        },
    ]
}

/// Fetches cluster metadata, turning "no broker answered" into an error naming the address.
pub fn fetch_metadata(brokers: &str, topic: Option<&str>) -> Result<Metadata, KafkaError> {
    let consumer: BaseConsumer = settings::admin(brokers).create()?;
    metadata_of(&consumer, brokers, topic)
}

/// One metadata request on an existing client (`None`: every topic of the cluster).
fn metadata_of(
    consumer: &BaseConsumer,
    brokers: &str,
    topic: Option<&str>,
) -> Result<Metadata, KafkaError> {
    consumer
        .fetch_metadata(topic, TIMEOUT)
        .map_err(|error| match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut,
            ) => KafkaError::Unreachable {
                brokers: brokers.to_string(),
                detail: error.to_string(),
            },
            _ => KafkaError::Client(error),
        })
}

/// What `create` did with one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was made now.
    Created,
    /// It was there already with the right partition count.
    Existed,
}

/// Creates every contract topic that is missing. Fails on a topic with the wrong
/// partition count, naming it.
pub fn create(config: &Config) -> Result<Vec<(TopicSpec, Outcome)>, KafkaError> {
    let brokers = &config.kafka.brokers;
    let metadata = fetch_metadata(brokers, None)?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for spec in contract_topics(config) {
        match metadata.topics().iter().find(|t| t.name() == spec.name) {
            Some(existing) if existing.partitions().len() as i32 == spec.partitions => {
                results.push((spec, Outcome::Existed));
            }
            Some(existing) => {
                return Err(KafkaError::WrongPartitionCount {
                    topic: spec.name,
                    actual: existing.partitions().len(),
                    expected: spec.partitions,
                });
            }
            None => missing.push(spec),
        }
    }
    if missing.is_empty() {
        return Ok(results);
    }
    let admin: AdminClient<DefaultClientContext> = settings::admin(brokers).create()?;
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|spec| {
            let mut topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.kafka.replication_factor),
            );
            for (key, value) in &spec.configs {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let replies = block_on(admin.create_topics(&new_topics, &options))?;
    for (spec, reply) in missing.into_iter().zip(replies) {
        match reply {
            Ok(_) => {
                info!(topic = %spec.name, partitions = spec.partitions, "created topic");
                results.push((spec, Outcome::Created));
            }
            // created by someone else between our metadata read and the create: fine if it
            // has the right shape, which the next check verifies.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                results.push((spec, Outcome::Existed));
            }
            Err((_, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic: spec.name,
                    detail: code.to_string(),
                })
            }
        }
    }
    // The broker may take a moment to publish new topics' metadata.
    let deadline = std::time::Instant::now() + TIMEOUT;
    for (spec, _) in &results {
        loop {
            let metadata = fetch_metadata(brokers, Some(&spec.name))?;
            let ready = metadata.topics().first().is_some_and(|t| {
                t.error().is_none() && t.partitions().len() as i32 == spec.partitions
            });
            if ready {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(KafkaError::CreateTopic {
                    topic: spec.name.clone(),
                    detail: "the broker does not show it with all partitions after creation".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(results)
}

/// What `ridepulse topics create` prints: one line per topic of SPEC §1, created or already
/// there, with its partitions and configs.
pub fn create_report(results: &[(TopicSpec, Outcome)]) -> String {
    let mut text = String::new();
    for (spec, outcome) in results {
        let configs: Vec<String> = spec
            .configs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let what = match outcome {
            Outcome::Created => "created",
            Outcome::Existed => "exists ",
        };
        let _ = writeln!(
            text,
            "{what} {:<24} partitions={:<3} {}",
            spec.name,
            spec.partitions,
            configs.join(" ")
        );
    }
    text
}

/// What `ridepulse topics list` prints: one line per topic of SPEC §1 (`specs`, in order),
/// with what the broker holds of it (`infos`, from [`list`]) or that it is missing.
pub fn list_report(specs: &[TopicSpec], infos: &[Option<TopicInfo>]) -> String {
    let mut text = String::new();
    for (spec, info) in specs.iter().zip(infos) {
        let _ = match info {
            Some(info) => writeln!(
                text,
                "{:<24} partitions={:<3} messages={}",
                info.name,
                info.partitions.len(),
                info.messages()
            ),
            None => writeln!(
                text,
                "{:<24} missing (run `ridepulse topics create`)",
                spec.name
            ),
        };
    }
    text
}

/// A topic as the broker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// The name.
    pub name: String,
    /// Per partition: (low, high) watermark offsets.
    pub partitions: Vec<(i64, i64)>,
}

impl TopicInfo {
    /// Messages currently retained across all partitions.
    pub fn messages(&self) -> i64 {
        self.partitions.iter().map(|(low, high)| high - low).sum()
    }
}

/// Lists the contract topics (under their configured names) with their watermarks.
pub fn list(config: &Config) -> Result<Vec<Option<TopicInfo>>, KafkaError> {
    let brokers = &config.kafka.brokers;
    let metadata = fetch_metadata(brokers, None)?;
    let consumer: BaseConsumer = settings::admin(brokers).create()?;
    let mut out = Vec::new();
    for spec in contract_topics(config) {
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == spec.name) else {
            out.push(None);
            continue;
        };
        let mut partitions = Vec::new();
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort();
        for id in ids {
            partitions.push(consumer.fetch_watermarks(&spec.name, id, TIMEOUT)?);
        }
        out.push(Some(TopicInfo {
            name: spec.name,
            partitions,
        }));
    }
    Ok(out)
}

/// Partition count of a topic, or an error saying it does not exist.
pub fn partition_count(brokers: &str, topic: &str) -> Result<i32, KafkaError> {
    Ok(partition_counts(brokers, &[topic])?[0])
}

/// [`partition_count`] of several topics, from one client with a request naming each. Not
/// one request for every topic: its answer grows with the cluster (a production cluster
/// holds thousands of topics, and the local broker, after a few hundred benchmark and test
/// topics, took ~90 ms to answer it: 4 % of a two-second file run), while a request naming
/// one topic is answered in about a millisecond.
pub fn partition_counts(brokers: &str, topics: &[&str]) -> Result<Vec<i32>, KafkaError> {
    let consumer: BaseConsumer = settings::admin(brokers).create()?;
    topics
        .iter()
        .map(|topic| {
            metadata_of(&consumer, brokers, Some(topic))?
                .topics()
                .iter()
                .find(|t| t.name() == *topic && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .filter(|partitions| *partitions > 0)
                .ok_or_else(|| KafkaError::MissingTopic(topic.to_string()))
        })
        .collect()
}
