//! JSON parameters to Postgres text-format parameters (API.md, "Parameters: JSON to Postgres").
//!
//! Parameters are bound server-side, never interpolated into SQL: each travels in the Bind
//! message as text and Postgres parses it by the type it inferred for that placeholder.
//! Parameters arrive as raw JSON slices so a number's text (`12345678901234567890.5`) reaches
//! Postgres exactly as the client wrote it, without a round trip through `f64`.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde_json::value::RawValue;

use super::types::{PgType, ValueKind};

/// A parameter the client sent that cannot be bound as written.
#[derive(Debug, thiserror::Error)]
#[error("parameter ${index}: {reason}")]
pub struct ParamError {
    pub index: usize,
    pub reason: String,
}

/// Whether any parameter needs its placeholder's type before it can be encoded: a JSON array
/// is an array literal for an array placeholder and JSON text for any other.
pub fn needs_types(params: &[&RawValue]) -> bool {
    params.iter().any(|p| first_byte(p) == b'[')
}

/// Encodes one parameter into `out`; `Ok(false)` means SQL NULL (nothing written).
pub fn encode(raw: &RawValue, ty: Option<&PgType>, out: &mut BytesMut) -> Result<bool, String> {
    let text = raw.get();
    match first_byte(raw) {
        b'n' => Ok(false),
        b'"' => {
            let value: Cow<'_, str> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            out.put_slice(value.as_bytes());
            Ok(true)
        }
        b'[' => match ty.map(|t| &t.kind) {
            Some(ValueKind::Array { delimiter, .. }) => {
                write_array_literal(text, *delimiter, out)?;
                Ok(true)
            }
            _ => {
                out.put_slice(text.trim().as_bytes());
                Ok(true)
            }
        },
        // Numbers, booleans and objects: their JSON text.
        _ => {
            out.put_slice(text.trim().as_bytes());
            Ok(true)
        }
    }
}

fn first_byte(raw: &RawValue) -> u8 {
    raw.get()
        .trim_start()
        .as_bytes()
        .first()
        .copied()
        .unwrap_or(b'n')
}

/// `[1, [2, null], "a\"b"]` → `{"1",{"2",NULL},"a\"b"}`: nested arrays become dimensions,
/// every element is quoted and escaped, objects become their JSON text.
fn write_array_literal(json: &str, delimiter: u8, out: &mut BytesMut) -> Result<(), String> {
    let elements: Vec<&RawValue> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    out.put_u8(b'{');
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.put_u8(delimiter);
        }
        match first_byte(element) {
            b'n' => out.put_slice(b"NULL"),
            b'[' => write_array_literal(element.get(), delimiter, out)?,
            b'"' => {
                let value: Cow<'_, str> =
                    serde_json::from_str(element.get()).map_err(|e| e.to_string())?;
                write_quoted_element(&value, out);
            }
            _ => write_quoted_element(element.get().trim(), out),
        }
    }
    out.put_u8(b'}');
    Ok(())
}

fn write_quoted_element(value: &str, out: &mut BytesMut) {
    out.put_u8(b'"');
    for &byte in value.as_bytes() {
        if byte == b'"' || byte == b'\\' {
            out.put_u8(b'\\');
        }
        out.put_u8(byte);
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::types::builtin;

    fn encoded(json: &str, oid: Option<u32>) -> Option<String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let ty = oid.and_then(builtin);
        let mut out = BytesMut::new();
        encode(&raw, ty.as_deref(), &mut out)
            .unwrap()
            .then(|| String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn scalars_are_their_text() {
        assert_eq!(encoded("null", Some(23)), None);
        assert_eq!(encoded("42", Some(23)).unwrap(), "42");
        assert_eq!(
            encoded("12345678901234567890.000000001", None).unwrap(),
            "12345678901234567890.000000001"
        );
        assert_eq!(encoded("true", None).unwrap(), "true");
        assert_eq!(encoded("\"it's \\\"x\\\"\"", None).unwrap(), "it's \"x\"");
        assert_eq!(encoded("\"2024-01-31\"", Some(1082)).unwrap(), "2024-01-31");
        assert_eq!(
            encoded("{\"a\": [1, 2]}", Some(3802)).unwrap(),
            "{\"a\": [1, 2]}"
        );
    }

    #[test]
    fn arrays_follow_their_placeholder_type() {
        assert_eq!(
            encoded("[1, 2, null]", Some(1007)).unwrap(),
            "{\"1\",\"2\",NULL}"
        );
        assert_eq!(
            encoded("[[1, 2], [3, 4]]", Some(1007)).unwrap(),
            "{{\"1\",\"2\"},{\"3\",\"4\"}}"
        );
        assert_eq!(
            encoded("[\"a\\\"b\", \"c\\\\d\", \"\"]", Some(1009)).unwrap(),
            "{\"a\\\"b\",\"c\\\\d\",\"\"}"
        );
        assert_eq!(
            encoded("[{\"k\": 1}]", Some(3807)).unwrap(),
            "{\"{\\\"k\\\": 1}\"}"
        );
        assert_eq!(encoded("[]", Some(1007)).unwrap(), "{}");
        // A json/jsonb (or text) placeholder gets the JSON text itself.
        assert_eq!(encoded("[1, 2]", Some(3802)).unwrap(), "[1, 2]");
        assert_eq!(encoded("[1, 2]", None).unwrap(), "[1, 2]");
        // box[] separates elements with `;`.
        assert_eq!(
            encoded("[\"(1,1),(0,0)\"]", Some(1020)).unwrap(),
            "{\"(1,1),(0,0)\"}"
        );
        assert!(needs_types(&[&*serde_json::from_str::<Box<RawValue>>(
            "[1]"
        )
        .unwrap()]));
    }
}
