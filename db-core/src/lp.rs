//! InfluxDB line protocol parsing.
//!
//! A body of line protocol is a sequence of lines, each describing one point:
//!
//! ```text
//! line         = [ws] measurement *( "," tag ) 1*" " field *( "," field ) [ 1*" " timestamp ] *" "
//! tag          = tag_key "=" tag_value
//! field        = field_key "=" field_value
//! field_value  = float | integer | unsigned | string | boolean
//! float        = [ "-" ] 1*DIGIT [ "." 1*DIGIT ] [ ( "e" | "E" ) [ "+" | "-" ] 1*DIGIT ]
//! integer      = [ "-" ] 1*DIGIT "i"                  ; must fit in i64
//! unsigned     = 1*DIGIT "u"                          ; must fit in u64
//! string       = DQUOTE *( char | "\" DQUOTE | "\\" ) DQUOTE
//! boolean      = "t" | "T" | "true" | "True" | "TRUE" | "f" | "F" | "false" | "False" | "FALSE"
//! timestamp    = [ "-" ] 1*DIGIT                      ; must fit in i64, unit decided by `Precision`
//! ```
//!
//! * Sections are separated by one or more spaces (tabs are not separators).
//!   Leading spaces/tabs before the measurement and trailing spaces after the
//!   last section are ignored.
//! * Escapes (a backslash followed by the listed character stands for that
//!   character; a backslash before anything else is kept literally):
//!   - measurement: `\,` `\ ` `\\`
//!   - tag keys, tag values, field keys: `\,` `\=` `\ ` `\\`
//!   - string field values: `\"` `\\`
//! * An unescaped `=` is allowed inside a measurement and inside a tag value.
//! * Tab and newline characters are not allowed in measurements, tag
//!   keys/values or field keys (not even after a backslash); NUL is not
//!   allowed in a measurement.
//! * A quoted string field value may contain anything, including `,`, `=`,
//!   spaces and raw newlines. When splitting a body into lines with
//!   [`parse_lines`], a newline inside a string value does not end the line.
//! * Within one line, a repeated tag key is an error; a repeated field key is
//!   accepted and the later value wins.
//! * In a body, blank lines and lines whose first non-whitespace character is
//!   `#` (comments) are skipped; a trailing `\r` on a line is removed.
//!
//! Parsed names and string values borrow from the input (`Cow::Borrowed`)
//! unless unescaping actually changed them.
//!
//! # Compatibility notes
//!
//! The grammar follows the InfluxDB 3 (IOx `influxdb_line_protocol`) parser:
//! no leading `+` on numbers, no `.5` / `1.` floats, `-1u` is invalid, an
//! unescaped `=` is fine in a measurement or tag value, timestamps are plain
//! signed integers. Deliberate differences:
//! - an element may end with a (literal or `\\`-escaped) backslash, where
//!   InfluxDB rejects it;
//! - an unescaped `,` inside a tag key or field key is an error (it ends the
//!   key) instead of being part of the key;
//! - float values that overflow to infinity are rejected;
//! - trailing spaces after the field set are accepted.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// The value of a single field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// Signed integer, written with an `i` suffix (`12i`).
    I64(i64),
    /// Unsigned integer, written with a `u` suffix (`12u`).
    U64(u64),
    /// Float, written without a suffix (`1`, `1.5`, `-2e-3`).
    F64(f64),
    /// Boolean (`t`, `true`, `F`, `FALSE`, ...).
    Bool(bool),
    /// Double-quoted string, unescaped.
    Str(Cow<'a, str>),
}

/// One parsed line of line protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine<'a> {
    /// Measurement (table) name, unescaped.
    pub measurement: Cow<'a, str>,
    /// Tag key/value pairs in line order, unescaped. Keys are unique.
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Field key/value pairs in line order (position of the first
    /// occurrence), unescaped; at least one. Keys are unique: when a key is
    /// repeated, the later value wins.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// The timestamp exactly as written (not yet scaled by a [`Precision`]).
    pub timestamp: Option<i64>,
}

