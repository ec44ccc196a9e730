//! Crash points for restart tests: with `UNICRI_CRASH_AT=<name>` in its environment the daemon
//! aborts (no destructors, no clean-up — what `kill -9` leaves) when it reaches the named point
//! in the middle of a multi-step operation. Unset, a crash point is one cached comparison.

use std::sync::OnceLock;

/// Aborts the process when `UNICRI_CRASH_AT` names `point`.
pub fn crashpoint(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("UNICRI_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        tracing::error!(point, "crash point reached: aborting (UNICRI_CRASH_AT)");
        std::process::abort();
    }
}
