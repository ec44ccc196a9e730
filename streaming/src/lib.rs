//! The CRI streaming server: Exec, Attach and PortForward sessions behind one-time URLs, over
//! SPDY/3.1 (client-go's default: kubelet, crictl, critest) and WebSocket (`v5.channel.k8s.io`,
//! and SPDY tunnelled through a WebSocket for port-forward).
//!
//! * [`spdy`]: the SPDY/3.1 framing, header compression and sessions (no crate exists for it).
//! * [`ws`]: WebSocket framing, both roles.
//! * [`http`]: the request head and the upgrade answer.
//! * [`remotecommand`] and [`portforward`]: the Kubernetes protocols on top.
//! * [`server`]: tokens, the listener, dispatch.
//! * [`runtime`]: the trait a backend implements ([`StreamRuntime`]).

pub mod client;
pub mod http;
pub mod portforward;
pub mod remotecommand;
pub mod runtime;
pub mod server;
pub mod spdy;
pub mod ws;

pub use remotecommand::{Options, Target};
pub use runtime::{Io, StreamError, StreamRuntime, TermSize};
pub use server::{Pending, Server, TlsIdentity};

#[cfg(test)]
mod tests;
