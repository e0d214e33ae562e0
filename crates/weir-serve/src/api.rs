//! The HTTP handlers. Every `/v1` request is authenticated, authorized for
//! its tenant and audited; errors are JSON `{"error": "..."}` saying what to
//! do.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::audit::AuditRecord;
use super::auth::{Action, Denied, Principal, authenticate, authorize};
use crate::telemetry;

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

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

/// The outcome of admission: the caller, or the refusal to answer.
struct Admission {
    who: String,
    principal: Result<Principal, ApiError>,
    /// Why it was denied (for the audit log).
    denied: Option<String>,
}

impl AppState {
    fn authenticate(&self, header: Option<&str>) -> Result<Principal, Denied> {
        authenticate(&self.config.tokens, header, |sha| {
            self.registry.token_by_sha256(sha).ok().flatten()
        })
    }

    /// Authenticates, authorizes for `tenant` and applies the token's rate.
    fn admit(&self, headers: &HeaderMap, action: Action, tenant: &str, object: &str) -> Admission {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let refuse = |who: String, d: Denied| {
            let status = match d {
                Denied::Unauthenticated => StatusCode::UNAUTHORIZED,
                Denied::OtherTenant => StatusCode::NOT_FOUND,
                Denied::Role { .. } => StatusCode::FORBIDDEN,
            };
            let message = match d {
                Denied::OtherTenant => format!("{object} not found"),
                _ => d.reason(),
            };
            Admission {
                who,
                principal: Err(ApiError::new(status, message)),
                denied: Some(d.reason()),
            }
        };
        let p = match self.authenticate(auth) {
            Err(d) => return refuse("anonymous".to_string(), d),
            Ok(p) => p,
        };
        if let Err(d) = authorize(&p, action, tenant) {
            return refuse(p.name, d);
        }
        if let Err(wait) = self.take_request(&p.name) {
            let message = format!(
                "token `{}` is over {} requests/s; retry in {wait:.1} s",
                p.name, self.config.requests_per_s
            );
            return Admission {
                who: p.name,
                principal: Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)),
                denied: None,
            };
        }
        Admission {
            who: p.name.clone(),
            principal: Ok(p),
            denied: None,
        }
    }

    /// Audits and counts one answered request.
    fn record(
        &self,
        admission: Admission,
        action: Action,
        tenant: &str,
        object: &str,
        result: Result<Response, ApiError>,
    ) -> Response {
        let status = match &result {
            Ok(r) => r.status(),
            Err(e) => e.status,
        };
        let outcome = match (&admission.denied, status.is_success()) {
            (Some(_), _) => "denied",
            (None, true) => "allowed",
            (None, false) => "failed",
        };
        let decision = if admission.denied.is_some() {
            "denied"
        } else {
            "allowed"
        };
        // A tenant named by an unauthenticated caller is not a label (it
        // would let anyone grow the metric set without bound).
        let label_tenant = if admission.who == "anonymous" {
            "-".to_string()
        } else {
            tenant.to_string()
        };
        self.audit.append(&AuditRecord {
            at: now_ms(),
            who: admission.who,
            tenant: tenant.to_string(),
            action: action_name(action),
            object: object.to_string(),
            decision: decision.to_string(),
            reason: admission
                .denied
                .or_else(|| result.as_ref().err().map(|e| e.message.clone())),
            status: status.as_u16(),
        });
        telemetry::counter(
            telemetry::API_REQUESTS,
            &vec![
                ("tenant", label_tenant),
                ("action", action_name(action)),
                ("outcome", outcome.to_string()),
            ],
        )
        .increment(1);
        result.unwrap_or_else(IntoResponse::into_response)
    }

    /// Admits, runs `work`, audits and counts.
    pub(super) fn handle(
        &self,
        headers: &HeaderMap,
        action: Action,
        tenant: &str,
        object: &str,
        work: impl FnOnce(&Principal) -> Answer,
    ) -> Response {
        let mut admission = self.admit(headers, action, tenant, object);
        let principal = std::mem::replace(
            &mut admission.principal,
            Err(ApiError::new(StatusCode::OK, "")),
        );
        let result = principal
            .and_then(|p| work(&p))
            .map(IntoResponse::into_response);
        self.record(admission, action, tenant, object, result)
    }

    /// Like [`AppState::handle`] for work that awaits and answers with any
    /// response.
    pub(super) async fn handle_async<F, Fut>(
        &self,
        headers: &HeaderMap,
        action: Action,
        tenant: &str,
        object: &str,
        work: F,
    ) -> Response
    where
        F: FnOnce(Principal) -> Fut,
        Fut: std::future::Future<Output = Result<Response, ApiError>>,
    {
        let mut admission = self.admit(headers, action, tenant, object);
        let principal = std::mem::replace(
            &mut admission.principal,
            Err(ApiError::new(StatusCode::OK, "")),
        );
        let result = match principal {
            Ok(p) => work(p).await,
            Err(e) => Err(e),
        };
        self.record(admission, action, tenant, object, result)
    }
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid name `{name}`: use 1 to 64 of a-z, 0-9, `-`, `_`"),
        ))
    }
}

