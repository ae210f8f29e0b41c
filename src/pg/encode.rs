//! Rows to JSON, written straight into the response buffer: no intermediate
//! `serde_json::Value` per row. Every value arrives in Postgres's text format and is rendered by
//! its type's [`ValueKind`] (`types: "json"`) or as its text output (`types: "text"`).

use std::io;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::DataRowBody;

use super::json::{write_json_array, write_json_string};
use super::statement::Field;
use super::types::{PgType, ValueKind};

/// `rowMode` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowMode {
    #[default]
    Object,
    Array,
}

/// `types` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    #[default]
    Json,
    Text,
}

/// Writes the rows of one statement's result.
pub struct RowEncoder {
    mode: RowMode,
    format: ValueFormat,
    /// Reused for unescaping quoted array elements.
    scratch: Vec<u8>,
}

impl RowEncoder {
    pub fn new(mode: RowMode, format: ValueFormat) -> Self {
        RowEncoder {
            mode,
            format,
            scratch: Vec::new(),
        }
    }

    /// `[{"name": …, "oid": …, "type": …}, …]`
    pub fn write_fields(fields: &[Field], out: &mut Vec<u8>) {
        write_json_array(out, fields, |out, field| {
            out.extend_from_slice(b"{\"name\":");
            write_json_string(out, field.name.as_bytes());
            out.extend_from_slice(b",\"oid\":");
            out.extend_from_slice(itoa::Buffer::new().format(field.ty.oid).as_bytes());
            out.extend_from_slice(b",\"type\":");
            write_json_string(out, field.ty.name.as_bytes());
            out.push(b'}');
        });
    }

    /// One row, as an object keyed by column name or an array in column order.
    pub fn write_row(
        &mut self,
        out: &mut Vec<u8>,
        fields: &[Field],
        row: &DataRowBody,
    ) -> io::Result<()> {
        let buffer = row.buffer();
        let mut ranges = row.ranges();
        let (open, close) = match self.mode {
            RowMode::Object => (b'{', b'}'),
            RowMode::Array => (b'[', b']'),
        };
        out.push(open);
        let mut index = 0;
        while let Some(range) = ranges.next()? {
            let Some(field) = fields.get(index) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "row has more columns than its description",
                ));
            };
            if index > 0 {
                out.push(b',');
            }
            if self.mode == RowMode::Object {
                out.extend_from_slice(&field.json_key);
            }
            match range {
                None => out.extend_from_slice(b"null"),
                Some(range) => {
                    let raw = &buffer[range];
                    match self.format {
                        ValueFormat::Text => write_json_string(out, raw),
                        ValueFormat::Json => write_typed(out, &field.ty, raw, &mut self.scratch),
                    }
                }
            }
            index += 1;
        }
        if index != fields.len() {
            // A server that describes seven columns and sends two: the row would silently
            // lose columns (or, as an object, keys).
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "row has fewer columns than its description",
            ));
        }
        out.push(close);
        Ok(())
    }
}

/// A value in `types: "json"` mode.
pub fn write_typed(out: &mut Vec<u8>, ty: &PgType, raw: &[u8], scratch: &mut Vec<u8>) {
    match &ty.kind {
        ValueKind::Array { element, delimiter } => {
            let mark = out.len();
            if write_array(out, element, *delimiter, raw, scratch).is_none() {
                // Not an array literal after all (cannot happen for Postgres's own output):
                // the text output is still a faithful answer.
                out.truncate(mark);
                write_json_string(out, raw);
            }
        }
        kind => write_scalar(out, kind, raw),
    }
}

/// Text embedded in the response as it is (numbers, `json`) is checked first: Postgres's own
/// output always passes, but a broken or hostile server (or a proxy in between) must not be able
/// to break the response's JSON or inject members into it. What fails the check is sent as a
/// JSON string, as every type without a rule is.
fn write_scalar(out: &mut Vec<u8>, kind: &ValueKind, raw: &[u8]) {
    match kind {
        ValueKind::Bool => out.extend_from_slice(if raw == b"t" { b"true" } else { b"false" }),
        // NaN, Infinity and -Infinity (floats) are not JSON numbers: strings.
        ValueKind::Integer | ValueKind::Float if is_json_number(raw) => out.extend_from_slice(raw),
        ValueKind::Json if is_json_text(raw) => out.extend_from_slice(raw),
        ValueKind::Integer
        | ValueKind::Float
        | ValueKind::Json
        | ValueKind::ExactString
        | ValueKind::Text
        | ValueKind::Array { .. } => write_json_string(out, raw),
    }
}

