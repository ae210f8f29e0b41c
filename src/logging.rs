//! Log output off the request path. Every log line (the per-request access line included) is
//! appended to a bounded in-memory buffer; a background thread writes the buffer to stderr in
//! large chunks, [`FLUSH_INTERVAL`] after the first waiting line or sooner when the buffer is
//! half full. A busy gateway's request therefore pays for formatting its line and a short lock,
//! never for a `write` syscall or for waking a thread (only the first line after an idle spell
//! wakes the writer, which otherwise sleeps without a timer); and a slow stderr (a full pipe, a
//! stalled terminal) drops lines — counted in `sluice_log_lines_dropped_total` — instead of
//! stalling requests. The [`LogGuard`] that [`LogWriter::stderr`] returns writes what is left
//! when dropped: `main` keeps it until exit.
//!
//! `tracing-appender`'s non-blocking writer does the same with a channel, but sends each line
//! to its thread as it is written, which wakes that thread (a futex call on the request path)
//! whenever it had caught up; batching by time does not.
//!
//! The buffer and its writer thread are in `logging/buffer.rs`; this file writes the
//! per-request access line into it, formatted by hand.

mod buffer;

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

pub use buffer::{FLUSH_INTERVAL, LineWriter, LogGuard, LogWriter, lines_dropped};

use crate::config::LogFormat;
use crate::timestamp::civil_from_days;

/// The buffer's default bound (`server.log_buffer_bytes`): lines past it are dropped (and
/// counted) until the writer catches up.
pub use crate::config::defaults::LOG_BUFFER_BYTES as DEFAULT_BUFFER_BYTES;

/// The access log's output, set once by the binary ([`install_access_log`]). Without it (the
/// library in tests, `sluice dev --json`) the access line goes through `tracing` like any
/// other event.
static ACCESS: OnceLock<(LogWriter, LogFormat)> = OnceLock::new();

/// Lets the request path write access lines itself, in the subscriber's `format`, into the
/// same buffer as every other line.
pub fn install_access_log(writer: LogWriter, format: LogFormat) {
    let _ = ACCESS.set((writer, format));
}

/// The fields of one access line (`sluice::request` at info).
pub struct AccessLine<'a> {
    pub request_id: &'a [u8],
    pub tenant: &'a str,
    pub transaction: Option<&'a str>,
    pub route: &'static str,
    pub status: u16,
    pub outcome: &'static str,
    pub queue_wait: Option<Duration>,
    pub exec: Option<Duration>,
    pub rows: u64,
    pub bytes: Option<u64>,
    pub duration: Duration,
    pub detail: Option<&'a str>,
}

/// Writes the access line if `sluice::request` is enabled at info. Formatted by hand into a
/// per-thread buffer (no allocation per field or per line, the timestamp's date and time
/// reformatted once a second), in the layout tracing-subscriber gives every other line.
/// Returns false when the line should go through `tracing` instead (no output installed).
pub fn access(line: &AccessLine<'_>) -> bool {
    let Some((writer, format)) = ACCESS.get() else {
        return false;
    };
    if !tracing::enabled!(target: "sluice::request", tracing::Level::INFO) {
        return true;
    }
    thread_local! {
        static BUFFER: std::cell::RefCell<(Vec<u8>, Clock)> =
            std::cell::RefCell::new((Vec::with_capacity(512), Clock::default()));
    }
    BUFFER.with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else {
            return;
        };
        let (buffer, clock) = &mut *guard;
        buffer.clear();
        format_access(buffer, clock, *format, line, std::time::SystemTime::now());
        writer.append(buffer);
    });
    true
}

/// The date and time of the last second formatted (`2026-11-29T00:20:00`).
#[derive(Default)]
struct Clock {
    second: u64,
    text: [u8; 19],
}

