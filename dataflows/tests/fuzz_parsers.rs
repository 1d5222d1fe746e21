//! A fuzzer for the contract's parsers (`RideEvent::parse`, `DriverLocation::parse`,
//! `Timestamp::parse`), on the stable toolchain: every message a producer or an attacker can
//! put on a topic reaches these functions, so none may panic, every refusal must say what was
//! wrong (it becomes a dead letter's reason), and nothing outside SPEC §2's bounds may get
//! through to a metric.
//!
//! Each case is drawn from its own seeded generator (`fuzz_inputs.rs`: arbitrary bytes,
//! token soup, structure-aware mutations of valid events and locations, odd timestamps) and
//! judged against SPEC §2 as written a second time in `spec_oracle.rs` and
//! `timestamp_oracle.rs`, independently of `event.rs`. Properties:
//! - no panic;
//! - a refusal's text is non-empty and names a contract field in backticks (field `city`)
//!   or says the JSON is invalid, and it names a reason the contract gives for that message;
//! - what the contract refuses is refused (bounds included), what it accepts is accepted
//!   (optional fields of any other shape are null, `lon` spells `lng`), with the right values;
//! - an accepted message is within the bounds (checked again on the parsed value) and its
//!   `to_json()` parses back equal; an accepted timestamp's text parses back equal.
//!
//! The normal test run does 20,000 cases (about 4 s in a debug build). The long run:
//!
//! ```sh
//! RIDEPULSE_FUZZ_CASES=10000000 cargo test --release -p ridepulse-dataflows --test fuzz_parsers -- --nocapture
//! ```
//!
//! `RIDEPULSE_FUZZ_SEED` (a number, or `random`) picks another stream of cases;
//! `RIDEPULSE_FUZZ_REPLAY=<case seed>` runs the one case a failure report names. A failure
//! prints each failing property once, with its first input shrunk to a minimal one.

#[path = "support/fuzz_inputs.rs"]
mod fuzz_inputs;
#[path = "support/json_reader.rs"]
mod json_reader;
#[path = "support/spec_oracle.rs"]
mod spec_oracle;
#[path = "support/timestamp_oracle.rs"]
mod timestamp_oracle;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use dataflows::event::{DriverLocation, DriverStatus, EventType, RideEvent, Timestamp};

use fuzz_inputs::Input;
use spec_oracle::{Actual, Expect, JSON, LOCATION_FIELDS, MAX_MILLIS, MIN_MILLIS, RIDE_FIELDS};
use timestamp_oracle::Ts;

/// Cases in the normal test run: about 4 s in a debug build (where serde is unoptimised).
const DEFAULT_CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x2026_1126_0011;
const THREAD: &str = "parser-fuzz";
/// Property checks a failing input may spend on being made smaller.
const SHRINK_BUDGET: usize = 2_000;

/// A property that did not hold: `property` groups failures (and must survive shrinking),
/// `detail` says what was seen.
#[derive(Clone, Debug)]
struct Failure {
    property: String,
    detail: String,
}

/// How many inputs each parser accepted and refused, and refusals per error kind.
#[derive(Default)]
struct Tally {
    accepted: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
    kinds: BTreeMap<String, u64>,
}

impl Tally {
    fn accept(&mut self, parser: &'static str) {
        *self.accepted.entry(parser).or_default() += 1;
    }

    fn reject(&mut self, parser: &'static str, error: &dyn std::fmt::Debug) {
        *self.rejected.entry(parser).or_default() += 1;
        // The variant's name: its Debug text up to the first `(`, ` ` or `{`.
        struct Name(String);
        impl std::fmt::Write for Name {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                match s.find(['(', ' ', '{']) {
                    Some(end) => {
                        self.0.push_str(&s[..end]);
                        Err(std::fmt::Error)
                    }
                    None => {
                        self.0.push_str(s);
                        Ok(())
                    }
                }
            }
        }
        let mut name = Name(format!("{parser} "));
        let _ = std::fmt::write(&mut name, format_args!("{error:?}"));
        *self.kinds.entry(name.0).or_default() += 1;
    }
}

