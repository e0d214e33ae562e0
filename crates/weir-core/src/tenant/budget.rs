//! What a tenant's policy grants each guest call (a [`Budget`], with the
//! policy key each value came from) and the capabilities there are: the
//! vocabulary the sandbox enforces, owned here so that the tenant layer
//! does not depend on the sandbox (the sandbox depends on it).

/// Host capabilities a module may import (from the `weir` import module).
pub const KNOWN_CAPABILITIES: &[&str] = &["log"];

/// What a tenant's policy grants each call, with the policy key each value
/// came from (`tenants.acme.cpu_ms_per_batch` or `defaults.…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub cpu_ms_per_batch: u64,
    pub fuel_per_batch: u64,
    pub memory_bytes: u64,
    pub capabilities: Vec<String>,
    /// Key of each field above, by field name.
    pub keys: Vec<(&'static str, String)>,
}

/// The policy key of `field` among `keys` (the fields a tenant's section
/// set), else the `[defaults]` one.
pub fn policy_key(keys: &[(&'static str, String)], field: &str) -> String {
    keys.iter()
        .find(|(f, _)| *f == field)
        .map_or_else(|| format!("defaults.{field}"), |(_, k)| k.clone())
}

impl Budget {
    pub(crate) fn key(&self, field: &str) -> String {
        policy_key(&self.keys, field)
    }
}
