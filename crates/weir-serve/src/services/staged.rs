//! Staged runs: one function of a published version or of an unpublished
//! module on sample rows, under the tenant's limits tightened for a dry run.

use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::sandbox::SandboxLimits;
use crate::services::udfs::{self, UdfRef};
use crate::udf::staged::{Staged, run_rows_until};

/// Wall time a staged run may take; rows not run by then are reported.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A staged run: which function, on which rows; for an unpublished module
/// also the module (`module_base64`: binary; `module_text`: text format).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TryRequest {
    pub function: String,
    pub rows: Vec<Value>,
    #[serde(default)]
    pub module_base64: Option<String>,
    #[serde(default)]
    pub module_text: Option<String>,
}

impl TryRequest {
    pub fn parse(body: &[u8]) -> ServiceResult<Self> {
        serde_json::from_slice(body).map_err(|e| {
            ServiceError::BadRequest(format!(
                "invalid JSON: {e}; send {{\"function\": \"name\", \"rows\": [[arg, ...], ...]}}"
            ))
        })
    }
}

/// Dry-run limits: the ones in force for the tenant, tightened.
fn tighten(limits: &mut SandboxLimits) {
    limits.memory_bytes = limits.memory_bytes.min(32 << 20);
    limits.cpu_ms_per_batch = limits.cpu_ms_per_batch.min(250);
    limits.fuel_per_batch = limits.fuel_per_batch.min(500_000_000);
    limits.max_output_bytes = limits.max_output_bytes.min(16 << 20);
}

fn run(
    state: &AppState,
    tenant: &str,
    label: &str,
    bytes: &[u8],
    req: &TryRequest,
) -> ServiceResult<Staged> {
    // Under the tenant (its call gate, memory total and capabilities), and
    // never into the disk code cache.
    let module = state
        .sandbox
        .load_for_trial(label, bytes, &state.tenants.get(tenant), tighten)
        .map_err(|e| ServiceError::Rejected(e.to_string()))?;
    let deadline = std::time::Instant::now() + DEADLINE;
    // The rows are well-formed JSON; whether they fit the function is a
    // question about the module (422).
    run_rows_until(&module, &req.function, &req.rows, Some(deadline))
        .map_err(ServiceError::Rejected)
}

/// Runs a published version.
pub fn try_version(
    state: &AppState,
    tenant: &str,
    r: &UdfRef,
    req: &TryRequest,
) -> ServiceResult<Staged> {
    if req.module_base64.is_some() || req.module_text.is_some() {
        return Err(ServiceError::BadRequest(
            "a published version is run as published: drop `module_base64` / `module_text` (POST /v1/tenants/{tenant}/try runs an unpublished module)".to_string(),
        ));
    }
    let found = udfs::find(state, tenant, r)?;
    let bytes = state
        .registry
        .module_bytes(&found)
        .map_err(ServiceError::from)?;
    run(
        state,
        tenant,
        &format!("{tenant}/{}@v{}", r.name, found.version),
        &bytes,
        req,
    )
}

/// Runs a module given in the request.
pub fn try_module(state: &AppState, tenant: &str, req: &TryRequest) -> ServiceResult<Staged> {
    let bytes = match (&req.module_base64, &req.module_text) {
        (Some(b64), None) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| ServiceError::BadRequest(format!("module_base64: {e}")))?
        }
        (None, Some(text)) => text.clone().into_bytes(),
        _ => {
            return Err(ServiceError::BadRequest(
                "give the module as exactly one of `module_base64` or `module_text`".to_string(),
            ));
        }
    };
    run(
        state,
        tenant,
        &format!("{tenant}/(unpublished)"),
        &bytes,
        req,
    )
}