/// A line of a body that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based physical line number where the logical line starts.
    pub line_number: usize,
    /// The offending logical line (without the trailing `\r`).
    pub original_line: String,
    /// What is wrong with the line.
    pub message: String,
}

/// Longest part of a rejected line (and of its message) echoed back in an error.
pub const MAX_ECHO: usize = 1024;

/// `text` cut to [`MAX_ECHO`] bytes (at a character boundary), saying how long it was.
pub fn echo(text: &str) -> String {
    if text.len() <= MAX_ECHO {
        return text.to_string();
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

impl LineError {
    /// A line error; the line and the message are cut to [`MAX_ECHO`] bytes, so a huge bad
    /// line does not come back whole in the answer.
    pub fn new(line_number: usize, original_line: &str, message: impl AsRef<str>) -> Self {
        Self { line_number, original_line: echo(original_line), message: echo(message.as_ref()) }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line_number, self.message, self.original_line)
    }
}

impl std::error::Error for LineError {}

// ---------------------------------------------------------------------------
// Element scanning (measurement, tag key, tag value, field key)
// ---------------------------------------------------------------------------

/// Byte classes used by the element scanner.
const NORMAL: u8 = 0;
const STOP: u8 = 1;
const BACKSLASH: u8 = 2;
const INVALID: u8 = 3;

const fn class_table(stops: &[u8], invalid: &[u8]) -> [u8; 256] {
    let mut t = [NORMAL; 256];
    let mut i = 0;
    while i < stops.len() {
        t[stops[i] as usize] = STOP;
        i += 1;
    }
    let mut i = 0;
    while i < invalid.len() {
        t[invalid[i] as usize] = INVALID;
        i += 1;
    }
    t[b'\\' as usize] = BACKSLASH;
    t
}

static MEASUREMENT_CLASSES: [u8; 256] = class_table(b", ", b"\t\n\0");
static KEY_CLASSES: [u8; 256] = class_table(b",= ", b"\t\n");
static TAG_VALUE_CLASSES: [u8; 256] = class_table(b", ", b"\t\n");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    Measurement,
    TagKey,
    TagValue,
    FieldKey,
}

impl Element {
    fn classes(self) -> &'static [u8; 256] {
        match self {
            Element::Measurement => &MEASUREMENT_CLASSES,
            Element::TagKey | Element::FieldKey => &KEY_CLASSES,
            Element::TagValue => &TAG_VALUE_CLASSES,
        }
    }

    fn escapable(self) -> fn(u8) -> bool {
        match self {
            Element::Measurement => is_measurement_escapable,
            Element::TagKey | Element::TagValue | Element::FieldKey => is_key_escapable,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Element::Measurement => "measurement name",
            Element::TagKey => "tag key",
            Element::TagValue => "tag value",
            Element::FieldKey => "field key",
        }
    }
}

fn is_measurement_escapable(b: u8) -> bool {
    matches!(b, b',' | b' ' | b'\\')
}

fn is_key_escapable(b: u8) -> bool {
    matches!(b, b',' | b'=' | b' ' | b'\\')
}

fn is_string_escapable(b: u8) -> bool {
    matches!(b, b'"' | b'\\')
}

/// Scans one element starting at `i`. Returns the index of the unescaped stop
/// byte (or `b.len()`) and whether any escape sequence was seen.
fn scan_element(b: &[u8], mut i: usize, el: Element) -> Result<(usize, bool), String> {
    let classes = el.classes();
    let escapable = el.escapable();
    let mut escaped = false;
    while let Some(&c) = b.get(i) {
        match classes[c as usize] {
            NORMAL => i += 1,
            STOP => return Ok((i, escaped)),
            BACKSLASH => match b.get(i + 1) {
                Some(&next) if escapable(next) => {
                    escaped = true;
                    i += 2;
                }
                // A backslash before anything else is a literal backslash;
                // the following byte is scanned normally.
                _ => i += 1,
            },
            _ => {
                return Err(format!("invalid character {:?} in {}", char::from(c), el.describe()));
            }
        }
    }
    Ok((i, escaped))
}

