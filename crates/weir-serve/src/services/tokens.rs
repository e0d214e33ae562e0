//! Bearer tokens: minted here (for `weir token new` and the API alike),
//! stored as sha256 only.

use std::sync::Arc;

use crate::AppState;
use crate::auth::{Role, TokenConfig, hash_token};
use crate::error::{ServiceError, ServiceResult};
use crate::services::udfs::valid_name;

/// A new random token, `weir_` + 48 hex digits, and its sha256.
pub fn mint() -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 24];
    let mut random = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut random, &mut bytes)?;
    let token = format!("weir_{}", hex::encode(bytes));
    let sha256 = hash_token(&token);
    Ok((token, sha256))
}

/// A token created through the API: its configuration and the token
/// itself (shown once).
pub struct Created {
    pub config: TokenConfig,
    pub token: String,
}

/// Creates token `name` with `role` for `tenant`; names are unique per
/// tenant and never reuse one from `[[serve.tokens]]`.
pub async fn create(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    role: Role,
    by: &str,
) -> ServiceResult<Created> {
    valid_name(name)?;
    let (token, sha256) =
        mint().map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
    let config = TokenConfig {
        name: name.to_string(),
        sha256,
        tenant: tenant.to_string(),
        role,
    };
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if state.config.tokens.iter().any(|t| t.name == name) || {
        let (stored, by) = (config.clone(), by.to_string());
        !super::registry_write(state, move |r| r.create_token(&stored, &by, at)).await?
    } {
        return Err(ServiceError::Conflict(format!(
            "a token named `{name}` exists; revoke it or pick another name"
        )));
    }
    Ok(Created { config, token })
}

/// Revokes a token created through the API.
pub async fn revoke(state: &Arc<AppState>, tenant: &str, name: &str) -> ServiceResult<()> {
    let (t, n) = (tenant.to_string(), name.to_string());
    if super::registry_write(state, move |r| r.delete_token(&t, &n)).await? {
        Ok(())
    } else {
        Err(ServiceError::not_found(&format!("token `{name}`")))
    }
}
