//! A fast path for reading the ride events the job meets every second: one pass over a flat
//! JSON object whose strings have no escapes, giving the same fields serde would.
//!
//! serde_json's derive reading `RawRideEvent` was ~a quarter of a file run's CPU (string
//! scanning, field dispatch, the lenient visitors). Most messages have one shape: a flat
//! object, unescaped strings, plain numbers and two `{lat, lng}` points. This scanner reads
//! exactly that shape and answers `None` for anything else (an escape, a control character,
//! an exponent, a duplicate field, a nested value where none is expected, a required field
//! of another type, trailing text, ...), and the caller then reads the message with serde as
//! before. It fills the same `RawRideEvent` serde does, so it only has to agree with serde
//! on what it accepts, which the property test in `event.rs` checks against serde itself;
//! every error is still serde's.

use std::borrow::Cow;

use crate::event::{geo_point, GeoPoint, Lenient, RawRideEvent};

/// One scalar JSON value (or the start of a nested one).
enum Value<'a> {
    Str(&'a str),
    Num(f64),
    Null,
    /// `true` or `false`: no field keeps one.
    Bool,
    /// A `{` was met (not consumed).
    Object,
}

/// The fields a ride event may carry; a field's position is its bit in [`scan`]'s check for
/// repeated fields and its case in `Cursor::field`.
pub(crate) const FIELDS: [&str; 9] = [
    "event_type",
    "ride_id",
    "timestamp",
    "city",
    "estimated_fare",
    "user_id",
    "driver_id",
    "pickup",
    "dropoff",
];

