//! `unicri-vm-agent`: PID 1 of a `vm` pod's guest (see `guest/`), or, as
//! `unicri-vm-agent keeper`, the guest's `linux` keeper that the agent starts and restarts.

mod guest;

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("keeper") {
        return guest::keeper::run_keeper();
    }
    if std::process::id() != 1 {
        eprintln!(
            "unicri-vm-agent: runs as PID 1 of a guest (or as `unicri-vm-agent keeper`); this is pid {}",
            std::process::id()
        );
        return ExitCode::FAILURE;
    }
    guest::run_pid1()
}
