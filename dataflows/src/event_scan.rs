//! A fast path for reading the ride events the job meets every second: one pass over a flat
//! JSON object whose strings have no escapes, giving the same fields serde would.
//!
//! serde_json's derive reading `RawRideEvent` was ~a quarter of a file run's CPU (string
//! scanning, field dispatch, the lenient visitors). Most messages have one shape: a flat
//! object, unescaped strings, plain numbers and two `{lat, lng}` points. This scanner reads
//! exactly that shape and answers `None` for anything else (an escape, a control character,
//! an exponent, a duplicate field, a nested value where none is expected, a required field
//! of another type, trailing text, ...), and the caller then reads the message with serde as
//! before. So it only has to agree with serde on what it accepts, which the property test
//! in `event.rs` checks against serde itself; every error is still serde's.

/// The fields of a ride event as read, before validation (what serde's `RawRideEvent`
/// holds, borrowed): a required field is `None` when absent or null; an optional one is
/// `None` when absent or of another shape (SPEC §2's leniency).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ScannedEvent<'a> {
    pub event_type: Option<&'a str>,
    pub ride_id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub city: Option<&'a str>,
    pub estimated_fare: Option<f64>,
    pub user_id: Option<&'a str>,
    /// Only a non-empty string.
    pub driver_id: Option<&'a str>,
    /// Both coordinates as read (`lon` for `lng`), not yet checked against the globe.
    pub pickup: Option<RawPoint>,
    pub dropoff: Option<RawPoint>,
}

/// A `{lat, lng}` object's numeric members, as read.
#[derive(Debug, Default, PartialEq, Clone, Copy)]
pub(crate) struct RawPoint {
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub lon: Option<f64>,
}

impl RawPoint {
    /// Its coordinates, `lon` standing in for a missing `lng` (as serde's reading does);
    /// `event::geo_point` makes the point of them.
    pub fn lat_lng(self) -> (Option<f64>, Option<f64>) {
        (self.lat, self.lng.or(self.lon))
    }
}

/// One scalar JSON value (or the start of a nested one).
enum Value<'a> {
    Str(&'a str),
    Num(f64),
    /// `null`, `true` or `false`: none of them is kept by any field.
    Other,
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
    /// correctly rounded `f64`, as serde_json (`float_roundtrip`) reads it.
    fn number(&mut self) -> Option<f64> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut at = start + usize::from(bytes[start] == b'-');
        let digits = |from: usize| {
            bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        let whole = digits(at);
        if whole == 0 || (whole > 1 && bytes[at] == b'0') {
            return None;
        }
        at += whole;
        if bytes.get(at) == Some(&b'.') {
            let fraction = digits(at + 1);
            if fraction == 0 {
                return None;
            }
            at += 1 + fraction;
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) || at - start > 40 {
            return None;
        }
        self.pos = at;
        let token = &self.text[start..at];
        exact_decimal(token).or_else(|| token.parse().ok())
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
                let word = [&b"null"[..], b"true", b"false"]
                    .into_iter()
                    .find(|word| rest.starts_with(word))?;
                self.pos += word.len();
                Value::Other
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

    /// A point object (at its `{`) with scalar members; other keys are ignored, a repeated
    /// coordinate keeps its last value (as serde's map visitor does).
    fn point(&mut self) -> Option<RawPoint> {
        self.eat(b'{')?;
        let mut point = RawPoint::default();
        self.blank();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(point);
        }
        loop {
            let key = self.key()?;
            let number = match self.value()? {
                Value::Num(n) => Some(n),
                Value::Str(_) | Value::Other => None,
                Value::Object => return None,
            };
            match key {
                "lat" => point.lat = number,
                "lng" => point.lng = number,
                "lon" => point.lon = number,
                _ => {}
            }
            if !self.next_member()? {
                return Some(point);
            }
        }
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

/// A plain decimal (`-?digits[.digits]`) of at most 15 significant digits, exactly: its
/// digits as an integer (below 2^53, so exact as `f64`) divided by a power of ten (exact up
/// to 10^22) is one correctly rounded operation, the same value as the general parser's,
/// at a fraction of its cost. `None` for anything longer.
fn exact_decimal(token: &str) -> Option<f64> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match token.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let (mut mantissa, mut scale, mut count, mut point) = (0u64, 0usize, 0usize, false);
    for &byte in digits {
        if byte == b'.' {
            point = true;
            continue;
        }
        if count == 15 {
            return None;
        }
        mantissa = mantissa * 10 + u64::from(byte - b'0');
        count += 1;
        scale += usize::from(point);
    }
    let value = mantissa as f64 / POWERS[scale];
    Some(if negative { -value } else { value })
}

/// Whether two field names are equal, compared as machine words (names are 4 to 16 bytes;
/// a `memcmp` call per candidate field was a tenth of the scanner's time).
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let half = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let n = a.len();
    n == b.len()
        && match n {
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
pub(crate) fn scan(text: &str) -> Option<ScannedEvent<'_>> {
    let mut cursor = Cursor { text, pos: 0 };
    let mut event = ScannedEvent::default();
    cursor.eat(b'{')?;
    cursor.blank();
    let mut seen = 0u16;
    let mut hint = 0;
    if cursor.peek()? == b'}' {
        cursor.pos += 1;
    } else {
        loop {
            let key = cursor.key()?;
            match field_index(key, hint) {
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
                    Value::Str(_) | Value::Num(_) | Value::Other => {}
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

impl<'a> Cursor<'a> {
    /// The value of field `FIELDS[index]`, into `event`.
    fn field(&mut self, index: usize, event: &mut ScannedEvent<'a>) -> Option<()> {
        match index {
            // Required strings: a string or null; serde refuses any other type.
            0..=3 | 5 => {
                let text = match self.value()? {
                    Value::Str(text) => Some(text),
                    Value::Other if self.text[..self.pos].ends_with("null") => None,
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
                event.estimated_fare = match self.value()? {
                    Value::Num(fare) => Some(fare),
                    Value::Str(_) | Value::Other => None,
                    Value::Object => return None,
                }
            }
            6 => {
                event.driver_id = match self.value()? {
                    Value::Str(text) if !text.is_empty() => Some(text),
                    Value::Str(_) | Value::Num(_) | Value::Other => None,
                    Value::Object => return None,
                }
            }
            _ => {
                let point = match self.value()? {
                    Value::Object => Some(self.point()?),
                    Value::Str(_) | Value::Num(_) | Value::Other => None,
                };
                if index == 7 {
                    event.pickup = point;
                } else {
                    event.dropoff = point;
                }
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The short cut gives the general parser's value, to the bit.
        #[test]
        fn exact_decimals_read_as_the_general_parser_reads_them(
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
            match exact_decimal(&token) {
                Some(value) => prop_assert_eq!(value.to_bits(), general.to_bits(), "{}", token),
                None => prop_assert!(digits.len() > 15, "{}", token),
            }
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
