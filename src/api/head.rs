//! The request head as the API reads it ([`RequestHead`]): method, target, version and
//! [`Headers`]. Headers are hyper's `HeaderMap`, or, for a request the fast path
//! (`server::http1_fast`) parsed, offsets into the request's own bytes: a plain request is then
//! served without a header map built, filled and dropped for it (two allocations, a name
//! lookup, a hash and a shared-buffer reference per header; about a tenth of a warm request's
//! instructions, issue 17). A handler reads a handful of headers, each once, so a scan of a
//! few dozen offsets is cheaper than building the index a map is.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

/// The most headers a [`RawHeaders`] holds (more, and the fast path leaves the request to
/// hyper, which allows 100).
pub const MAX_RAW_HEADERS: usize = 32;

/// What a handler knows of the request line and headers.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: Headers,
}

impl From<http::request::Parts> for RequestHead {
    fn from(parts: http::request::Parts) -> Self {
        RequestHead {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: Headers::from(parts.headers),
        }
    }
}

/// A request's headers: names compare case-insensitively, a name may repeat, and values are
/// bytes (`get_str` for text).
#[derive(Debug)]
pub struct Headers(Repr);

// Unboxed on purpose: the fast path's head lives in the handler future that a connection
// allocates once and reuses; a box would be an allocation per request, the cost this removes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Repr {
    Map(HeaderMap),
    Raw(RawHeaders),
}

impl From<HeaderMap> for Headers {
    fn from(map: HeaderMap) -> Self {
        Headers(Repr::Map(map))
    }
}

impl From<RawHeaders> for Headers {
    fn from(raw: RawHeaders) -> Self {
        Headers(Repr::Raw(raw))
    }
}

impl Default for Headers {
    fn default() -> Self {
        Headers::from(HeaderMap::new())
    }
}

impl Headers {
    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match &self.0 {
            Repr::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            Repr::Raw(raw) => raw.first(name),
        }
    }

    /// The first value of `name`, if it is visible ASCII (what `HeaderValue::to_str` accepts).
    pub fn get_str(&self, name: &HeaderName) -> Option<&str> {
        visible_ascii(self.get(name)?)
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every value of `name`, in the order they came.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (map, raw) = match &self.0 {
            Repr::Map(map) => (Some(map), None),
            Repr::Raw(raw) => (None, Some(raw)),
        };
        map.into_iter()
            .flat_map(move |map| map.get_all(name).iter().map(HeaderValue::as_bytes))
            .chain(raw.into_iter().flat_map(move |raw| raw.values(name)))
    }

    /// Sets `name` to `value` alone, replacing the values it came with (as
    /// `HeaderMap::insert`).
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match &mut self.0 {
            Repr::Map(map) => {
                map.insert(name, value);
            }
            Repr::Raw(raw) => {
                raw.set.retain(|(set, _)| *set != name);
                raw.set.push((name, value));
            }
        }
    }
}

/// Visible ASCII (and tab) only, as `HeaderValue::to_str`.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Headers as parsed: where each name and value lies in the request's bytes.
pub struct RawHeaders {
    bytes: Bytes,
    /// Name offset, name length, value offset, value length, within `bytes` (checked when
    /// made, so every lookup's slicing is in bounds).
    entries: [[u16; 4]; MAX_RAW_HEADERS],
    count: usize,
    /// Set by the gateway after parsing (`Headers::insert`); a name set here hides its parsed
    /// values.
    set: Vec<(HeaderName, HeaderValue)>,
}

impl RawHeaders {
    /// The headers at `entries` (name at, name length, value at, value length) in `bytes`;
    /// `None` if there are more than [`MAX_RAW_HEADERS`] or one lies outside `bytes`. The
    /// caller has checked names and values as hyper would (`httparse`'s token and value
    /// rules, which are `http`'s).
    pub fn new(bytes: Bytes, entries: &[[u16; 4]]) -> Option<RawHeaders> {
        if entries.len() > MAX_RAW_HEADERS {
            return None;
        }
        let within = |at: u16, len: u16| usize::from(at) + usize::from(len) <= bytes.len();
        if !entries.iter().all(|&[name, name_len, value, value_len]| {
            within(name, name_len) && within(value, value_len)
        }) {
            return None;
        }
        let mut raw = RawHeaders {
            bytes,
            entries: [[0; 4]; MAX_RAW_HEADERS],
            count: entries.len(),
            set: Vec::new(),
        };
        raw.entries[..entries.len()].copy_from_slice(entries);
        Some(raw)
    }

    fn part(&self, at: u16, len: u16) -> &[u8] {
        &self.bytes[usize::from(at)..usize::from(at) + usize::from(len)]
    }

