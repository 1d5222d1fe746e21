//! The librdkafka properties ridepulse uses, in one place, each with the reason it is set.
//!
//! Tuned for two things the product promises: nothing is lost (acks from all replicas,
//! every delivery report counted, offsets committed only behind durable writes) and
//! seconds of freshness (short fetch waits, no backoff on a full fetch queue).

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// The context for our consumers: librdkafka reports reaching a partition's end (which we
/// ask for with `enable.partition.eof`) as a "global error"; that is a normal signal, not
/// worth an ERROR line. Everything else is logged with tracing.
pub struct ConsumerLog;

impl ClientContext for ConsumerLog {
    fn error(&self, error: RdKafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for ConsumerLog {}

/// Extra librdkafka properties from the environment, applied last to every client:
/// `RIDEPULSE_LIBRDKAFKA="key=value,key=value"` (e.g. `debug=fetch`, or `security.protocol`
/// and SASL settings for a managed cluster). An escape hatch: not validated here, librdkafka
/// names a bad key when the client is created.
pub const EXTRA_PROPERTIES_ENV: &str = "RIDEPULSE_LIBRDKAFKA";

fn apply_extra(config: &mut ClientConfig) {
    if let Ok(extra) = std::env::var(EXTRA_PROPERTIES_ENV) {
        for pair in extra.split(',').filter(|p| !p.trim().is_empty()) {
            if let Some((key, value)) = pair.split_once('=') {
                config.set(key.trim(), value.trim());
            }
        }
    }
}

/// A client config with the settings every ridepulse client shares.
fn base(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        // the broker list from [kafka] brokers.
        .set("bootstrap.servers", brokers)
        // names the process in broker logs and quotas.
        .set("client.id", client_id)
        // fail a metadata request quickly so an unreachable broker is reported, not awaited.
        .set("socket.connection.setup.timeout.ms", "10000");
    apply_extra(&mut config);
    config
}

/// For the AdminClient (topic creation and listing) and watermark look-ups.
pub fn admin(brokers: &str) -> ClientConfig {
    let mut config = base(brokers, "ridepulse-admin");
    config
        // librdkafka waits this long before its first connection to the broker that the
        // bootstrap connection's metadata named (the default 100 ms made a job's start-up
        // wait ~50 ms between two metadata requests); it still doubles per failed attempt,
        // up to reconnect.backoff.max.ms (10 s), so a down broker is not hammered.
        .set("reconnect.backoff.ms", "5");
    read_uncommitted(&mut config);
    config
}

/// ridepulse writes no transactions, so read_committed (librdkafka's default) buys nothing;
/// and Tansu 0.6.0's postgres engine answers a read_committed ListOffsets(latest) (every
/// high-watermark look-up) with SQL that PostgreSQL 15 rejects (an unaliased subquery),
/// while its read_uncommitted query works (docs/local-broker.md).
fn read_uncommitted(config: &mut ClientConfig) {
    config.set("isolation.level", "read_uncommitted");
    apply_extra(config);
}

/// For producers of ride events, locations, aggregates and dead letters (`idempotent`:
/// `[kafka] idempotence`).
pub fn producer(brokers: &str, client_id: &str, idempotent: bool) -> ClientConfig {
    let mut config = base(brokers, client_id);
    if idempotent {
        // librdkafka's retries neither duplicate nor reorder a partition's messages, so a
        // retried ride event cannot change which events are late (needs acks=all).
        config.set("enable.idempotence", "true");
    } else {
        // without idempotence, one request in flight per connection is what keeps a retry
        // from overtaking the messages sent after it (it may still duplicate).
        config.set("max.in.flight.requests.per.connection", "1");
    }
    config
        // a message is delivered only once every in-sync replica has it.
        .set("acks", "all")
        // SPEC §1 stores topics lz4-compressed; compressing in the client saves bandwidth.
        .set("compression.type", "lz4")
        // wait up to 50 ms to fill batches: throughput at a bounded freshness cost.
        .set("linger.ms", "50")
        // large batches for the 50,000 events/min steady state and replay bursts.
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        // room for bursts (replays) before send() pushes back with QueueFull.
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        // the same key lands on the same partition as with the Java client (murmur2), and a
        // message without a key (a malformed replayed line) is spread at random.
        .set("partitioner", "murmur2_random")
        // give a restarting broker two minutes before a message counts as failed.
        .set("message.timeout.ms", "120000");
    apply_extra(&mut config);
    config
}

/// For the job's writer: like [`producer`], but the writer hands over a whole batch and waits
/// for its acknowledgements before the batch counts as durable, so lingering to fill batches
/// would only delay every batch (and a flood of dead letters, batch after batch).
pub fn writer_producer(brokers: &str, client_id: &str, idempotent: bool) -> ClientConfig {
    let mut config = producer(brokers, client_id, idempotent);
    // the batch is already whole: send it at once (5 ms lets librdkafka group its partitions).
    config.set("linger.ms", "5");
    apply_extra(&mut config);
    config
}

/// For consumers that assign partitions explicitly and commit offsets themselves.
pub fn consumer(brokers: &str, group_id: &str, client_id: &str) -> ClientConfig {
    let mut config = base(brokers, client_id);
    config
        // committed offsets are stored under this group; partitions are assigned explicitly,
        // so the group never rebalances.
        .set("group.id", group_id)
        // offsets are committed only behind durable writes, never on a timer.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // a new group starts from the oldest retained message: nothing is skipped.
        .set("auto.offset.reset", "earliest")
        // report reaching the end of a partition: that is how idleness and --until-end work.
        .set("enable.partition.eof", "true")
        // the broker answers a fetch after at most 100 ms even with little data: freshness.
        .set("fetch.wait.max.ms", "100")
        // librdkafka 2.x backs off fetching for fetch.queue.backoff.ms (default 1 s) once
        // its local queue holds queued.min.messages; 0 keeps the fetcher busy while we drain.
        .set("fetch.queue.backoff.ms", "0")
        // keep plenty pre-fetched per partition so a catch-up never waits on a round trip.
        .set("queued.min.messages", "200000")
        .set("queued.max.messages.kbytes", "262144")
        // retry a failed fetch quickly rather than after the 500 ms default.
        .set("fetch.error.backoff.ms", "50");
    read_uncommitted(&mut config);
    config
}

/// For the job's source, which reads each assigned partition from a queue of its own.
pub fn partitioned_consumer(brokers: &str, group_id: &str, client_id: &str) -> ClientConfig {
    let mut config = consumer(brokers, group_id, client_id);
    // with a queue per partition this bounds each partition's prefetch, not the consumer's:
    // 4 MB (~15,000 ride events, about one Tansu fetch chunk) stops fetching a held partition.
    config.set("queued.max.messages.kbytes", "4096");
    apply_extra(&mut config);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_are_idempotent_unless_the_broker_cannot_take_it() {
        let on = producer("127.0.0.1:9092", "t", true);
        assert_eq!(on.get("enable.idempotence"), Some("true"));
        assert_eq!(on.get("acks"), Some("all"));
        let off = producer("127.0.0.1:9092", "t", false);
        assert_eq!(off.get("enable.idempotence"), None);
        assert_eq!(off.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(on.get("linger.ms"), Some("50"));
        let writer = writer_producer("127.0.0.1:9092", "t", true);
        assert_eq!(writer.get("linger.ms"), Some("5"));
        assert_eq!(writer.get("acks"), Some("all"));
    }
}