impl Clock {
    /// Appends `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (UTC, microseconds, as tracing-subscriber does).
    fn write(&mut self, out: &mut Vec<u8>, now: std::time::SystemTime) {
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.text[0] == 0 {
            self.second = second;
            let days = (second / 86_400) as i64;
            let in_day = second % 86_400;
            let (year, month, day) = civil_from_days(days);
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                in_day / 3600,
                in_day / 60 % 60,
                in_day % 60
            );
            self.text.copy_from_slice(&text.as_bytes()[..19]);
        }
        out.extend_from_slice(&self.text);
        out.push(b'.');
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut n = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

fn format_access(
    out: &mut Vec<u8>,
    clock: &mut Clock,
    format: LogFormat,
    line: &AccessLine<'_>,
    now: std::time::SystemTime,
) {
    let mut f = Fields {
        out,
        format,
        first: true,
    };
    match format {
        LogFormat::Text => {
            clock.write(f.out, now);
            f.out.extend_from_slice(b"  INFO sluice::request: ");
        }
        LogFormat::Json => {
            f.out.extend_from_slice(b"{\"timestamp\":\"");
            clock.write(f.out, now);
            f.out.extend_from_slice(b"\",\"level\":\"INFO\"");
            f.first = false;
        }
    }
    f.string("request_id", line.request_id);
    f.string("tenant", line.tenant.as_bytes());
    if let Some(transaction) = line.transaction {
        f.string("transaction", transaction.as_bytes());
    }
    f.string("route", line.route.as_bytes());
    f.number("status", u64::from(line.status));
    f.string("outcome", line.outcome.as_bytes());
    if let Some(wait) = line.queue_wait {
        f.millis("queue_wait_ms", wait);
    }
    if let Some(exec) = line.exec {
        f.millis("exec_ms", exec);
    }
    f.number("rows", line.rows);
    if let Some(bytes) = line.bytes {
        f.number("bytes", bytes);
    }
    f.millis("duration_ms", line.duration);
    if let Some(detail) = line.detail {
        f.string("detail", detail.as_bytes());
    }
    match format {
        LogFormat::Text => f.out.push(b'\n'),
        LogFormat::Json => f
            .out
            .extend_from_slice(b",\"target\":\"sluice::request\"}\n"),
    }
}

struct Fields<'o> {
    out: &'o mut Vec<u8>,
    format: LogFormat,
    first: bool,
}