/// Each of [`FIELDS`] as a member starts in compact JSON: the quoted name and its colon.
const QUOTED_FIELDS: [&str; 9] = [
    "\"event_type\":",
    "\"ride_id\":",
    "\"timestamp\":",
    "\"city\":",
    "\"estimated_fare\":",
    "\"user_id\":",
    "\"driver_id\":",
    "\"pickup\":",
    "\"dropoff\":",
];

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips JSON whitespace (space, tab, line feed, carriage return: nothing else).
    fn blank(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.blank();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// A string without escapes or control characters, at `"`.
    fn string(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.pos + 1;
        let len = string_end(&bytes[start..])?;
        if bytes[start + len] != b'"' {
            return None;
        }
        self.pos = start + len + 1;
        // The whole message is valid UTF-8 and `"` is ASCII, so this is a char boundary.
        self.text.get(start..start + len)
    }

    /// A JSON number without an exponent (`-?(0|[1-9][0-9]*)(.[0-9]+)?`), read as the
    /// correctly rounded `f64`, as serde_json (`float_roundtrip`) reads it. One pass over
    /// the digits: up to 15 of them, the digits as an integer (below 2^53, so exact as
    /// `f64`) divided by a power of ten (exact up to 10^22) is one correctly rounded
    /// operation, the general parser's value at a fraction of its cost; longer numbers go
    /// to the general parser.
    fn number(&mut self) -> Option<f64> {
        const POWERS: [f64; 16] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
        ];
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let negative = bytes[start] == b'-';
        let mut at = start + usize::from(negative);
        // Wrapping: past 19 digits the integer is wrong, and unused (more than 15 digits).
        let mut mantissa = 0u64;
        let mut digits = |at: &mut usize| {
            let from = *at;
            while let Some(&byte) = bytes.get(*at).filter(|b| b.is_ascii_digit()) {
                mantissa = mantissa
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(byte - b'0'));
                *at += 1;
            }
            *at - from
        };
        let whole_at = at;
        let whole = digits(&mut at);
        if whole == 0 || (whole > 1 && bytes[whole_at] == b'0') {
            return None;
        }
        let mut scale = 0;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            scale = digits(&mut at);
            if scale == 0 {
                return None;
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) || at - start > 40 {
            return None;
        }
        self.pos = at;
        if whole + scale > 15 {
            return self.text[start..at].parse().ok();
        }
        let value = mantissa as f64 / POWERS[scale];
        Some(if negative { -value } else { value })
    }

    /// A scalar value, or [`Value::Object`] at a `{`; `None` for an array or bad JSON.
    fn value(&mut self) -> Option<Value<'a>> {
        self.blank();
        let rest = &self.text.as_bytes()[self.pos..];
        Some(match rest.first()? {
            b'"' => Value::Str(self.string()?),
            b'-' | b'0'..=b'9' => Value::Num(self.number()?),
            b'{' => Value::Object,
            _ => {
                let (word, value) = [
                    (&b"null"[..], Value::Null),
                    (b"true", Value::Bool),
                    (b"false", Value::Bool),
                ]
                .into_iter()
                .find(|(word, _)| rest.starts_with(word))?;
                self.pos += word.len();
                value
            }
        })
    }

    /// After a member: `,` (more to come, `true`) or the object's `}` (`false`).
    fn next_member(&mut self) -> Option<bool> {
        self.blank();
        let more = match self.peek()? {
            b',' => true,
            b'}' => false,
            _ => return None,
        };
        self.pos += 1;
        Some(more)
    }

    /// A member's key and its `:`, at `"` (after blanks).
    fn key(&mut self) -> Option<&'a str> {
        self.blank();
        if self.peek()? != b'"' {
            return None;
        }
        let key = self.string()?;
        self.eat(b':')?;
        Some(key)
    }

    /// Field `hint` when the text at the cursor is exactly its quoted name and colon (the
    /// usual order, compact): one comparison instead of reading the key as a string and
    /// finding it among the fields. `None` leaves the cursor for [`Cursor::key`].
    fn usual_key(&mut self, hint: usize) -> Option<usize> {
        let quoted = QUOTED_FIELDS.get(hint)?.as_bytes();
        let rest = self
            .text
            .as_bytes()
            .get(self.pos..self.pos + quoted.len())?;
        same_name(rest, quoted).then(|| {
            self.pos += quoted.len();
            hint
        })
    }

    /// A point object (at its `{`) with scalar members, as serde's reading of it: other keys
    /// are ignored, a repeated coordinate keeps its last value, `lon` stands in for a missing
    /// `lng`, and a point off the globe or missing a coordinate is none.
    fn point(&mut self) -> Option<Option<GeoPoint>> {
        if let Some(point) = self.usual_point() {
            return Some(point);
        }
        self.eat(b'{')?;
        let (mut lat, mut lng, mut lon) = (None, None, None);
        self.blank();
        let mut more = self.peek()? != b'}';
        if !more {
            self.pos += 1;
        }
        while more {
            let key = self.key()?;
            let number = match self.value()? {
                Value::Num(n) => Some(n),
                Value::Str(_) | Value::Null | Value::Bool => None,
                Value::Object => return None,
            };
            match key {
                "lat" => lat = number,
                "lng" => lng = number,
                "lon" => lon = number,
                _ => {}
            }
            more = self.next_member()?;
        }
        Some(geo_point(lat, lng.or(lon)))
    }

    /// A point in its usual compact form, `{"lat":N,"lng":N}` with plain numbers, read as
    /// [`Cursor::point`] reads it without reading its keys as strings (they were most of the
    /// scanner's string reading); `None` leaves the cursor for the general reading.
    fn usual_point(&mut self) -> Option<Option<GeoPoint>> {
        let start = self.pos;
        let point = self.usual_coordinates();
        if point.is_none() {
            self.pos = start;
        }
        point.map(|(lat, lng)| geo_point(Some(lat), Some(lng)))
    }

    fn usual_coordinates(&mut self) -> Option<(f64, f64)> {
        let coordinate = |cursor: &mut Cursor<'_>, prefix: &[u8]| {
            let bytes = cursor.text.as_bytes();
            (bytes.get(cursor.pos..cursor.pos + prefix.len())? == prefix).then_some(())?;
            cursor.pos += prefix.len();
            match bytes.get(cursor.pos)? {
                b'-' | b'0'..=b'9' => cursor.number(),
                _ => None,
            }
        };
        let lat = coordinate(self, b"{\"lat\":")?;
        let lng = coordinate(self, b",\"lng\":")?;
        (self.peek()? == b'}').then(|| self.pos += 1)?;
        Some((lat, lng))
    }

    /// The value of field `FIELDS[index]`, into `event`.
    fn field(&mut self, index: usize, event: &mut RawRideEvent<'a>) -> Option<()> {
        match index {
            // Required strings: a string or null; serde refuses any other type.
            0..=3 | 5 => {
                let text = match self.value()? {
                    Value::Str(text) => Some(Cow::Borrowed(text)),
                    Value::Null => None,
                    _ => return None,
                };
                match index {
                    0 => event.event_type = text,
                    1 => event.ride_id = text,
                    2 => event.timestamp = text,
                    3 => event.city = text,
                    _ => event.user_id = text,
                }
            }
            4 => {
                event.estimated_fare = Lenient(match self.value()? {
                    Value::Num(fare) => Some(fare),
                    Value::Str(_) | Value::Null | Value::Bool => None,
                    Value::Object => return None,
                })
            }
            6 => {
                event.driver_id = Lenient(match self.value()? {
                    Value::Str(text) if !text.is_empty() => Some(Cow::Borrowed(text)),
                    Value::Str(_) | Value::Num(_) | Value::Null | Value::Bool => None,
                    Value::Object => return None,
                })
            }
            _ => {
                let point = match self.value()? {
                    Value::Object => self.point()?,
                    Value::Str(_) | Value::Num(_) | Value::Null | Value::Bool => None,
                };
                if index == 7 {
                    event.pickup = Lenient(point);
                } else {
                    event.dropoff = Lenient(point);
                }
            }
        }
        Some(())
    }
}

/// Where the first `"`, `\\` or control character of `bytes` is (the end of a plain string),
/// eight bytes at a time (a byte at a time was most of the scanner's time; serde_json's
/// string reading does the same).
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte's high bit is set in `hit` if it is zero after the xor (or below 0x20); a
        // false positive can only follow a true one, so the lowest set bit is exact.
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let hit = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word);
        let hit = hit & HIGHS;
        if hit != 0 {
            return Some(at + hit.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + rest)
}