pub(super) fn parse_version(v: &str) -> Result<Option<i64>, ApiError> {
    if v == "latest" {
        return Ok(None);
    }
    v.parse::<i64>().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid version `{v}`: a number or `latest`"),
        )
    })
}

pub(super) fn internal(e: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process is alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "the registry answers and the brokers of running pipelines accept connections"), (status = 503, description = "what is not ready")))]
pub async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match s.readiness().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => {
            // Unauthenticated: the details (pipeline, brokers) go to the log.
            tracing::warn!("not ready: {why}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: see the server log",
            )
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus / OpenMetrics text")))]
pub async fn metrics() -> Response {
    metrics_text()
}

/// The exposition with its content type.
pub fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::exporter::render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/udfs", tag = "udfs", params(("tenant" = String, Path, description = "tenant name")), responses((status = 200, description = "the latest version of each UDF"), (status = 401), (status = 404)))]
pub async fn list_udfs(
    State(s): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.handle(&headers, Action::List, &tenant, "udfs", |_| {
        let list = s.registry.list(&tenant).map_err(internal)?;
        Ok((StatusCode::OK, Json(json!({ "udfs": list }))))
    })
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/udfs/{name}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _")), request_body(content = Vec<u8>, content_type = "application/wasm", description = "the module, binary or text format"), responses((status = 201, description = "published as the next version"), (status = 200, description = "same bytes as the latest version"), (status = 400), (status = 401), (status = 403), (status = 404), (status = 413), (status = 415), (status = 422, description = "the sandbox refused the module")))]
pub async fn publish_udf(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let object = format!("udf `{name}`");
    s.handle(&headers, Action::Publish, &tenant, &object, |p| {
        valid_name(&name)?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !matches!(
            content_type,
            "application/wasm" | "application/octet-stream"
        ) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "send the module as `Content-Type: application/wasm` (got `{content_type}`)"
                ),
            ));
        }
        // Validates size, format, manifest, ABI version, imports against the
        // tenant's capabilities and compiles (into the code cache).
        let tenant_state = s.tenants.get(&tenant);
        let module = s
            .sandbox
            .load_for(&format!("{tenant}/{name}"), &body, &tenant_state)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        let functions = module
            .manifest()
            .functions
            .iter()
            .map(|f| f.signature())
            .collect();
        let bytes = if body.starts_with(b"\0asm") {
            body.to_vec()
        } else {
            wat::parse_bytes(&body)
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
                .into_owned()
        };
        let (version, created) = s
            .registry
            .publish(&tenant, &name, &bytes, module.digest(), functions, &p.name)
            .map_err(internal)?;
        if created {
            s.pipelines.notify_registry_changed();
            let labels = vec![("tenant", tenant.clone())];
            telemetry::counter(telemetry::UDF_PUBLISHES, &labels).increment(1);
            telemetry::gauge(telemetry::UDF_VERSIONS, &labels).increment(1.0);
        }
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(json!(version))))
    })
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/udfs/{name}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _")), responses((status = 200, description = "every version"), (status = 404)))]
pub async fn udf_versions(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = format!("udf `{name}`");
    s.handle(&headers, Action::Read, &tenant, &object, |_| {
        let versions = s.registry.versions(&tenant, &name).map_err(internal)?;
        if versions.is_empty() {
            return Err(ApiError::not_found(&object));
        }
        Ok((
            StatusCode::OK,
            Json(json!({ "name": name, "versions": versions })),
        ))
    })
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/udfs/{name}/versions/{version}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _"), ("version" = String, Path, description = "version number, or `latest`")), responses((status = 200, description = "one version"), (status = 404)))]
pub async fn get_version(
    State(s): State<Arc<AppState>>,
    Path((tenant, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = format!("udf `{name}` version {version}");
    s.handle(&headers, Action::Read, &tenant, &object, |_| {
        let v = parse_version(&version)?;
        let found = s.registry.get(&tenant, &name, v).map_err(internal)?;
        found
            .map(|v| (StatusCode::OK, Json(json!(v))))
            .ok_or_else(|| ApiError::not_found(&object))
    })
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/udfs/{name}/versions/{version}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _"), ("version" = String, Path, description = "version number, or `latest`")), responses((status = 200, description = "deleted; `latest` follows the previous version"), (status = 403), (status = 404)))]
pub async fn delete_version(
    State(s): State<Arc<AppState>>,
    Path((tenant, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = format!("udf `{name}` version {version}");
    s.handle(&headers, Action::Delete, &tenant, &object, |_| {
        let Some(v) = parse_version(&version)? else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "delete a numbered version, not `latest`",
            ));
        };
        if let Some(pipeline) = s.pipelines.pinned_by(&tenant, &name, v) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("version {v} of udf `{name}` is pinned by running pipeline `{pipeline}`; stop it or deploy it with another version first"),
            ));
        }
        if !s.registry.delete(&tenant, &name, v).map_err(internal)? {
            return Err(ApiError::not_found(&object));
        }
        s.pipelines.notify_registry_changed();
        telemetry::gauge(telemetry::UDF_VERSIONS, &vec![("tenant", tenant.clone())]).decrement(1.0);
        Ok((
            StatusCode::OK,
            Json(json!({ "deleted": { "name": name, "version": v } })),
        ))
    })
}

