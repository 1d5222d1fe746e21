//! Which partition a key goes to (`ride-events` by `ride_id`, `driver-locations` by
//! `driver_id`): librdkafka's own murmur2 partitioner, the one
//! our producers use (`partitioner=murmur2_random`, Java-client compatible). The file source
//! uses it so that a file read directly meets the same per-partition order, and so the same
//! lateness verdicts and rows, as the same file replayed through Kafka.

use std::borrow::Cow;

/// The `ride_id` of a `ride-events` line, if it is a JSON object with a string `ride_id`:
/// the Kafka key it is produced under.
pub fn ride_id_key(line: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        ride_id: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Key>(line).ok()?.ride_id
}

/// The `driver_id` of a `driver-locations` line, if it is a JSON object with a string
/// `driver_id`: the Kafka key it is produced under (SPEC §1).
pub fn driver_id_key(line: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        driver_id: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Key>(line).ok()?.driver_id
}

/// The partition of `key` among `partitions`; keyless messages (the producer spreads them
/// at random) go to `fallback % partitions`.
pub fn partition_for(key: Option<&[u8]>, partitions: i32, fallback: u64) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    match key {
        // SAFETY: librdkafka's murmur2 partitioner reads `keylen` bytes of `key` and
        // nothing else (the topic and opaque pointers are unused:
        // `(rd_murmur2(key, keylen) & 0x7fffffff) % partition_cnt`).
        Some(key) => unsafe {
            rdkafka::bindings::rd_kafka_msg_partitioner_murmur2(
                std::ptr::null(),
                key.as_ptr().cast(),
                key.len(),
                partitions,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        },
        None => (fallback % partitions as u64) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_java_clients_murmur2() {
        // Kafka's UtilsTest vectors for Utils.murmur2, through toPositive (& 0x7fffffff):
        // with i32::MAX partitions the partition is the positive hash itself.
        let positive = |key: &str, n: i32| partition_for(Some(key.as_bytes()), n, 0);
        assert_eq!(positive("21", i32::MAX), 1_173_551_340); // murmur2 = -973932308
        assert_eq!(positive("foobar", i32::MAX), 1_357_151_166); // -790332482
        assert_eq!(positive("abc", i32::MAX), 479_470_107);
        for n in [1, 3, 12, 24] {
            for key in ["ride-1", "ride-abc-123", ""] {
                assert!((0..n).contains(&positive(key, n)));
            }
        }
        assert_eq!(partition_for(None, 12, 25), 1);
    }

    #[test]
    fn keys_are_read_from_either_kind_of_line() {
        let location = br#"{"driver_id":"driver-paris-7","timestamp":"2026-11-23T10:00:00Z","city":"paris","lat":48.8,"lng":2.3,"status":"available"}"#;
        assert_eq!(driver_id_key(location).as_deref(), Some("driver-paris-7"));
        assert_eq!(ride_id_key(location), None);
        assert_eq!(driver_id_key(br#"{"ride_id":"r"}"#), None);
        assert_eq!(driver_id_key(b"not json"), None);
        assert_eq!(driver_id_key(br#"{"driver_id":7}"#), None);
        assert_eq!(
            ride_id_key(br#"{"ride_id":"ride-1","driver_id":"driver-7"}"#).as_deref(),
            Some("ride-1")
        );
    }
}
