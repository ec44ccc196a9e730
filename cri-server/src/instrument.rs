//! One wrapper around every RPC: a span with the RPC's name, one log line with the outcome, and
//! the single conversion from [`CriError`] to a gRPC status (containerd's instrumented_service).

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

use crate::error::CriError;

/// How loudly an RPC is logged: mutating calls at `info`, polled ones (List*, *Status) at `trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Mutating RPCs.
    Mutating,
    /// Polled, read-only RPCs.
    Polled,
}

/// Runs `fut` as RPC `rpc`, logging and mapping its error.
pub async fn rpc<T, F>(
    rpc: &'static str,
    level: Level,
    fut: F,
) -> Result<tonic::Response<T>, tonic::Status>
where
    F: Future<Output = Result<T, CriError>>,
{
    let span = tracing::info_span!("rpc", rpc);
    let started = Instant::now();
    let out = fut.instrument(span.clone()).await;
    let _g = span.enter();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match out {
        Ok(v) => {
            match level {
                Level::Mutating => tracing::info!(elapsed_ms, "ok"),
                Level::Polled => tracing::trace!(elapsed_ms, "ok"),
            }
            Ok(tonic::Response::new(v))
        }
        Err(e) => {
            let code = crate::error::code_for(e.kind);
            if matches!(
                code,
                tonic::Code::Internal | tonic::Code::DataLoss | tonic::Code::Unavailable
            ) {
                tracing::error!(elapsed_ms, ?code, error = %e.message, "failed");
            } else {
                tracing::info!(elapsed_ms, ?code, error = %e.message, "failed");
            }
            Err(e.into())
        }
    }
}