#[derive(Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
    tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(("limit" = Option<usize>, Query, description = "last N records (default 1000)"), ("tenant" = Option<String>, Query, description = "for `*` admins")), responses((status = 200, description = "audit records, oldest first"), (status = 403)))]
pub async fn read_audit(
    State(s): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
    headers: HeaderMap,
) -> Response {
    // Tenant admins read their tenant's records; `*` admins any (or all).
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let tenant = q
        .tenant
        .clone()
        .or_else(|| s.authenticate(auth).ok().map(|p| p.tenant))
        .unwrap_or_else(|| "*".to_string());
    s.handle(&headers, Action::ReadAudit, &tenant, "audit log", |_| {
        let records = s.audit.read(&tenant, q.limit.unwrap_or(1000).min(10_000));
        Ok((StatusCode::OK, Json(json!({ "records": records }))))
    })
}

/// A staged run: which function, on which rows; for an unpublished module
/// also the module (`module_base64`: binary; `module_text`: text format).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TryRequest {
    function: String,
    rows: Vec<Value>,
    #[serde(default)]
    module_base64: Option<String>,
    #[serde(default)]
    module_text: Option<String>,
}

/// Dry-run limits: the tenant's, tightened.
fn dry_run_limits(s: &AppState, tenant: &str) -> crate::sandbox::SandboxLimits {
    let policy = s.tenants.get(tenant).policy();
    let mut limits = s.sandbox.limits().clone();
    limits.capabilities = policy.capabilities.clone();
    limits.memory_bytes = limits.memory_bytes.min(policy.memory_bytes).min(32 << 20);
    limits.cpu_ms_per_batch = policy.cpu_ms_per_batch.min(250);
    limits.fuel_per_batch = policy.fuel_per_batch.min(500_000_000);
    limits.max_output_bytes = limits.max_output_bytes.min(16 << 20);
    limits
}

