//! Tuning of the system allocator (glibc malloc) so memory taken by a burst goes back to the
//! system afterwards. Two habits of glibc kept a burst's memory resident:
//!
//! - its mmap threshold rises (up to 32 MiB) each time a large mapped block is freed, so after
//!   the first large bodies and responses, buffers of a few MiB came from the heap arenas;
//!   [`tune`] fixes it at 256 KiB: every buffer that large is its own mapping, unmapped on free;
//! - smaller blocks (hyper's read buffers, body chunks, tasks) are freed into per-thread arenas
//!   that are rarely trimmed; [`trim`] hands free arena pages back. The server calls it after a
//!   burst (see `server::run`), not per request: it walks every arena.
//!
//! Other allocators and platforms: both are no-ops.

/// Sets malloc's fixed mmap threshold. Call once, before other threads start.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Returns free heap memory to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
