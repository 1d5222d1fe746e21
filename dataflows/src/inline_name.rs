//! A short id (a rider, a city) kept inline, so the window path moves and compares it
//! without the heap.
//!
//! Every on-time event crosses the window exchange with its city and rider, and the rider is
//! looked up in, and kept by, the worker's rider map. As `String`s in the event they were
//! two heap allocations per event, each freed by the worker that received it (a free across
//! threads is jemalloc's slow path); as the map's key, a `String` is a pointer to follow per
//! probe. Ids such as `user-bratislava-12345` and `london` fit in [`INLINE_NAME`] bytes;
//! longer ones (valid, but unusual) go to the heap.

/// Names up to this long are kept inline (the enum is then 24 bytes, a `String`'s size).
const INLINE_NAME: usize = 22;

/// A name, inline when it fits. The representation is canonical (a name that fits is always
/// inline, with zeroes after its end), so equality of names is equality of their bytes.
/// Hashed, compared and ordered as its bytes.
#[derive(Clone, Debug)]
pub(crate) enum InlineName {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Box<str>),
}

impl InlineName {
    pub(crate) fn new(name: &str) -> InlineName {
        if name.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            InlineName::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            InlineName::Heap(Box::from(name))
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            InlineName::Inline { len, bytes } => &bytes[..*len as usize],
            InlineName::Heap(name) => name.as_bytes(),
        }
    }

    /// The name as text: always valid UTF-8 (it was built from a `&str`, and an inline one
    /// keeps all of it), so this borrows; checked rather than assumed, without `unsafe`
    /// (`from_utf8_lossy` walked the bytes in chunks, ~0.5 % of a file run).
    pub(crate) fn as_text(&self) -> std::borrow::Cow<'_, str> {
        let bytes = self.as_bytes();
        match std::str::from_utf8(bytes) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        }
    }

    /// The name as an owned `String`.
    pub(crate) fn to_text(&self) -> String {
        self.as_text().into_owned()
    }

    /// The name as a `CompactString` (inline up to 24 bytes, so no heap for usual ids).
    pub(crate) fn to_compact(&self) -> compact_str::CompactString {
        compact_str::CompactString::new(self.as_text())
    }
}

impl From<&str> for InlineName {
    fn from(name: &str) -> InlineName {
        InlineName::new(name)
    }
}

impl std::borrow::Borrow<[u8]> for InlineName {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::hash::Hash for InlineName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for InlineName {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Fixed-size arrays compare without a call to `memcmp` (the rider map compares
            // a key per probe); the zeroes after the end make this the bytes' equality.
            (
                InlineName::Inline { len, bytes },
                InlineName::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => len == other_len && bytes == other_bytes,
            (InlineName::Heap(name), InlineName::Heap(other)) => name == other,
            // Canonical: a name that fits is never on the heap.
            _ => false,
        }
    }
}

impl Eq for InlineName {}

impl PartialOrd for InlineName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InlineName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            // As big-endian words, without a call to `memcmp` (rollup rows sort a minute's
            // riders, and the window path looks cities up in ordered maps). Where the
            // padded arrays first differ, the shorter name has ended (its zero against a
            // byte of the longer, of which it is a prefix) or both have real bytes; equal
            // arrays leave the lengths to decide: the order of the bytes either way.
            (
                InlineName::Inline { len, bytes },
                InlineName::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => words(bytes)
                .cmp(&words(other_bytes))
                .then(len.cmp(other_len)),
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

/// An inline name's padded bytes as two big-endian integers, ordered as the bytes are.
fn words(bytes: &[u8; INLINE_NAME]) -> (u128, u64) {
    let mut tail = [0; 8];
    tail[..INLINE_NAME - 16].copy_from_slice(&bytes[16..]);
    (
        u128::from_be_bytes(bytes[..16].try_into().expect("sixteen bytes")),
        u64::from_be_bytes(tail),
    )
}

/// Between processes a name travels as its text.
impl serde::Serialize for InlineName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_text())
    }
}

impl<'de> serde::Deserialize<'de> for InlineName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(InlineName::new(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Between processes a name goes through bincode (timely's encoding): it comes back
    /// equal, inline or not, and hashes alike.
    #[test]
    fn names_survive_the_exchange_encoding() {
        for name in [
            "",
            "user-london-1",
            "user-bratislava-123456",
            &"é".repeat(30),
        ] {
            let rider = InlineName::new(name);
            let bytes = bincode::serialize(&rider).unwrap();
            let back: InlineName = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back, rider);
            assert_eq!(back.to_text(), name);
            let hasher = foldhash::fast::FixedState::default();
            assert_eq!(hasher.hash_one(&back), hasher.hash_one(&rider));
        }
    }

    /// Equality, order and hash are those of the bytes, across the inline limit: a map
    /// keyed by names finds them by their bytes.
    #[test]
    fn names_compare_as_their_bytes() {
        let names = [
            "",
            "\0",
            "a",
            "a\0",
            "a\0b",
            "ab",
            "b",
            "é",
            "user-london-1",
            "user-london-10",
            "user-london-2",
            "user-bratislava-02345",
            "user-bratislava-12345",
            "user-bratislava-12346",
            "user-bratislava-123456",
            "user-bratislava-1234567",
            "user-bratislava-1234568",
            "user-bratislava-12345678",
        ];
        let hasher = foldhash::fast::FixedState::default();
        for a in names {
            for b in names {
                let (x, y) = (InlineName::new(a), InlineName::new(b));
                assert_eq!(x == y, a == b, "{a} == {b}");
                assert_eq!(x.cmp(&y), a.as_bytes().cmp(b.as_bytes()), "{a} cmp {b}");
            }
            let name = InlineName::new(a);
            let borrowed: &[u8] = std::borrow::Borrow::borrow(&name);
            assert_eq!(hasher.hash_one(&name), hasher.hash_one(borrowed), "{a}");
        }
        // Random names about the inline limit, over a small alphabet (so that long common
        // prefixes, NULs and multi-byte characters are frequent).
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let alphabet = ['\0', 'a', 'b', 'é', 'z'];
        let name = |rng: &mut rand_chacha::ChaCha8Rng| -> String {
            let chars = rng.random_range(0..=24);
            let prefix = "user-bratisl"[..rng.random_range(0..=12)].to_string();
            prefix
                + &(0..chars)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect::<String>()
        };
        for _ in 0..20_000 {
            let (a, b) = (name(&mut rng), name(&mut rng));
            let (x, y) = (InlineName::new(&a), InlineName::new(&b));
            assert_eq!(x.cmp(&y), a.as_bytes().cmp(b.as_bytes()), "{a:?} cmp {b:?}");
            assert_eq!(x == y, a == b, "{a:?} == {b:?}");
        }
        let mut map = std::collections::HashMap::new();
        for (index, name) in names.iter().enumerate() {
            map.insert(InlineName::new(name), index);
        }
        for (index, name) in names.iter().enumerate() {
            assert_eq!(map.get(name.as_bytes()), Some(&index));
        }
    }
}