/// Removes escape backslashes from `raw`. Borrows when `escaped` is false.
fn unescape(raw: &str, escaped: bool, escapable: fn(u8) -> bool) -> Cow<'_, str> {
    if !escaped {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(&next) = bytes.get(i + 1)
            && escapable(next)
        {
            // Both `i` and `i + 1` are ASCII positions, hence char boundaries.
            out.push_str(&raw[run_start..i]);
            run_start = i + 1;
            i += 2;
            continue;
        }
        i += 1;
    }
    out.push_str(&raw[run_start..]);
    Cow::Owned(out)
}

/// Scans a string field value whose opening quote is just before `i`.
/// Returns the index of the closing quote and whether an escape was seen.
fn scan_string(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                if matches!(b.get(i + 1), Some(b'"' | b'\\')) {
                    escaped = true;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

/// Index of the first `,` or ` ` at or after `i`, or `b.len()`.
fn find_value_end(b: &[u8], i: usize) -> usize {
    b.get(i..).and_then(|rest| rest.iter().position(|&c| c == b',' || c == b' ')).map_or(b.len(), |p| i + p)
}

/// Quotes `s` for an error message, truncating very long input.
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

// ---------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    Syntax,
    Range,
}

/// Parses `[-]digits` into an i64. The whole input is validated for syntax
/// before range errors are reported.
fn parse_signed(s: &[u8]) -> Result<i64, NumError> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return Err(NumError::Syntax);
    }
    let mut acc: i64 = 0;
    let mut overflow = false;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(NumError::Syntax);
        }
        if !overflow {
            let v = i64::from(d - b'0');
            let next = acc.checked_mul(10).and_then(|a| if negative { a.checked_sub(v) } else { a.checked_add(v) });
            match next {
                Some(n) => acc = n,
                None => overflow = true,
            }
        }
    }
    if overflow { Err(NumError::Range) } else { Ok(acc) }
}

/// Parses `digits` into a u64 (no sign allowed).
fn parse_unsigned(s: &[u8]) -> Result<u64, NumError> {
    if s.is_empty() {
        return Err(NumError::Syntax);
    }
    let mut acc: u64 = 0;
    let mut overflow = false;
    for &d in s {
        if !d.is_ascii_digit() {
            return Err(NumError::Syntax);
        }
        if !overflow {
            match acc.checked_mul(10).and_then(|a| a.checked_add(u64::from(d - b'0'))) {
                Some(n) => acc = n,
                None => overflow = true,
            }
        }
    }
    if overflow { Err(NumError::Range) } else { Ok(acc) }
}

fn count_digits(s: &[u8], i: usize) -> usize {
    s.get(i..).map_or(0, |rest| rest.iter().take_while(|c| c.is_ascii_digit()).count())
}

/// Checks the float grammar accepted by InfluxDB 3:
/// `[-]DIGITS[.DIGITS][(e|E)[+|-]DIGITS]`.
fn is_float_syntax(s: &[u8]) -> bool {
    let mut i = usize::from(s.first() == Some(&b'-'));
    let n = count_digits(s, i);
    if n == 0 {
        return false;
    }
    i += n;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let n = count_digits(s, i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = count_digits(s, i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == s.len()
}

/// Parses an unquoted field value token (number or boolean).
fn parse_scalar<'a>(tok: &'a str, key: &str) -> Result<FieldValue<'a>, String> {
    let b = tok.as_bytes();
    let invalid = || format!("invalid field value {} for field {}", quoted(tok), quoted(key));
    match b.split_last() {
        Some((b'i', digits)) => {
            return match parse_signed(digits) {
                Ok(v) => Ok(FieldValue::I64(v)),
                Err(NumError::Range) => {
                    Err(format!("integer value out of range for field {}: {}", quoted(key), quoted(tok)))
                }
                Err(NumError::Syntax) => Err(invalid()),
            };
        }
        Some((b'u', digits)) => {
            return match parse_unsigned(digits) {
                Ok(v) => Ok(FieldValue::U64(v)),
                Err(NumError::Range) => {
                    Err(format!("unsigned integer value out of range for field {}: {}", quoted(key), quoted(tok)))
                }
                Err(NumError::Syntax) => Err(invalid()),
            };
        }
        _ => {}
    }
    match tok {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    if !is_float_syntax(b) {
        return Err(invalid());
    }
    match tok.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(FieldValue::F64(v)),
        Ok(_) => Err(format!("float value out of range for field {}: {}", quoted(key), quoted(tok))),
        Err(_) => Err(invalid()),
    }
}