fn staged(s: &AppState, tenant: &str, label: &str, bytes: &[u8], req: &TryRequest) -> Answer {
    let started = std::time::Instant::now();
    let module = s
        .sandbox
        .load_with_limits(label, bytes, dry_run_limits(s, tenant))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let result = crate::udf::staged::run_rows(&module, &req.function, &req.rows)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let mut body = json!(result);
    body["total_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
    Ok((StatusCode::OK, Json(body)))
}

fn parse_try(body: &Bytes) -> Result<TryRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid JSON: {e}; send {{\"function\": \"name\", \"rows\": [[arg, ...], ...]}}"
            ),
        )
    })
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/udfs/{name}/versions/{version}/try", tag = "staged", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _"), ("version" = String, Path, description = "version number, or `latest`")), request_body(content = String, content_type = "application/json", description = "{\"function\": name, \"rows\": [[args...], ...]}"), responses((status = 200, description = "outputs, per-row errors, guest time"), (status = 400), (status = 403), (status = 404), (status = 422)))]
pub async fn try_version(
    State(s): State<Arc<AppState>>,
    Path((tenant, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let object = format!("udf `{name}` version {version}");
    s.handle(&headers, Action::Try, &tenant, &object, |_| {
        let req = parse_try(&body)?;
        let v = parse_version(&version)?;
        let found = s
            .registry
            .get(&tenant, &name, v)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(&object))?;
        let bytes = s.registry.module_bytes(&found).map_err(internal)?;
        staged(
            &s,
            &tenant,
            &format!("{tenant}/{name}@v{}", found.version),
            &bytes,
            &req,
        )
    })
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/try", tag = "staged", params(("tenant" = String, Path, description = "tenant name")), request_body(content = String, content_type = "application/json", description = "{\"function\", \"rows\", \"module_base64\" | \"module_text\"}"), responses((status = 200, description = "outputs, per-row errors, guest time"), (status = 400), (status = 403), (status = 422)))]
pub async fn try_module(
    State(s): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.handle(&headers, Action::Try, &tenant, "unpublished module", |_| {
        let req = parse_try(&body)?;
        let bytes = match (&req.module_base64, &req.module_text) {
            (Some(b64), None) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, format!("module_base64: {e}"))
                    })?
            }
            (None, Some(text)) => text.clone().into_bytes(),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "give the module as exactly one of `module_base64` or `module_text`",
                ));
            }
        };
        staged(
            &s,
            &tenant,
            &format!("{tenant}/(unpublished)"),
            &bytes,
            &req,
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: super::auth::Role,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", tag = "tokens",
    params(("tenant" = String, Path, description = "tenant name")),
    request_body(content = String, content_type = "application/json", description = "{\"name\", \"role\": \"viewer\" | \"operator\" | \"publisher\" | \"admin\"}"),
    responses((status = 201, description = "the token (shown once) and its sha256"), (status = 400), (status = 403), (status = 409)))]
pub async fn create_token(
    State(s): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.handle(&headers, Action::ManageTokens, &tenant, "tokens", |p| {
        let req: NewToken = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e}; send {{\"name\": \"ci\", \"role\": \"publisher\"}}"),
            )
        })?;
        valid_name(&req.name)?;
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .map_err(|e| internal(format!("no randomness: {e}")))?;
        let token = format!("weir_{}", hex::encode(bytes));
        let config = super::auth::TokenConfig {
            name: req.name.clone(),
            sha256: super::auth::hash_token(&token),
            tenant: tenant.clone(),
            role: req.role,
        };
        if s.config.tokens.iter().any(|t| t.name == req.name)
            || !s.registry.create_token(&config, &p.name, now_ms()).map_err(internal)?
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a token named `{}` exists; revoke it or pick another name", req.name),
            ));
        }
        Ok((
            StatusCode::CREATED,
            Json(json!({ "name": req.name, "tenant": tenant, "role": req.role, "token": token, "sha256": config.sha256 })),
        ))
    })
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/tokens", tag = "tokens",
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 200, description = "names and roles of the tokens created through the API"), (status = 403)))]
pub async fn list_tokens(
    State(s): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.handle(&headers, Action::ManageTokens, &tenant, "tokens", |_| {
        let tokens: Vec<Value> = s
            .registry
            .tokens(&tenant)
            .map_err(internal)?
            .into_iter()
            .map(|t| json!({ "name": t.name, "role": t.role }))
            .collect();
        Ok((StatusCode::OK, Json(json!({ "tokens": tokens }))))
    })
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/tokens/{name}", tag = "tokens",
    params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "token name")),
    responses((status = 200, description = "revoked"), (status = 403), (status = 404)))]
pub async fn revoke_token(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = format!("token `{name}`");
    s.handle(&headers, Action::ManageTokens, &tenant, &object, |_| {
        if !s.registry.delete_token(&tenant, &name).map_err(internal)? {
            return Err(ApiError::not_found(&object));
        }
        Ok((StatusCode::OK, Json(json!({ "revoked": name }))))
    })
}
