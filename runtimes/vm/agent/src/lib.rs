//! unicri's guest agent (issue 6): the library part is the agent protocol, shared with the
//! daemon's `vm` backend; the binary (`src/main.rs`) is PID 1 of a `vm` pod's guest.

pub mod proto;
