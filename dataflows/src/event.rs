//! The event contract of SPEC §2: ride events and driver locations as they travel on Kafka.
//!
//! Parsing is strict where the contract is strict (required fields, known event types,
//! parseable and plausible timestamps, bounded strings and fares) and lenient where it
//! promises leniency (three timestamp forms, any fractional precision, unknown extra fields,
//! `lon` for `lng`, and optional fields of another shape stored as absent: only the required
//! fields decide validity). Every rejection is an [`EventError`] that names the field and
//! what was wrong with it, because that text ends up in the dead-letter topic's headers
//! where an operator has to act on it, and carries a short [`EventError::reason`] code that
//! dead letters are counted by.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::event_scan;

/// The longest `ride_id`, `city`, `user_id` or `driver_id` accepted, in bytes (SPEC §2).
pub const MAX_TEXT_BYTES: usize = 256;
/// The largest `estimated_fare` accepted (SPEC §2); fares are never negative.
pub const MAX_FARE: f64 = 1_000_000.0;
/// The earliest plausible event time: 2000-01-01T00:00:00Z (SPEC §2).
pub const EARLIEST_EVENT_MS: i64 = 946_684_800_000;
/// The latest plausible event time: 2100-01-01T00:00:00Z (SPEC §2).
pub const LATEST_EVENT_MS: i64 = 4_102_444_800_000;

/// What happened to a ride. The five kinds of SPEC §2, spelled in JSON as in the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A rider asked for a ride.
    Requested,
    /// A driver took the ride.
    Accepted,
    /// The rider was picked up.
    Started,
    /// The rider was dropped off.
    Completed,
    /// The ride was called off before completion.
    Cancelled,
}

impl EventType {
    /// Every event type, in lifecycle order.
    pub const ALL: [EventType; 5] = [
        EventType::Requested,
        EventType::Accepted,
        EventType::Started,
        EventType::Completed,
        EventType::Cancelled,
    ];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Requested => "requested",
            EventType::Accepted => "accepted",
            EventType::Started => "started",
            EventType::Completed => "completed",
            EventType::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instant in UTC with millisecond precision, as milliseconds since the Unix epoch.
///
/// A plain integer because the window operator compares and buckets millions of them; it
/// serializes as ISO-8601 with a `Z` and exactly three fractional digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses every form SPEC §2 accepts: a trailing `Z`, an explicit offset (`+00:00`; other
    /// offsets are converted to UTC), or no offset at all (meaning UTC), with `T` or a space
    /// between date and time and any number of fractional digits. Sub-millisecond digits
    /// are truncated.
    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        // Nothing to trim when both ends are visible ASCII (the usual case; `trim` looks
        // for Unicode whitespace).
        let text = match (text.as_bytes().first(), text.as_bytes().last()) {
            (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => {
                text
            }
            _ => text.trim(),
        };
        if text.is_empty() {
            return Err(TimestampError("it is empty".into()));
        }
        if !iso_shape(text.as_bytes()) {
            return Err(TimestampError(format!(
                "`{text}` is not ISO-8601 (expected e.g. 2026-11-23T10:00:01.250Z)"
            )));
        }
        if let Some(millis) = utc_millis(text.as_bytes()) {
            return Ok(Timestamp(millis));
        }
        Timestamp::parse_with_chrono(text)
    }

    /// The general reading of a string of [`iso_shape`], by chrono.
    fn parse_with_chrono(text: &str) -> Result<Timestamp, TimestampError> {
        if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
            return Ok(Timestamp(dt.timestamp_millis()));
        }
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(Timestamp(naive.and_utc().timestamp_millis()));
            }
        }
        Err(TimestampError(format!(
            "`{text}` is not ISO-8601 (expected e.g. 2026-11-23T10:00:01.250Z)"
        )))
    }

    /// The instant as a chrono value.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `text` has the exact shape of the forms [`Timestamp::parse`] accepts:
/// `YYYY-MM-DD`, `T` (or `t`, or a space), `HH:MM:SS`, optional `.` and fraction digits,
/// optional `Z` or `±HH:MM`. chrono alone is more lenient (one-digit fields, run-together
/// fields such as `2093-05-156:34:00`), which would read a garbled time as a real one.
fn iso_shape(text: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| text[range].iter().all(u8::is_ascii_digit);
    if text.len() < 19
        || !(digits(0..4) && digits(5..7) && digits(8..10))
        || !(digits(11..13) && digits(14..16) && digits(17..19))
        || text[4] != b'-'
        || text[7] != b'-'
        || !matches!(text[10], b'T' | b't' | b' ')
        || text[13] != b':'
        || text[16] != b':'
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let count = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if count == 0 {
            return false;
        }
        rest = &fraction[count..];
    }
    match rest {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// The common form, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, read without chrono (whose RFC 3339
/// parser was most of the time spent on a timestamp); `None` for any other form, or a field
/// out of range (chrono then gives the verdict). Sub-millisecond digits are truncated.
fn utc_millis(text: &[u8]) -> Option<i64> {
    if text.len() < 20 || text[10] != b'T' || text[text.len() - 1] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        text[range].iter().try_fold(0i64, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || !(1..=month_days[month as usize - 1]).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let fraction = &text[19..text.len() - 1];
    let millis = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let mut millis = 0;
            for place in 0..3 {
                let digit = digits.get(place).copied().unwrap_or(b'0');
                millis = millis * 10 + i64::from(digit.checked_sub(b'0').filter(|d| *d < 10)?);
            }
            millis
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Why a timestamp string was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct TimestampError(String);

/// A point on the map.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lng: f64,
}

/// One message of the `ride-events` topic (SPEC §2), validated.
///
/// Serialized as SPEC §2's JSON (absent optional fields left out) for people and Kafka, and
/// with every field in order for timely's exchange between processes (bincode, which is not
/// self-describing, cannot skip fields): see the `Serialize` impl.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RideEvent {
    /// What happened.
    pub event_type: EventType,
    /// The ride; also the Kafka key, so a ride's events stay ordered on one partition.
    pub ride_id: CompactString,
    /// Event time (UTC, millisecond precision): what the windows are computed on.
    pub timestamp: Timestamp,
    /// The city the ride is in; metrics are per city.
    pub city: CompactString,
    /// The quoted fare; `None` when null or absent (for example on `accepted`).
    #[serde(default)]
    pub estimated_fare: Option<f64>,
    /// The rider.
    pub user_id: CompactString,
    /// The driver, once one is assigned.
    #[serde(default)]
    pub driver_id: Option<CompactString>,
    /// Where the rider is picked up.
    #[serde(default)]
    pub pickup: Option<GeoPoint>,
    /// Where the rider goes.
    #[serde(default)]
    pub dropoff: Option<GeoPoint>,
}

impl Serialize for RideEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // JSON leaves absent optional fields out; a binary format keeps every position.
        let skip_absent = serializer.is_human_readable();
        let mut out = serializer.serialize_struct("RideEvent", 9)?;
        out.serialize_field("event_type", &self.event_type)?;
        out.serialize_field("ride_id", &self.ride_id)?;
        out.serialize_field("timestamp", &self.timestamp)?;
        out.serialize_field("city", &self.city)?;
        out.serialize_field("estimated_fare", &self.estimated_fare)?;
        out.serialize_field("user_id", &self.user_id)?;
        if skip_absent && self.driver_id.is_none() {
            out.skip_field("driver_id")?;
        } else {
            out.serialize_field("driver_id", &self.driver_id)?;
        }
        for (name, point) in [("pickup", &self.pickup), ("dropoff", &self.dropoff)] {
            if skip_absent && point.is_none() {
                out.skip_field(name)?;
            } else {
                out.serialize_field(name, point)?;
            }
        }
        out.end()
    }
}