/// Does the error text name `field` in backticks (or, for [`JSON`], say the JSON is bad)?
fn names(text: &str, field: &str) -> bool {
    if field == JSON {
        return text.contains("JSON");
    }
    text.match_indices("field `").any(|(at, mark)| {
        let rest = &text[at + mark.len()..];
        rest.strip_prefix(field)
            .is_some_and(|end| end.starts_with(['`', '.', '[']))
    })
}

/// What an error text names, for reports: the first backticked field, or JSON.
fn named(text: &str) -> String {
    if let Some(at) = text.find("field `") {
        let rest = &text[at + 7..];
        let end = rest.find(['`', '.', '[']).unwrap_or(rest.len());
        return format!("`{}`", &rest[..end]);
    }
    if text.contains("JSON") {
        return JSON.into();
    }
    "nothing".into()
}

fn event_type_name(t: EventType) -> &'static str {
    match t {
        EventType::Requested => "requested",
        EventType::Accepted => "accepted",
        EventType::Started => "started",
        EventType::Completed => "completed",
        EventType::Cancelled => "cancelled",
    }
}

fn status_name(s: DriverStatus) -> &'static str {
    match s {
        DriverStatus::Available => "available",
        DriverStatus::OnTrip => "on_trip",
        DriverStatus::Offline => "offline",
    }
}

fn ride_actual(e: &RideEvent, field: &str) -> Actual {
    let text = |s: &str| Actual::Text(Some(s.to_string()));
    match field {
        "event_type" => Actual::Text(Some(event_type_name(e.event_type).into())),
        "ride_id" => text(&e.ride_id),
        "timestamp" => Actual::Millis(e.timestamp.0),
        "city" => text(&e.city),
        "estimated_fare" => Actual::Number(e.estimated_fare),
        "user_id" => text(&e.user_id),
        "driver_id" => Actual::Text(e.driver_id.as_deref().map(String::from)),
        "pickup" => Actual::Point(e.pickup.map(|p| (p.lat, p.lng))),
        "dropoff" => Actual::Point(e.dropoff.map(|p| (p.lat, p.lng))),
        other => unreachable!("no ride field {other}"),
    }
}

fn location_actual(l: &DriverLocation, field: &str) -> Actual {
    match field {
        "driver_id" => Actual::Text(Some(l.driver_id.clone())),
        "timestamp" => Actual::Millis(l.timestamp.0),
        "city" => Actual::Text(Some(l.city.clone())),
        "lat" => Actual::Number(Some(l.lat)),
        "lng" => Actual::Number(Some(l.lng)),
        "status" => Actual::Text(Some(status_name(l.status).into())),
        other => unreachable!("no location field {other}"),
    }
}

/// SPEC §2's bounds, checked on parsed values.
fn out_of_bounds(
    texts: &[(&str, &str)],
    millis: i64,
    numbers: &[(&str, Option<f64>, f64, f64)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, text) in texts {
        if text.is_empty() || text.len() > 256 {
            problems.push(format!(
                "an empty or over-256-byte `{name}` ({} bytes)",
                text.len()
            ));
        }
    }
    if !(MIN_MILLIS..=MAX_MILLIS).contains(&millis) {
        problems.push("a `timestamp` outside 2000-01-01..=2100-01-01".into());
    }
    for (name, value, lo, hi) in numbers {
        if let Some(v) = value {
            if !(v.is_finite() && lo <= v && v <= hi) {
                problems.push(format!("a `{name}` outside [{lo}, {hi}]"));
            }
        }
    }
    problems
}

/// The refusal properties shared by both message parsers.
fn check_refusal(
    parser: &str,
    text: &str,
    expect: &Expect,
    fields: &[&str],
    failures: &mut Vec<Failure>,
) {
    let mut fail = |property: String| {
        failures.push(Failure {
            property,
            detail: format!("error: {text}"),
        })
    };
    let specific =
        !text.trim().is_empty() && (names(text, JSON) || fields.iter().any(|f| names(text, f)));
    if !specific {
        fail(format!(
            "{parser}: refusal names no field and does not say the JSON is invalid"
        ));
    } else if !expect.nameable().any(|r| names(text, r.field)) {
        if expect.reject.is_empty() {
            fail(format!(
                "{parser}: valid message refused, naming {}",
                named(text)
            ));
        } else {
            fail(format!(
                "{parser}: refusal names {}, not the contract's reason",
                named(text)
            ));
        }
    }
}

