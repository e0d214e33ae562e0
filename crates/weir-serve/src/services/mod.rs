//! The control plane's domain services: what the API does, without HTTP.
//! Each returns [`ServiceError`](crate::error::ServiceError), mapped to a
//! status in one place.

pub mod boundary;
pub mod pipelines;
pub mod query;
pub mod staged;
pub mod tokens;
pub mod udfs;

use std::sync::Arc;

use crate::AppState;
use crate::error::ServiceResult;

/// A registry write, off the API's threads: it blocks on SQLite's file or
/// a round trip to the shared database (a flood of deploys, publishes or
/// token changes must not hold the threads that answer other tenants).
/// Every service writes the registry through here.
pub(crate) async fn registry_write<T: Send + 'static>(
    state: &Arc<AppState>,
    write: impl FnOnce(&dyn crate::registry::Registry) -> crate::registry::Result<T> + Send + 'static,
) -> ServiceResult<T> {
    let registry = state.registry.clone();
    tokio::task::spawn_blocking(move || write(registry.as_ref()))
        .await
        .map_err(crate::error::ServiceError::internal)?
        .map_err(crate::error::ServiceError::from)
}
