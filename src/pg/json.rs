//! JSON string writing: `raw` bytes from Postgres (or a name) as one escaped JSON string,
//! straight into an output buffer. A leaf: the row encoder, statement descriptions and the
//! API's response writers all use it.

/// Writes `raw` as a JSON string. Postgres sends UTF-8 (the gateway asks for it); bytes that are
/// not valid UTF-8 (a `SQL_ASCII` database) are replaced rather than corrupting the response.
pub fn write_json_string(out: &mut Vec<u8>, raw: &[u8]) {
    match std::str::from_utf8(raw) {
        Ok(text) => write_escaped(out, text.as_bytes()),
        Err(_) => write_escaped(out, String::from_utf8_lossy(raw).as_bytes()),
    }
}

/// `[…]`: each of `items` written by `write_item`, separated by commas.
pub fn write_json_array<T>(
    out: &mut Vec<u8>,
    items: &[T],
    mut write_item: impl FnMut(&mut Vec<u8>, &T),
) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_item(out, item);
    }
    out.push(b']');
}

fn write_escaped(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &byte) in text.iter().enumerate() {
        let escape = ESCAPE[byte as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&text[run_start..i]);
        run_start = i + 1;
        match escape {
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 0xf) as usize]);
            }
            other => out.extend_from_slice(&[b'\\', other]),
        }
    }
    out.extend_from_slice(&text[run_start..]);
    out.push(b'"');
}

/// For each byte: 0 if it is written as is, else the character after the backslash (`u` for a
/// `\u00XX` escape).
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_replaced_not_passed_through() {
        let mut out = Vec::new();
        write_json_string(&mut out, b"a\xffb");
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\u{fffd}b\"");
    }
}