    /// Each (name, value) as parsed.
    fn parsed(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries[..self.count]
            .iter()
            .map(|&[name, name_len, value, value_len]| {
                (self.part(name, name_len), self.part(value, value_len))
            })
    }

    /// The parsed values of `wanted` (a lowercase name). Lengths are compared before any
    /// bytes, so most headers are passed over in one compare; then the bytes as they are
    /// (clients nearly all send lowercase names, and HTTP/2 requires them), and only then
    /// letter by letter.
    fn parsed_values<'a, 'w>(
        &'a self,
        wanted: &'w [u8],
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'w> {
        self.entries[..self.count]
            .iter()
            .filter(move |&&[name, name_len, ..]| {
                usize::from(name_len) == wanted.len() && {
                    let name = self.part(name, name_len);
                    name == wanted || name.eq_ignore_ascii_case(wanted)
                }
            })
            .map(|&[_, _, value, value_len]| self.part(value, value_len))
    }

    /// `values(name).next()`, written out: through the chained iterator, a request's handful
    /// of lookups cost ~500 instructions more (callgrind).
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        if let Some((_, value)) = self.set.iter().find(|(set, _)| set == name) {
            return Some(value.as_bytes());
        }
        self.parsed_values(name.as_str().as_bytes()).next()
    }

    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let set = self.set.iter().any(|(set, _)| set == name);
        self.set
            .iter()
            .filter(move |(set, _)| set == name)
            .map(|(_, value)| value.as_bytes())
            .chain(
                self.parsed_values(name.as_str().as_bytes())
                    .filter(move |_| !set),
            )
    }
}

impl std::fmt::Debug for RawHeaders {
    /// Names only: values carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.parsed()
                    .map(|(name, _)| String::from_utf8_lossy(name))
                    .chain(self.set.iter().map(|(name, _)| name.as_str().into())),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, ORIGIN};

    /// `text`'s headers ("name: value" lines) both ways: parsed offsets and a `HeaderMap`.
    fn both(lines: &[&str]) -> [Headers; 2] {
        let mut text = Vec::new();
        let mut entries = Vec::new();
        let mut map = HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(": ").unwrap();
            let at = text.len() as u16;
            text.extend_from_slice(line.as_bytes());
            text.extend_from_slice(b"\r\n");
            let value_at = at + name.len() as u16 + 2;
            entries.push([at, name.len() as u16, value_at, value.len() as u16]);
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let raw = RawHeaders::new(Bytes::from(text), &entries).unwrap();
        [Headers::from(raw), Headers::from(map)]
    }

    #[test]
    fn parsed_headers_read_as_a_header_map_does() {
        for headers in both(&[
            "Host: x",
            "Authorization: Bearer k",
            "accept: application/json",
            "ACCEPT: application/x-ndjson",
            "x-binary: caf\u{e9}",
        ]) {
            assert_eq!(headers.get(&AUTHORIZATION), Some(&b"Bearer k"[..]));
            assert_eq!(headers.get_str(&AUTHORIZATION), Some("Bearer k"));
            assert_eq!(
                headers.get_all(&ACCEPT).collect::<Vec<_>>(),
                [&b"application/json"[..], b"application/x-ndjson"]
            );
            assert!(!headers.contains(&ORIGIN));
            assert_eq!(headers.get(&ORIGIN), None);
            let binary = HeaderName::from_static("x-binary");
            assert!(headers.contains(&binary));
            assert_eq!(headers.get_str(&binary), None, "not visible ASCII");
        }
    }

    #[test]
    fn an_inserted_value_replaces_the_parsed_ones() {
        for mut headers in both(&["content-type: a", "Content-Type: b", "accept: c"]) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("d"));
            assert_eq!(headers.get_all(&CONTENT_TYPE).collect::<Vec<_>>(), [b"d"]);
            headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer e"));
            headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer f"));
            assert_eq!(
                headers.get_all(&AUTHORIZATION).collect::<Vec<_>>(),
                [b"Bearer f"]
            );
            assert_eq!(headers.get(&ACCEPT), Some(&b"c"[..]));
        }
    }

    #[test]
    fn offsets_outside_the_bytes_or_too_many_are_refused() {
        let bytes = Bytes::from_static(b"a: b");
        assert!(RawHeaders::new(bytes.clone(), &[[0, 1, 3, 1]]).is_some());
        assert!(RawHeaders::new(bytes.clone(), &[[0, 1, 3, 2]]).is_none());
        assert!(RawHeaders::new(bytes.clone(), &[[u16::MAX, 1, 3, 1]]).is_none());
        assert!(RawHeaders::new(bytes, &[[0, 1, 3, 1]; MAX_RAW_HEADERS + 1]).is_none());
    }

    #[test]
    fn values_are_not_in_the_debug_form() {
        let [raw, _] = both(&["authorization: Bearer secret"]);
        let shown = format!("{raw:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
