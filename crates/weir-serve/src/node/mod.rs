//! This node's side of the cluster (`crate::cluster`): applying what the
//! database says to the pipelines it runs (`reconcile.rs`) and the
//! heartbeat that renews its leases (`heartbeat.rs`). Above both the
//! cluster and the services it drives; the cluster never names them.

pub mod heartbeat;
pub mod reconcile;

use std::sync::Arc;

/// Starts the cluster's tasks on this node: the change listener, the
/// reconciler and the heartbeat. They end with the returned handles.
pub fn spawn(state: &Arc<crate::AppState>) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let Some(cluster) = state.cluster.clone() else {
        return Ok(Vec::new());
    };
    let (changes, received) = tokio::sync::mpsc::unbounded_channel();
    crate::database::listen::spawn(cluster.db.config().clone(), changes)?;
    Ok(vec![
        tokio::spawn(reconcile::run(state.clone(), received)),
        tokio::spawn(heartbeat::run(state.clone(), cluster)),
    ])
}