/// Why a message is a dead letter. The text names the field and the problem.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EventError {
    /// The bytes are not a JSON object (or not UTF-8).
    #[error("not a valid JSON object: {0}")]
    NotJson(String),
    /// A required field has the wrong JSON type (for example a city given as a number).
    #[error("field `{field}`: {reason}")]
    WrongType {
        /// The field's path in the JSON object.
        field: String,
        /// serde's description of the mismatch.
        reason: String,
    },
    /// A required field is absent or null.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// A required string field is empty.
    #[error("field `{0}` is empty")]
    Empty(&'static str),
    /// A string field is longer than [`MAX_TEXT_BYTES`].
    #[error("field `{field}` is {bytes} bytes long (at most {MAX_TEXT_BYTES} allowed)")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        bytes: usize,
    },
    /// `event_type` is not one of the known values.
    #[error("field `event_type`: unknown value `{0}` (expected requested, accepted, started, completed or cancelled)")]
    UnknownEventType(String),
    /// A location's `status` is not one of the known values.
    #[error("field `status`: unknown value `{0}` (expected available, on_trip or offline)")]
    UnknownStatus(String),
    /// `timestamp` could not be read.
    #[error("field `timestamp`: {0}")]
    BadTimestamp(TimestampError),
    /// A number outside the range SPEC §2 allows (a fare, a coordinate).
    #[error("field `{field}`: {reason}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What was wrong, with the value.
        reason: String,
    },
    /// `timestamp` is before 2000-01-01 or after 2100-01-01.
    #[error(
        "field `timestamp`: {0} is not a plausible event time (allowed: 2000-01-01 to 2100-01-01)"
    )]
    ImplausibleTime(Timestamp),
    /// `timestamp` is further ahead of the Kafka message's own timestamp than `max_future`.
    #[error("field `timestamp`: {event} is {ahead_ms} ms ahead of its Kafka message's timestamp {message} (at most {max_future_ms} ms allowed)")]
    FutureTime {
        /// The event time.
        event: Timestamp,
        /// The message's CreateTime.
        message: Timestamp,
        /// How far ahead the event time is.
        ahead_ms: i64,
        /// The allowed lead (`max_future`).
        max_future_ms: i64,
    },
}

impl EventError {
    /// A short, stable code for the kind of rejection: dead letters are counted by it and it
    /// travels in the `error_reason` header and the `dead_letters.reason` column.
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::NotJson(_) => "not_json",
            EventError::WrongType { .. } => "wrong_type",
            EventError::Missing(_) => "missing_field",
            EventError::Empty(_) => "empty_field",
            EventError::TooLong { .. } => "too_long",
            EventError::UnknownEventType(_) => "unknown_event_type",
            EventError::UnknownStatus(_) => "unknown_status",
            EventError::BadTimestamp(_) => "bad_timestamp",
            EventError::OutOfRange { .. } => "out_of_range",
            EventError::ImplausibleTime(_) => "implausible_time",
            EventError::FutureTime { .. } => "future_time",
        }
    }

    /// Every reason code, for counters that list them all.
    pub const REASONS: [&'static str; 11] = [
        "not_json",
        "wrong_type",
        "missing_field",
        "empty_field",
        "too_long",
        "unknown_event_type",
        "unknown_status",
        "bad_timestamp",
        "out_of_range",
        "implausible_time",
        "future_time",
    ];
}

/// SPEC §2's plausibility rule against the Kafka message's own timestamp (CreateTime): an
/// event time more than `max_future_ms` ahead of it is a dead letter, so one bad clock never
/// moves a watermark. Without a message timestamp (files, in-memory tests) only the fixed
/// 2000–2100 range, checked at parse time, applies.
pub fn check_not_ahead(
    event: Timestamp,
    message_ms: Option<i64>,
    max_future_ms: i64,
) -> Result<(), EventError> {
    match message_ms {
        Some(message) if event.0.saturating_sub(message) > max_future_ms => {
            Err(EventError::FutureTime {
                event,
                message: Timestamp(message),
                ahead_ms: event.0.saturating_sub(message),
                max_future_ms,
            })
        }
        _ => Ok(()),
    }
}

