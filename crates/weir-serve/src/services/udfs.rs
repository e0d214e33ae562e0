//! UDFs in the registry: names, references (`name`, `name@N`,
//! `name@latest` — parsed here and nowhere else), publishing, deleting (not
//! while a running pipeline pins the version) and loading a version for a
//! tenant.

use std::sync::Arc;

use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::registry::UdfVersion;
use crate::sandbox::UdfModule;
use crate::telemetry;

/// A reference to a published UDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdfRef {
    pub name: String,
    /// `None`: the latest version.
    pub version: Option<i64>,
}

/// A version given on its own (a URL segment): a number or `latest`.
pub fn parse_version(text: &str) -> ServiceResult<Option<i64>> {
    if text == "latest" {
        return Ok(None);
    }
    text.parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(|| {
            ServiceError::BadRequest(format!(
                "invalid version `{text}`: a number from 1, or `latest`"
            ))
        })
}

impl UdfRef {
    /// `name`, `name@N` or `name@latest`.
    pub fn parse(text: &str) -> ServiceResult<Self> {
        let (name, version) = match text.split_once('@') {
            Some((name, version)) => (
                name,
                parse_version(version).map_err(|_| {
                    ServiceError::BadRequest(format!(
                        "udf `{text}`: the version after `@` must be a number or `latest`"
                    ))
                })?,
            ),
            None => (text, None),
        };
        valid_name(name)?;
        Ok(UdfRef {
            name: name.to_string(),
            version,
        })
    }

    /// `name@N`, or `name` for the latest.
    pub fn describe(&self) -> String {
        match self.version {
            Some(v) => format!("udf `{}` version {v}", self.name),
            None => format!("udf `{}`", self.name),
        }
    }
}

/// Names of UDFs, pipelines and tokens: 1 to 64 of a-z, 0-9, `-`, `_`.
pub fn valid_name(name: &str) -> ServiceResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(format!(
            "invalid name `{name}`: use 1 to 64 of a-z, 0-9, `-`, `_`"
        )))
    }
}

/// The registry entry a reference names.
pub fn find(state: &AppState, tenant: &str, r: &UdfRef) -> ServiceResult<UdfVersion> {
    state
        .registry
        .get(tenant, &r.name, r.version)
        .map_err(ServiceError::from)?
        .ok_or_else(|| match r.version {
            Some(n) => ServiceError::NotFound(format!(
                "udf `{}` version {n} is not in the registry",
                r.name
            )),
            None => ServiceError::NotFound(format!("udf `{}` is not in the registry", r.name)),
        })
}

/// Loads a published version for `tenant` (its policy's limits and
/// capabilities; the code cache makes this cheap after the first time).
pub fn load(state: &AppState, tenant: &str, r: &UdfRef) -> ServiceResult<Arc<UdfModule>> {
    let found = find(state, tenant, r)?;
    let bytes = state
        .registry
        .module_bytes(&found)
        .map_err(ServiceError::from)?;
    state
        .sandbox
        .load_for(
            &format!("{tenant}/{}@v{}", r.name, found.version),
            &bytes,
            &state.tenants.get(tenant),
        )
        .map_err(|e| ServiceError::Rejected(e.to_string()))
}

/// Validates (size, format, manifest, ABI version, imports against the
/// tenant's capabilities), compiles into the code cache and stores the
/// module as the next version; the same bytes as the latest version are
/// not stored again. Returns the version and whether it is new.
pub fn publish(
    state: &AppState,
    tenant: &str,
    name: &str,
    body: &[u8],
    by: &str,
) -> ServiceResult<(UdfVersion, bool)> {
    valid_name(name)?;
    let module = state
        .sandbox
        .load_for(
            &format!("{tenant}/{name}"),
            body,
            &state.tenants.get(tenant),
        )
        .map_err(|e| ServiceError::Rejected(e.to_string()))?;
    let manifest = module.manifest();
    let functions = manifest
        .functions
        .iter()
        .map(|f| f.signature())
        .chain(manifest.aggregates.iter().map(|f| f.signature()))
        .collect();
    let bytes = if body.starts_with(b"\0asm") {
        body.to_vec()
    } else {
        wat::parse_bytes(body)
            .map_err(|e| ServiceError::Rejected(e.to_string()))?
            .into_owned()
    };
    let (version, created) = state
        .registry
        .publish(tenant, name, &bytes, module.digest(), functions, by)
        .map_err(ServiceError::from)?;
    if created {
        state.pipelines.notify_registry_changed();
        let labels = vec![("tenant", tenant.to_string())];
        telemetry::counter(telemetry::UDF_PUBLISHES, &labels).increment(1);
        telemetry::gauge(telemetry::UDF_VERSIONS, &labels).increment(1.0);
    }
    Ok((version, created))
}

/// Deletes a numbered version, unless a running pipeline pins it.
pub async fn delete(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    version: Option<i64>,
) -> ServiceResult<i64> {
    let Some(v) = version else {
        return Err(ServiceError::BadRequest(
            "delete a numbered version, not `latest`".to_string(),
        ));
    };
    if let Some(pipeline) = state.pipelines.pinned_by(tenant, name, v) {
        return Err(ServiceError::Conflict(format!(
            "version {v} of udf `{name}` is pinned by running pipeline `{pipeline}`; stop it or deploy it with another version first"
        )));
    }
    let (t, n) = (tenant.to_string(), name.to_string());
    if !super::registry_write(state, move |r| r.delete(&t, &n, v)).await? {
        return Err(ServiceError::not_found(&format!(
            "udf `{name}` version {v}"
        )));
    }
    state.pipelines.notify_registry_changed();
    telemetry::gauge(
        telemetry::UDF_VERSIONS,
        &vec![("tenant", tenant.to_string())],
    )
    .decrement(1.0);
    Ok(v)
}

/// Of a tenant's published `versions`, the UDFs whose functions `sql`
/// names (by a function a module declares): what a statement of the
/// PostgreSQL or Flight SQL protocol loads, latest versions.
pub fn named_in(versions: &[UdfVersion], sql: &str) -> Vec<String> {
    let words: std::collections::HashSet<String> = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let mut names: Vec<String> = versions
        .iter()
        .filter(|v| {
            v.functions.iter().any(|f| {
                let name = f.split('(').next().unwrap_or_default().trim();
                words.contains(&name.to_ascii_lowercase())
            })
        })
        .map(|v| v.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names.truncate(crate::pipeline::PipelineConfig::MAX_UDFS);
    names
}
