//! SPEC §2 written down a second time, for the parser fuzzer: given a message's bytes, what
//! must `RideEvent::parse` / `DriverLocation::parse` do with it?
//!
//! Written from the contract's text, not from `event.rs` (it reads JSON with
//! `json_reader.rs`, timestamps with `timestamp_oracle.rs`), so that the
//! parser and this file can only agree by both following the contract. Where the contract
//! leaves a choice (a whitespace-only id, a timestamp with an unusual offset, a duplicated
//! key, valid JSON that readers commonly refuse) the verdict is "either", and an accepted
//! value must still be the right one.

use super::json_reader::{read, Fault, Json};
use super::timestamp_oracle::{timestamp, Ts};

/// 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z in milliseconds: the plausible event times.
pub const MIN_MILLIS: i64 = 946_684_800_000;
pub const MAX_MILLIS: i64 = 4_102_444_800_000;
/// Required strings are at most this many bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// `estimated_fare` is within [0, MAX_FARE].
pub const MAX_FARE: f64 = 1_000_000.0;
/// The "field" of reasons about the message as a whole.
pub const JSON: &str = "JSON";

pub const RIDE_FIELDS: [&str; 9] = [
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
pub const LOCATION_FIELDS: [&str; 7] = [
    "driver_id",
    "timestamp",
    "city",
    "lat",
    "lng",
    "lon",
    "status",
];
const EVENT_TYPES: [&str; 5] = ["requested", "accepted", "started", "completed", "cancelled"];
const STATUSES: [&str; 3] = ["available", "on_trip", "offline"];

/// Why a message may or must be refused: the field to name (or [`JSON`]) and a short note.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reason {
    pub field: &'static str,
    pub why: &'static str,
}

/// The values an accepted message may carry in one field.
#[derive(Clone, Debug, PartialEq)]
pub enum Allowed {
    Any,
    Text(Vec<Option<String>>),
    /// Inclusive ranges of milliseconds (truncated or rounded fractions both allowed).
    Millis(Vec<(i64, i64)>),
    Number(Vec<Option<f64>>),
    Point(Vec<Option<(f64, f64)>>),
}

/// What a parsed message looks like, to compare with [`Allowed`].
#[derive(Clone, Debug, PartialEq)]
pub enum Actual {
    Text(Option<String>),
    Millis(i64),
    Number(Option<f64>),
    Point(Option<(f64, f64)>),
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

impl Allowed {
    pub fn admits(&self, actual: &Actual) -> bool {
        match (self, actual) {
            (Allowed::Any, _) => true,
            (Allowed::Text(options), Actual::Text(value)) => options.contains(value),
            (Allowed::Millis(ranges), Actual::Millis(ms)) => {
                ranges.iter().any(|(lo, hi)| lo <= ms && ms <= hi)
            }
            (Allowed::Number(options), Actual::Number(value)) => {
                options.iter().any(|option| match (option, value) {
                    (None, None) => true,
                    (Some(a), Some(b)) => close(*a, *b),
                    _ => false,
                })
            }
            (Allowed::Point(options), Actual::Point(value)) => {
                options.iter().any(|option| match (option, value) {
                    (None, None) => true,
                    (Some(a), Some(b)) => close(a.0, b.0) && close(a.1, b.1),
                    _ => false,
                })
            }
            _ => false,
        }
    }

