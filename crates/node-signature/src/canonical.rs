//! The bytes a node frame's HMAC covers, exactly as seed 000's Python
//! computes them: `json.loads(frame)`, drop the top-level `signature`, then
//! `json.dumps(..., sort_keys=True, separators=(',', ':'))`.
//!
//! This is its own small JSON reader rather than `serde_json`, because the
//! signature depends on details serde does not keep: which numbers were
//! written as floats (`1.0`, `1E2`) and which as integers of any size, string
//! contents Python can hold but Rust cannot (lone surrogates such as
//! `"\ud800"`), and Python's key order. It reads CPython's `json` grammar
//! (the C scanner, strict mode), with three deliberate refusals: the
//! non-JSON literals `NaN`/`Infinity`/`-Infinity`, nesting deeper than
//! [`MAX_DEPTH`], and integers longer than CPython's 4300-digit limit (Python
//! refuses those too).
//!
//! It never decides whether a frame is acceptable, only what was signed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

/// Deepest nesting accepted. CPython gives up near 1000 (its recursion
/// limit); real frames nest a handful of levels, and a bound keeps a hostile
/// frame from exhausting the stack.
pub const MAX_DEPTH: usize = 512;

/// CPython 3.11+ refuses to convert integers with more decimal digits than
/// this (`sys.get_int_max_str_digits()`), so it can never have signed one.
pub const MAX_INT_DIGITS: usize = 4300;

/// Why a frame's signed bytes could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("frame is not valid JSON: {why} at byte {at}")]
    Syntax { why: &'static str, at: usize },
    #[error("frame is not a JSON object")]
    NotObject,
    #[error("frame nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("integer of {digits} digits exceeds the {max}-digit limit")]
    IntegerTooLong { digits: usize, max: usize },
}

/// A string as Python holds it: a sequence of code points, which may include
/// lone surrogates (`json.loads('"\\ud800"')` is a valid one-character str).
/// Ordering is Python's: code point by code point, a prefix first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PyStr(Vec<u32>);

impl PyStr {
    fn is(&self, s: &str) -> bool {
        self.0.iter().copied().eq(s.chars().map(u32::from))
    }

    /// The Rust string, when it holds no lone surrogate.
    fn to_string_lossless(&self) -> Option<String> {
        self.0.iter().map(|&c| char::from_u32(c)).collect()
    }
}

/// One JSON value as Python's `json` module represents it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    /// Decimal digits with an optional leading `-`, already normalised the
    /// way Python's `int` prints them (`-0` becomes `0`).
    Int(String),
    Float(f64),
    Str(PyStr),
    Array(Vec<Value>),
    /// Keys unique (the last duplicate wins, as in a Python dict) and sorted
    /// in Python's order.
    Object(BTreeMap<PyStr, Value>),
}

/// A node frame read as Python reads it.
#[derive(Debug, Clone)]
pub struct CanonicalFrame<'t> {
    text: &'t str,
    /// Top-level members in the order written, with the byte range of each
    /// `"key":value` pair, so a signature can be spliced in without
    /// re-encoding the caller's text.
    members: Vec<(PyStr, Range<usize>)>,
    fields: BTreeMap<PyStr, Value>,
    signed_bytes: String,
}

impl<'t> CanonicalFrame<'t> {
    /// Parses `text`, which must be one JSON object.
    pub fn parse(text: &'t str) -> Result<Self, CanonicalError> {
        let mut p = Parser { text, pos: 0 };
        p.skip_ws();
        if p.peek() != Some(b'{') {
            // Tell "not JSON at all" from "JSON, but not an object".
            p.value(0)?;
            p.skip_ws();
            return Err(if p.pos == text.len() {
                CanonicalError::NotObject
            } else {
                p.err("extra data")
            });
        }
        let (fields, members) = p.object(0)?;
        p.skip_ws();
        if p.pos != text.len() {
            return Err(p.err("extra data"));
        }
        let mut signed_bytes = String::with_capacity(text.len());
        write_object(&mut signed_bytes, fields.iter().filter(|(k, _)| !k.is("signature")));
        Ok(Self {
            text,
            members,
            fields,
            signed_bytes,
        })
    }

    /// Python's `payload_str`: the bytes the HMAC is computed over.
    pub fn signed_bytes(&self) -> &str {
        &self.signed_bytes
    }