/// An optional field of any shape: only `Some` when it has the shape the contract names.
/// SPEC §2: an optional field of another shape is stored as null, never a reason to
/// dead-letter the event.
#[derive(Debug, PartialEq)]
pub(crate) struct Lenient<T>(pub(crate) Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

/// Accepts any JSON value; keeps it only when `keep` says what it is.
macro_rules! lenient_visitor {
    ($target:ty, $expecting:literal, { $($body:tt)* }) => {
        impl<'de> Deserialize<'de> for Lenient<$target> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Lenient<$target>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                        Ok(Lenient(None))
                    }
                    fn visit_unit<E>(self) -> Result<Self::Value, E> {
                        Ok(Lenient(None))
                    }
                    fn visit_none<E>(self) -> Result<Self::Value, E> {
                        Ok(Lenient(None))
                    }
                    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                        d.deserialize_any(V)
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                        Ok(Lenient(None))
                    }
                    $($body)*
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

// A number, kept as `f64` (integers too); anything else is `None`.
lenient_visitor!(f64, "any JSON value", {
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Lenient(Some(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Lenient(Some(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Lenient(Some(v)))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Lenient(None))
    }
});

/// A non-empty string (borrowed when the JSON has no escapes); anything else is `None`.
impl<'de: 'a, 'a> Deserialize<'de> for Lenient<Cow<'a, str>> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Lenient<Cow<'a, str>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient((!v.is_empty()).then_some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient((!v.is_empty()).then(|| Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V(std::marker::PhantomData))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

// A `{lat, lng}` object (`lon` accepted for `lng`) with finite coordinates on the globe;
// anything else, including an object missing a coordinate, is `None`.
lenient_visitor!(GeoPoint, "any JSON value", {
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut lat, mut lng, mut lon) = (None, None, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value = map.next_value::<Lenient<f64>>()?.0;
            match key.as_ref() {
                "lat" => lat = value,
                "lng" => lng = value,
                "lon" => lon = value,
                _ => {}
            }
        }
        Ok(Lenient(geo_point(lat, lng.or(lon))))
    }
});

/// A point when both coordinates are finite and on the globe.
pub(crate) fn geo_point(lat: Option<f64>, lng: Option<f64>) -> Option<GeoPoint> {
    let (lat, lng) = (lat?, lng?);
    (coordinate_ok(lat, 90.0) && coordinate_ok(lng, 180.0)).then_some(GeoPoint { lat, lng })
}

fn coordinate_ok(value: f64, limit: f64) -> bool {
    value.is_finite() && (-limit..=limit).contains(&value)
}

/// The wire shape before validation: everything optional so that each problem can be named.
/// Read by serde, or by `event_scan` for the common shape.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(crate) struct RawRideEvent<'a> {
    #[serde(borrow, default)]
    pub(crate) event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) ride_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) city: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) estimated_fare: Lenient<f64>,
    #[serde(borrow, default)]
    pub(crate) user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) driver_id: Lenient<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) pickup: Lenient<GeoPoint>,
    #[serde(default)]
    pub(crate) dropoff: Lenient<GeoPoint>,
}

/// serde_json's message without its "at line 1 column 193" suffix: the field is named anyway.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A required string: present, not blank, at most [`MAX_TEXT_BYTES`].
fn required<T: for<'t> From<&'t str>>(
    value: Option<Cow<'_, str>>,
    field: &'static str,
) -> Result<T, EventError> {
    match value {
        None => Err(EventError::Missing(field)),
        // A visible ASCII first character is not blank: no Unicode trim needed to know.
        Some(text)
            if !text.as_bytes().first().is_some_and(u8::is_ascii_graphic)
                && text.trim().is_empty() =>
        {
            Err(EventError::Empty(field))
        }
        Some(text) if text.len() > MAX_TEXT_BYTES => Err(EventError::TooLong {
            field,
            bytes: text.len(),
        }),
        Some(text) => Ok(T::from(text.as_ref())),
    }
}

/// A required timestamp: present, parseable and within 2000–2100.
fn event_time(value: Option<Cow<'_, str>>) -> Result<Timestamp, EventError> {
    let text = value.ok_or(EventError::Missing("timestamp"))?;
    let timestamp = Timestamp::parse(&text).map_err(EventError::BadTimestamp)?;
    if !(EARLIEST_EVENT_MS..=LATEST_EVENT_MS).contains(&timestamp.0) {
        return Err(EventError::ImplausibleTime(timestamp));
    }
    Ok(timestamp)
}

/// Reads `bytes` as one JSON object of shape `T`, naming the field when a type is wrong.
fn read_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, EventError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(EventError::NotJson("expected a JSON object `{...}`".into())),
        None => return Err(EventError::NotJson("the message is empty".into())),
    }
    // Invalid UTF-8 anywhere (even in a field nobody reads) is not JSON.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| EventError::NotJson(format!("the message is not UTF-8: {e}")))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // The plain deserializer first: tracking the path costs ~8 % of a file run, and only a
    // line that fails needs it, so that one is read again with the path for its error.
    let raw: T = match T::deserialize(&mut deserializer) {
        Ok(raw) => raw,
        Err(first) => {
            let mut again = serde_json::Deserializer::from_str(text);
            let Err(error) = serde_path_to_error::deserialize::<_, T>(&mut again) else {
                // Cannot happen (the same text, the same type); the plain error then.
                return Err(EventError::NotJson(first.to_string()));
            };
            let path = error.path().to_string();
            let inner = error.into_inner();
            return Err(if path == "." || inner.is_syntax() || inner.is_eof() {
                EventError::NotJson(inner.to_string())
            } else {
                EventError::WrongType {
                    field: path,
                    reason: without_position(&inner),
                }
            });
        }
    };
    deserializer
        .end()
        .map_err(|e| EventError::NotJson(e.to_string()))?;
    Ok(raw)
}

impl RideEvent {
    /// Parses and validates one `ride-events` message value.
    pub fn parse(bytes: &[u8]) -> Result<RideEvent, EventError> {
        // The common shape in one pass (see `event_scan`); serde for anything else.
        let scanned = simdutf8::basic::from_utf8(bytes)
            .ok()
            .and_then(event_scan::scan);
        let raw = match scanned {
            Some(raw) => raw,
            None => read_object(bytes)?,
        };
        RideEvent::validate(raw)
    }