/// Whether two field names (plain or quoted with their colon) are equal, compared as
/// machine words (they are 4 to 17 bytes; a `memcmp` call per candidate field was a tenth of
/// the scanner's time).
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let half = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let n = a.len();
    n == b.len()
        && match n {
            17..=24 => {
                word(a, 0) == word(b, 0)
                    && word(a, 8) == word(b, 8)
                    && word(a, n - 8) == word(b, n - 8)
            }
            8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
            4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
            _ => a == b,
        }
}

/// Which of [`FIELDS`] `key` is (`None`: not one of them), trying `hint` first (the next
/// field in the usual order).
fn field_index(key: &str, hint: usize) -> Option<usize> {
    if FIELDS
        .get(hint)
        .is_some_and(|field| same_name(field.as_bytes(), key.as_bytes()))
    {
        return Some(hint);
    }
    FIELDS
        .iter()
        .position(|field| same_name(field.as_bytes(), key.as_bytes()))
}

/// Reads `text` (the whole message, valid UTF-8) when it has the common shape; `None` sends
/// the caller to serde.
pub(crate) fn scan(text: &str) -> Option<RawRideEvent<'_>> {
    let mut cursor = Cursor { text, pos: 0 };
    let mut event = RawRideEvent::default();
    cursor.eat(b'{')?;
    cursor.blank();
    let mut seen = 0u16;
    let mut hint = 0;
    if cursor.peek()? == b'}' {
        cursor.pos += 1;
    } else {
        loop {
            let index = match cursor.usual_key(hint) {
                Some(index) => Some(index),
                None => field_index(cursor.key()?, hint),
            };
            match index {
                Some(index) => {
                    hint = index + 1;
                    // serde refuses a repeated field.
                    if seen & (1 << index) != 0 {
                        return None;
                    }
                    seen |= 1 << index;
                    cursor.field(index, &mut event)?;
                }
                // An unknown field: any scalar is skipped; a nested value goes to serde.
                None => match cursor.value()? {
                    Value::Object => return None,
                    Value::Str(_) | Value::Num(_) | Value::Null | Value::Bool => {}
                },
            }
            if !cursor.next_member()? {
                break;
            }
        }
    }
    cursor.blank();
    (cursor.pos == text.len()).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The short cut (and past 15 digits the general parser) gives the general parser's
        /// value, to the bit.
        #[test]
        fn numbers_read_as_the_general_parser_reads_them(
            mantissa in 0u64..1_000_000_000_000_000,
            scale in 0usize..=16,
            negative: bool,
        ) {
            let digits = format!("{mantissa:0>width$}", width = scale + 1);
            let (whole, fraction) = digits.split_at(digits.len() - scale);
            let sign = if negative { "-" } else { "" };
            let token = if scale == 0 {
                format!("{sign}{whole}")
            } else {
                format!("{sign}{whole}.{fraction}")
            };
            let general: f64 = token.parse().unwrap();
            let mut cursor = Cursor { text: &token, pos: 0 };
            let value = cursor.number();
            prop_assert_eq!(value.map(f64::to_bits), Some(general.to_bits()), "{}", token);
            prop_assert_eq!(cursor.pos, token.len());
        }

        /// The word-at-a-time search finds what a byte-at-a-time one finds.
        #[test]
        fn string_end_is_the_first_quote_backslash_or_control(
            bytes in proptest::collection::vec(
                prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 1 => 0x80u8..=0xff],
                0..40,
            ),
        ) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(string_end(&bytes), expected);
        }
    }

    /// Each quoted field is its field's name in quotes with a colon, and is found as that
    /// field only where the text has exactly it.
    #[test]
    fn usual_keys_are_the_fields_quoted() {
        for (i, field) in FIELDS.iter().enumerate() {
            assert_eq!(QUOTED_FIELDS[i], format!("\"{field}\":"));
            let text = format!("{}1}}", QUOTED_FIELDS[i]);
            let mut cursor = Cursor {
                text: &text,
                pos: 0,
            };
            assert_eq!(cursor.usual_key(i), Some(i));
            assert_eq!(cursor.pos, QUOTED_FIELDS[i].len());
            for other in [
                format!("\"{field}\" :1}}"),
                format!("\"{field}x\":1}}"),
                format!(" \"{field}\":1}}"),
            ] {
                let mut cursor = Cursor {
                    text: &other,
                    pos: 0,
                };
                assert_eq!(cursor.usual_key(i), None, "{other}");
                assert_eq!(cursor.pos, 0);
            }
            let next = (i + 1) % FIELDS.len();
            let mut cursor = Cursor {
                text: &text,
                pos: 0,
            };
            assert_eq!(cursor.usual_key(next), None);
        }
    }

    #[test]
    fn field_names_compare_as_bytes() {
        for (i, a) in FIELDS.iter().enumerate() {
            for hint in 0..=FIELDS.len() {
                assert_eq!(field_index(a, hint), Some(i));
            }
            for other in [
                "",
                "cit",
                "citx",
                "event_typo",
                "estimated_farE",
                "pickup_",
                "x",
            ] {
                assert_eq!(field_index(other, i), None, "{other}");
            }
        }
    }
}