// ---------------------------------------------------------------------------
// Duplicate keys
// ---------------------------------------------------------------------------

/// Returns the first key (in line order) that repeats an earlier key.
fn first_duplicate<'x, V>(items: &'x [(Cow<'_, str>, V)]) -> Option<&'x str> {
    const LINEAR_MAX: usize = 16;
    if items.len() < 2 {
        return None;
    }
    if items.len() <= LINEAR_MAX {
        for j in 1..items.len() {
            let key = items[j].0.as_ref();
            if items[..j].iter().any(|(k, _)| k.as_ref() == key) {
                return Some(key);
            }
        }
        None
    } else {
        let mut seen = HashSet::with_capacity(items.len());
        items.iter().map(|(k, _)| k.as_ref()).find(|&k| !seen.insert(k))
    }
}

/// Collapses repeated field keys: the entry keeps the position of the first
/// occurrence and the value of the last one.
fn dedupe_fields(fields: &mut Vec<(Cow<'_, str>, FieldValue<'_>)>) {
    if first_duplicate(fields).is_none() {
        return;
    }
    let first_index: Vec<usize> = {
        let mut map: HashMap<&str, usize> = HashMap::with_capacity(fields.len());
        fields.iter().enumerate().map(|(i, (k, _))| *map.entry(k.as_ref()).or_insert(i)).collect()
    };
    let mut slots: Vec<Option<_>> = fields.drain(..).map(Some).collect();
    for (i, &first) in first_index.iter().enumerate() {
        if first != i
            && let Some((_, value)) = slots.get_mut(i).and_then(Option::take)
            && let Some(Some(slot)) = slots.get_mut(first)
        {
            slot.1 = value;
        }
    }
    fields.extend(slots.into_iter().flatten());
}

// ---------------------------------------------------------------------------
// Line parser
// ---------------------------------------------------------------------------

/// Parses one logical line of line protocol.
///
/// The line must not contain comment or blank-line handling, nor a trailing
/// `\r` (see [`parse_lines`] for bodies). Raw newlines are only allowed
/// inside quoted string field values.
pub fn parse_line(line: &str) -> Result<ParsedLine<'_>, String> {
    let b = line.as_bytes();

    // Leading whitespace.
    let mut i = 0;
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    if i == b.len() {
        return Err("empty line".to_string());
    }

    // Measurement.
    let (end, escaped) = scan_element(b, i, Element::Measurement)?;
    if end == i {
        return Err("empty measurement name".to_string());
    }
    let measurement = unescape(&line[i..end], escaped, is_measurement_escapable);
    i = end;

    // Tag set.
    let mut tags = Vec::new();
    while b.get(i) == Some(&b',') {
        let key_start = i + 1;
        let (key_end, key_escaped) = scan_element(b, key_start, Element::TagKey)?;
        let raw_key = &line[key_start..key_end];
        if raw_key.is_empty() {
            return Err("empty tag key".to_string());
        }
        if b.get(key_end) != Some(&b'=') {
            return Err(format!("missing tag value for tag {}", quoted(raw_key)));
        }
        let value_start = key_end + 1;
        let (value_end, value_escaped) = scan_element(b, value_start, Element::TagValue)?;
        if value_end == value_start {
            return Err(format!("missing tag value for tag {}", quoted(raw_key)));
        }
        tags.push((
            unescape(raw_key, key_escaped, is_key_escapable),
            unescape(&line[value_start..value_end], value_escaped, is_key_escapable),
        ));
        i = value_end;
    }
    if let Some(dup) = first_duplicate(&tags) {
        return Err(format!("duplicate tag key {}", quoted(dup)));
    }

    // Field set: `i` is at a space or at the end of the line.
    i = skip_spaces(b, i);
    if i >= b.len() {
        return Err("missing fields".to_string());
    }
    let mut fields = Vec::new();
    loop {
        let key_start = i;
        let (key_end, key_escaped) = scan_element(b, key_start, Element::FieldKey)?;
        let raw_key = &line[key_start..key_end];
        if raw_key.is_empty() {
            return Err("empty field key".to_string());
        }
        if b.get(key_end) != Some(&b'=') {
            return Err(format!("missing field value for field {}", quoted(raw_key)));
        }
        let value_start = key_end + 1;
        let value = match b.get(value_start) {
            None | Some(b',' | b' ') => {
                return Err(format!("missing field value for field {}", quoted(raw_key)));
            }
            Some(b'"') => {
                let content_start = value_start + 1;
                let Some((close, escaped)) = scan_string(b, content_start) else {
                    return Err(format!("unterminated string field value for field {}", quoted(raw_key)));
                };
                i = close + 1;
                if !matches!(b.get(i), None | Some(b',' | b' ')) {
                    let garbage_end = find_value_end(b, i);
                    return Err(format!(
                        "invalid field value {} for field {}: unexpected characters after closing quote",
                        quoted(&line[value_start..garbage_end]),
                        quoted(raw_key)
                    ));
                }
                FieldValue::Str(unescape(&line[content_start..close], escaped, is_string_escapable))
            }
            Some(_) => {
                let value_end = find_value_end(b, value_start);
                i = value_end;
                parse_scalar(&line[value_start..value_end], raw_key)?
            }
        };
        fields.push((unescape(raw_key, key_escaped, is_key_escapable), value));
        if b.get(i) == Some(&b',') {
            i += 1;
        } else {
            break;
        }
    }

    // Optional timestamp, then only trailing spaces.
    i = skip_spaces(b, i);
    let mut timestamp = None;
    if i < b.len() {
        let ts_start = i;
        let ts_end = b.get(i..).and_then(|rest| rest.iter().position(|&c| c == b' ')).map_or(b.len(), |p| i + p);
        let tok = &line[ts_start..ts_end];
        timestamp = Some(match parse_signed(tok.as_bytes()) {
            Ok(ts) => ts,
            Err(NumError::Syntax) => return Err(format!("invalid timestamp {}", quoted(tok))),
            Err(NumError::Range) => return Err(format!("timestamp out of range {}", quoted(tok))),
        });
        i = skip_spaces(b, ts_end);
        if i < b.len() {
            return Err(format!("unexpected trailing content after timestamp: {}", quoted(&line[i..])));
        }
    }

    dedupe_fields(&mut fields);
    Ok(ParsedLine { measurement, tags, fields, timestamp })
}

// ---------------------------------------------------------------------------
// Body splitting
// ---------------------------------------------------------------------------

/// Iterator over the lines of a body; see [`parse_lines`].
#[derive(Debug, Clone)]
pub struct LineIter<'a> {
    body: &'a str,
    pos: usize,
    line_number: usize,
}

