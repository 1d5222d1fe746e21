//! Which partition a key goes to (`ride-events` by `ride_id`, `driver-locations` by
//! `driver_id`): librdkafka's own murmur2 partitioner, the one
//! our producers use (`partitioner=murmur2_random`, Java-client compatible). The file source
//! uses it so that a file read directly meets the same per-partition order, and so the same
//! lateness verdicts and rows, as the same file replayed through Kafka.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The searchers for the quoted key names, built once (building one per line cost as much
/// as the search).
static RIDE_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ride_id\""));
static DRIVER_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"driver_id\""));

/// The `ride_id` of a `ride-events` line, if it is a JSON object with a string `ride_id`:
/// the Kafka key it is produced under.
pub fn ride_id_key(line: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        ride_id: Option<Cow<'a, str>>,
    }
    if let Some(key) = scan_key(line, &RIDE_ID) {
        return key.map(Cow::Borrowed);
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
    if let Some(key) = scan_key(line, &DRIVER_ID) {
        return key.map(Cow::Borrowed);
    }
    serde_json::from_slice::<Key>(line).ok()?.driver_id
}

/// The key field's string value found by a byte scan, when the line leaves no doubt:
/// `Some(Some(key))` when the line is an object (`{ ... }`) without a backslash (so every
/// `"` opens or closes a string), the quoted field name occurs once, at the object's top
/// level, followed by `:` and a string; `Some(None)` when the name does not occur at all;
/// `None` otherwise (the caller parses the line). Every worker of a file run finds the key
/// of every line (to know whose partition it is), so this is the file source's most
/// repeated work: a scan costs a tenth of a parse. Unlike a parse, it does not check the
/// rest of the line: a malformed line with a readable key goes to that key's partition,
/// where its producer would have put it (the file source and `simulate --replay` both
/// use these functions, so a file and its replay still agree).
fn scan_key<'a>(line: &'a [u8], quoted_name: &Finder<'_>) -> Option<Option<&'a str>> {
    let trimmed = line.trim_ascii();
    if trimmed.first() != Some(&b'{')
        || trimmed.last() != Some(&b'}')
        || memchr::memchr(b'\\', line).is_some()
    {
        return None;
    }
    let Some(at) = quoted_name.find(line) else {
        return Some(None);
    };
    let after = at + quoted_name.needle().len();
    if quoted_name.find(&line[after..]).is_some() {
        return None;
    }
    // At the top level: outside strings, one `{` open before it and no `[`.
    let (mut depth, mut in_string) = (0usize, false);
    for &byte in &line[..at] {
        match byte {
            b'"' => in_string = !in_string,
            b'{' | b'[' if !in_string => depth += 1,
            b'}' | b']' if !in_string => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    if depth != 1 || in_string {
        return None;
    }
    let rest = line[after..].trim_ascii_start().strip_prefix(b":")?;
    let value = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', value)?;
    // A control character makes the string invalid JSON: let the parse decide.
    if value[..end].iter().any(|b| *b < 0x20) {
        return None;
    }
    std::str::from_utf8(&value[..end]).ok().map(Some)
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
    fn the_scan_finds_the_key_a_parse_finds() {
        let same = |line: &str| {
            #[derive(serde::Deserialize)]
            struct Key {
                ride_id: Option<String>,
            }
            let parsed = serde_json::from_str::<Key>(line)
                .ok()
                .and_then(|k| k.ride_id);
            assert_eq!(
                ride_id_key(line.as_bytes()).map(|k| k.into_owned()),
                parsed,
                "{line}"
            );
        };
        same(r#"{"event_type":"requested","ride_id":"ride-1-7","city":"paris"}"#);
        same(r#" { "ride_id" : "r 2" , "city":"x"} "#);
        same(r#"{"ride_id":"esc\"aped","city":"x"}"#);
        same(r#"{"pickup":{"ride_id":"inner"},"ride_id":"outer"}"#);
        same(r#"{"pickup":{"ride_id":"inner"}}"#);
        same(r#"{"tags":["ride_id"],"ride_id":"r3"}"#);
        same(r#"{"city":"\"ride_id\":\"fake\"","ride_id":"r4"}"#);
        same(r#"{"ride_id":"a","ride_id":"b"}"#);
        same(r#"{"ride_id":7}"#);
        same(r#"{"ride_id":null}"#);
        same(r#"{"note":"the ride_id is","ride_id":"r5"}"#);
        same(r#"{"city":"x"}"#);
        same(r#"["ride_id","r6"]"#);
        same("not json");
        same("");
        // Where a parse gives up on a malformed line, a scan still reads its key.
        assert_eq!(
            ride_id_key(br#"{"ride_id":"r7","timestamp":oops}"#).as_deref(),
            Some("r7")
        );
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
