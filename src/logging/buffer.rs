//! The bounded in-memory log buffer and the thread that writes it out. Every line is appended
//! whole (or dropped and counted when the buffer is full); the writer thread sleeps until a
//! line arrives after an idle spell, then lets lines gather for [`FLUSH_INTERVAL`] (or until
//! the buffer is half full) and writes them in one go.

use std::io::Write;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// How long a line may wait in the buffer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Lines dropped because the buffer was full, process-wide (exported as a metric).
static LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter of dropped log lines (a handle to the one process-wide counter).
pub fn lines_dropped() -> Counter {
    LINES_DROPPED.clone()
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when the buffer passes half its bound, when a line arrives for an idle
    /// writer, and on close.
    wake: Condvar,
    limit: usize,
}

struct Buffer {
    bytes: Vec<u8>,
    /// The writer found the buffer empty and sleeps until a line arrives (an idle gateway's
    /// writer does not wake every interval).
    writer_idle: bool,
    closed: bool,
}

/// A [`tracing_subscriber::fmt::MakeWriter`] that appends to the shared buffer.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what is buffered and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// A writer to stderr with a buffer of at most `limit` bytes.
    pub fn stderr(limit: usize) -> (LogWriter, LogGuard) {
        LogWriter::to(std::io::stderr(), limit)
    }

    /// A writer to any sink (stderr in the binary; a pipe or a vector in tests).
    pub fn to<W: Write + Send + 'static>(sink: W, limit: usize) -> (LogWriter, LogGuard) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: Vec::with_capacity(64 * 1024),
                writer_idle: false,
                closed: false,
            }),
            wake: Condvar::new(),
            limit: limit.max(1024),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-log".into())
            .spawn(move || write_loop(&thread_shared, sink))
            .expect("cannot start the log writer thread");
        (
            LogWriter {
                shared: shared.clone(),
            },
            LogGuard {
                shared,
                thread: Some(thread),
            },
        )
    }

    /// Appends one line (whole, or not at all); never blocks on the sink.
    pub(super) fn append(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.bytes.len() + line.len() > shared.limit {
            drop(buffer);
            LINES_DROPPED.inc();
            return;
        }
        let half = shared.limit / 2;
        let was_below = buffer.bytes.len() < half;
        buffer.bytes.extend_from_slice(line);
        let now_above = buffer.bytes.len() >= half;
        // Wake the writer only for the first line after it went idle and for the line that
        // crosses the half mark: at busy rates the writer is on its timer and no request
        // pays for a wake-up.
        let wake = std::mem::take(&mut buffer.writer_idle) || (was_below && now_above);
        drop(buffer);
        if wake {
            shared.wake.notify_one();
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Set under the lock, so the writer cannot miss it between a check and its wait.
        self.shared
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop<W: Write>(shared: &Shared, mut sink: W) {
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let closed = {
            let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.bytes.is_empty() && !buffer.closed {
                buffer.writer_idle = true;
                buffer = shared
                    .wake
                    .wait_while(buffer, |b| b.bytes.is_empty() && !b.closed)
                    .unwrap_or_else(|e| e.into_inner());
                buffer.writer_idle = false;
            }
            // Let lines gather for an interval (or until the buffer is half full) and write
            // them in one go.
            if buffer.bytes.len() < shared.limit / 2 && !buffer.closed {
                buffer = shared
                    .wake
                    .wait_timeout(buffer, FLUSH_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut buffer.bytes, &mut out);
            buffer.closed
        };
        if !out.is_empty() {
            // A failing sink loses these lines; nothing else could be done with them.
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            // Keep a buffer's worth of capacity, but not an outsized one from a burst.
            if out.capacity() > 1024 * 1024 {
                out = Vec::with_capacity(64 * 1024);
            } else {
                out.clear();
            }
        }
        if closed
            && shared
                .buffer
                .lock()
                .map(|b| b.bytes.is_empty())
                .unwrap_or(true)
        {
            return;
        }
    }
}

/// One `write` per event: tracing-subscriber's formatter hands over a whole line at a time.
pub struct LineWriter<'a> {
    writer: &'a LogWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter { writer: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that can be held still (a stalled stderr) and read afterwards.
    #[derive(Clone, Default)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        stall: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _stalled = self.stall.lock().unwrap();
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_and_flushed_when_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::to(sink.clone(), 1 << 20);
        for i in 0..1000 {
            writer.append(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let text = String::from_utf8(sink.data.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
    }

    #[test]
    fn an_idle_writer_wakes_for_the_next_line_and_stops_when_asked() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::to(sink.clone(), 1 << 20);
        for round in 0..3 {
            // Long enough for the writer to have gone idle (no timer) in between.
            std::thread::sleep(FLUSH_INTERVAL * 3);
            writer.append(format!("round {round}\n").as_bytes());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !String::from_utf8_lossy(&sink.data.lock().unwrap())
                .contains(&format!("round {round}"))
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "line {round} never written"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(FLUSH_INTERVAL * 3);
        // Returns (the writer is woken by the close, not left waiting for a line).
        drop(guard);
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_lines_instead_of_blocking() {
        let sink = Sink::default();
        let stalled = sink.stall.lock().unwrap();
        let (writer, guard) = LogWriter::to(sink.clone(), 4096);
        let before = lines_dropped().get();
        let started = std::time::Instant::now();
        // Far more than the bound while the sink cannot take anything: none of it may block.
        for _ in 0..10_000 {
            writer.append(&[b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<_>>());
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(lines_dropped().get() - before >= 10_000 - 2 * 4096 / 100);
        drop(stalled);
        drop(guard);
        let written = sink.data.lock().unwrap().len();
        assert!(written > 0 && written <= 2 * 4096, "{written}");
    }
}