/// RFC 8259's `number`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(raw: &[u8]) -> bool {
    fn digits(raw: &[u8], at: &mut usize) -> usize {
        let start = *at;
        while raw.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at - start
    }
    let mut at = usize::from(raw.first() == Some(&b'-'));
    match raw.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => {
            digits(raw, &mut at);
        }
        _ => return false,
    }
    if raw.get(at) == Some(&b'.') {
        at += 1;
        if digits(raw, &mut at) == 0 {
            return false;
        }
    }
    if matches!(raw.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(raw.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if digits(raw, &mut at) == 0 {
            return false;
        }
    }
    at == raw.len()
}

/// Whether `raw` is one complete JSON value. serde_json skips an ignored value iteratively, so
/// nesting depth costs no stack.
fn is_json_text(raw: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(raw).is_ok()
}

/// Parses an array's text output (`{1,2}`, `{{"a b",NULL}}`, `[0:1]={…}`) into a JSON array,
/// converting each element by its own kind. `None` if the text is not an array literal.
fn write_array(
    out: &mut Vec<u8>,
    element: &PgType,
    delimiter: u8,
    raw: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<()> {
    let mut at = 0;
    // Arrays whose lower bounds are not 1 carry their dimensions: `[0:2]={…}`.
    if raw.first() == Some(&b'[') {
        at = raw.iter().position(|&c| c == b'=')? + 1;
    }
    write_array_level(out, element, delimiter, raw, &mut at, scratch, 1)?;
    (at == raw.len()).then_some(())
}

/// Postgres arrays have at most 6 dimensions (`MAXDIM`). Text nested deeper did not come from
/// Postgres's array output, and following it would let a broken or hostile server choose how
/// deep this recursion goes (a 2 MB value is enough to overflow a worker's stack).
const MAX_ARRAY_DIMENSIONS: usize = 6;

fn write_array_level(
    out: &mut Vec<u8>,
    element: &PgType,
    delimiter: u8,
    raw: &[u8],
    at: &mut usize,
    scratch: &mut Vec<u8>,
    depth: usize,
) -> Option<()> {
    if raw.get(*at) != Some(&b'{') || depth > MAX_ARRAY_DIMENSIONS {
        return None;
    }
    *at += 1;
    out.push(b'[');
    if raw.get(*at) == Some(&b'}') {
        *at += 1;
        out.push(b']');
        return Some(());
    }
    loop {
        match *raw.get(*at)? {
            b'{' => write_array_level(out, element, delimiter, raw, at, scratch, depth + 1)?,
            b'"' => {
                scratch.clear();
                *at += 1;
                loop {
                    match *raw.get(*at)? {
                        b'\\' => {
                            scratch.push(*raw.get(*at + 1)?);
                            *at += 2;
                        }
                        b'"' => {
                            *at += 1;
                            break;
                        }
                        c => {
                            scratch.push(c);
                            *at += 1;
                        }
                    }
                }
                write_scalar(out, &element.kind, scratch);
            }
            _ => {
                let start = *at;
                while !matches!(raw.get(*at), Some(&c) if c == delimiter || c == b'}') {
                    if *at >= raw.len() {
                        return None;
                    }
                    *at += 1;
                }
                let item = &raw[start..*at];
                if item.eq_ignore_ascii_case(b"NULL") {
                    out.extend_from_slice(b"null");
                } else {
                    write_scalar(out, &element.kind, item);
                }
            }
        }
        match *raw.get(*at)? {
            c if c == delimiter => {
                *at += 1;
                out.push(b',');
            }
            b'}' => {
                *at += 1;
                out.push(b']');
                return Some(());
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::types::builtin;

    fn typed(oid: u32, raw: &str) -> String {
        let mut out = Vec::new();
        write_typed(
            &mut out,
            &builtin(oid).unwrap(),
            raw.as_bytes(),
            &mut Vec::new(),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalars_follow_the_api_table() {
        assert_eq!(typed(16, "t"), "true");
        assert_eq!(typed(16, "f"), "false");
        assert_eq!(typed(23, "-42"), "-42");
        assert_eq!(typed(20, "9007199254740993"), "\"9007199254740993\"");
        assert_eq!(typed(1700, "1.50"), "\"1.50\"");
        assert_eq!(typed(701, "1.5e+100"), "1.5e+100");
        assert_eq!(typed(701, "NaN"), "\"NaN\"");
        assert_eq!(typed(701, "-Infinity"), "\"-Infinity\"");
        assert_eq!(typed(3802, "{\"a\": [1, 2]}"), "{\"a\": [1, 2]}");
        assert_eq!(
            typed(25, "line\n\"quoted\"\\"),
            "\"line\\n\\\"quoted\\\"\\\\\""
        );
        assert_eq!(typed(25, "\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn arrays_become_json_arrays() {
        assert_eq!(typed(1007, "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(typed(1007, "{}"), "[]");
        assert_eq!(typed(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(typed(1007, "[0:1]={5,6}"), "[5,6]");
        assert_eq!(
            typed(1009, "{\"a b\",NULL,\"NULL\",\"q\\\"x\\\\\"}"),
            "[\"a b\",null,\"NULL\",\"q\\\"x\\\\\"]"
        );
        assert_eq!(typed(1000, "{t,f}"), "[true,false]");
        assert_eq!(typed(1016, "{1,2}"), "[\"1\",\"2\"]");
        assert_eq!(
            typed(3807, "{\"{\\\"a\\\": 1}\",2,\"null\"}"),
            "[{\"a\": 1},2,null]"
        );
        assert_eq!(
            typed(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
            "[\"(1,1),(0,0)\",\"(2,2),(1,1)\"]"
        );
        assert_eq!(typed(1022, "{NaN,1.5}"), "[\"NaN\",1.5]");
    }

    #[test]
    fn malformed_array_text_falls_back_to_a_string() {
        assert_eq!(typed(1007, "{1,2"), "\"{1,2\"");
        assert_eq!(typed(1007, "nonsense"), "\"nonsense\"");
    }

    /// A hostile server (or a man in the middle without TLS) controlled the response's JSON:
    /// number and `json` text was embedded unchecked, so `1,"admin":true` in an int4 column
    /// added a member to the row object. Text that is not what Postgres emits becomes a string.
    #[test]
    fn server_text_that_is_not_json_cannot_break_or_extend_the_response() {
        assert_eq!(typed(23, "1,\"admin\":true"), "\"1,\\\"admin\\\":true\"");
        assert_eq!(typed(23, ""), "\"\"");
        assert_eq!(typed(23, "01"), "\"01\"");
        assert_eq!(typed(701, "1,2,3"), "\"1,2,3\"");
        assert_eq!(typed(701, "1-2"), "\"1-2\"");
        assert_eq!(typed(701, "1e-05"), "1e-05");
        assert_eq!(typed(701, "-0"), "-0");
        assert_eq!(
            typed(3802, "{\"a\": 1}, \"b\": 2"),
            "\"{\\\"a\\\": 1}, \\\"b\\\": 2\""
        );
        assert_eq!(typed(114, "[1, 2] "), "[1, 2] ");
        assert_eq!(typed(1007, "{1,2x}"), "[1,\"2x\"]");
        // The check does not recurse (serde_json skips values with its own stack): a
        // document nested a million deep is checked, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert_eq!(typed(3802, &deep), deep);
        assert!(typed(3802, &deep[1..]).starts_with("\"[[["));
        for valid in ["0", "-1", "12.5", "1E9", "2e+3", "1.0e-2"] {
            assert!(is_json_number(valid.as_bytes()), "{valid}");
        }
        for invalid in [
            "", "-", "+1", ".5", "1.", "1e", "1e+", "00", "NaN", "0x10", "1 ",
        ] {
            assert!(!is_json_number(invalid.as_bytes()), "{invalid}");
        }
    }

    #[test]
    fn arrays_keep_postgres_six_dimensions() {
        assert_eq!(typed(1007, "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
        assert_eq!(typed(1007, "{{{{{{{1}}}}}}}"), "\"{{{{{{{1}}}}}}}\"");
    }

    /// A server (broken, hostile, or a man in the middle without TLS) that sent an int4[]
    /// value nested a million deep overflowed the stack: the array parser recursed once per
    /// `{`. Deeper than Postgres's 6 dimensions is not an array literal: it is sent as text.
    #[test]
    fn server_array_nested_a_million_deep_does_not_overflow_the_stack() {
        let depth = 1_000_000;
        let raw = format!("{}1{}", "{".repeat(depth), "}".repeat(depth));
        let encoded = typed(1007, &raw);
        assert_eq!(encoded.len(), raw.len() + 2, "the text, as a JSON string");
        assert!(encoded.starts_with("\"{{{{{{{"));
    }
}