impl Fields<'_> {
    fn name(&mut self, name: &str) {
        match self.format {
            LogFormat::Text => {
                if !self.first {
                    self.out.push(b' ');
                }
                self.out.extend_from_slice(name.as_bytes());
                self.out.push(b'=');
            }
            LogFormat::Json => {
                self.out.extend_from_slice(b",\"");
                self.out.extend_from_slice(name.as_bytes());
                self.out.extend_from_slice(b"\":");
            }
        }
        self.first = false;
    }

    /// A quoted string, escaped for JSON (which text lines share: it is also how `{:?}` shows
    /// the printable ASCII that request ids and tenant ids are made of).
    fn string(&mut self, name: &str, value: &[u8]) {
        self.name(name);
        self.out.push(b'"');
        // Printable ASCII other than `"` and `\` (all of a request id, a tenant id, a route)
        // is copied as it is; only what follows the first other byte goes char by char. The
        // whole-value test has no early exit, so it is vectorised: the common case is one
        // pass over a few dozen bytes, not a branch per byte.
        let printable = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
        if value.iter().fold(true, |all, &b| all & printable(b)) {
            self.out.extend_from_slice(value);
            self.out.push(b'"');
            return;
        }
        let plain = value
            .iter()
            .position(|&b| !printable(b))
            .unwrap_or(value.len());
        self.out.extend_from_slice(&value[..plain]);
        for chunk in value[plain..].utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => self.out.extend_from_slice(b"\\\""),
                    '\\' => self.out.extend_from_slice(b"\\\\"),
                    '\n' => self.out.extend_from_slice(b"\\n"),
                    '\r' => self.out.extend_from_slice(b"\\r"),
                    '\t' => self.out.extend_from_slice(b"\\t"),
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        let _ = write!(self.out, "\\u{:04x}", c as u32);
                    }
                    c => {
                        let mut utf8 = [0; 4];
                        self.out
                            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    }
                }
            }
            if !chunk.invalid().is_empty() {
                self.out.extend_from_slice("\u{fffd}".as_bytes());
            }
        }
        self.out.push(b'"');
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Milliseconds with three decimals (microsecond resolution).
    fn millis(&mut self, name: &str, value: Duration) {
        self.name(name);
        // In u64 (`as_micros` is u128, whose division is a library call): seconds past
        // u64::MAX / 10^6 (half a million years) saturate.
        let micros = value
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(value.subsec_micros()));
        self.out
            .extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        let fraction = micros % 1000;
        self.out.extend_from_slice(&[
            b'.',
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_line() -> AccessLine<'static> {
        AccessLine {
            request_id: b"req-\"1\"",
            tenant: "acme",
            transaction: None,
            route: "query",
            status: 200,
            outcome: "ok",
            queue_wait: Some(Duration::from_micros(42)),
            exec: Some(Duration::from_micros(1_234_567)),
            rows: 1,
            bytes: Some(87),
            duration: Duration::from_micros(1_300_001),
            detail: Some("line\nbreak \u{1}"),
        }
    }

    fn at(seconds: u64, micros: u32) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::new(seconds, micros * 1000)
    }

    #[test]
    fn the_text_access_line_has_tracing_subscribers_layout() {
        let mut out = Vec::new();
        let mut clock = Clock::default();
        // 2026-11-29T00:20:00Z
        let now = at(1_795_911_600, 123);
        format_access(&mut out, &mut clock, LogFormat::Text, &sample_line(), now);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-29T00:20:00.000123Z  INFO sluice::request: request_id=\"req-\\\"1\\\"\" \
             tenant=\"acme\" route=\"query\" status=200 outcome=\"ok\" queue_wait_ms=0.042 \
             exec_ms=1234.567 rows=1 bytes=87 duration_ms=1300.001 detail=\"line\\nbreak \\u0001\"\n"
        );
    }

    #[test]
    fn the_json_access_line_is_one_json_object_per_line() {
        let mut out = Vec::new();
        let mut clock = Clock::default();
        let line = AccessLine {
            request_id: b"\xff\x80abc",
            ..sample_line()
        };
        format_access(&mut out, &mut clock, LogFormat::Json, &line, at(0, 0));
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], "sluice::request");
        assert_eq!(value["request_id"], "\u{fffd}\u{fffd}abc");
        assert_eq!(value["tenant"], "acme");
        assert_eq!(value["status"], 200);
        assert_eq!(value["exec_ms"], 1234.567);
        assert_eq!(value["detail"], "line\nbreak \u{1}");
        assert!(value.get("transaction").is_none());
    }

    /// What `write` puts in a line of its own, as the first field.
    fn formatted(format: LogFormat, write: impl FnOnce(&mut Fields<'_>)) -> String {
        let mut out = Vec::new();
        write(&mut Fields {
            out: &mut out,
            format,
            first: true,
        });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_the_same_after_a_plain_prefix_as_at_the_start() {
        for value in [
            &b"plain"[..],
            b"\"quoted\"",
            b"id-1\"x\\y\x7f\x01",
            "tenant-\u{e9}t\u{e9}".as_bytes(),
            b"abc\xff\x80def",
            b"",
        ] {
            let field = formatted(LogFormat::Json, |f| f.string("v", value));
            let json = format!("{{{}}}", field.trim_start_matches(','));
            let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed["v"], *String::from_utf8_lossy(value), "{json}");
        }
    }

    #[test]
    fn milliseconds_have_three_decimals_and_saturate() {
        let millis = |value: Duration| formatted(LogFormat::Text, |f| f.millis("d", value));
        assert_eq!(millis(Duration::ZERO), "d=0.000");
        assert_eq!(millis(Duration::from_nanos(999)), "d=0.000");
        assert_eq!(millis(Duration::from_micros(1)), "d=0.001");
        assert_eq!(millis(Duration::from_micros(1_500)), "d=1.500");
        assert_eq!(millis(Duration::new(12, 345_678_901)), "d=12345.678");
        assert_eq!(millis(Duration::MAX), "d=18446744073709551.615");
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
        let mut clock = Clock::default();
        let mut out = Vec::new();
        clock.write(&mut out, at(1_795_910_399, 999_999));
        clock.write(&mut out, at(1_795_910_400, 0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-28T23:59:59.999999Z2026-11-29T00:00:00.000000Z"
        );
    }
}
