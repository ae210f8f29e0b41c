//! JSON parameters to Postgres text-format parameters (API.md, "Parameters: JSON to Postgres").
//!
//! Parameters are bound server-side, never interpolated into SQL: each travels in the Bind
//! message as text and Postgres parses it by the type it inferred for that placeholder.
//! Parameters arrive as raw JSON slices so a number's text (`12345678901234567890.5`) reaches
//! Postgres exactly as the client wrote it, without a round trip through `f64`.
//!
//! Parameters are the client's bytes: nothing here recurses deeper than Postgres's own limit
//! on array dimensions ([`MAX_ARRAY_DIMENSIONS`], checked by a flat scan before encoding), and
//! text that Postgres could not store (a NUL character) is refused before anything is sent.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde_json::value::RawValue;

use super::types::{PgType, ValueKind};

/// Postgres's `MAXDIM`: an array has at most 6 dimensions.
pub const MAX_ARRAY_DIMENSIONS: usize = 6;

const NUL_REASON: &str =
    "text contains a NUL character (\\u0000), which Postgres cannot store in text";

/// Checks what can be checked without the placeholder's type, before any connection is used:
/// a string parameter is text whatever its type, so a NUL in it is refused here.
pub fn check(raw: &RawValue) -> Result<(), String> {
    if first_byte(raw) == b'"' {
        let value: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        if value.contains('\0') {
            return Err(NUL_REASON.into());
        }
    }
    Ok(())
}

/// Encodes one parameter into `out`; `Ok(false)` means SQL NULL (nothing written).
pub fn encode(raw: &RawValue, ty: Option<&PgType>, out: &mut BytesMut) -> Result<bool, String> {
    let text = raw.get();
    match first_byte(raw) {
        b'n' => Ok(false),
        b'"' => {
            let value: Cow<'_, str> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            if value.contains('\0') {
                return Err(NUL_REASON.into());
            }
            out.put_slice(value.as_bytes());
            Ok(true)
        }
        b'[' => match ty.map(|t| &t.kind) {
            Some(ValueKind::Array { delimiter, .. }) => {
                let depth = array_depth(text);
                if depth > MAX_ARRAY_DIMENSIONS {
                    return Err(format!(
                        "arrays nest {depth} deep; Postgres arrays have at most \
                         {MAX_ARRAY_DIMENSIONS} dimensions"
                    ));
                }
                write_array_literal(text, *delimiter, 1, out)?;
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

/// How deeply arrays nest in arrays (`[[1], [2]]` is 2), by one flat scan of JSON that serde
/// has already validated: strings are skipped, objects are opaque (an object element is its
/// JSON text, whatever it holds).
fn array_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut objects) = (0usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' => objects += 1,
            b'}' => objects = objects.saturating_sub(1),
            b'[' if objects == 0 => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' if objects == 0 => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `[1, [2, null], "a\"b"]` → `{"1",{"2",NULL},"a\"b"}`: nested arrays become dimensions,
/// every element is quoted and escaped, objects become their JSON text. Recurses once per
/// dimension, at most [`MAX_ARRAY_DIMENSIONS`] deep (the caller has measured the depth).
fn write_array_literal(
    json: &str,
    delimiter: u8,
    depth: usize,
    out: &mut BytesMut,
) -> Result<(), String> {
    if depth > MAX_ARRAY_DIMENSIONS {
        return Err(format!(
            "Postgres arrays have at most {MAX_ARRAY_DIMENSIONS} dimensions"
        ));
    }
    let elements: Vec<&RawValue> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    out.put_u8(b'{');
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.put_u8(delimiter);
        }
        match first_byte(element) {
            b'n' => out.put_slice(b"NULL"),
            b'[' => write_array_literal(element.get(), delimiter, depth + 1, out)?,
            b'"' => {
                let value: Cow<'_, str> =
                    serde_json::from_str(element.get()).map_err(|e| e.to_string())?;
                if value.contains('\0') {
                    return Err(NUL_REASON.into());
                }
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
    }

    fn refused(json: &str, oid: Option<u32>) -> String {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let ty = oid.and_then(builtin);
        encode(&raw, ty.as_deref(), &mut BytesMut::new()).unwrap_err()
    }

    #[test]
    fn arrays_deeper_than_postgres_allows_are_refused_without_recursing() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(
            encoded(&nested(6), Some(1007)).unwrap(),
            format!("{}\"1\"{}", "{".repeat(6), "}".repeat(6))
        );
        assert!(refused(&nested(7), Some(1007)).contains("at most 6 dimensions"));
        // Issue 11: 20,000 levels overflowed the stack and aborted the process.
        assert!(refused(&nested(20_000), Some(1007)).contains("at most 6 dimensions"));
        // For a json or untyped placeholder the array is JSON text, sent as it is.
        assert_eq!(
            encoded(&nested(20_000), Some(3802)).unwrap(),
            nested(20_000)
        );
        // Brackets inside strings and objects are not dimensions.
        assert_eq!(array_depth(r#"[["[[[[[[[", {"a": [[[[[[[1]]]]]]]}]]"#), 2);
    }

    #[test]
    fn nul_in_text_is_refused() {
        assert!(refused(r#""a\u0000b""#, Some(25)).contains("NUL"));
        assert!(refused(r#"["a", "\u0000"]"#, Some(1009)).contains("NUL"));
        let raw: Box<RawValue> = serde_json::from_str(r#""a\u0000""#).unwrap();
        assert!(check(&raw).is_err());
        let raw: Box<RawValue> = serde_json::from_str(r#""a\\u0000""#).unwrap();
        assert!(check(&raw).is_ok(), "an escaped backslash is no NUL");
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
                "[\"\\\\{},\\u{0}é]{0,6}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(10, 64, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map("[a-z\"\\[]{0,3}", inner, 0..3)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the client sends, encoding answers (a value or a reason), never panics,
            /// and an array literal keeps its braces balanced.
            #[test]
            fn any_parameter_encodes_or_is_refused(value in json(), oid in prop::sample::select(vec![0u32, 25, 1007, 1009, 3802, 1020])) {
                let text = value.to_string();
                let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
                let _ = check(&raw);
                let ty = builtin(oid);
                let mut out = BytesMut::new();
                if let Ok(true) = encode(&raw, ty.as_deref(), &mut out)
                    && text.starts_with('[')
                    && matches!(ty.as_deref().map(|t| &t.kind), Some(ValueKind::Array { .. }))
                {
                    prop_assert_eq!(out.first(), Some(&b'{'));
                    prop_assert_eq!(out.last(), Some(&b'}'));
                }
            }
        }
    }
}
