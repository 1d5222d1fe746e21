//! SPEC §2's timestamps judged a second time, for the parser fuzzer: which texts are one of
//! the contract's forms (`Z`, `+00:00` or no offset, any fraction), which are ISO-8601-like
//! but outside them, which are not real date-times, and the instant each one names, with
//! its own grammar and calendar arithmetic (no chrono), so that it cannot share a mistake
//! with `Timestamp::parse`.

/// A timestamp text judged by SPEC §2: the instant it names as an inclusive range of
/// milliseconds (a fraction's digits past the third may be truncated or rounded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ts {
    /// One of the contract's forms (`Z`, `+00:00` or no offset; any fraction): must parse.
    Valid((i64, i64)),
    /// ISO-8601-like but outside the contract's forms (other offsets, lowercase, one-digit
    /// fields, leap second, date only...): may parse, and then to this instant if known.
    Odd(Option<(i64, i64)>),
    /// Not a date-time, or not a real one (month 13, 25:00, 30 February): must be refused.
    Invalid,
}

/// Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The calendar date of a day number (the inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, max: usize) -> Option<(i64, usize)> {
        let start = self.at;
        while self.at < self.text.len()
            && self.at - start < max
            && self.text[self.at].is_ascii_digit()
        {
            self.at += 1;
        }
        let count = self.at - start;
        if count == 0 {
            return None;
        }
        let text = std::str::from_utf8(&self.text[start..self.at]).expect("ASCII digits");
        Some((text.parse().ok()?, count))
    }

    fn eat(&mut self, options: &[u8]) -> Option<u8> {
        let c = *self.text.get(self.at)?;
        if options.contains(&c) {
            self.at += 1;
            Some(c)
        } else {
            None
        }
    }

    fn done(&self) -> bool {
        self.at == self.text.len()
    }
}

/// Judges a timestamp text (see [`Ts`]).
pub fn timestamp(text: &str) -> Ts {
    judge(text).unwrap_or(Ts::Invalid)
}

fn judge(text: &str) -> Option<Ts> {
    let trimmed = text.trim();
    let mut strict = trimmed.len() == text.len();
    let mut c = Cursor {
        text: trimmed.as_bytes(),
        at: 0,
    };
    let negative = match c.eat(b"+-") {
        Some(sign) => {
            strict = false;
            sign == b'-'
        }
        None => false,
    };
    let (year, width) = c.digits(9)?;
    strict &= width == 4;
    let year = if negative { -year } else { year };
    c.eat(b"-")?;
    let (month, width) = c.digits(2)?;
    strict &= width == 2;
    c.eat(b"-")?;
    let (day, width) = c.digits(2)?;
    strict &= width == 2;
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let date = days_from_civil(year, month, day) * 86_400_000;
    if c.done() {
        return Some(Ts::Odd(Some((date, date))));
    }
    strict &= c.eat(b"Tt ")? == b'T';
    let (hour, width) = c.digits(2)?;
    strict &= width == 2;
    c.eat(b":")?;
    let (minute, width) = c.digits(2)?;
    strict &= width == 2;
    let second = if c.eat(b":").is_some() {
        let (second, width) = c.digits(2)?;
        strict &= width == 2;
        second
    } else {
        strict = false;
        0
    };
    let (mut lo_ms, mut hi_ms) = (0, 0);
    let mut fraction_zero = true;
    if let Some(mark) = c.eat(b".,") {
        strict &= mark == b'.';
        let start = c.at;
        while !c.done() && c.text[c.at].is_ascii_digit() {
            c.at += 1;
        }
        let digits = &trimmed[start..c.at];
        if digits.is_empty() {
            strict = false;
        }
        fraction_zero = digits.bytes().all(|d| d == b'0');
        let padded = format!("{digits:0<4}");
        lo_ms = padded[..3].parse::<i64>().expect("digits");
        hi_ms = lo_ms + i64::from(padded.as_bytes()[3] >= b'5');
    }
    let offset_minutes = if c.done() {
        0
    } else if let Some(z) = c.eat(b"Zz") {
        strict &= z == b'Z';
        0
    } else {
        let sign = c.eat(b"+-")?;
        let (hours, width) = c.digits(2)?;
        if width != 2 {
            return None;
        }
        let colon = c.eat(b":").is_some();
        let minutes = match c.digits(2) {
            Some((minutes, 2)) => minutes,
            Some(_) => return None,
            None if colon => return None,
            None => 0,
        };
        if hours > 23 || minutes > 59 {
            return None;
        }
        strict &= colon && sign == b'+' && hours == 0 && minutes == 0;
        (hours * 60 + minutes) * if sign == b'-' { -1 } else { 1 }
    };
    if !c.done() || minute > 59 {
        return None;
    }
    let clock = |h: i64, s: i64| ((h * 60 + minute) * 60 + s) * 1000;
    let base = date - offset_minutes * 60_000;
    let range = match (hour, second) {
        (0..=23, 0..=59) => (
            base + clock(hour, second) + lo_ms,
            base + clock(hour, second) + hi_ms,
        ),
        // A leap second: the last second of the minute or the first of the next one.
        (0..=23, 60) => {
            strict = false;
            (
                base + clock(hour, 59) + lo_ms,
                base + clock(hour, 60) + hi_ms,
            )
        }
        // 24:00:00 is the end of the day.
        (24, 0) if minute == 0 && fraction_zero => {
            strict = false;
            (base + clock(24, 0), base + clock(24, 0))
        }
        _ => return None,
    };
    Some(if strict {
        Ts::Valid(range)
    } else {
        Ts::Odd(Some(range))
    })
}

#[test]
fn the_timestamp_oracle_reads_the_contracts_forms() {
    // 2026-11-23T10:00:01.250Z, computed by hand as in event.rs's tests.
    const T: i64 = (20_780 * 86_400 + 10 * 3600 + 1) * 1000 + 250;
    assert_eq!(days_from_civil(2026, 11, 23), 20_780);
    assert_eq!(civil_from_days(20_780), (2026, 11, 23));
    assert_eq!(days_from_civil(2000, 1, 1) * 86_400_000, 946_684_800_000);
    assert_eq!(days_from_civil(2100, 1, 1) * 86_400_000, 4_102_444_800_000);
    for text in [
        "2026-11-23T10:00:01.250Z",
        "2026-11-23T10:00:01.250+00:00",
        "2026-11-23T10:00:01.250000",
        "2026-11-23T10:00:01.2504999999999999999999999999Z",
    ] {
        assert_eq!(timestamp(text), Ts::Valid((T, T)), "{text}");
    }
    assert_eq!(
        timestamp("2026-11-23T10:00:01.2506Z"),
        Ts::Valid((T, T + 1))
    );
    assert_eq!(
        timestamp("2026-11-23T11:00:01.250+01:00"),
        Ts::Odd(Some((T, T)))
    );
    assert_eq!(timestamp("2026-11-23t10:00:01.250z"), Ts::Odd(Some((T, T))));
    for text in [
        "2026-02-29T00:00:00Z",
        "2026-11-23T10:60:00Z",
        "2026-11-23T10:00:00+24:00",
        "x",
    ] {
        assert_eq!(timestamp(text), Ts::Invalid, "{text}");
    }
}
