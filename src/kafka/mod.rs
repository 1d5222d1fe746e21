//! Everything that talks to the Kafka-protocol broker.
//!
//! - [`settings`]: the librdkafka properties we use, each with the reason it is set.
//! - [`topics`]: creating and listing SPEC §1's topics through the AdminClient.
//! - [`producer`]: a producer that counts every delivery report, so nothing is dropped silently.
//! - [`plain_consumer`]: a bare consumer over a topic's backlog, the baseline every job
//!   figure is compared with.
//! - [`source`]: the timely source operator: owned partitions drive the frontier.

pub mod partitioner;
pub mod plain_consumer;
pub mod producer;
pub mod settings;
pub mod source;
pub mod topics;

use thiserror::Error;

/// A failure talking to Kafka. [`KafkaError::is_retryable`] tells a caller whether waiting
/// and trying again can help.
#[derive(Debug, Error)]
pub enum KafkaError {
    /// No broker answered.
    #[error("cannot reach the Kafka broker at {brokers}: {detail} (is it running? `scripts/stack status` tells)")]
    Unreachable {
        /// The `bootstrap.servers` we tried.
        brokers: String,
        /// librdkafka's reason.
        detail: String,
    },
    /// A topic exists with a different partition count than the contract says.
    #[error("topic `{topic}` exists with {actual} partitions but SPEC §1 wants {expected}; delete it or point [topics] at another name")]
    WrongPartitionCount {
        /// The topic.
        topic: String,
        /// What the broker has.
        actual: usize,
        /// What the contract says.
        expected: i32,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {detail}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's reason.
        detail: String,
    },
    /// A topic we need does not exist.
    #[error("topic `{0}` does not exist (run `ridepulse topics create`)")]
    MissingTopic(String),
    /// Messages could not be delivered.
    #[error(
        "{failed} of {total} messages to `{topic}` were not delivered; first error: {first_error}"
    )]
    Delivery {
        /// The topic.
        topic: String,
        /// How many failed.
        failed: u64,
        /// How many were sent.
        total: u64,
        /// The first failure's reason.
        first_error: String,
    },
    /// The broker refused writes for a reason no retry can fix (authorization, a fatal
    /// idempotence error): the job stops and says so.
    #[error("writing to `{topic}` failed for good: {detail} (check the topic's ACLs and the broker; retrying cannot help)")]
    Fatal {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        detail: String,
    },
    /// Any other client error.
    #[error("kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

/// What to do about a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Transient (broker restarting, leader moving, timeouts): send the message again.
    Retry,
    /// The broker will never take this message (too large, invalid): record it and go on.
    Refuse,
    /// No message will be taken (authorization, fatal producer state): stop the job.
    Fatal,
}

/// Classifies a delivery error code. Unknown codes are retried: librdkafka marks most
/// broker errors retriable, and a stuck retry shows in the logs and the backpressure.
pub fn delivery_disposition(code: rdkafka::types::RDKafkaErrorCode) -> Disposition {
    use rdkafka::types::RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat => Disposition::Refuse,
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::InvalidRequiredAcks
        | C::InvalidTopic
        | C::PolicyViolation
        | C::Fatal => Disposition::Fatal,
        _ => Disposition::Retry,
    }
}

impl KafkaError {
    /// Whether the same call may succeed later (the broker may come back); the others need
    /// a person to change something.
    pub fn is_retryable(&self) -> bool {
        match self {
            KafkaError::Unreachable { .. } | KafkaError::Delivery { .. } => true,
            KafkaError::Client(error) => matches!(
                error.rdkafka_error_code(),
                Some(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                        | rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                        | rdkafka::types::RDKafkaErrorCode::OperationTimedOut
                        | rdkafka::types::RDKafkaErrorCode::RequestTimedOut
                        | rdkafka::types::RDKafkaErrorCode::QueueFull
                )
            ),
            KafkaError::Fatal { .. } => false,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn delivery_errors_are_retried_refused_or_fatal() {
        for code in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::NotLeaderForPartition,
            C::RequestTimedOut,
        ] {
            assert_eq!(delivery_disposition(code), Disposition::Retry, "{code:?}");
        }
        for code in [C::MessageSizeTooLarge, C::InvalidRecord, C::InvalidMessage] {
            assert_eq!(delivery_disposition(code), Disposition::Refuse, "{code:?}");
        }
        for code in [
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::Fatal,
        ] {
            assert_eq!(delivery_disposition(code), Disposition::Fatal, "{code:?}");
        }
    }
}
