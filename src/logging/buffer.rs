//! The bounded in-memory log buffer and the thread that writes it out. Every line is appended
//! whole (or dropped and counted when the buffer is full); the writer thread sleeps until a
//! line arrives after an idle spell, then lets lines gather for [`FLUSH_INTERVAL`] (or until
//! the buffer is half full) and writes them in one go.
//!
//! A tokio worker thread stages its lines first (`stage.rs`): [`worker_parks`] gives the
//! thread a stage at its first park and moves the stage's lines here at every later one. The
//! writer thread moves a stage's lines itself once they have waited [`FLUSH_INTERVAL`], and
//! all of them when the guard closes the buffer. Each thread's lines keep their order; lines
//! of different workers can be up to a flush interval out of order under load.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::stage::Stage;

/// How long a line may wait in the buffer (or in a worker's stage) before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Lines dropped because the buffer was full, process-wide (exported as a metric).
static LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter of dropped log lines (a handle to the one process-wide counter).
pub fn lines_dropped() -> Counter {
    LINES_DROPPED.clone()
}

thread_local! {
    /// This worker thread's stage, once it has parked (none on other threads).
    static STAGE: RefCell<Option<Arc<Stage>>> = const { RefCell::new(None) };
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when the buffer passes half its bound, when a line arrives for an idle
    /// writer, and on close.
    wake: Condvar,
    limit: usize,
    /// The workers' stages (registered at a worker's first park, removed when it stops).
    stages: Mutex<Vec<Arc<Stage>>>,
    /// The writer sleeps without a timer: a worker whose stage gets its first line wakes it,
    /// so that the line is written even if that worker never parks. Mirrors
    /// `Buffer::writer_idle`, readable without the buffer's lock.
    writer_idle: AtomicBool,
}

