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
    /// The point, when both coordinates are there (see `event::geo_point`).
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

/// The fields a ride event may carry, in the bit order of [`ScannedEvent`]'s duplicate check.
const FIELDS: [&str; 9] = [
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
        let len = bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
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
        self.text[start..at].parse().ok()
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

/// Reads `text` (the whole message, valid UTF-8) when it has the common shape; `None` sends
/// the caller to serde.
pub(crate) fn scan(text: &str) -> Option<ScannedEvent<'_>> {
    let mut cursor = Cursor { text, pos: 0 };
    let mut event = ScannedEvent::default();
    cursor.eat(b'{')?;
    cursor.blank();
    let mut seen = 0u16;
    if cursor.peek()? == b'}' {
        cursor.pos += 1;
    } else {
        loop {
            let key = cursor.key()?;
            match FIELDS.iter().position(|field| *field == key) {
                Some(index) => {
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