    /// The contract's checks on the fields as read.
    fn validate(raw: RawRideEvent<'_>) -> Result<RideEvent, EventError> {
        let event_type = match raw.event_type {
            None => return Err(EventError::Missing("event_type")),
            Some(text) => EventType::parse(&text)
                .ok_or_else(|| EventError::UnknownEventType(text.into_owned()))?,
        };
        let ride_id = required(raw.ride_id, "ride_id")?;
        let timestamp = event_time(raw.timestamp)?;
        let city = required(raw.city, "city")?;
        let user_id = required(raw.user_id, "user_id")?;
        let estimated_fare = match raw.estimated_fare.0 {
            Some(fare) if !(fare.is_finite() && (0.0..=MAX_FARE).contains(&fare)) => {
                return Err(EventError::OutOfRange {
                    field: "estimated_fare",
                    reason: format!("{fare} is not between 0 and {MAX_FARE}"),
                })
            }
            fare => fare,
        };
        // An optional driver of another shape (or too long to be an id) is stored as null.
        let driver_id = raw
            .driver_id
            .0
            .filter(|d| d.len() <= MAX_TEXT_BYTES)
            .map(|d| CompactString::from(d.as_ref()));
        Ok(RideEvent {
            event_type,
            ride_id,
            timestamp,
            city,
            estimated_fare,
            user_id,
            driver_id,
            pickup: raw.pickup.0,
            dropoff: raw.dropoff.0,
        })
    }

    /// The message value as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a RideEvent always serializes")
    }
}

/// What a driver is doing, as reported with each location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverStatus {
    /// Free to take a ride.
    Available,
    /// Carrying a rider.
    OnTrip,
    /// Not working.
    Offline,
}

/// One message of the `driver-locations` topic (SPEC §2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriverLocation {
    /// The driver; also the Kafka key.
    pub driver_id: String,
    /// When the position was taken.
    pub timestamp: Timestamp,
    /// The city the driver works in.
    pub city: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lng: f64,
    /// What the driver is doing.
    pub status: DriverStatus,
}

/// The wire shape of a location before validation.
#[derive(Deserialize)]
struct RawLocation<'a> {
    #[serde(borrow, default)]
    driver_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    city: Option<Cow<'a, str>>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lng: Option<f64>,
    /// Read only when `lng` is absent; of another shape it is as if absent.
    #[serde(default)]
    lon: Lenient<f64>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
}

impl DriverLocation {
    /// Parses and validates one `driver-locations` message value: the same rules as ride
    /// events (required strings bounded, plausible time), a position on the globe (`lon`
    /// accepted for `lng`) and a known status.
    pub fn parse(bytes: &[u8]) -> Result<DriverLocation, EventError> {
        let raw: RawLocation = read_object(bytes)?;
        let driver_id = required(raw.driver_id, "driver_id")?;
        let timestamp = event_time(raw.timestamp)?;
        let city = required(raw.city, "city")?;
        let lat = raw.lat.ok_or(EventError::Missing("lat"))?;
        let lng = raw.lng.or(raw.lon.0).ok_or(EventError::Missing("lng"))?;
        for (field, value, limit) in [("lat", lat, 90.0), ("lng", lng, 180.0)] {
            if !coordinate_ok(value, limit) {
                return Err(EventError::OutOfRange {
                    field,
                    reason: format!("{value} is not between -{limit} and {limit}"),
                });
            }
        }
        let status = match raw.status.as_deref() {
            None => return Err(EventError::Missing("status")),
            Some("available") => DriverStatus::Available,
            Some("on_trip") => DriverStatus::OnTrip,
            Some("offline") => DriverStatus::Offline,
            Some(other) => return Err(EventError::UnknownStatus(other.to_string())),
        };
        Ok(DriverLocation {
            driver_id,
            timestamp,
            city,
            lat,
            lng,
            status,
        })
    }