    fn union(self, other: Allowed) -> Allowed {
        match (self, other) {
            (Allowed::Text(mut a), Allowed::Text(b)) => {
                a.extend(b);
                Allowed::Text(a)
            }
            (Allowed::Millis(mut a), Allowed::Millis(b)) => {
                a.extend(b);
                Allowed::Millis(a)
            }
            (Allowed::Number(mut a), Allowed::Number(b)) => {
                a.extend(b);
                Allowed::Number(a)
            }
            (Allowed::Point(mut a), Allowed::Point(b)) => {
                a.extend(b);
                Allowed::Point(a)
            }
            _ => Allowed::Any,
        }
    }
}

/// The verdict on one message.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Non-empty: the message must be refused, naming one of these (or of `maybe`).
    pub reject: Vec<Reason>,
    /// The message may be refused for these reasons (and must name one when refused while
    /// `reject` is empty).
    pub maybe: Vec<Reason>,
    /// When accepted, each field's value must be one of these.
    pub values: Vec<(&'static str, Allowed)>,
}

impl Expect {
    /// Not a JSON object: refused, naming the JSON or (a reader stops at the first problem
    /// it meets) any field.
    fn not_an_object(fields: &[&'static str], why: &'static str) -> Expect {
        let mut expect = Expect::anything(fields, why);
        expect
            .reject
            .push(expect.maybe.pop().expect("the JSON reason"));
        expect
    }

    /// Valid JSON that readers may refuse (a lone surrogate, deep nesting): either verdict,
    /// any specific reason.
    fn anything(fields: &[&'static str], why: &'static str) -> Expect {
        let mut maybe: Vec<Reason> = fields.iter().map(|&field| Reason { field, why }).collect();
        maybe.push(Reason { field: JSON, why });
        Expect {
            maybe,
            ..Expect::default()
        }
    }

    /// Every field a refusal may name.
    pub fn nameable(&self) -> impl Iterator<Item = &Reason> {
        self.reject.iter().chain(&self.maybe)
    }
}

/// One field's verdict.
struct Outcome {
    reject: Option<Reason>,
    maybe: Vec<Reason>,
    allowed: Allowed,
}

impl Outcome {
    fn ok(allowed: Allowed) -> Outcome {
        Outcome {
            reject: None,
            maybe: Vec::new(),
            allowed,
        }
    }

    fn refused(field: &'static str, why: &'static str) -> Outcome {
        Outcome {
            reject: Some(Reason { field, why }),
            maybe: Vec::new(),
            allowed: Allowed::Any,
        }
    }

    fn maybe(mut self, field: &'static str, why: &'static str) -> Outcome {
        self.maybe.push(Reason { field, why });
        self
    }
}

/// Applies `rule` to a field of `doc`; a duplicated key may be read either way.
fn field(
    expect: &mut Expect,
    doc: &Json,
    name: &'static str,
    rule: impl Fn(Option<&Json>) -> Outcome,
) {
    let values = doc.members(name);
    let outcomes: Vec<Outcome> = if values.is_empty() {
        vec![rule(None)]
    } else {
        values.iter().map(|v| rule(Some(v))).collect()
    };
    let all_refuse = outcomes.iter().all(|o| o.reject.is_some());
    let mut allowed: Option<Allowed> = None;
    for outcome in outcomes.iter() {
        expect.maybe.extend(outcome.maybe.iter().copied());
        match outcome.reject {
            Some(reason) if all_refuse => {
                if !expect.reject.contains(&reason) {
                    expect.reject.push(reason);
                }
            }
            Some(reason) => expect.maybe.push(reason),
            None => {
                allowed = Some(match allowed.take() {
                    None => outcome.allowed.clone(),
                    Some(before) => before.union(outcome.allowed.clone()),
                })
            }
        }
    }
    if values.len() > 1 {
        expect.maybe.push(Reason {
            field: name,
            why: "duplicated key",
        });
        expect.maybe.push(Reason {
            field: JSON,
            why: "duplicated key",
        });
    }
    if let Some(allowed) = allowed {
        expect.values.push((name, allowed));
    }
}

fn required_text(name: &'static str, value: Option<&Json>) -> Outcome {
    match value {
        None | Some(Json::Null) => Outcome::refused(name, "missing"),
        Some(Json::Str(s)) if s.is_empty() => Outcome::refused(name, "empty"),
        Some(Json::Str(s)) if s.len() > MAX_TEXT_BYTES => {
            Outcome::refused(name, "longer than 256 bytes")
        }
        Some(Json::Str(s)) if s.chars().all(char::is_whitespace) => {
            Outcome::ok(Allowed::Text(vec![Some(s.clone())])).maybe(name, "only whitespace")
        }
        Some(Json::Str(s)) => Outcome::ok(Allowed::Text(vec![Some(s.clone())])),
        Some(_) => Outcome::refused(name, "not a string"),
    }
}

fn one_of(name: &'static str, words: &[&str], value: Option<&Json>) -> Outcome {
    match value {
        None | Some(Json::Null) => Outcome::refused(name, "missing"),
        Some(Json::Str(s)) if words.contains(&s.as_str()) => {
            Outcome::ok(Allowed::Text(vec![Some(s.clone())]))
        }
        Some(Json::Str(_)) => Outcome::refused(name, "unknown value"),
        Some(_) => Outcome::refused(name, "not a string"),
    }
}

fn timestamp_field(value: Option<&Json>) -> Outcome {
    const NAME: &str = "timestamp";
    let text = match value {
        None | Some(Json::Null) => return Outcome::refused(NAME, "missing"),
        Some(Json::Str(s)) => s,
        Some(_) => return Outcome::refused(NAME, "not a string"),
    };
    let in_range = |(lo, hi): (i64, i64)| {
        let inside = |ms: i64| (MIN_MILLIS..=MAX_MILLIS).contains(&ms);
        (inside(lo) && inside(hi), !inside(lo) && !inside(hi))
    };
    let verdict = timestamp(text);
    match verdict {
        Ts::Invalid => Outcome::refused(NAME, "not ISO-8601"),
        Ts::Valid(range) | Ts::Odd(Some(range)) => {
            let unusual = matches!(verdict, Ts::Odd(_));
            let outcome = match in_range(range) {
                (_, true) => return Outcome::refused(NAME, "before 2000 or after 2100"),
                (true, _) => Outcome::ok(Allowed::Millis(vec![range])),
                _ => {
                    Outcome::ok(Allowed::Millis(vec![range])).maybe(NAME, "at the 2000/2100 bound")
                }
            };
            if unusual {
                outcome.maybe(NAME, "an unusual ISO-8601 form")
            } else {
                outcome
            }
        }
        Ts::Odd(None) => Outcome::ok(Allowed::Any).maybe(NAME, "an unusual ISO-8601 form"),
    }
}

/// Is `v` so close to `bound` that parsers may round it to either side?
fn at_bound(v: f64, bound: f64) -> bool {
    v != bound && (v - bound).abs() <= bound.abs().max(1.0) * 1e-15
}

/// A number that must lie in [lo, hi]; `optional`: a number out of range is refused, other
/// shapes are null (the fare); otherwise every problem is a refusal (a location's lat/lng).
fn bounded(name: &'static str, lo: f64, hi: f64, optional: bool, value: Option<&Json>) -> Outcome {
    match value {
        None | Some(Json::Null) if optional => Outcome::ok(Allowed::Number(vec![None])),
        None | Some(Json::Null) => Outcome::refused(name, "missing"),
        Some(Json::Num(_, v)) if !v.is_finite() => {
            Outcome::refused(name, "overflows f64").maybe(JSON, "number out of range")
        }
        Some(Json::Num(_, v)) if at_bound(*v, lo) || at_bound(*v, hi) => {
            Outcome::ok(Allowed::Number(vec![Some(*v)])).maybe(name, "at the bound")
        }
        Some(Json::Num(_, v)) if *v < lo || *v > hi => Outcome::refused(name, "out of range"),
        Some(Json::Num(_, v)) => Outcome::ok(Allowed::Number(vec![Some(*v)])),
        Some(_) if optional => Outcome::ok(Allowed::Number(vec![None])),
        Some(_) => Outcome::refused(name, "not a number"),
    }
}

/// `pickup` / `dropoff`: `{lat, lng}` or `{lat, lon}` kept; any other shape is null.
fn point(name: &'static str, value: Option<&Json>) -> Outcome {
    let Some(Json::Obj(_)) = value else {
        return Outcome::ok(Allowed::Point(vec![None]));
    };
    let doc = value.expect("an object");
    let (lats, lngs, lons) = (doc.members("lat"), doc.members("lng"), doc.members("lon"));
    if lats.len() > 1 || lngs.len() > 1 || lons.len() > 1 {
        return Outcome::ok(Allowed::Any).maybe(name, "duplicated coordinate");
    }
    let number = |v: Option<&&Json>| match v {
        Some(Json::Num(_, x)) => Some(*x),
        _ => None,
    };
    let Some(lat) = number(lats.first()) else {
        return Outcome::ok(Allowed::Point(vec![None]));
    };
    let mut candidates: Vec<f64> = [number(lngs.first()), number(lons.first())]
        .into_iter()
        .flatten()
        .collect();
    if candidates.is_empty() {
        return Outcome::ok(Allowed::Point(vec![None]));
    }
    let mut outcome = Outcome::ok(Allowed::Point(Vec::new()));
    if !lngs.is_empty() && number(lngs.first()).is_none() {
        // `lng` of another shape next to a numeric `lon`: null or the `lon` point.
        outcome.allowed = Allowed::Point(vec![None]);
    }
    candidates.dedup();
    let mut options = Vec::new();
    for lng in candidates {
        let inside = |v: f64, bound: f64| v.is_finite() && -bound <= v && v <= bound;
        let near = |v: f64, bound: f64| at_bound(v, bound) || at_bound(v, -bound);
        if !lat.is_finite() || !lng.is_finite() {
            outcome = outcome
                .maybe(name, "coordinate overflows f64")
                .maybe(JSON, "number out of range");
            options.push(None);
        } else if near(lat, 90.0) || near(lng, 180.0) {
            outcome = outcome.maybe(name, "coordinate at the bound");
            options.extend([None, Some((lat, lng))]);
        } else if inside(lat, 90.0) && inside(lng, 180.0) {
            options.push(Some((lat, lng)));
        } else {
            outcome = outcome.maybe(name, "coordinate out of range");
            options.push(None);
        }
    }
    outcome.allowed = outcome.allowed.union(Allowed::Point(options));
    outcome
}

/// A message read once for both verdicts.
pub type Read = Result<Json, Fault>;

/// Reads a message for [`ride`] and [`location`].
pub fn read_message(bytes: &[u8]) -> Read {
    read(bytes)
}

/// The common start: the bytes must be one JSON object.
fn object<'a>(doc: &'a Read, fields: &[&'static str]) -> Result<(&'a Json, Expect), Expect> {
    let doc = match doc {
        Err(Fault::Invalid(_)) => return Err(Expect::not_an_object(fields, "not valid JSON")),
        Err(Fault::LoneSurrogate) => return Err(Expect::anything(fields, "lone surrogate")),
        Err(Fault::TooDeep) => return Err(Expect::anything(fields, "deeply nested")),
        Ok(doc) => doc,
    };
    let Json::Obj(members) = doc else {
        return Err(Expect::not_an_object(fields, "not an object"));
    };
    let mut expect = Expect::default();
    if doc.has_huge_number() {
        expect.maybe.push(Reason {
            field: JSON,
            why: "a number too large for f64",
        });
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        expect.maybe.push(Reason {
            field: JSON,
            why: "duplicated key",
        });
    }
    Ok((doc, expect))
}

/// The verdict on one `ride-events` message.
pub fn ride(message: &Read) -> Expect {
    let (doc, mut expect) = match object(message, &RIDE_FIELDS) {
        Ok(start) => start,
        Err(verdict) => return verdict,
    };
    let e = &mut expect;
    field(e, doc, "event_type", |v| {
        one_of("event_type", &EVENT_TYPES, v)
    });
    field(e, doc, "ride_id", |v| required_text("ride_id", v));
    field(e, doc, "timestamp", timestamp_field);
    field(e, doc, "city", |v| required_text("city", v));
    field(e, doc, "estimated_fare", |v| {
        bounded("estimated_fare", 0.0, MAX_FARE, true, v)
    });
    field(e, doc, "user_id", |v| required_text("user_id", v));
    field(e, doc, "driver_id", |v| match v {
        Some(Json::Str(s)) if s.len() > MAX_TEXT_BYTES || s.trim().is_empty() => {
            Outcome::ok(Allowed::Text(vec![Some(s.clone()), None])).maybe("driver_id", "odd id")
        }
        Some(Json::Str(s)) => Outcome::ok(Allowed::Text(vec![Some(s.clone())])),
        _ => Outcome::ok(Allowed::Text(vec![None])),
    });
    field(e, doc, "pickup", |v| point("pickup", v));
    field(e, doc, "dropoff", |v| point("dropoff", v));
    expect
}

/// The verdict on one `driver-locations` message.
pub fn location(message: &Read) -> Expect {
    let (doc, mut expect) = match object(message, &LOCATION_FIELDS) {
        Ok(start) => start,
        Err(verdict) => return verdict,
    };
    let e = &mut expect;
    field(e, doc, "driver_id", |v| required_text("driver_id", v));
    field(e, doc, "timestamp", timestamp_field);
    field(e, doc, "city", |v| required_text("city", v));
    field(e, doc, "lat", |v| bounded("lat", -90.0, 90.0, false, v));
    let lng_given = doc.members("lng").iter().any(|v| **v != Json::Null);
    if !lng_given && !doc.members("lon").is_empty() {
        // `lon` for `lng`: the contract names it for pickup/dropoff only; either is fine.
        let judged = e.values.len();
        field(e, doc, "lon", |v| {
            bounded("lng", -180.0, 180.0, false, v)
                .maybe("lng", "spelled lon")
                .maybe("lon", "spelled lon")
        });
        if let Some((name, _)) = e.values.get_mut(judged) {
            *name = "lng";
        }
    } else {
        field(e, doc, "lng", |v| bounded("lng", -180.0, 180.0, false, v));
    }
    field(e, doc, "status", |v| one_of("status", &STATUSES, v));
    expect
}