    /// The top-level `signature`: `None` when absent, `Some(None)` when it is
    /// present but not a string.
    pub fn signature(&self) -> Option<Option<String>> {
        self.fields
            .iter()
            .find(|(k, _)| k.is("signature"))
            .map(|(_, v)| match v {
                Value::Str(s) => s.to_string_lossless(),
                _ => None,
            })
    }

    /// A top-level string field (`node_id`, `message_id`, ...); `None` when
    /// absent, not a string, or holding a lone surrogate.
    pub fn str_field(&self, name: &str) -> Option<String> {
        self.fields.iter().find(|(k, _)| k.is(name)).and_then(|(_, v)| match v {
            Value::Str(s) => s.to_string_lossless(),
            _ => None,
        })
    }

    /// The frame's own text with every top-level `signature` removed and
    /// `"signature":"<signature>"` appended as the last member, the way a
    /// Python sender sets `message['signature']`. Everything else keeps the
    /// caller's spelling, so numbers like `1e400` survive unchanged.
    pub fn with_signature(&self, signature: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + signature.len() + 16);
        out.push('{');
        for (key, span) in &self.members {
            if !key.is("signature") {
                out.push_str(&self.text[span.clone()]);
                out.push(',');
            }
        }
        out.push_str("\"signature\":");
        write_str(&mut out, signature.chars().map(u32::from));
        out.push('}');
        out
    }
}

/// Python's `payload_str` for `text`: the frame minus its top-level
/// `signature`, as `json.dumps(sort_keys=True, separators=(',', ':'))`.
pub fn signed_bytes(text: &str) -> Result<String, CanonicalError> {
    CanonicalFrame::parse(text).map(|f| f.signed_bytes)
}

/// A recursive-descent reader of CPython's strict JSON grammar.
struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

type Members = Vec<(PyStr, Range<usize>)>;

