//! Process-wide memory settings, applied first thing in `main`.
#![allow(unsafe_code)]

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core), and freed
/// memory stays in the arena it came from. The daemon's threads (tokio workers, blocking pool,
/// one per SQLite connection) would each pin an arena's worth of pages: two arenas are plenty for
/// a management process whose hot path is I/O.
pub fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only sets a glibc tunable; it is called before any other thread exists
    // (first statement of `main`), so no allocation races with it. A failure (return 0) leaves
    // glibc's default in place, which is harmless.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