/// The acceptance properties shared by both message parsers.
fn check_acceptance(
    parser: &str,
    expect: &Expect,
    actual: impl Fn(&str) -> Actual,
    bounds: Vec<String>,
    round_trip: Result<bool, String>,
    failures: &mut Vec<Failure>,
) {
    for problem in bounds {
        failures.push(Failure {
            property: format!(
                "{parser}: accepted {}",
                problem.split(" (").next().unwrap_or(&problem)
            ),
            detail: problem,
        });
    }
    if let Some(reason) = expect.reject.first() {
        failures.push(Failure {
            property: format!(
                "{parser}: accepted although `{}` is {}",
                reason.field, reason.why
            ),
            detail: format!("the contract refuses it for {:?}", expect.reject),
        });
    }
    for (field, allowed) in &expect.values {
        let value = actual(field);
        if !allowed.admits(&value) {
            failures.push(Failure {
                property: format!("{parser}: accepted with a wrong `{field}`"),
                detail: format!("parsed {value:?}, the contract says {allowed:?}"),
            });
        }
    }
    match round_trip {
        Ok(true) => {}
        Ok(false) => failures.push(Failure {
            property: format!("{parser}: to_json() does not parse back equal"),
            detail: String::new(),
        }),
        Err(panic) => failures.push(Failure {
            property: format!("{parser}: parsing its own to_json() panicked"),
            detail: panic,
        }),
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_text)
}

fn check_message(bytes: &[u8], tally: &mut Tally, failures: &mut Vec<Failure>) {
    let message = spec_oracle::read_message(bytes);
    match guarded(|| RideEvent::parse(bytes)) {
        Err(panic) => failures.push(Failure {
            property: "ride event: parse panicked".into(),
            detail: panic,
        }),
        Ok(Err(error)) => {
            tally.reject("ride event", &error);
            check_refusal(
                "ride event",
                &error.to_string(),
                &spec_oracle::ride(&message),
                &RIDE_FIELDS,
                failures,
            );
        }
        Ok(Ok(event)) => {
            tally.accept("ride event");
            let point =
                |p: Option<dataflows::event::GeoPoint>| (p.map(|p| p.lat), p.map(|p| p.lng));
            let (pickup_lat, pickup_lng) = point(event.pickup);
            let (dropoff_lat, dropoff_lng) = point(event.dropoff);
            let bounds = out_of_bounds(
                &[
                    ("ride_id", event.ride_id.as_str()),
                    ("city", event.city.as_str()),
                    ("user_id", event.user_id.as_str()),
                ],
                event.timestamp.0,
                &[
                    ("estimated_fare", event.estimated_fare, 0.0, 1_000_000.0),
                    ("pickup.lat", pickup_lat, -90.0, 90.0),
                    ("pickup.lng", pickup_lng, -180.0, 180.0),
                    ("dropoff.lat", dropoff_lat, -90.0, 90.0),
                    ("dropoff.lng", dropoff_lng, -180.0, 180.0),
                ],
            );
            let round_trip =
                guarded(|| RideEvent::parse(event.to_json().as_bytes()).as_ref() == Ok(&event));
            let expect = spec_oracle::ride(&message);
            check_acceptance(
                "ride event",
                &expect,
                |f| ride_actual(&event, f),
                bounds,
                round_trip,
                failures,
            );
        }
    }
    match guarded(|| DriverLocation::parse(bytes)) {
        Err(panic) => failures.push(Failure {
            property: "driver location: parse panicked".into(),
            detail: panic,
        }),
        Ok(Err(error)) => {
            tally.reject("driver location", &error);
            let expect = spec_oracle::location(&message);
            check_refusal(
                "driver location",
                &error.to_string(),
                &expect,
                &LOCATION_FIELDS,
                failures,
            );
        }
        Ok(Ok(location)) => {
            tally.accept("driver location");
            let bounds = out_of_bounds(
                &[
                    ("driver_id", location.driver_id.as_str()),
                    ("city", location.city.as_str()),
                ],
                location.timestamp.0,
                &[
                    ("lat", Some(location.lat), -90.0, 90.0),
                    ("lng", Some(location.lng), -180.0, 180.0),
                ],
            );
            let round_trip = guarded(|| {
                DriverLocation::parse(location.to_json().as_bytes()).as_ref() == Ok(&location)
            });
            let expect = spec_oracle::location(&message);
            check_acceptance(
                "driver location",
                &expect,
                |f| location_actual(&location, f),
                bounds,
                round_trip,
                failures,
            );
        }
    }
}