impl Parser<'_> {
    fn bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn err(&self, why: &'static str) -> CanonicalError {
        CanonicalError::Syntax { why, at: self.pos }
    }

    /// Python's `json` whitespace is exactly these four; a BOM or U+00A0 is
    /// an error there and so here.
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8, why: &'static str) -> Result<(), CanonicalError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(why))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, CanonicalError> {
        match self.peek() {
            Some(b'{') => Ok(Value::Object(self.object(depth)?.0)),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            _ => Err(self.err("expecting value")),
        }
    }

    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, CanonicalError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("expecting value"))
        }
    }

    fn enter(&self, depth: usize) -> Result<usize, CanonicalError> {
        if depth >= MAX_DEPTH {
            Err(CanonicalError::TooDeep { max: MAX_DEPTH })
        } else {
            Ok(depth + 1)
        }
    }

    /// An object; also returns where each member was written, which only the
    /// top level needs.
    fn object(&mut self, depth: usize) -> Result<(BTreeMap<PyStr, Value>, Members), CanonicalError> {
        let depth = self.enter(depth)?;
        self.expect(b'{', "expecting '{'")?;
        let mut map = BTreeMap::new();
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok((map, members));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expecting property name enclosed in double quotes"));
            }
            let start = self.pos;
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':', "expecting ':' delimiter")?;
            self.skip_ws();
            let value = self.value(depth)?;
            if depth == 1 {
                members.push((key.clone(), start..self.pos));
            }
            // A Python dict keeps the last value written for a key.
            map.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok((map, members));
                }
                _ => return Err(self.err("expecting ',' delimiter")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, CanonicalError> {
        let depth = self.enter(depth)?;
        self.expect(b'[', "expecting '['")?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expecting ',' delimiter")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let digits = self
            .bytes()
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let n = char::from(d)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<PyStr, CanonicalError> {
        self.expect(b'"', "expecting '\"'")?;
        let mut out = Vec::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(c) = rest.chars().next() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(PyStr(out));
                }
                // Python's strict mode refuses raw control characters
                // (but not DEL) inside strings.
                '\u{0}'..='\u{1f}' => return Err(self.err("invalid control character")),
                '\\' => {
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.pos += 1;
                    let cp = match e {
                        b'"' => 0x22,
                        b'\\' => 0x5c,
                        b'/' => 0x2f,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => 0x0a,
                        b'r' => 0x0d,
                        b't' => 0x09,
                        b'u' => self.unicode_escape()?,
                        _ => {
                            self.pos -= 1;
                            return Err(self.err("invalid \\escape"));
                        }
                    };
                    out.push(cp);
                }
                c => {
                    self.pos += c.len_utf8();
                    out.push(u32::from(c));
                }
            }
        }
    }

    /// After `\u`: one code point. A high surrogate followed by an escaped
    /// low one is joined into one astral code point; any other surrogate is
    /// kept alone, as CPython does.
    fn unicode_escape(&mut self) -> Result<u32, CanonicalError> {
        let hi = self.hex4()?;
        if (0xd800..=0xdbff).contains(&hi) && self.text[self.pos..].starts_with("\\u") {
            let save = self.pos;
            self.pos += 2;
            let lo = self.hex4()?;
            if (0xdc00..=0xdfff).contains(&lo) {
                return Ok(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
            }
            self.pos = save;
        }
        Ok(hi)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`: an `int` without a
    /// fraction or exponent, a `float` otherwise, as in Python.
    fn number(&mut self) -> Result<Value, CanonicalError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let s = p.pos;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos - s
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            // `-Infinity` is Python's, not JSON's.
            _ => return Err(self.err("expecting value")),
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err("expecting digits after '.'"));
            }
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("expecting exponent digits"));
            }
            is_float = true;
        }
        let text = &self.text[start..self.pos];
        if is_float {
            // Rust's and CPython's float parsing are both correctly rounded;
            // out-of-range values become ±inf (or ±0) in both.
            let f: f64 = text.parse().map_err(|_| CanonicalError::Syntax {
                why: "invalid number",
                at: start,
            })?;
            return Ok(Value::Float(f));
        }
        let magnitude = text[..int_end - start].trim_start_matches('-');
        if magnitude.len() > MAX_INT_DIGITS {
            return Err(CanonicalError::IntegerTooLong {
                digits: magnitude.len(),
                max: MAX_INT_DIGITS,
            });
        }
        // The grammar forbids leading zeros, so only `-0` needs normalising.
        Ok(Value::Int(if magnitude == "0" { "0".into() } else { text.into() }))
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(digits) => out.push_str(digits),
        Value::Float(f) => write_float(out, *f),
        Value::Str(s) => write_str(out, s.0.iter().copied()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map.iter()),
    }
}

fn write_object<'a>(out: &mut String, members: impl Iterator<Item = (&'a PyStr, &'a Value)>) {
    out.push('{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, k.0.iter().copied());
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

/// `json.dumps` with `ensure_ascii=True`: printable ASCII as is, the five
/// short escapes, everything else as lowercase `\uXXXX` (astral code points
/// as a surrogate pair; DEL included, since Python only passes ' '..'~').
fn write_str(out: &mut String, code_points: impl Iterator<Item = u32>) {
    out.push('"');
    for c in code_points {
        match c {
            0x22 => out.push_str("\\\""),
            0x5c => out.push_str("\\\\"),
            0x0a => out.push_str("\\n"),
            0x0d => out.push_str("\\r"),
            0x09 => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0x20..=0x7e => out.push(char::from(c as u8)),
            0..=0xffff => {
                let _ = write!(out, "\\u{c:04x}");
            }
            _ => {
                let v = c - 0x10000;
                let _ = write!(out, "\\u{:04x}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in [-4, 16), scientific otherwise,
/// and `json.dumps`'s spellings for the non-finite values.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    if f == 0.0 {
        out.push_str("0.0");
        return;
    }
    // Rust's `{:e}` without a precision is also shortest-round-trip; it only
    // spells the result differently (`1.2345e17`).
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    // Position of the decimal point relative to the first digit.
    let decpt = exp + 1;
    if decpt > 16 || decpt <= -4 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', decpt.unsigned_abs() as usize));
        out.push_str(&digits);
    } else if decpt >= n {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
        out.push_str(".0");
    } else {
        let (a, b) = digits.split_at(decpt as usize);
        out.push_str(a);
        out.push('.');
        out.push_str(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        signed_bytes(text).unwrap()
    }

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (0.00123, "0.00123"),
            (1.5e300, "1.5e+300"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(float(f), want, "{f:?}");
        }
    }

    #[test]
    fn floats_and_ints_keep_their_python_type() {
        assert_eq!(
            canon(r#"{"a":1,"b":1.0,"c":1E2,"d":-0,"e":-0.0,"f":10e-1}"#),
            r#"{"a":1,"b":1.0,"c":100.0,"d":0,"e":-0.0,"f":1.0}"#
        );
    }

    #[test]
    fn integers_of_any_size_round_trip_exactly() {
        let big = "-1180591620717411303424123456789012345678901234567890";
        assert_eq!(canon(&format!(r#"{{"n":{big}}}"#)), format!(r#"{{"n":{big}}}"#));
        let too_long = format!(r#"{{"n":{}}}"#, "9".repeat(MAX_INT_DIGITS + 1));
        assert!(matches!(
            signed_bytes(&too_long),
            Err(CanonicalError::IntegerTooLong { .. })
        ));
    }

    #[test]
    fn keys_sort_by_code_point_not_utf16() {
        // U+FB00 sorts before U+1F600 by code point, after it in UTF-16.
        assert_eq!(
            canon("{\"😀\":1,\"\u{fb00}\":2,\"b\":3,\"B\":4}"),
            r#"{"B":4,"b":3,"\ufb00":2,"\ud83d\ude00":1}"#
        );
    }

    #[test]
    fn strings_escape_like_ensure_ascii() {
        assert_eq!(
            canon("{\"s\":\"\\\"\\\\\\/\\n\\r\\t\\b\\f\\u0001\u{7f}é노\"}"),
            r#"{"s":"\"\\/\n\r\t\b\f\u0001\u007f\u00e9\ub178"}"#
        );
    }

    #[test]
    fn lone_surrogates_survive_and_pairs_join() {
        assert_eq!(
            canon(r#"{"s":"\ud800 \uDC00\ud83d\ude00\ud83d\u0041"}"#),
            r#"{"s":"\ud800 \udc00\ud83d\ude00\ud83dA"}"#
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        assert_eq!(canon(r#"{"k":1,"k":{"x":2},"a":0}"#), r#"{"a":0,"k":{"x":2}}"#);
    }

    #[test]
    fn only_the_top_level_signature_is_left_out() {
        let f = CanonicalFrame::parse(r#"{"signature":"ab","p":{"signature":1},"signature":"cd"}"#).unwrap();
        assert_eq!(f.signed_bytes(), r#"{"p":{"signature":1}}"#);
        assert_eq!(f.signature(), Some(Some("cd".into())));
        let f = CanonicalFrame::parse(r#"{"signature":7}"#).unwrap();
        assert_eq!(f.signature(), Some(None));
        assert_eq!(CanonicalFrame::parse("{}").unwrap().signature(), None);
    }

    #[test]
    fn non_json_input_is_refused() {
        for bad in [
            r#"{"a":NaN}"#,
            r#"{"a":Infinity}"#,
            r#"{"a":-Infinity}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1,}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"tab\there\"}",
            "\u{feff}{}",
            "{} {}",
            "{'a':1}",
            "",
        ] {
            assert!(
                matches!(signed_bytes(bad), Err(CanonicalError::Syntax { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn non_objects_are_told_apart_from_bad_json() {
        assert_eq!(signed_bytes("[1]"), Err(CanonicalError::NotObject));
        assert_eq!(signed_bytes(" \"s\" "), Err(CanonicalError::NotObject));
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(signed_bytes(&ok).is_ok());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(signed_bytes(&deep), Err(CanonicalError::TooDeep { max: MAX_DEPTH }));
    }

    #[test]
    fn with_signature_replaces_every_signature_and_keeps_the_rest_verbatim() {
        let f = CanonicalFrame::parse("{ \"signature\" : \"x\", \"n\" : 1e400 ,\"signature\":2}").unwrap();
        assert_eq!(f.with_signature("abc"), r#"{"n" : 1e400,"signature":"abc"}"#);
        assert_eq!(
            CanonicalFrame::parse("{}").unwrap().with_signature("s"),
            r#"{"signature":"s"}"#
        );
    }

    #[test]
    fn string_fields_are_read_at_the_top_level_only() {
        let f = CanonicalFrame::parse(r#"{"node_id":"n\u00e9","n":1,"bad":"\ud800","p":{"message_id":"m"}}"#).unwrap();
        assert_eq!(f.str_field("node_id").as_deref(), Some("né"));
        assert_eq!(f.str_field("n"), None);
        assert_eq!(f.str_field("bad"), None);
        assert_eq!(f.str_field("message_id"), None);
    }
}