    /// The message value as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a DriverLocation always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"event_type": "requested", "ride_id": "ride-abc-123", "timestamp": "2026-11-23T10:00:01.250Z",
 "city": "bratislava", "estimated_fare": 8.50, "user_id": "user-456",
 "pickup": {"lat": 48.1486, "lng": 17.1077}, "dropoff": {"lat": 48.1586, "lng": 17.1177}}"#;

    fn with(field: &str, value: &str) -> String {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(VALID).unwrap();
        if value == "<absent>" {
            object.remove(field);
        } else {
            object.insert(field.into(), serde_json::from_str(value).unwrap());
        }
        serde_json::Value::Object(object).to_string()
    }

    #[test]
    fn events_cross_processes_through_timelys_binary_encoding() {
        let full = RideEvent::parse(VALID.as_bytes()).unwrap();
        let mut sparse = full.clone();
        sparse.estimated_fare = None;
        sparse.pickup = None;
        sparse.dropoff = None;
        let mut driven = sparse.clone();
        driven.driver_id = Some("driver-9".into());
        for event in [full, sparse, driven] {
            let bytes = bincode::serialize(&event).unwrap();
            assert_eq!(bincode::deserialize::<RideEvent>(&bytes).unwrap(), event);
            // JSON still leaves absent fields out.
            let json = event.to_json();
            assert_eq!(json.contains("pickup"), event.pickup.is_some(), "{json}");
            assert_eq!(
                json.contains("driver_id"),
                event.driver_id.is_some(),
                "{json}"
            );
            assert_eq!(RideEvent::parse(json.as_bytes()).unwrap(), event);
        }
    }

    /// 2026-11-23T10:00:01.250Z in milliseconds, computed independently of chrono.
    const T: i64 = (20_780 * 86_400 + 10 * 3600 + 1) * 1000 + 250;

    #[test]
    fn parses_the_spec_example() {
        let event = RideEvent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(event.event_type, EventType::Requested);
        assert_eq!(event.ride_id, "ride-abc-123");
        assert_eq!(event.timestamp, Timestamp(T));
        assert_eq!(event.city, "bratislava");
        assert_eq!(event.estimated_fare, Some(8.5));
        assert_eq!(event.user_id, "user-456");
        assert_eq!(event.driver_id, None);
        assert_eq!(
            event.pickup,
            Some(GeoPoint {
                lat: 48.1486,
                lng: 17.1077
            })
        );
    }

    #[test]
    fn accepts_every_timestamp_form() {
        for (text, millis) in [
            ("2026-11-23T10:00:01.250Z", T),
            ("2026-11-23T10:00:01.250+00:00", T),
            ("2026-11-23T10:00:01.250000", T),
            ("2026-11-23T10:00:01.25", T),
            ("2026-11-23T10:00:01.250999999Z", T),
            ("2026-11-23T10:00:01Z", T - 250),
            ("2026-11-23T10:00:01", T - 250),
            ("2026-11-23 10:00:01.250", T),
            ("2026-11-23T11:00:01.250+01:00", T),
            ("2026-11-23t10:00:01.250z", T),
        ] {
            assert_eq!(Timestamp::parse(text), Ok(Timestamp(millis)), "{text}");
            let event = RideEvent::parse(with("timestamp", &format!("\"{text}\"")).as_bytes());
            assert_eq!(event.unwrap().timestamp, Timestamp(millis), "{text}");
        }
    }

    #[test]
    fn rejects_unparseable_timestamps() {
        for text in [
            "",
            "yesterday",
            "2026-11-23",
            "2026-13-23T10:00:00Z",
            "2026-11-23T25:00:00",
            "1700000000",
            "2093-05-156:34:00.2",
            "2026-1-3T0:0:0",
            "2026-11-23T10:00:01.",
            "2026-11-23T10:00:01+0100",
            "+12026-11-23T10:00:01Z",
        ] {
            let error =
                RideEvent::parse(with("timestamp", &format!("\"{text}\"")).as_bytes()).unwrap_err();
            assert!(
                matches!(error, EventError::BadTimestamp(_)),
                "{text}: {error}"
            );
            assert!(
                error.to_string().starts_with("field `timestamp`"),
                "{error}"
            );
        }
        let error = RideEvent::parse(with("timestamp", "1700000000").as_bytes()).unwrap_err();
        assert_eq!(
            error,
            EventError::WrongType {
                field: "timestamp".into(),
                reason: "invalid type: integer `1700000000`, expected a string".into()
            }
        );
    }

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(Timestamp(T).to_string(), "2026-11-23T10:00:01.250Z");
        assert_eq!(Timestamp(T - 250).to_string(), "2026-11-23T10:00:01.000Z");
    }

    #[test]
    fn fare_may_be_null_or_absent_and_extra_fields_are_ignored() {
        let event = RideEvent::parse(with("estimated_fare", "null").as_bytes()).unwrap();
        assert_eq!(event.estimated_fare, None);
        let event = RideEvent::parse(with("estimated_fare", "<absent>").as_bytes()).unwrap();
        assert_eq!(event.estimated_fare, None);
        let event = RideEvent::parse(with("surge_multiplier", "{\"x\": [1, 2]}").as_bytes());
        assert_eq!(event.unwrap().ride_id, "ride-abc-123");
        let event = RideEvent::parse(with("driver_id", "\"driver-7\"").as_bytes()).unwrap();
        assert_eq!(event.driver_id.as_deref(), Some("driver-7"));
        let event = RideEvent::parse(with("pickup", "<absent>").as_bytes()).unwrap();
        assert_eq!(event.pickup, None);
    }

    #[test]
    fn rejects_missing_null_and_empty_required_fields() {
        for field in ["event_type", "ride_id", "timestamp", "city", "user_id"] {
            for value in ["<absent>", "null"] {
                let error = RideEvent::parse(with(field, value).as_bytes()).unwrap_err();
                assert_eq!(error, EventError::Missing(field), "{field}={value}");
            }
        }
        for field in ["ride_id", "city", "user_id"] {
            let error = RideEvent::parse(with(field, "\"  \"").as_bytes()).unwrap_err();
            assert_eq!(error, EventError::Empty(field));
            assert_eq!(error.to_string(), format!("field `{field}` is empty"));
        }
    }

    #[test]
    fn rejects_unknown_event_types() {
        let error = RideEvent::parse(with("event_type", "\"teleported\"").as_bytes()).unwrap_err();
        assert_eq!(error, EventError::UnknownEventType("teleported".into()));
        let error = RideEvent::parse(with("event_type", "\"Requested\"").as_bytes()).unwrap_err();
        assert_eq!(error, EventError::UnknownEventType("Requested".into()));
    }

    #[test]
    fn rejects_wrong_types_of_required_fields_naming_the_field() {
        let error = RideEvent::parse(with("city", "42").as_bytes()).unwrap_err();
        assert!(
            error.to_string().starts_with("field `city`: invalid type"),
            "{error}"
        );
        assert_eq!(error.reason(), "wrong_type");
    }

    #[test]
    fn optional_fields_of_another_shape_are_stored_as_null() {
        // SPEC §2: only the required fields decide validity.
        for (field, value) in [
            ("estimated_fare", "\"8.50\""),
            ("estimated_fare", "[8.5]"),
            ("estimated_fare", "{\"amount\": 8.5}"),
            ("estimated_fare", "true"),
            ("pickup", "{\"lat\": 1}"),
            ("pickup", "\"48.1,17.1\""),
            ("pickup", "[48.1, 17.1]"),
            ("pickup", "{\"lat\": \"48.1\", \"lng\": 17.1}"),
            ("pickup", "{\"lat\": 148.1, \"lng\": 17.1}"),
            ("dropoff", "{\"latitude\": 48.1, \"longitude\": 17.1}"),
            ("dropoff", "42"),
            ("driver_id", "42"),
            ("driver_id", "{\"id\": 7}"),
            ("driver_id", "\"\""),
        ] {
            let event = RideEvent::parse(with(field, value).as_bytes())
                .unwrap_or_else(|e| panic!("{field}={value}: {e}"));
            let stored = match field {
                "estimated_fare" => event.estimated_fare.is_some(),
                "pickup" => event.pickup.is_some(),
                "dropoff" => event.dropoff.is_some(),
                _ => event.driver_id.is_some(),
            };
            assert!(!stored, "{field}={value} should be stored as null");
        }
    }

    #[test]
    fn lon_is_accepted_for_lng() {
        let text = VALID.replace("\"lng\"", "\"lon\"");
        let event = RideEvent::parse(text.as_bytes()).unwrap();
        assert_eq!(event, RideEvent::parse(VALID.as_bytes()).unwrap());
        let integral = with("pickup", "{\"lat\": 48, \"lon\": 17}");
        let event = RideEvent::parse(integral.as_bytes()).unwrap();
        assert_eq!(
            event.pickup,
            Some(GeoPoint {
                lat: 48.0,
                lng: 17.0
            })
        );
    }

    #[test]
    fn enforces_the_bounds_of_spec_2() {
        let long = format!("\"{}\"", "x".repeat(MAX_TEXT_BYTES + 1));
        let exact = format!("\"{}\"", "é".repeat(MAX_TEXT_BYTES / 2));
        for field in ["ride_id", "city", "user_id"] {
            let error = RideEvent::parse(with(field, &long).as_bytes()).unwrap_err();
            assert_eq!(
                error,
                EventError::TooLong {
                    field,
                    bytes: MAX_TEXT_BYTES + 1
                }
            );
            assert_eq!(error.reason(), "too_long");
            assert!(RideEvent::parse(with(field, &exact).as_bytes()).is_ok());
        }
        for fare in ["-0.01", "1000000.01", "1e30", "-1e30"] {
            let error = RideEvent::parse(with("estimated_fare", fare).as_bytes()).unwrap_err();
            assert_eq!(error.reason(), "out_of_range", "{fare}");
            assert!(error.to_string().starts_with("field `estimated_fare`"));
        }
        for fare in ["0", "1000000", "0.5"] {
            assert!(RideEvent::parse(with("estimated_fare", fare).as_bytes()).is_ok());
        }
        for text in [
            "1999-12-31T23:59:59.999Z",
            "2100-01-01T00:00:00.001Z",
            "0001-01-01T00:00:00",
        ] {
            let error =
                RideEvent::parse(with("timestamp", &format!("\"{text}\"")).as_bytes()).unwrap_err();
            assert_eq!(error.reason(), "implausible_time", "{text}: {error}");
        }
        for text in ["2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"] {
            assert!(RideEvent::parse(with("timestamp", &format!("\"{text}\"")).as_bytes()).is_ok());
        }
    }

    #[test]
    fn an_event_far_ahead_of_its_message_is_refused() {
        let hour = 3_600_000;
        assert_eq!(check_not_ahead(Timestamp(T), Some(T), hour), Ok(()));
        assert_eq!(check_not_ahead(Timestamp(T + hour), Some(T), hour), Ok(()));
        assert_eq!(
            check_not_ahead(Timestamp(T - 10 * hour), Some(T), hour),
            Ok(())
        );
        assert_eq!(
            check_not_ahead(Timestamp(T + 100 * hour), None, hour),
            Ok(())
        );
        let error = check_not_ahead(Timestamp(T + hour + 1), Some(T), hour).unwrap_err();
        assert_eq!(error.reason(), "future_time");
        assert!(
            error.to_string().contains("ahead of its Kafka message"),
            "{error}"
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let errors = [
            EventError::NotJson(String::new()),
            EventError::WrongType {
                field: String::new(),
                reason: String::new(),
            },
            EventError::Missing("x"),
            EventError::Empty("x"),
            EventError::TooLong {
                field: "x",
                bytes: 0,
            },
            EventError::UnknownEventType(String::new()),
            EventError::UnknownStatus(String::new()),
            EventError::BadTimestamp(TimestampError(String::new())),
            EventError::OutOfRange {
                field: "x",
                reason: String::new(),
            },
            EventError::ImplausibleTime(Timestamp(0)),
            EventError::FutureTime {
                event: Timestamp(0),
                message: Timestamp(0),
                ahead_ms: 0,
                max_future_ms: 0,
            },
        ];
        let reasons: Vec<_> = errors.iter().map(EventError::reason).collect();
        assert_eq!(reasons, EventError::REASONS);
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        for bytes in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            b"42",
            b"{\"event_type\": \"requested\"",
            b"\xff\xfe",
            b"{} {}",
            // invalid UTF-8 in a field nobody reads is still not JSON
            b"{\"event_type\":\"requested\",\"x\":\"\xa9\"}",
        ] {
            let error = RideEvent::parse(bytes).unwrap_err();
            assert!(
                matches!(error, EventError::NotJson(_)),
                "{bytes:?}: {error:?}"
            );
        }
    }

    #[test]
    fn driver_locations_parse_and_validate() {
        let text = r#"{"driver_id": "driver-1", "timestamp": "2026-11-23T10:00:01.250", "city": "kosice", "lat": 48.7, "lng": 21.2, "status": "on_trip"}"#;
        let location = DriverLocation::parse(text.as_bytes()).unwrap();
        assert_eq!(location.status, DriverStatus::OnTrip);
        assert_eq!(location.timestamp, Timestamp(T));
        let round = DriverLocation::parse(location.to_json().as_bytes()).unwrap();
        assert_eq!(round, location);
        let error = DriverLocation::parse(text.replace("on_trip", "parked").as_bytes());
        assert!(error.unwrap_err().to_string().contains("status"));
        let error = DriverLocation::parse(text.replace("\"city\": \"kosice\", ", "").as_bytes());
        assert!(error.unwrap_err().to_string().contains("city"));
        let lon = DriverLocation::parse(text.replace("\"lng\"", "\"lon\"").as_bytes());
        assert_eq!(lon.unwrap(), location);
        for (from, to, reason) in [
            ("48.7", "91", "out_of_range"),
            (
                "2026-11-23T10:00:01.250",
                "2150-01-01T00:00:00",
                "implausible_time",
            ),
            ("\"driver-1\"", "\"\"", "empty_field"),
            ("\"lat\": 48.7, ", "", "missing_field"),
        ] {
            let error = DriverLocation::parse(text.replace(from, to).as_bytes()).unwrap_err();
            assert_eq!(error.reason(), reason, "{from} -> {to}: {error}");
        }
    }

    mod roundtrip {
        use super::super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9 _\\-\u{e1}\u{17e}\"\\\\]{0,12}".prop_map(|s| format!("x{s}"))
        }

        fn point() -> impl Strategy<Value = Option<GeoPoint>> {
            proptest::option::of(
                (-90.0..90.0f64, -180.0..180.0f64).prop_map(|(lat, lng)| GeoPoint { lat, lng }),
            )
        }

        fn event() -> impl Strategy<Value = RideEvent> {
            (
                proptest::sample::select(EventType::ALL.to_vec()),
                text(),
                // 2000 .. 2100, millisecond precision
                EARLIEST_EVENT_MS..=LATEST_EVENT_MS,
                text(),
                proptest::option::of(0.0..500.0f64),
                text(),
                proptest::option::of(text()),
                point(),
                point(),
            )
                .prop_map(
                    |(
                        event_type,
                        ride_id,
                        millis,
                        city,
                        estimated_fare,
                        user_id,
                        driver_id,
                        pickup,
                        dropoff,
                    )| RideEvent {
                        event_type,
                        ride_id: ride_id.into(),
                        timestamp: Timestamp(millis),
                        city: city.into(),
                        estimated_fare,
                        user_id: user_id.into(),
                        driver_id: driver_id.map(Into::into),
                        pickup,
                        dropoff,
                    },
                )
        }

        proptest! {
            #[test]
            fn a_valid_event_survives_serialize_then_parse(event in event()) {
                let parsed = RideEvent::parse(event.to_json().as_bytes()).unwrap();
                prop_assert_eq!(parsed, event);
            }
        }
    }

    /// The common timestamp form read without chrono gives chrono's instant, and is taken.
    mod timestamps {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            #[test]
            fn the_common_form_reads_as_chrono_reads_it(
                date in (0u32..10_000, 0u32..14, 0u32..33),
                time in (0u32..25, 0u32..61, 0u32..62),
                fraction in "(\\.[0-9]{0,11})?",
                t in proptest::sample::select(vec!["T", "t", " "]),
                z in proptest::sample::select(vec!["Z", "z", "", "+00:00"]),
            ) {
                let text = format!(
                    "{:04}-{:02}-{:02}{t}{:02}:{:02}:{:02}{fraction}{z}",
                    date.0, date.1, date.2, time.0, time.1, time.2
                );
                let fast = utc_millis(text.as_bytes());
                let chrono = Timestamp::parse_with_chrono(&text);
                if let Some(millis) = fast {
                    prop_assert_eq!(Ok(Timestamp(millis)), chrono.clone(), "{}", text);
                }
                prop_assert_eq!(Timestamp::parse(&text), chrono.clone(), "{}", text);
                // Every valid time of the common form takes the fast path.
                let common = t == "T"
                    && z == "Z"
                    && time.2 < 60
                    && fraction.len() != 1
                    && fraction.len() <= 10;
                prop_assert_eq!(fast.is_some(), common && chrono.is_ok(), "{}", text);
            }
        }
    }

    /// The one-pass scanner (`event_scan`) against serde, the reference: on any message,
    /// `RideEvent::parse` gives what serde alone gives, result or error.
    mod fast_path {
        use super::super::*;
        use super::VALID;
        use proptest::prelude::*;

        /// What serde alone makes of a message.
        fn with_serde(bytes: &[u8]) -> Result<RideEvent, EventError> {
            RideEvent::validate(read_object(bytes)?)
        }

        /// JSON values of every kind the fields meet, well-formed or not.
        const VALUES: &[&str] = &[
            r#""requested""#,
            r#""completed""#,
            r#""ride-1""#,
            r#""Košice""#,
            r#""user-1""#,
            r#""2026-11-23T10:00:01.250Z""#,
            r#""2026-11-23 10:00:01""#,
            r#""""#,
            r#""  ""#,
            r#""a\"b""#,
            r#""\u00e9""#,
            "\"tab\there\"",
            r#""ride-1"#,
            "8.50",
            "0",
            "-0",
            "-0.0",
            "12",
            "-3.5",
            "1e3",
            "2E-2",
            "01",
            "1.",
            ".5",
            "-",
            "12345678901234567890",
            "3.14159265358979323846264",
            "999999.999999",
            "1000000.0000001",
            "48.1486",
            "-180.0",
            "null",
            "true",
            "false",
            "nul",
            "[1, 2]",
            "[]",
            r#"{"lat": 48.1486, "lng": 17.1077}"#,
            r#"{"lat":-33.9,"lng":-151.2}"#,
            r#"{"lat":91,"lng":0}"#,
            r#"{"lat":1,"lng":2,"lon":3}"#,
            r#"{"lat":1,"lng":2,"lat":3}"#,
            r#"{"lat":01,"lng":2}"#,
            r#"{"lat":1.5e1,"lng":2}"#,
            r#"{"lat":"1","lng":2}"#,
            r#"{"lat":1,"lng":2 }"#,
            r#"{"lat":1,"lon":2}"#,
            r#"{"lat": 1, "lng": 2, "lat": "x"}"#,
            r#"{"lat": 1, "lng": 2, "lon": 3}"#,
            r#"{"lat": 91, "lng": 0}"#,
            r#"{"lat": 1}"#,
            "{}",
            r#"{"lat": {"a": 1}, "lng": 2}"#,
            r#"{"lat": 1, "lng": [2]}"#,
            r#"{"la\u0074": 1, "lng": 2}"#,
            r#"{"lat": 1 "lng": 2}"#,
        ];

        /// The contract's fields, a common misspelling and an unknown field.
        fn keys() -> Vec<&'static str> {
            let others = ["estimatedFare", "extra"];
            crate::event_scan::FIELDS
                .iter()
                .copied()
                .chain(others)
                .collect()
        }

        /// A key repeated or escaped: serde's (a duplicate field, an unescaped `city`).
        const MORE_KEYS: &[&str] = &[
            "event_type",
            "city",
            "user_id",
            "pickup",
            "extra",
            "cit\\u0079",
        ];

        /// Between tokens: mostly nothing or a space; rarely other JSON whitespace, or form
        /// feed, which is not (a blank is drawn at several places in every member, so an
        /// even draw would send nearly every message to serde).
        fn blank() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                12 => Just(""),
                6 => Just(" "),
                1 => proptest::sample::select(&["\n ", "\t", "\r\n", "\u{c}"][..]),
            ]
        }

        /// A typical field's value, so that most messages are valid and take the fast path.
        fn typical(key: &str) -> &'static str {
            match key {
                "event_type" => r#""requested""#,
                "ride_id" => r#""ride-1""#,
                "timestamp" => r#""2026-11-23T10:00:01.250Z""#,
                "city" => r#""bratislava""#,
                "estimated_fare" => "8.5",
                "user_id" => r#""user-1""#,
                "driver_id" => r#""driver-1""#,
                "pickup" | "dropoff" => r#"{"lat":48.1486,"lng":17.1077}"#,
                _ => "1",
            }
        }

        fn member(key: &'static str) -> impl Strategy<Value = String> {
            (
                proptest::option::weighted(0.08, proptest::sample::select(VALUES)),
                blank(),
                blank(),
            )
                .prop_map(move |(value, b1, b2)| {
                    let value = value.unwrap_or_else(|| typical(key));
                    format!("{b1}\"{key}\"{b2}:{b1}{value}")
                })
        }

        /// Distinct keys in any order, now and then one more from [`MORE_KEYS`].
        fn message() -> impl Strategy<Value = String> {
            let keys = proptest::sample::subsequence(keys(), 0..=keys().len()).prop_shuffle();
            let members = keys.prop_flat_map(|keys| {
                let members: Vec<_> = keys.into_iter().map(member).collect();
                let more = proptest::sample::select(MORE_KEYS).prop_flat_map(member);
                (members, proptest::option::weighted(0.15, more))
            });
            (
                members,
                blank(),
                prop_oneof![8 => Just(""), 1 => proptest::sample::select(&["x", "}", ","][..])],
            )
                .prop_map(|((mut members, again), b, tail)| {
                    members.extend(again);
                    format!("{b}{{{}}}{b}{tail}", members.join(","))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            #[test]
            fn the_scanner_reads_what_serde_reads(text in message()) {
                prop_assert_eq!(RideEvent::parse(text.as_bytes()), with_serde(text.as_bytes()), "{}", text);
            }
        }

        /// Every point of [`VALUES`] (and the compact forms the fast path reads) as the
        /// pickup of an otherwise valid event: the event serde reads, to the bit.
        #[test]
        fn points_read_as_serde_reads_them() {
            let points = VALUES.iter().copied().chain([
                r#"{"lat":48.1486,"lng":17.1077}"#,
                r#"{"lat":-0.0,"lng":180}"#,
                r#"{"lat":1,"lng":2"#,
            ]);
            for point in points {
                let text = format!(
                    r#"{{"event_type":"requested","ride_id":"r","timestamp":"2026-11-23T10:00:01.250Z","city":"x","user_id":"u","pickup":{point},"dropoff":{point}}}"#
                );
                let (fast, serde) = (
                    RideEvent::parse(text.as_bytes()),
                    with_serde(text.as_bytes()),
                );
                assert_eq!(fast, serde, "{text}");
                let bits = |e: &Result<RideEvent, EventError>| {
                    e.as_ref()
                        .ok()
                        .and_then(|e| e.pickup)
                        .map(|p| (p.lat.to_bits(), p.lng.to_bits()))
                };
                assert_eq!(bits(&fast), bits(&serde), "{text}");
            }
        }

        /// The comparison above means something only if many of its messages take the
        /// fast path (and many do not).
        #[test]
        fn the_generated_messages_exercise_both_paths() {
            use proptest::strategy::ValueTree;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let fast = (0..1000)
                .filter(|_| {
                    let text = message().new_tree(&mut runner).unwrap().current();
                    crate::event_scan::scan(&text).is_some()
                })
                .count();
            assert!(
                (300..=900).contains(&fast),
                "{fast} of 1000 took the fast path"
            );
        }

        /// The fast path is taken for the messages the job meets most (were it not, that
        /// would be a silent slowdown, not an error), and not for what it leaves to serde.
        #[test]
        fn the_common_shapes_take_the_fast_path() {
            let full = r#"{"event_type":"completed","ride_id":"ride-9","timestamp":"2026-11-23T10:00:01.250Z","city":"london","estimated_fare":12.75,"user_id":"user-london-1","driver_id":"driver-3","pickup":{"lat":51.5,"lng":-0.12},"dropoff":{"lat":51.51,"lng":-0.13}}"#;
            let sparse = r#"{"event_type": "accepted", "estimated_fare": null, "driver_id": null}"#;
            for text in [VALID, full, sparse] {
                let scanned = crate::event_scan::scan(text).expect(text);
                assert!(scanned.event_type.is_some());
                assert_eq!(
                    RideEvent::parse(text.as_bytes()),
                    with_serde(text.as_bytes()),
                    "{text}"
                );
            }
            // The sign of a zero fare too, which `==` on the events cannot see.
            for number in ["-0", "-0.0", "0", "0.1", "8.50", "999999.999999"] {
                let text = format!(r#"{{"estimated_fare": {number}}}"#);
                let fast = crate::event_scan::scan(&text).unwrap().estimated_fare.0;
                let serde: f64 = serde_json::from_str(number).unwrap();
                assert_eq!(fast.map(f64::to_bits), Some(serde.to_bits()), "{number}");
            }
            for text in [
                r#"{"city": "a\"b"}"#,
                r#"{"x": [1]}"#,
                r#"{"estimated_fare": 1e3}"#,
                r#"{"city": 1}"#,
                r#"{"city": "a", "city": "b"}"#,
            ] {
                assert_eq!(crate::event_scan::scan(text), None, "{text}");
            }
        }
    }
}