/// Parses a body of line protocol, one item per logical line.
///
/// Blank lines and comment lines (first non-whitespace character `#`) are
/// skipped. A trailing `\r` is removed from each line. A newline inside a
/// quoted string field value does not end the logical line; the reported
/// line number is the 1-based physical line on which the logical line starts.
/// Errors do not stop the iteration.
pub fn parse_lines(body: &str) -> LineIter<'_> {
    LineIter { body, pos: 0, line_number: 1 }
}

impl<'a> Iterator for LineIter<'a> {
    type Item = Result<(usize, &'a str, ParsedLine<'a>), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.body.as_bytes();
        loop {
            let start = self.pos;
            if start >= b.len() {
                return None;
            }
            let mut content = start;
            while matches!(b.get(content), Some(b' ' | b'\t' | b'\r')) {
                content += 1;
            }
            match b.get(content) {
                None => {
                    self.pos = b.len();
                    return None;
                }
                Some(b'\n') => {
                    self.pos = content + 1;
                    self.line_number += 1;
                    continue;
                }
                Some(b'#') => {
                    self.pos = find_byte(b, content, b'\n').map_or(b.len(), |nl| nl + 1);
                    self.line_number += 1;
                    continue;
                }
                Some(_) => {}
            }

            // Speculatively parse up to the next newline. A newline can only
            // belong to the line if it is inside a string field value, and a
            // line cut inside a string never parses (unterminated string), so
            // the exact logical line end is only computed when parsing fails.
            let physical_end = find_byte(b, content, b'\n').unwrap_or(b.len());
            let mut end = physical_end;
            let mut inner_newlines = 0;
            // `start` and `end` are at ASCII bytes (or the ends of the body).
            let mut raw = strip_cr(&self.body[start..end]);
            let mut result = parse_line(raw);
            if result.is_err() {
                (end, inner_newlines) = find_line_end(b, content);
                if end != physical_end {
                    raw = strip_cr(&self.body[start..end]);
                    result = parse_line(raw);
                }
            }

            let line_number = self.line_number;
            self.line_number += 1 + inner_newlines;
            self.pos = if end < b.len() { end + 1 } else { b.len() };
            return Some(match result {
                Ok(parsed) => Ok((line_number, raw, parsed)),
                Err(message) => Err(LineError::new(line_number, raw, message)),
            });
        }
    }
}

