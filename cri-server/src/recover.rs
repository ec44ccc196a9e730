//! Restart recovery (containerd's `recover.go`): before serving, every operation the journal
//! shows as begun but not finished (the daemon died in the middle) is completed or rolled back,
//! then the keeper's records are reconciled with SQLite. Workloads are never touched: running
//! containers stay running.

use unicri_storage::Store;

use crate::containers::Containers;
use crate::error::CriError;
use crate::pods::Pods;

/// Runs recovery; errors are logged per operation and the operation stays open for the next
/// start (it is retried), except that the daemon still starts.
pub async fn recover(store: &Store, pods: &Pods, containers: &Containers) -> Result<(), CriError> {
    let open = store.journal_open().await?;
    for op in open {
        let result = match op.kind.as_str() {
            "run_pod_sandbox" => pods.recover_run(&op.object_id, &op.payload).await,
            "create_container" => containers.recover_create(&op.object_id, &op.payload).await,
            other => {
                tracing::warn!(kind = other, id = %op.object_id, "unknown journal operation; closing it");
                Ok(())
            }
        };
        match result {
            Ok(()) => store.journal_finish(op.id).await?,
            Err(e) => {
                tracing::error!(kind = %op.kind, id = %op.object_id, error = %e.message, "recovery of an interrupted operation failed; retried at next start");
            }
        }
    }
    if let Err(e) = containers.reconcile_keeper().await {
        tracing::error!(error = %e.message, "reconciling the keeper's records failed");
    }
    Ok(())
}