struct Buffer {
    bytes: Vec<u8>,
    /// The writer found the buffer empty and sleeps until a line arrives (an idle gateway's
    /// writer does not wake every interval).
    writer_idle: bool,
    /// A stage has lines for an idle writer.
    staged: bool,
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
                staged: false,
                closed: false,
            }),
            wake: Condvar::new(),
            limit: limit.max(1024),
            stages: Mutex::new(Vec::new()),
            writer_idle: AtomicBool::new(false),
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

    /// Appends one line (whole, or not at all), to this thread's stage if it has one of this
    /// buffer's; never blocks on the sink.
    pub(super) fn append(&self, line: &[u8]) {
        if !self.stage_with(|out| out.extend_from_slice(line)) {
            self.shared.append(line);
        }
    }

    /// Lets `write` append whole lines to this thread's stage, if it has one of this buffer's.
    /// Returns false (and does not call `write`) if not.
    pub(super) fn stage_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let owner = Arc::as_ptr(&self.shared) as usize;
        // `try_`: a thread being torn down has no stage any more; its lines go straight in.
        STAGE
            .try_with(|cell| {
                let Ok(stage) = cell.try_borrow() else {
                    return false;
                };
                let Some(stage) = stage.as_ref().filter(|stage| stage.owner() == owner) else {
                    return false;
                };
                let staged = stage.append(write);
                if staged.full {
                    self.shared.drain(stage);
                } else if staged.first && self.shared.writer_idle.load(Ordering::SeqCst) {
                    self.shared.lock().staged = true;
                    self.shared.wake.notify_one();
                }
                true
            })
            .unwrap_or(false)
    }

    /// The calling thread is a worker about to park: the first time, it gets a stage;
    /// afterwards its staged lines move to the buffer.
    pub(super) fn worker_parks(&self) {
        let owner = Arc::as_ptr(&self.shared) as usize;
        let _ = STAGE.try_with(|cell| {
            let Ok(mut stage) = cell.try_borrow_mut() else {
                return;
            };
            match &*stage {
                Some(mine) if mine.owner() == owner => {
                    if mine.is_waiting() {
                        self.shared.drain(mine);
                    }
                }
                // Another buffer's stage (a test's): left to its own writer.
                Some(_) => {}
                None => {
                    let new = Arc::new(Stage::new(owner));
                    self.shared.stages_lock().push(new.clone());
                    *stage = Some(new);
                }
            }
        });
    }

    /// The calling worker thread stops: its lines move to the buffer, and its stage goes.
    pub(super) fn worker_stops(&self) {
        let owner = Arc::as_ptr(&self.shared) as usize;
        let stage = STAGE
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut stage) if stage.as_ref().is_some_and(|mine| mine.owner() == owner) => {
                    stage.take()
                }
                _ => None,
            })
            .ok()
            .flatten();
        if let Some(stage) = stage {
            self.shared.drain(&stage);
            self.shared
                .stages_lock()
                .retain(|other| !Arc::ptr_eq(other, &stage));
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stages_lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Stage>>> {
        self.stages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends whole lines: all of `lines`, or as many whole lines from its start as there is
    /// room for (the rest dropped and counted, a trailing piece without a newline as a line).
    fn append(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut buffer = self.lock();
        let room = self.limit.saturating_sub(buffer.bytes.len());
        let fits = if lines.len() <= room {
            lines.len()
        } else {
            lines[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1)
        };
        let half = self.limit / 2;
        let was_below = buffer.bytes.len() < half;
        buffer.bytes.extend_from_slice(&lines[..fits]);
        let now_above = buffer.bytes.len() >= half;
        // Wake the writer only for the first line after it went idle and for the line that
        // crosses the half mark: at busy rates the writer is on its timer and no request
        // pays for a wake-up.
        let wake =
            fits > 0 && (std::mem::take(&mut buffer.writer_idle) || (was_below && now_above));
        drop(buffer);
        if wake {
            self.wake.notify_one();
        }
        if fits < lines.len() {
            let dropped = &lines[fits..];
            let newlines = dropped.iter().filter(|&&b| b == b'\n').count();
            let unterminated = dropped.last() != Some(&b'\n');
            LINES_DROPPED.inc_by((newlines + usize::from(unterminated)) as u64);
        }
    }

    /// Moves a stage's lines to the buffer.
    fn drain(&self, stage: &Stage) {
        let mut lines = stage.take();
        self.append(&lines);
        lines.clear();
        // Keep a stage's worth of capacity, not an outsized one from a long line.
        if lines.capacity() > 4 * super::stage::STAGE_BYTES {
            lines.shrink_to(2 * super::stage::STAGE_BYTES);
        }
    }

    /// Moves the lines of stages that have waited a flush interval (all stages' when `all`).
    fn drain_stages(&self, all: bool) {
        let stages = self.stages_lock().clone();
        for stage in stages {
            if (all && stage.is_waiting()) || stage.waited(FLUSH_INTERVAL) {
                self.drain(&stage);
            }
        }
    }

    fn any_staged(&self) -> bool {
        self.stages_lock().iter().any(|stage| stage.is_waiting())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Set under the lock, so the writer cannot miss it between a check and its wait.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop<W: Write>(shared: &Shared, mut sink: W) {
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        shared.drain_stages(false);
        let closed = {
            let mut buffer = shared.lock();
            if buffer.bytes.is_empty() && !buffer.closed {
                buffer.writer_idle = true;
                // SeqCst, paired with a stage's first line (stage.rs): either that thread
                // sees the writer idle and wakes it, or the writer sees the stage here.
                shared.writer_idle.store(true, Ordering::SeqCst);
                if !shared.any_staged() {
                    buffer = shared
                        .wake
                        .wait_while(buffer, |b| b.bytes.is_empty() && !b.closed && !b.staged)
                        .unwrap_or_else(|e| e.into_inner());
                }
                shared.writer_idle.store(false, Ordering::SeqCst);
                buffer.writer_idle = false;
                buffer.staged = false;
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
            if buffer.closed {
                // Every stage's lines, whatever their age, go out with the rest.
                drop(buffer);
                shared.drain_stages(true);
                buffer = shared.lock();
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
        if closed && shared.lock().bytes.is_empty() && !shared.any_staged() {
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

    /// Waits (up to 5 s) until the sink holds `needle`.
    fn wait_for(sink: &Sink, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&sink.data.lock().unwrap()).contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "{needle:?} never written"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn staged_lines_of_many_workers_are_all_written_each_workers_in_order() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::to(sink.clone(), 1 << 20);
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    // A worker's first park gives it a stage; these lines are staged.
                    writer.worker_parks();
                    for i in 0..2_000 {
                        writer.append(format!("worker {worker} line {i}\n").as_bytes());
                        if i % 300 == 0 {
                            writer.worker_parks();
                        }
                    }
                    // Never parks again, never stops: the guard must still find its lines.
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.data.lock().unwrap().clone()).unwrap();
        for worker in 0..4 {
            let prefix = format!("worker {worker} line ");
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&prefix))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..2_000).collect::<Vec<_>>(), "worker {worker}");
        }
        assert_eq!(text.lines().count(), 8_000);
    }

    #[test]
    fn a_staged_line_is_written_when_its_worker_parks_or_after_a_flush_interval() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::to(sink.clone(), 1 << 20);
        writer.worker_parks();
        for round in 0..3 {
            // Long enough for the writer to have gone idle (no timer) in between.
            std::thread::sleep(FLUSH_INTERVAL * 3);
            writer.append(format!("parked {round}\n").as_bytes());
            writer.worker_parks();
            wait_for(&sink, &format!("parked {round}"));
            // This worker stays busy: the writer takes the line from its stage itself.
            std::thread::sleep(FLUSH_INTERVAL * 3);
            writer.append(format!("busy {round}\n").as_bytes());
            wait_for(&sink, &format!("busy {round}"));
        }
        // A stopping worker's lines go out with it, and so does its stage.
        writer.append(b"last words\n");
        writer.worker_stops();
        wait_for(&sink, "last words");
        assert!(writer.shared.stages_lock().is_empty());
        writer.append(b"unstaged\n");
        wait_for(&sink, "unstaged");
        drop(guard);
    }

    #[test]
    fn a_full_buffer_takes_whole_staged_lines_and_counts_the_rest() {
        let sink = Sink::default();
        let stalled = sink.stall.lock().unwrap();
        let (writer, guard) = LogWriter::to(sink.clone(), 4096);
        writer.worker_parks();
        let before = lines_dropped().get();
        // 100 lines of 100 bytes staged, then moved at once into a buffer of 4 KiB.
        for _ in 0..100 {
            writer.append(&[[b'y'; 99].as_slice(), b"\n"].concat());
        }
        writer.worker_parks();
        let dropped = lines_dropped().get() - before;
        assert!((100 - 2 * 41..=100 - 40).contains(&dropped), "{dropped}");
        drop(stalled);
        drop(guard);
        let data = sink.data.lock().unwrap().clone();
        assert_eq!(data.len() % 100, 0, "only whole lines");
        assert!(
            data.split(|&b| b == b'\n')
                .all(|line| line.is_empty() || line.len() == 99)
        );
    }
}
