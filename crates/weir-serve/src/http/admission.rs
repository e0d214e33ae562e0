//! Who may do what, as an extractor and a layer: [`Admit`] authenticates
//! the bearer token, authorizes the route's [`Permission`] for the URL's
//! tenant and takes one request from the token's rate; [`audit`] writes
//! every admitted (or refused) request to the audit log and counts it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, RawPathParams, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;

use crate::AppState;
use crate::audit::AuditRecord;
use crate::auth::{Action, Denied, Principal, authenticate, authorize};
use crate::error::{ErrorMessage, ServiceError};
use crate::telemetry;

/// The action a route performs (a type, so each handler names its own).
pub trait Permission: Send + Sync + 'static {
    const ACTION: Action;
}

macro_rules! permissions {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Permission for $name {
            const ACTION: Action = Action::$name;
        }
    )*};
}

permissions! {
    /// List a tenant's objects.
    List;
    /// Read one object.
    Read;
    /// Run UDFs on sample rows or SQL.
    Try;
    Publish;
    Delete;
    ReadAudit;
    ManageTokens;
    /// Deploy, start, stop or remove pipelines.
    Operate;
    /// Read the cluster's nodes (every tenant's pipelines: `*` admins).
    ReadCluster;
}

/// An admitted caller of a route with permission `P` on `tenant`.
pub struct Admit<P> {
    pub caller: Principal,
    pub tenant: String,
    _permission: PhantomData<P>,
}

/// What the audit layer records about one request; filled by [`Admit`].
#[derive(Clone, Default)]
pub struct Note(Arc<Mutex<Option<Entry>>>);

struct Entry {
    who: String,
    tenant: String,
    action: Action,
    object: String,
    /// Why it was refused (authentication or authorization).
    denied: Option<String>,
}

/// The object a request is about, in words, from its path.
fn object_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "audit"] => "audit log".to_string(),
        ["v1", "cluster"] => "cluster".to_string(),
        ["v1", "tenants", _, "udfs"] => "udfs".to_string(),
        ["v1", "tenants", _, "udfs", name] => format!("udf `{name}`"),
        ["v1", "tenants", _, "udfs", name, "versions", version, ..] => {
            format!("udf `{name}` version {version}")
        }
        ["v1", "tenants", _, "try"] => "unpublished module".to_string(),
        ["v1", "tenants", _, "sql"] => "sql query".to_string(),
        ["v1", "tenants", _, "pipelines"] => "pipelines".to_string(),
        ["v1", "tenants", _, "pipelines", name, ..] => format!("pipeline `{name}`"),
        ["v1", "tenants", _, "tokens"] => "tokens".to_string(),
        ["v1", "tenants", _, "tokens", name] => format!("token `{name}`"),
        _ => path.to_string(),
    }
}

impl AppState {
    pub(crate) fn authenticate(&self, header: Option<&str>) -> Result<Principal, Denied> {
        authenticate(&self.config.tokens, header, |sha| {
            self.registry
                .token_by_sha256(sha)
                .map_err(|e| e.to_string())
        })
    }
}