fn check_timestamp(text: &str, tally: &mut Tally, failures: &mut Vec<Failure>) {
    let mut fail = |property: &str, detail: String| {
        failures.push(Failure {
            property: format!("timestamp: {property}"),
            detail,
        })
    };
    let verdict = timestamp_oracle::timestamp(text);
    let in_range = |ms: i64| (MIN_MILLIS..=MAX_MILLIS).contains(&ms);
    match guarded(|| Timestamp::parse(text)) {
        Err(panic) => fail("parse panicked", panic),
        Ok(Err(error)) => {
            tally.reject("timestamp", &error);
            if error.to_string().trim().is_empty() {
                fail("refusal with an empty message", String::new());
            }
            if let Ts::Valid((lo, hi)) = verdict {
                if in_range(lo) && in_range(hi) {
                    fail(
                        "refused one of the contract's forms",
                        format!("error: {error}"),
                    );
                }
            }
        }
        Ok(Ok(ts)) => {
            tally.accept("timestamp");
            match verdict {
                Ts::Invalid => fail(
                    "accepted a text that is not a real ISO-8601 date-time",
                    format!("parsed {}", ts.0),
                ),
                Ts::Valid((lo, hi)) | Ts::Odd(Some((lo, hi))) if !(lo..=hi).contains(&ts.0) => {
                    fail(
                        "parsed to the wrong instant",
                        format!("parsed {} ms, the contract says {lo}..={hi}", ts.0),
                    )
                }
                _ => {}
            }
            if in_range(ts.0) {
                match guarded(|| Timestamp::parse(&ts.to_string())) {
                    Ok(Ok(back)) if back == ts => {}
                    other => fail(
                        "its Display does not parse back equal",
                        format!("{} -> {other:?}", ts),
                    ),
                }
            }
        }
    }
}

fn check(input: &Input, tally: &mut Tally) -> Vec<Failure> {
    let mut failures = Vec::new();
    match input {
        Input::Message(bytes) => check_message(bytes, tally, &mut failures),
        Input::Timestamp(text) => check_timestamp(text, tally, &mut failures),
    }
    failures
}

