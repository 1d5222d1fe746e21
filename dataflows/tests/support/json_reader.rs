//! A small JSON reader (RFC 8259) written for the parser fuzzer, independent of serde_json, so
//! that "is this message valid JSON, and what does it say?" is decided by other code than the
//! parser under test.
//!
//! It keeps what the contract's checks need and serde_json's `Value` hides: an object's keys
//! in order with duplicates, a number's text next to its value (std's correctly rounded
//! `f64`, infinite when the text is too large), and the reasons a text is not plain valid
//! JSON: a syntax error, invalid UTF-8, a lone UTF-16 surrogate in an escape, or nesting too
//! deep for this reader to judge.

/// A JSON value with object members kept in order, duplicates included.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text and its value (infinite when the text overflows an `f64`).
    Num(String, f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// The member `key` of an object: `None` when absent, `Some(values)` in order when present
    /// (more than one when the key is duplicated).
    pub fn members<'a>(&'a self, key: &str) -> Vec<&'a Json> {
        match self {
            Json::Obj(members) => members
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Does any number inside overflow an `f64` (valid JSON that many readers refuse)?
    pub fn has_huge_number(&self) -> bool {
        match self {
            Json::Num(_, value) => !value.is_finite(),
            Json::Arr(items) => items.iter().any(Json::has_huge_number),
            Json::Obj(members) => members.iter().any(|(_, v)| v.has_huge_number()),
            _ => false,
        }
    }
}

/// Why a text is not plainly valid JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Not UTF-8, a syntax error, trailing content, an unescaped control character...
    Invalid(String),
    /// Valid by the grammar, but an escape is a lone UTF-16 surrogate, which no Rust string
    /// can hold: readers may refuse it or replace it.
    LoneSurrogate,
    /// Nested deeper than [`MAX_DEPTH`]: valid, but readers commonly refuse it.
    TooDeep,
}

/// Deeper nesting is reported as [`Fault::TooDeep`] (serde_json refuses beyond 128).
pub const MAX_DEPTH: usize = 100;

/// Reads one JSON text (surrounding JSON whitespace allowed, nothing else).
pub fn read(bytes: &[u8]) -> Result<Json, Fault> {
    let text = std::str::from_utf8(bytes).map_err(|e| Fault::Invalid(format!("not UTF-8: {e}")))?;
    let mut reader = Reader {
        source: text,
        text: text.as_bytes(),
        at: 0,
    };
    reader.space();
    let value = reader.value(0)?;
    reader.space();
    if reader.at != reader.text.len() {
        return Err(reader.invalid("trailing characters"));
    }
    Ok(value)
}

struct Reader<'a> {
    source: &'a str,
    text: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn invalid(&self, what: &str) -> Fault {
        Fault::Invalid(format!("{what} at byte {}", self.at))
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, Fault> {
        if self.text[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.invalid("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::TooDeep);
        }
        match self.peek() {
            None => Err(self.invalid("unexpected end")),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    self.space();
                    items.push(self.value(depth + 1)?);
                    self.space();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(self.invalid("expected `,` or `]`")),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.space();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.space();
                    if self.peek() != Some(b'"') {
                        return Err(self.invalid("expected a key"));
                    }
                    let key = self.string()?;
                    self.space();
                    if self.peek() != Some(b':') {
                        return Err(self.invalid("expected `:`"));
                    }
                    self.at += 1;
                    self.space();
                    members.push((key, self.value(depth + 1)?));
                    self.space();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Obj(members));
                        }
                        _ => return Err(self.invalid("expected `,` or `}`")),
                    }
                }
            }
            Some(_) => Err(self.invalid("unexpected character")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<Json, Fault> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.invalid("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.invalid("expected a fraction digit"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.invalid("expected an exponent digit"));
            }
        }
        let text = &self.source[start..self.at];
        let value: f64 = text
            .parse()
            .expect("the JSON number grammar is a Rust float");
        Ok(Json::Num(text.to_string(), value))
    }

    fn hex4(&mut self) -> Result<u32, Fault> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.invalid("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.invalid("bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.invalid("bad \\u escape"));
        }
        self.at += 4;
        Ok(u32::from_str_radix(text, 16).expect("hex digits"))
    }

    fn string(&mut self) -> Result<String, Fault> {
        self.at += 1; // the opening quote
        let mut out = String::new();
        loop {
            let start = self.at;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.at += 1;
            }
            // The stops are ASCII, so the run ends on a character boundary.
            out.push_str(&self.source[start..self.at]);
            match self.peek() {
                None => return Err(self.invalid("unterminated string")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escape = self.peek().ok_or_else(|| self.invalid("short escape"))?;
                    self.at += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            let code = match unit {
                                0xD800..=0xDBFF => {
                                    if !self.text[self.at..].starts_with(b"\\u") {
                                        return Err(Fault::LoneSurrogate);
                                    }
                                    self.at += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return Err(Fault::LoneSurrogate);
                                    }
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(Fault::LoneSurrogate),
                                unit => unit,
                            };
                            out.push(char::from_u32(code).expect("a scalar value"));
                        }
                        _ => return Err(self.invalid("unknown escape")),
                    }
                }
                Some(_) => return Err(self.invalid("unescaped control character")),
            }
        }
    }
}

#[test]
fn reads_what_the_rfc_allows_and_nothing_else() {
    let doc = read(br#" {"a": [1, -0, 2.5e3, 1e400, "\u00e1\ud83d\ude00"], "a": null} "#).unwrap();
    assert_eq!(doc.members("a").len(), 2);
    assert!(doc.has_huge_number());
    for bad in [
        &b"{} {}"[..],
        b"{\"a\":01}",
        b"{\"a\":1.}",
        b"{\"a\":NaN}",
        b"[1,]",
        b"\"\x01\"",
        b"\"\xff\"",
        b"{\"a\" 1}",
        b"",
    ] {
        assert!(matches!(read(bad), Err(Fault::Invalid(_))), "{bad:?}");
    }
    assert_eq!(read(br#""\udc00""#), Err(Fault::LoneSurrogate));
    assert_eq!(read(&[b'['; 200]), Err(Fault::TooDeep));
}