impl<P: Permission> FromRequestParts<Arc<AppState>> for Admit<P> {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let principal = state.authenticate(header);
        // A route under `/v1/tenants/{tenant}` must name its tenant readably:
        // never fall back to another tenant when it does not.
        let under_tenant = parts.uri.path().starts_with("/v1/tenants/");
        let path_tenant = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == "tenant")
                .map(|(_, v)| v.to_string()),
            Err(_) if under_tenant => {
                return Err(ServiceError::BadRequest(
                    "the URL's path is not valid UTF-8".to_string(),
                ));
            }
            Err(_) => None,
        };
        if under_tenant && path_tenant.is_none() {
            return Err(ServiceError::BadRequest(
                "the URL names no tenant".to_string(),
            ));
        }
        // Elsewhere (the audit log) the tenant comes from `?tenant=`, else
        // the token's.
        // The cluster view spans every tenant.
        let every_tenant = P::ACTION == Action::ReadCluster;
        let tenant = path_tenant
            .clone()
            .filter(|_| !every_tenant)
            .or_else(|| every_tenant.then(|| "*".to_string()))
            .or_else(|| {
                Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
                    .ok()
                    .and_then(|q| q.0.get("tenant").cloned())
            })
            .or_else(|| principal.as_ref().ok().map(|p| p.tenant.clone()))
            .unwrap_or_else(|| "*".to_string());
        let object = object_of(parts.uri.path());
        // A tenant is a name; `*` (every tenant, in a token) only where the
        // audit log is read across tenants: `/v1/tenants/*/tokens` must not
        // mint an every-tenant token.
        let valid_name = crate::auth::is_tenant_name(&tenant);
        let star_allowed = tenant == "*" && (P::ACTION == Action::ReadAudit || every_tenant);
        if !valid_name && !star_allowed {
            let shown: String = tenant.chars().take(64).collect();
            return Err(ServiceError::BadRequest(format!(
                "invalid tenant `{shown}`: use 1 to 64 letters, digits, `-` and `_`"
            )));
        }
        // Every known token spends its rate on every request, refused or not
        // (token names are unique per tenant only: per (tenant, token)).
        if let Ok(p) = &principal
            && let Err(wait) = state.take_request(&format!("{}/{}", p.tenant, p.name))
        {
            return Err(ServiceError::RateLimited(format!(
                "token `{}` is over {} requests/s; retry in {wait:.1} s",
                p.name, state.config.requests_per_s
            )));
        }
        let note = parts.extensions.get::<Note>().cloned().unwrap_or_default();
        let mut entry = Entry {
            who: "anonymous".to_string(),
            tenant: tenant.clone(),
            action: P::ACTION,
            object: object.clone(),
            denied: None,
        };
        let result = match principal {
            Err(d) => Err(d),
            Ok(p) => {
                entry.who = p.name.clone();
                authorize(&p, P::ACTION, &tenant).map(|()| p)
            }
        };
        let caller = match result {
            Ok(p) => p,
            Err(d) => {
                entry.denied = Some(d.reason());
                *note.0.lock() = Some(entry);
                return Err(match d {
                    Denied::Unauthenticated => ServiceError::Unauthenticated(d.reason()),
                    Denied::Unverifiable(_) => ServiceError::Unavailable(d.reason()),
                    Denied::OtherTenant if every_tenant => ServiceError::Forbidden(
                        "the cluster view shows every tenant's pipelines: it takes an admin token of every tenant (`tenant = \"*\"`)".to_string(),
                    ),
                    // Another tenant's objects do not exist for this token.
                    Denied::OtherTenant => ServiceError::not_found(&object),
                    Denied::Role { .. } => ServiceError::Forbidden(d.reason()),
                });
            }
        };
        *note.0.lock() = Some(entry);
        Ok(Admit {
            caller,
            tenant,
            _permission: PhantomData,
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn action_name(action: Action) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The layer: audits and counts every request an [`Admit`] looked at.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let note = Note::default();
    request.extensions_mut().insert(note.clone());
    let response = next.run(request).await;
    let Some(entry) = note.0.lock().take() else {
        return response;
    };
    let status = response.status();
    let outcome = match (&entry.denied, status.is_success()) {
        (Some(_), _) => "denied",
        (None, true) => "allowed",
        (None, false) => "failed",
    };
    // Only a tenant the caller was admitted to is a label: a URL's tenant
    // named by an unknown or refused caller would let anyone grow the
    // metric set without bound.
    let label_tenant = if entry.denied.is_some() {
        "-".to_string()
    } else {
        entry.tenant.clone()
    };
    let reason = entry.denied.clone().or_else(|| {
        (!status.is_success())
            .then(|| {
                response
                    .extensions()
                    .get::<ErrorMessage>()
                    .map(|m| m.0.clone())
            })
            .flatten()
    });
    // Unauthenticated requests: the URL is the caller's text; bound what
    // reaches the disk.
    let anonymous = entry.who == "anonymous";
    let mut object = entry.object;
    if anonymous {
        object.truncate(
            (0..=object.len().min(120))
                .rev()
                .find(|i| object.is_char_boundary(*i))
                .unwrap_or(0),
        );
    }
    let audited = !anonymous || state.audit_anonymous();
    if audited {
        state
            .audit
            .append(&AuditRecord {
                at: now_ms(),
                who: entry.who,
                tenant: entry.tenant,
                action: action_name(entry.action),
                object,
                decision: if entry.denied.is_some() {
                    "denied"
                } else {
                    "allowed"
                }
                .to_string(),
                reason,
                status: status.as_u16(),
            })
            .await;
    }
    telemetry::counter(
        telemetry::API_REQUESTS,
        &vec![
            ("tenant", label_tenant),
            ("action", action_name(entry.action)),
            ("outcome", outcome.to_string()),
        ],
    )
    .increment(1);
    response
}
