//! Bearer tokens (stored as sha256 only), roles per tenant, and the
//! authorization of every action. A token of another tenant gets 404, so
//! names do not leak.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Publisher,
    Admin,
}

/// One token from `[[serve.tokens]]`: its sha256, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Names the token in the audit log.
    pub name: String,
    /// Lowercase hex sha256 of the bearer token (`weir token new` prints both).
    pub sha256: String,
    /// The tenant it acts for; `*` for every tenant (operators of weir).
    pub tenant: String,
    pub role: Role,
}

/// What a request is trying to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    List,
    Read,
    Try,
    Publish,
    Delete,
    ReadAudit,
    /// Create, list or revoke tokens (admins).
    ManageTokens,
    /// Deploy, start, stop or remove pipelines.
    Operate,
    /// Read the cluster's nodes and what each runs (admins of every tenant).
    ReadCluster,
}

impl Action {
    /// The action in words, for a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::Read => "read",
            Action::Try => "run staged runs or SQL",
            Action::Publish => "publish",
            Action::Delete => "delete",
            Action::ReadAudit => "read the audit log",
            Action::ManageTokens => "manage tokens",
            Action::Operate => "operate pipelines",
            Action::ReadCluster => "read the cluster view",
        }
    }
}

impl Role {
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Viewer => matches!(action, List | Read),
            Role::Operator => matches!(action, List | Read | Try | Operate),
            Role::Publisher => matches!(action, List | Read | Try | Publish),
            Role::Admin => true,
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub tenant: String,
    pub role: Role,
}

/// Why a request was refused; becomes 401, 403 or 404.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated,
    /// The token is not in the configuration and the registry, which holds
    /// the tokens created through the API, could not be asked (why): the
    /// caller should retry, not think its token unknown.
    Unverifiable(String),
    /// Another tenant's object: answered as "not found".
    OtherTenant,
    Role {
        role: Role,
        action: Action,
    },
}

impl Denied {
    pub fn reason(&self) -> String {
        match self {
            Denied::Unauthenticated => "missing or unknown bearer token".to_string(),
            Denied::Unverifiable(why) => {
                format!("the bearer token cannot be checked now ({why}); retry")
            }
            Denied::OtherTenant => "tenant not accessible to this token".to_string(),
            Denied::Role { role, action } => format!(
                "role `{}` may not {}",
                format!("{role:?}").to_lowercase(),
                action.describe()
            ),
        }
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Finds the token of an `Authorization: Bearer …` header value among the
/// configured ones, else through `lookup` (tokens created by the API).
pub fn authenticate(
    tokens: &[TokenConfig],
    header: Option<&str>,
    lookup: impl Fn(&str) -> Result<Option<TokenConfig>, String>,
) -> Result<Principal, Denied> {
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or(Denied::Unauthenticated)?;
    let digest = hash_token(token.trim());
    let configured = tokens
        .iter()
        .find(|t| t.sha256.eq_ignore_ascii_case(&digest))
        .cloned();
    let found = match configured {
        Some(t) => Some(t),
        None => lookup(&digest).map_err(Denied::Unverifiable)?,
    };
    found
        .map(|t| Principal {
            name: t.name.clone(),
            tenant: t.tenant.clone(),
            role: t.role,
        })
        .ok_or(Denied::Unauthenticated)
}

pub fn authorize(p: &Principal, action: Action, tenant: &str) -> Result<(), Denied> {
    if p.tenant != "*" && p.tenant != tenant {
        return Err(Denied::OtherTenant);
    }
    if !p.role.allows(action) {
        return Err(Denied::Role {
            role: p.role,
            action,
        });
    }
    Ok(())
}

/// Whether `name` can be a tenant: 1 to 64 letters, digits, `-` and `_`
/// (never `*`). Every way in (a URL, a PostgreSQL login, a Flight SQL
/// call) holds a tenant it is given to this before the name reaches a
/// policy, a metric label or the audit log.
pub fn is_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