/// Deletes ever smaller chunks while `property` still fails (delta debugging).
fn shrink(input: &Input, property: &str) -> Input {
    let rebuild = |bytes: Vec<u8>| match input {
        Input::Message(_) => Some(Input::Message(bytes)),
        Input::Timestamp(_) => String::from_utf8(bytes).ok().map(Input::Timestamp),
    };
    let mut best = match input {
        Input::Message(bytes) => bytes.clone(),
        Input::Timestamp(text) => text.clone().into_bytes(),
    };
    let mut budget = SHRINK_BUDGET;
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut at = 0;
        while at < best.len() && budget > 0 {
            let mut candidate = best.clone();
            candidate.drain(at..(at + chunk).min(best.len()));
            budget -= 1;
            let fails = rebuild(candidate.clone())
                .map(|c| {
                    check(&c, &mut Tally::default())
                        .iter()
                        .any(|f| f.property == property)
                })
                .unwrap_or(false);
            if fails {
                best = candidate;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 || budget == 0 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    rebuild(best).expect("the shrunk input was checked")
}

/// The input as an escaped string, long ones cut.
fn escaped(input: &Input) -> String {
    let (kind, bytes) = match input {
        Input::Message(bytes) => ("message", bytes.as_slice()),
        Input::Timestamp(text) => ("timestamp text", text.as_bytes()),
    };
    let shown = &bytes[..bytes.len().min(1500)];
    let text = match std::str::from_utf8(bytes) {
        Ok(_) => format!("{:?}", String::from_utf8_lossy(shown)),
        Err(_) => format!("b\"{}\"", shown.escape_ascii()),
    };
    let cut = if shown.len() < bytes.len() {
        format!(" … ({} bytes in all)", bytes.len())
    } else {
        String::new()
    };
    format!("{kind} {text}{cut}")
}

/// SplitMix64: a case's seed from the run's seed and the case's number.
fn case_seed(seed: u64, case: u64) -> u64 {
    let mut z = seed.wrapping_add(case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim().replace('_', "");
    if text == "random" {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        return Some(nanos as u64);
    }
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text}: expected a number (decimal or 0x hex)")))
}

struct Example {
    count: u64,
    origin: String,
    input: Input,
    detail: String,
}

/// Runs the cases; returns the report of failing properties (empty when all held).
fn run() -> String {
    let cases = env_number("RIDEPULSE_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_number("RIDEPULSE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let replay = env_number("RIDEPULSE_FUZZ_REPLAY");
    let mut tally = Tally::default();
    let mut examples: BTreeMap<String, Example> = BTreeMap::new();
    let mut record = |origin: String, input: &Input, failures: Vec<Failure>| {
        for failure in failures {
            let example = examples.entry(failure.property).or_insert_with(|| Example {
                count: 0,
                origin: origin.clone(),
                input: input.clone(),
                detail: failure.detail,
            });
            example.count += 1;
        }
    };
    let started = Instant::now();
    let mut done = 0u64;
    if let Some(case) = replay {
        let input = fuzz_inputs::case(&mut fuzz_inputs::Gen::new(case));
        println!("replaying case seed {case:#x}: {}", escaped(&input));
        let failures = check(&input, &mut tally);
        record(format!("case seed {case:#x}"), &input, failures);
        done = 1;
    } else {
        for (i, input) in fuzz_inputs::corpus().iter().enumerate() {
            let failures = check(input, &mut tally);
            record(format!("corpus input #{i}"), input, failures);
            done += 1;
        }
        for i in 0..cases.saturating_sub(done) {
            let case = case_seed(seed, i);
            let input = fuzz_inputs::case(&mut fuzz_inputs::Gen::new(case));
            let failures = check(&input, &mut tally);
            if !failures.is_empty() {
                record(format!("case seed {case:#x}"), &input, failures);
            }
            done += 1;
            if done.is_multiple_of(1 << 20) {
                eprintln!(
                    "fuzz_parsers: {done} cases, {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let count = |map: &BTreeMap<&str, u64>, parser| map.get(parser).copied().unwrap_or(0);
    println!(
        "fuzz_parsers: {done} cases (seed {seed:#x}) in {:.1} s, {} failing properties",
        elapsed.as_secs_f64(),
        examples.len()
    );
    for parser in ["ride event", "driver location", "timestamp"] {
        println!(
            "  {parser}: {} accepted, {} refused",
            count(&tally.accepted, parser),
            count(&tally.rejected, parser)
        );
    }
    println!("  refusals per error kind:");
    for (kind, n) in &tally.kinds {
        println!("    {kind}: {n}");
    }
    let mut report = String::new();
    for (property, example) in &examples {
        let small = shrink(&example.input, property);
        let mut detail = check(&small, &mut Tally::default())
            .into_iter()
            .find(|f| &f.property == property)
            .map(|f| f.detail)
            .unwrap_or_default();
        if detail.is_empty() {
            detail = example.detail.clone();
        }
        report.push_str(&format!(
            "FAIL {property} ({} cases)\n  minimal input: {}\n  {detail}\n  first seen: {} (seed {seed:#x}); its input: {}\n",
            example.count,
            escaped(&small),
            example.origin,
            escaped(&example.input),
        ));
    }
    if !report.is_empty() {
        report.push_str(
            "replay one case: RIDEPULSE_FUZZ_REPLAY=<case seed> cargo test -p ridepulse-dataflows --test fuzz_parsers -- --nocapture\n",
        );
    }
    report
}

#[test]
fn the_parsers_hold_spec_section_2_on_hostile_input() {
    // Panics inside the parsers are caught and reported as failures: keep the default hook's
    // message for every other thread only.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(THREAD) {
            previous(info);
        }
    }));
    // The stack of a spawned thread (2 MiB), as the job's worker threads have.
    let report = std::thread::Builder::new()
        .name(THREAD.into())
        .stack_size(2 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .expect("the fuzz driver itself does not panic");
    assert!(report.is_empty(), "properties of SPEC §2 failed:\n{report}");
}
