//! Inputs for the parser fuzzer: arbitrary bytes, JSON token soup, and valid ride events and
//! driver locations put through structure-aware mutations (fields dropped, duplicated,
//! retyped or renamed; edge numbers, strings and timestamps; nested garbage; truncation and
//! invalid UTF-8), each case drawn from its own seeded generator so it can be replayed alone.

use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};

use super::spec_oracle::{MAX_MILLIS, MIN_MILLIS};
use super::timestamp_oracle::civil_from_days;

/// The generator of one case: SplitMix64, seeded with the case's seed. Small and fast even in
/// a debug build (ChaCha there took half of the run), and the same stream on every platform.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed)
    }
}

impl RngCore for Gen {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One fuzz case: bytes for both message parsers, or a text for `Timestamp::parse`.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Message(Vec<u8>),
    Timestamp(String),
}

/// Hand-picked inputs every run starts with (the shapes issue 11 names).
pub fn corpus() -> Vec<Input> {
    let event = |rest: &str| {
        Input::Message(
            format!(
                r#"{{"event_type":"requested","ride_id":"ride-1","timestamp":"2026-11-23T10:00:01.250Z","city":"bratislava","user_id":"user-1"{rest}}}"#
            )
            .into_bytes(),
        )
    };
    let mut inputs = vec![
        event(r#","estimated_fare":8.5,"pickup":{"lat":48.1486,"lng":17.1077},"dropoff":{"lat":48.1586,"lng":17.1177}"#),
        event(r#","pickup":{"lat":48.1486,"lon":17.1077}"#),
        event(r#","pickup":{"lat":48.1486}"#),
        event(r#","pickup":"48.1,17.1","dropoff":[48.1,17.1]"#),
        event(r#","pickup":{"lat":{"lat":{"lat":[]}},"lng":17}"#),
        event(r#","estimated_fare":"8.50""#),
        event(r#","estimated_fare":1e308"#),
        event(r#","estimated_fare":1e30"#),
        event(r#","estimated_fare":1e400"#),
        event(r#","estimated_fare":-0"#),
        event(r#","estimated_fare":-1"#),
        event(r#","estimated_fare":1000000"#),
        event(r#","estimated_fare":1000000.01"#),
        event(r#","estimated_fare":NaN"#),
        event(r#","driver_id":42"#),
        event(r#","surge":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#),
        Input::Message(br#"{"event_type":"requested","ride_id":"#.to_vec()),
        Input::Message(b"{\"event_type\":\"requested\",\"x\":\"\xff\"}".to_vec()),
        Input::Message(
            br#"{"driver_id":"driver-1","timestamp":"2026-11-23T10:00:01Z","city":"kosice","lat":48.7,"lng":21.2,"status":"on_trip"}"#
                .to_vec(),
        ),
        Input::Message(
            br#"{"driver_id":"driver-1","timestamp":"2026-11-23T10:00:01Z","city":"kosice","lat":91,"lng":21.2,"status":"on_trip"}"#
                .to_vec(),
        ),
        Input::Message(b"[]".to_vec()),
    ];
    for text in [
        "2026-11-23T10:00:01.250Z",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
        "2100-01-01T00:00:00Z",
        "2100-01-01T00:00:00.001Z",
        "1999-12-31T23:59:59.999Z",
        "2026-11-23T10:00:01.123456789012345678901234567890Z",
        "2026-11-23T10:00:01+14:00",
        "2026-11-23T10:00:01-00:00",
    ] {
        inputs.push(Input::Timestamp(text.into()));
        inputs.push(event(&format!(r#","timestamp":"{text}""#)));
    }
    for city in [
        "",
        " ",
        &"é".repeat(128),
        &"é".repeat(129),
        &"x".repeat(257),
    ] {
        inputs.push(event(&format!(r#","city":"{city}""#)));
    }
    inputs
}

/// A JSON tree to render; `Raw` is written as is (numbers, literals, or garbage).
#[derive(Clone, Debug)]
enum Node {
    Raw(String),
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

fn s(text: &str) -> Node {
    Node::Str(text.into())
}

fn raw(text: impl Into<String>) -> Node {
    Node::Raw(text.into())
}

/// Draws one case.
pub fn case(rng: &mut Gen) -> Input {
    match rng.random_range(0..100) {
        0..=39 => {
            let event = ride_event(rng);
            Input::Message(finish(rng, event))
        }
        40..=59 => {
            let location = location(rng);
            Input::Message(finish(rng, location))
        }
        60..=74 => Input::Timestamp(timestamp_text(rng)),
        75..=87 => Input::Message(token_soup(rng)),
        _ => Input::Message(bytes(rng)),
    }
}

/// Renders a tree, mutates the text now and then.
fn finish(rng: &mut Gen, node: Node) -> Vec<u8> {
    let mut out = String::new();
    render(rng, &node, &mut out);
    let mut bytes = out.into_bytes();
    if rng.random_bool(0.2) {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

fn space(rng: &mut Gen, out: &mut String) {
    if rng.random_bool(0.1) {
        out.push_str([" ", "\n", "\t", "\r\n  "].choose(rng).unwrap());
    }
}

fn render(rng: &mut Gen, node: &Node, out: &mut String) {
    match node {
        Node::Raw(text) => out.push_str(text),
        Node::Str(text) => quote(rng, text, out),
        Node::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(rng, out);
                render(rng, item, out);
            }
            out.push(']');
        }
        Node::Obj(members) => {
            out.push('{');
            space(rng, out);
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    space(rng, out);
                }
                quote(rng, key, out);
                space(rng, out);
                out.push(':');
                space(rng, out);
                render(rng, value, out);
            }
            space(rng, out);
            out.push('}');
        }
    }
}

/// A JSON string literal, escaping non-ASCII characters now and then (`\u00e9`, surrogate
/// pairs) and ASCII ones rarely (`\u0063ity` is `city`).
fn quote(rng: &mut Gen, text: &str, out: &mut String) {
    use std::fmt::Write;
    let escape_unicode = rng.random_bool(0.2);
    let escape_ascii = rng.random_bool(0.03);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '/' if escape_ascii => out.push_str("\\/"),
            c if (c as u32) < 0x20
                || (escape_ascii && c.is_ascii())
                || (escape_unicode && !c.is_ascii()) =>
            {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const CITIES: [&str; 10] = [
    "bratislava",
    "São Paulo",
    "Zürich",
    "東京",
    "Kraków",
    "<img src=x onerror=alert(1)>",
    "new york",
    "😀city",
    "a\u{301}",
    "x",
];

/// A string that tests the contract's edges: empty, whitespace, exactly 256 bytes or one more
/// (with multi-byte characters), very long, control characters, quotes, markup.
fn edge_text(rng: &mut Gen) -> String {
    let sized = |rng: &mut Gen, bytes: usize| {
        let mut text = String::new();
        let pieces = ["a", "é", "東", "😀", "\"", "\\", "\u{0}", " "];
        while text.len() < bytes {
            let piece = pieces.choose(rng).unwrap();
            if text.len() + piece.len() <= bytes {
                text.push_str(piece);
            } else {
                text.push('a');
            }
        }
        text
    };
    match rng.random_range(0..16) {
        0 => String::new(),
        1 => [" ", "\t", "\u{3000}", "\u{a0}", "\n"]
            .choose(rng)
            .unwrap()
            .to_string(),
        2 => sized(rng, 255),
        3 => sized(rng, 256),
        4 => sized(rng, 257),
        5 => {
            let bytes = rng.random_range(1..600);
            sized(rng, bytes)
        }
        6 if rng.random_bool(0.05) => "é東a😀\"\\ ".repeat(8_000),
        7 => "\u{0}\u{1}\u{1f}\u{7f}".into(),
        8 => "\u{202e}evil\u{200b}".into(),
        9 => format!(" {} ", CITIES.choose(rng).unwrap()),
        10 => "\"quoted\" \\ back".into(),
        11 => "<script>alert(1)</script>&amp;'".into(),
        _ => CITIES.choose(rng).unwrap().to_string(),
    }
}

fn id(rng: &mut Gen, prefix: &str) -> String {
    if rng.random_bool(0.15) {
        edge_text(rng)
    } else {
        format!("{prefix}-{}", rng.random_range(0..100_000))
    }
}

/// A number's text: mostly in `lo..hi`, else an edge (huge, tiny, negative zero, the
/// bounds and a hair past them, integers past u64) or something JSON does not allow.
fn number(rng: &mut Gen, lo: f64, hi: f64) -> String {
    const EDGES: [&str; 34] = [
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1e308",
        "-1e308",
        "1.7976931348623157e308",
        "1e309",
        "1e400",
        "-1e400",
        "5e-324",
        "1e-400",
        "-1e-400",
        "1000000",
        "1000000.0",
        "1000000.0000000001",
        "1000000.01",
        "1000001",
        "999999.9999999999",
        "1E6",
        "1e+6",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "99999999999999999999999999",
        "90",
        "90.0000000001",
        "-90",
        "180",
        "-180.0000001",
        "1e30",
        "-1",
        "123456789012345678901234567890.5",
        "0.1e-2",
    ];
    const NOT_JSON: [&str; 12] = [
        "NaN",
        "Infinity",
        "-Infinity",
        "nan",
        "inf",
        "+1",
        "01",
        ".5",
        "1.",
        "1e",
        "0x10",
        "\u{661}",
    ];
    match rng.random_range(0..20) {
        0..=3 => EDGES.choose(rng).unwrap().to_string(),
        4 => NOT_JSON.choose(rng).unwrap().to_string(),
        5 => format!("{}", rng.random_range(lo as i64..=hi as i64)),
        6 => format!("{:e}", rng.random_range(lo..=hi)),
        _ => format!("{}", rng.random_range(lo..=hi)),
    }
}

/// A value of an unexpected shape, sometimes deeply nested.
fn garbage(rng: &mut Gen, depth: usize) -> Node {
    match rng.random_range(0..10) {
        0 => raw("null"),
        1 => raw(["true", "false"].choose(rng).unwrap().to_string()),
        2 => raw(number(rng, -1e6, 1e6)),
        3 => Node::Str(edge_text(rng)),
        4 if depth < 4 => Node::Arr(
            (0..rng.random_range(0..4))
                .map(|_| garbage(rng, depth + 1))
                .collect(),
        ),
        5 if depth < 4 => Node::Obj(
            (0..rng.random_range(0..4))
                .map(|_| {
                    let key = ["lat", "lng", "lon", "x", "city"]
                        .choose(rng)
                        .unwrap()
                        .to_string();
                    (key, garbage(rng, depth + 1))
                })
                .collect(),
        ),
        6 => {
            let depth = *[10, 50, 99, 100, 101, 127, 128, 129, 1000, 20_000]
                .choose(rng)
                .unwrap();
            let (open, close) = if rng.random_bool(0.5) {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            raw(format!("{}1{}", open.repeat(depth), close.repeat(depth)))
        }
        _ => s("plain"),
    }
}

/// A `{lat, lng}` point in range, or one of the shapes producers get wrong.
fn point(rng: &mut Gen) -> Node {
    let coordinate = |rng: &mut Gen, bound: f64| {
        if rng.random_bool(0.8) {
            raw(format!("{:.6}", rng.random_range(-bound..=bound)))
        } else {
            raw(number(rng, -bound, bound))
        }
    };
    let lng_key = if rng.random_bool(0.3) { "lon" } else { "lng" };
    match rng.random_range(0..12) {
        0 => Node::Obj(vec![("lat".into(), coordinate(rng, 90.0))]),
        1 => Node::Obj(vec![("lng".into(), coordinate(rng, 180.0))]),
        2 => Node::Obj(vec![
            ("lat".into(), s("48.1")),
            (lng_key.into(), coordinate(rng, 180.0)),
        ]),
        3 => Node::Obj(vec![
            ("lat".into(), coordinate(rng, 90.0)),
            ("lng".into(), coordinate(rng, 180.0)),
            ("lon".into(), coordinate(rng, 180.0)),
        ]),
        4 => garbage(rng, 0),
        _ => Node::Obj(vec![
            ("lat".into(), coordinate(rng, 90.0)),
            (lng_key.into(), coordinate(rng, 180.0)),
        ]),
    }
}

/// A valid instant as one of the contract's three forms with 0–9 fractional digits.
fn valid_timestamp(rng: &mut Gen) -> String {
    let ms = rng.random_range(MIN_MILLIS..=MAX_MILLIS);
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    let in_day = ms.rem_euclid(86_400_000);
    let (h, mi, sec, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let fraction = match rng.random_range(0..5) {
        0 => String::new(),
        1 => format!(".{milli:03}"),
        2 => format!(".{milli:03}000"),
        3 => format!(".{milli:03}{}", rng.random_range(0..1_000_000)),
        _ => format!(".{}", milli / 100),
    };
    let zone = ["Z", "+00:00", ""].choose(rng).unwrap();
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}{fraction}{zone}")
}

/// A timestamp text: valid, near a bound, with odd components, or not a timestamp at all.
pub fn timestamp_text(rng: &mut Gen) -> String {
    match rng.random_range(0..10) {
        0..=3 => valid_timestamp(rng),
        4..=7 => {
            let pick = |rng: &mut Gen, usual: i64, edges: &[i64]| {
                if rng.random_bool(0.6) {
                    usual
                } else {
                    *edges.choose(rng).unwrap()
                }
            };
            let year = pick(
                rng,
                2026,
                &[
                    0, 1, 999, 1969, 1970, 1999, 2000, 2099, 2100, 2101, 9999, 10000,
                ],
            );
            let usual = rng.random_range(1..=12);
            let month = pick(rng, usual, &[0, 1, 2, 12, 13]);
            let usual = rng.random_range(1..=28);
            let day = pick(rng, usual, &[0, 1, 28, 29, 30, 31, 32]);
            let usual = rng.random_range(0..=23);
            let hour = pick(rng, usual, &[0, 23, 24, 25]);
            let usual = rng.random_range(0..=59);
            let minute = pick(rng, usual, &[0, 59, 60]);
            let usual = rng.random_range(0..=59);
            let second = pick(rng, usual, &[0, 59, 60, 61]);
            let wide = rng.random_bool(0.9);
            let two = |v: i64| {
                if wide {
                    format!("{v:02}")
                } else {
                    v.to_string()
                }
            };
            let fraction = match rng.random_range(0..6) {
                0 => String::new(),
                1 => ".".into(),
                2 => format!(".{}", "9".repeat(rng.random_range(1..=30))),
                3 => format!(
                    ".{}",
                    (0..30)
                        .map(|_| char::from(b'0' + rng.random_range(0..10)))
                        .collect::<String>()
                ),
                4 => ",250".into(),
                _ => format!(".{:03}", rng.random_range(0..1000)),
            };
            let separator = ["T", "T", "T", "t", " ", "_", "TT"].choose(rng).unwrap();
            let zone = [
                "Z", "", "+00:00", "z", "-00:00", "+01:00", "-05:30", "+14:00", "+23:59", "+24:00",
                "+0100", "+01", " Z", "Z ",
            ]
            .choose(rng)
            .unwrap();
            let year = if year > 9999 {
                format!("+{year}")
            } else {
                format!("{year:04}")
            };
            format!(
                "{year}-{}-{}{separator}{}:{}:{}{fraction}{zone}",
                two(month),
                two(day),
                two(hour),
                two(minute),
                two(second)
            )
        }
        8 => [
            "2000-01-01T00:00:00Z",
            "1999-12-31T23:59:59.999Z",
            "1999-12-31T23:59:59.9999Z",
            "2100-01-01T00:00:00Z",
            "2100-01-01T00:00:00.0004Z",
            "2100-01-01T00:00:00.0005Z",
            "2100-01-01T00:00:00.001Z",
            "2100-01-01T01:00:00+01:00",
            "2016-12-31T23:59:60.5Z",
            "2026-11-23",
            "2026-11-23T10:00",
            "10:00:00",
        ]
        .choose(rng)
        .unwrap()
        .to_string(),
        _ => [
            "",
            " ",
            "yesterday",
            "1700000000",
            "２０２６-11-23T10:00:00Z",
            "2026-11-23T10:00:01.250Z junk",
            "2026-11-23T10:00:01.250+00:00Z",
            "2026-11-23T10:00:01.Z",
            "-2026-11-23T10:00:01Z",
            "+002026-11-23T10:00:01Z",
            "2026-11-23T10:00:01.250\u{0}",
            "2026-11-23T10:00:01.250Z\u{301}",
        ]
        .choose(rng)
        .unwrap()
        .to_string(),
    }
}

/// A field's value replaced by one of another type or an edge value.
fn retyped(rng: &mut Gen) -> Node {
    match rng.random_range(0..4) {
        0 => Node::Str(edge_text(rng)),
        1 => raw(number(rng, -10.0, 10.0)),
        _ => garbage(rng, 0),
    }
}

/// Drops, duplicates, retypes, renames or adds fields; edge values for known ones.
fn mutate_fields(
    rng: &mut Gen,
    fields: &mut Vec<(String, Node)>,
    edge: impl Fn(&mut Gen, &str) -> Option<Node>,
) {
    for _ in 0..rng.random_range(0..4) {
        if fields.is_empty() {
            return;
        }
        let i = rng.random_range(0..fields.len());
        match rng.random_range(0..10) {
            0 => {
                fields.remove(i);
            }
            1 => {
                let (key, value) = fields[i].clone();
                let value = if rng.random_bool(0.5) {
                    value
                } else {
                    retyped(rng)
                };
                fields.push((key, value));
            }
            2 => fields[i].1 = retyped(rng),
            3 => fields[i].1 = raw("null"),
            4 => {
                let key = &mut fields[i].0;
                *key = match rng.random_range(0..4) {
                    0 => key.to_uppercase(),
                    1 => format!("{key} "),
                    2 => key.replace("lng", "lon"),
                    _ => key[..key.len() / 2].to_string(),
                };
            }
            5 => {
                let key = ["surge", "extra", "", "pickup_", "\u{0}"]
                    .choose(rng)
                    .unwrap()
                    .to_string();
                fields.insert(i, (key, garbage(rng, 0)));
            }
            _ => {
                let key = fields[i].0.clone();
                if let Some(value) = edge(rng, &key) {
                    fields[i].1 = value;
                }
            }
        }
    }
    if rng.random_bool(0.3) {
        // Field order is not part of the contract.
        let n = fields.len();
        for i in (1..n).rev() {
            fields.swap(i, rng.random_range(0..=i));
        }
    }
}

fn ride_event(rng: &mut Gen) -> Node {
    let mut fields: Vec<(String, Node)> = vec![
        (
            "event_type".into(),
            s(
                ["requested", "accepted", "started", "completed", "cancelled"]
                    .choose(rng)
                    .unwrap(),
            ),
        ),
        ("ride_id".into(), Node::Str(id(rng, "ride"))),
        ("timestamp".into(), Node::Str(valid_timestamp(rng))),
        (
            "city".into(),
            Node::Str(if rng.random_bool(0.9) {
                CITIES.choose(rng).unwrap().to_string()
            } else {
                edge_text(rng)
            }),
        ),
        ("user_id".into(), Node::Str(id(rng, "user"))),
    ];
    if rng.random_bool(0.7) {
        let fare = if rng.random_bool(0.9) {
            format!("{:.2}", rng.random_range(0.0..200.0))
        } else {
            number(rng, 0.0, 1e6)
        };
        fields.push(("estimated_fare".into(), raw(fare)));
    }
    if rng.random_bool(0.4) {
        fields.push(("driver_id".into(), Node::Str(id(rng, "driver"))));
    }
    for key in ["pickup", "dropoff"] {
        if rng.random_bool(0.6) {
            fields.push((key.into(), point(rng)));
        }
    }
    mutate_fields(rng, &mut fields, |rng, key| {
        Some(match key {
            "event_type" => s([
                "Requested",
                "requested ",
                "",
                "teleported",
                "REQUESTED",
                "cancelled\u{0}",
            ]
            .choose(rng)
            .unwrap()),
            "timestamp" => Node::Str(timestamp_text(rng)),
            "estimated_fare" => raw(number(rng, 0.0, 1e6)),
            "pickup" | "dropoff" => point(rng),
            "ride_id" | "city" | "user_id" | "driver_id" => Node::Str(edge_text(rng)),
            _ => return None,
        })
    });
    Node::Obj(fields)
}

fn location(rng: &mut Gen) -> Node {
    let mut fields: Vec<(String, Node)> = vec![
        ("driver_id".into(), Node::Str(id(rng, "driver"))),
        ("timestamp".into(), Node::Str(valid_timestamp(rng))),
        (
            "city".into(),
            Node::Str(CITIES.choose(rng).unwrap().to_string()),
        ),
        (
            "lat".into(),
            raw(format!("{:.5}", rng.random_range(-90.0..=90.0))),
        ),
        (
            "lng".into(),
            raw(format!("{:.5}", rng.random_range(-180.0..=180.0))),
        ),
        (
            "status".into(),
            s(["available", "on_trip", "offline"].choose(rng).unwrap()),
        ),
    ];
    mutate_fields(rng, &mut fields, |rng, key| {
        Some(match key {
            "status" => s(["On_Trip", "on-trip", "", "parked", "offline "]
                .choose(rng)
                .unwrap()),
            "timestamp" => Node::Str(timestamp_text(rng)),
            "lat" => raw(number(rng, -90.0, 90.0)),
            "lng" => raw(number(rng, -180.0, 180.0)),
            "driver_id" | "city" => Node::Str(edge_text(rng)),
            _ => return None,
        })
    });
    Node::Obj(fields)
}

/// Byte-level damage: truncation, invalid UTF-8, a stray byte, a BOM, trailing garbage.
fn mutate_bytes(rng: &mut Gen, bytes: &mut Vec<u8>) {
    let at = |rng: &mut Gen, bytes: &Vec<u8>| rng.random_range(0..=bytes.len());
    match rng.random_range(0..9) {
        0 | 1 => {
            let cut = at(rng, bytes);
            bytes.truncate(cut);
        }
        2 => {
            let bad: &[u8] = [
                &b"\xff"[..],
                b"\xc0\x80",
                b"\x80",
                b"\xed\xa0\x80",
                b"\xf4\x90\x80\x80",
                b"\xe2\x82",
            ]
            .choose(rng)
            .unwrap();
            let i = at(rng, bytes);
            bytes.splice(i..i, bad.iter().copied());
        }
        3 if !bytes.is_empty() => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        4 => {
            let i = at(rng, bytes);
            bytes.insert(i, *b"{}[]\":,\\0-e.".choose(rng).unwrap());
        }
        5 => {
            bytes.splice(0..0, *b"\xef\xbb\xbf");
        }
        6 => bytes.extend_from_slice(
            [&b" {}"[..], b"x", b"\x00", b" ", b"}"]
                .choose(rng)
                .unwrap(),
        ),
        7 if !bytes.is_empty() => {
            let i = rng.random_range(0..bytes.len());
            let j = rng.random_range(i..=bytes.len().min(i + 16));
            bytes.drain(i..j);
        }
        _ => {
            let mut wrapped = b"[".to_vec();
            wrapped.extend_from_slice(bytes);
            wrapped.push(b']');
            *bytes = wrapped;
        }
    }
}

/// JSON tokens and the contract's words in random order: often almost an event.
fn token_soup(rng: &mut Gen) -> Vec<u8> {
    const TOKENS: [&str; 36] = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        ",",
        ":",
        "\"event_type\"",
        "\"requested\"",
        "\"ride_id\"",
        "\"r\"",
        "\"timestamp\"",
        "\"2026-11-23T10:00:01Z\"",
        "\"city\"",
        "\"c\"",
        "\"user_id\"",
        "\"u\"",
        "\"estimated_fare\"",
        "1e308",
        "-0",
        "null",
        "true",
        "\"pickup\"",
        "\"lat\"",
        "\"lng\"",
        "\"lon\"",
        "\"driver_id\"",
        "\"lat\"",
        "\"status\"",
        "\"available\"",
        "45",
        "\"",
        "\\",
        "\"\\u",
        " ",
    ];
    let mut out = String::from("{");
    for _ in 0..rng.random_range(0..40) {
        out.push_str(TOKENS.choose(rng).unwrap());
    }
    if rng.random_bool(0.7) {
        out.push('}');
    }
    out.into_bytes()
}

/// Arbitrary bytes, mostly from JSON's alphabet.
fn bytes(rng: &mut Gen) -> Vec<u8> {
    let len = if rng.random_bool(0.9) {
        rng.random_range(0..64)
    } else {
        rng.random_range(0..2048)
    };
    let alphabet = b"{}[]\":,\\ 0123456789.eE+-truefalsnl";
    (0..len)
        .map(|_| {
            if rng.random_bool(0.7) {
                *alphabet.choose(rng).unwrap()
            } else {
                rng.random()
            }
        })
        .collect()
}