fn strip_cr(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

fn find_byte(b: &[u8], from: usize, needle: u8) -> Option<usize> {
    b.get(from..).and_then(|rest| rest.iter().position(|&c| c == needle)).map(|p| from + p)
}

/// Finds the end (index of the terminating `\n`, or `b.len()`) of the logical
/// line whose first non-whitespace byte is at `from`, and the number of
/// newlines inside it (i.e. inside string field values).
///
/// For a line that parses, this always agrees with the parser: both find
/// string values at the same places (right after the `=` of a field).
fn find_line_end(b: &[u8], from: usize) -> (usize, usize) {
    // Fast path: no quote before the next newline means no string value can
    // span it.
    let rest = b.get(from..).unwrap_or_default();
    match rest.iter().position(|&c| c == b'\n' || c == b'"') {
        None => (b.len(), 0),
        Some(p) if rest[p] == b'\n' => (from + p, 0),
        Some(_) => find_line_end_slow(b, from),
    }
}

/// State machine mirroring the parser closely enough to know whether a
/// newline is inside a quoted string field value.
fn find_line_end_slow(b: &[u8], from: usize) -> (usize, usize) {
    #[derive(Clone, Copy)]
    enum State {
        Series,
        Key,
        ValueStart,
        Value,
        Str,
        Tail,
    }
    let mut state = State::Series;
    let mut newlines = 0;
    let mut i = from;
    while let Some(&c) = b.get(i) {
        match state {
            State::Series => match c {
                b'\n' => return (i, newlines),
                b'\\' if b.get(i + 1).is_some_and(|&n| is_key_escapable(n)) => i += 1,
                b' ' => {
                    while b.get(i + 1) == Some(&b' ') {
                        i += 1;
                    }
                    state = State::Key;
                }
                _ => {}
            },
            State::Key => match c {
                b'\n' => return (i, newlines),
                b'\\' if b.get(i + 1).is_some_and(|&n| is_key_escapable(n)) => i += 1,
                b'=' => state = State::ValueStart,
                b' ' => state = State::Tail,
                _ => {}
            },
            State::ValueStart => {
                if c == b'"' {
                    state = State::Str;
                } else {
                    // Re-examine this byte as part of an unquoted value.
                    state = State::Value;
                    continue;
                }
            }
            State::Value => match c {
                b'\n' => return (i, newlines),
                b',' => state = State::Key,
                b' ' => state = State::Tail,
                _ => {}
            },
            State::Str => match c {
                b'"' => state = State::Value,
                b'\\' if b.get(i + 1).is_some_and(|&n| is_string_escapable(n)) => i += 1,
                b'\n' => newlines += 1,
                _ => {}
            },
            State::Tail => {
                if c == b'\n' {
                    return (i, newlines);
                }
            }
        }
        i += 1;
    }
    (b.len(), newlines)
}

// ---------------------------------------------------------------------------
// Precision
// ---------------------------------------------------------------------------

/// Unit of the timestamps in a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Guess the unit from the magnitude of each timestamp (InfluxDB 3 Core
    /// behaviour); see [`Precision::to_nanos`].
    #[default]
    Auto,
    /// Seconds.
    Second,
    /// Milliseconds.
    Millisecond,
    /// Microseconds.
    Microsecond,
    /// Nanoseconds.
    Nanosecond,
}

const VALID_PRECISIONS: &str = "auto, s, second, ms, millisecond, us, u, microsecond, ns, n, nanosecond";

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Precision::Auto,
            "s" | "second" => Precision::Second,
            "ms" | "millisecond" => Precision::Millisecond,
            "us" | "u" | "microsecond" => Precision::Microsecond,
            "ns" | "n" | "nanosecond" => Precision::Nanosecond,
            _ => {
                return Err(format!("invalid precision {}: expected one of {VALID_PRECISIONS}", quoted(s)));
            }
        })
    }
}

impl Precision {
    /// Converts a raw timestamp in this precision to nanoseconds since the
    /// epoch; `None` if the result does not fit in an i64.
    ///
    /// `Auto` picks the unit from the absolute value of `ts`, with the same
    /// thresholds as InfluxDB 3 Core's `guess_precision` (which computes
    /// `abs(ts) / 1e9` and compares it with 5, 5 000 and 5 000 000):
    ///
    /// - `abs(ts) < 5e9`  → seconds
    /// - `abs(ts) < 5e12` → milliseconds
    /// - `abs(ts) < 5e15` → microseconds
    /// - otherwise        → nanoseconds
    ///
    /// With these thresholds `Auto` never overflows. Unlike InfluxDB (whose
    /// `abs()` overflows for `i64::MIN`), `i64::MIN` is treated as
    /// nanoseconds.
    pub fn to_nanos(self, ts: i64) -> Option<i64> {
        ts.checked_mul(self.resolve(ts).multiplier())
    }

    /// The concrete unit used for `ts` (never `Auto`).
    fn resolve(self, ts: i64) -> Precision {
        match self {
            Precision::Auto => {
                let magnitude = ts.unsigned_abs();
                if magnitude < 5_000_000_000 {
                    Precision::Second
                } else if magnitude < 5_000_000_000_000 {
                    Precision::Millisecond
                } else if magnitude < 5_000_000_000_000_000 {
                    Precision::Microsecond
                } else {
                    Precision::Nanosecond
                }
            }
            other => other,
        }
    }

    /// Nanoseconds per unit; `Auto` must be resolved first (it maps to 1).
    fn multiplier(self) -> i64 {
        match self {
            Precision::Second => 1_000_000_000,
            Precision::Millisecond => 1_000_000,
            Precision::Microsecond => 1_000,
            Precision::Nanosecond | Precision::Auto => 1,
        }
    }
}

#[cfg(test)]
mod tests;
