//! The PostgreSQL wire protocol (`[serve] postgres_listen`, issue 30):
//! `psql`, psycopg, JDBC and Grafana's PostgreSQL source connect to
//! `weir serve` with user = tenant and password = an API token, and run
//! SQL with the tenant's UDFs under the same rules as
//! `POST /v1/tenants/{tenant}/sql` (`services::query`): its limits,
//! memory, deadline and fair share, `CREATE FUNCTION … LANGUAGE
//! javascript|python` for the statement's life, every statement audited.
//!
//! The simple query protocol (`psql`) and the extended one (prepared
//! statements with `$n` parameters and portals: psycopg, JDBC, Grafana;
//! `extended.rs`), results in text or binary format (`encode.rs`),
//! cancel requests; cleartext passwords on a loopback listener only
//! (`allow_insecure_password`); `SHOW` and psql's describe commands
//! (`catalog.rs`). Not yet: TLS, SCRAM, the catalog queries of JDBC and
//! Grafana.

mod catalog;
mod encode;
mod extended;
mod params;
mod sqlstate;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, stream};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use pgwire::api::{ConnectionHandle, ConnectionManager};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use crate::AppState;
use crate::audit::AuditRecord;
use crate::auth::{Action, authorize};
use crate::error::{ServiceError, ServiceResult};
use crate::services::query::{self, SqlRequest};
use datafusion::arrow::array::RecordBatch;

/// Checks `[serve] postgres_listen` before anything listens: without TLS
/// cleartext passwords travel unencrypted, so only on loopback and when
/// the operator said so.
pub fn check(config: &crate::config::ServeConfig) -> Result<Option<std::net::SocketAddr>, String> {
    crate::config::password_listener(
        "serve.postgres_listen",
        config.postgres_listen.as_deref(),
        "127.0.0.1:5433",
        config.allow_insecure_password,
        config.tls_cert.is_some(),
    )
}

/// Accepts connections on `listener` until the task is dropped.
///
/// With `tls`, a client's `SSLRequest` starts TLS, and a login that did not
/// is refused (28000) unless it comes from loopback and
/// `serve.allow_insecure_password` is set.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    // Each connection gets a process id and a secret key at login; a cancel
    // request (psql's Ctrl-C, `PQcancel`) names them and stops that
    // connection's running statement.
    let connections = Arc::new(ConnectionManager::new());
    let handlers = Arc::new(Handlers {
        startup: Arc::new(Startup {
            login: CleartextPasswordAuthStartupHandler::new(
                Tokens {
                    state: state.clone(),
                },
                catalog::server_parameters(),
            )
            .with_connection_manager(connections.clone()),
            tls: tls.is_some(),
            allow_insecure_password: state.config.allow_insecure_password,
        }),
        cancel: Arc::new(DefaultCancelHandler::new(connections)),
        queries: Arc::new(Queries {
            state: state.clone(),
        }),
        extended: Arc::new(extended::Extended::new(Arc::new(Queries {
            state: state.clone(),
        }))),
    });
    let bound = crate::connections::Bound::new(
        state.config.postgres_max_connections,
        "PostgreSQL",
        "serve.postgres_max_connections",
    );
    loop {
        let (socket, permit) = bound.accept(&listener).await;
        let handlers = handlers.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let _open = permit;
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                tracing::debug!("postgres connection: {e}");
            }
        });
    }
}

struct Handlers {
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
    queries: Arc<Queries>,
    extended: Arc<extended::Extended>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.extended.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// The login: with TLS configured, a connection that did not start TLS is
/// refused before its password is asked for, unless it comes from
/// loopback and `serve.allow_insecure_password` is set; then
/// [`Tokens`]' cleartext password check.
struct Startup {
    login: CleartextPasswordAuthStartupHandler<Tokens, DefaultServerParameterProvider>,
    tls: bool,
    allow_insecure_password: bool,
}

#[async_trait]
impl pgwire::api::auth::StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let plain_allowed = self.allow_insecure_password && client.socket_addr().ip().is_loopback();
        if self.tls && !client.is_secure() && !plain_allowed {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "28000".to_string(),
                "this server takes an API token as password over TLS only: connect with sslmode=require, or verify-full with the server's certificate as sslrootcert".to_string(),
            ))));
        }
        self.login.on_startup(client, message).await
    }
}

/// user = tenant, password = an API token of that tenant whose role may
/// run SQL.
struct Tokens {
    state: Arc<AppState>,
}

impl Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

fn refused(user: &str, why: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        "28P01".to_string(),
        format!("tenant `{user}`: {why}"),
    )))
}

#[async_trait]
impl AuthSource for Tokens {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default().to_string();
        // The user names one tenant, as a URL's tenant does: never `*` (an
        // every-tenant token must still pick one) nor a name the HTTP API
        // would refuse.
        if !crate::auth::is_tenant_name(&user) {
            let shown: String = user.chars().take(64).collect();
            return Err(refused(
                &shown,
                "invalid tenant: the user must be a tenant's name (1 to 64 letters, digits, `-` and `_`)".to_string(),
            ));
        }
        let token = String::from_utf8_lossy(presented).trim().to_string();
        let state = self.state.clone();
        // The registry lookup may touch SQLite or PostgreSQL: off the
        // async threads.
        let principal = tokio::task::spawn_blocking(move || {
            state.authenticate(Some(&format!("Bearer {token}")))
        })
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let outcome = principal.map_err(|d| d.reason()).and_then(|p| {
            authorize(&p, Action::Try, &user)
                .map(|()| p)
                .map_err(|d| d.reason())
        });
        self.audit(&user, outcome.as_ref().err()).await;
        match outcome {
            Ok(_) => Ok(None),
            Err(why) => Err(refused(&user, why)),
        }
    }
}

impl Tokens {
    async fn audit(&self, tenant: &str, denied: Option<&String>) {
        // A refused login names no tenant it was admitted to: no label to
        // grow from anyone's input.
        let record = AuditRecord {
            at: now_ms(),
            who: "postgres".to_string(),
            tenant: if denied.is_some() {
                "-".to_string()
            } else {
                tenant.to_string()
            },
            action: "try".to_string(),
            object: "postgres login".to_string(),
            decision: if denied.is_some() {
                "denied"
            } else {
                "allowed"
            }
            .to_string(),
            reason: denied.cloned(),
            status: if denied.is_some() { 401 } else { 200 },
        };
        self.state.audit.append(&record).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Queries {
    state: Arc<AppState>,
}

/// Audits a statement once, like an HTTP SQL request: when its last row
/// was sent, when it failed, or — dropped before either — as cancelled
/// (a cancel request, or its connection closed).
struct Audited {
    /// Taken when the outcome is recorded.
    state: Option<Arc<AppState>>,
    tenant: String,
}

impl Audited {
    /// The statement's audit record: `decision`, `reason`, HTTP-like
    /// `status`. Taken once.
    fn record(
        &mut self,
        decision: &str,
        reason: Option<String>,
        status: u16,
    ) -> Option<(Arc<AppState>, AuditRecord)> {
        let state = self.state.take()?;
        let record = AuditRecord {
            at: now_ms(),
            who: "postgres".to_string(),
            tenant: std::mem::take(&mut self.tenant),
            action: "try".to_string(),
            object: "sql query (postgres)".to_string(),
            decision: decision.to_string(),
            reason,
            status,
        };
        Some((state, record))
    }

    /// Records the statement's outcome.
    async fn finish(mut self, outcome: Result<(), String>) {
        let (decision, status) = match &outcome {
            Ok(()) => ("allowed", 200),
            Err(_) => ("failed", 422),
        };
        if let Some((state, record)) = self.record(decision, outcome.err(), status) {
            state.audit.append(&record).await;
        }
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        let reason = "stopped before all its rows were sent: a cancel request (57014) or the connection closed";
        let Some((state, record)) = self.record("cancelled", Some(reason.to_string()), 499) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { state.audit.append(&record).await });
        }
    }
}

/// A statement answering: its columns, and its rows as they come.
struct Answering {
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: tokio::sync::mpsc::Receiver<ServiceResult<RecordBatch>>,
    audited: Audited,
    /// The connection's cancel handle: a cancel request stops the rows too.
    connection: Option<Arc<ConnectionHandle>>,
}

/// Where a statement's rows are: what is left to send, and its cancel.
struct Sending {
    batches: tokio::sync::mpsc::Receiver<ServiceResult<RecordBatch>>,
    audited: Audited,
    connection: Option<Arc<ConnectionHandle>>,
    cancel: Option<futures::channel::oneshot::Receiver<()>>,
}

impl Answering {
    /// The connection `client` is on: its cancel requests stop the rows.
    fn on(mut self, client: &impl ClientInfo) -> Self {
        self.connection = client
            .session_extensions()
            .get::<Arc<ConnectionHandle>>()
            .map(|h| (*h).clone());
        self
    }

    /// The rows, each column in `fields`' type and format, encoded a batch
    /// at a time as the client takes them; the statement is audited when
    /// they end. pgwire watches for a cancel request only until the
    /// statement starts answering: from the first row on, this stream
    /// watches for it (a new one, installed when the rows start) and ends
    /// with 57014, the query dropped with its channel.
    fn rows(
        self,
        fields: Arc<Vec<pgwire::api::results::FieldInfo>>,
    ) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static
    {
        use futures::StreamExt;
        let Answering {
            batches,
            audited,
            connection,
            ..
        } = self;
        let sending = Sending {
            batches,
            audited,
            connection,
            cancel: None,
        };
        stream::unfold(Some(sending), move |state| {
            let fields = fields.clone();
            async move {
                let mut s = state?;
                if s.cancel.is_none()
                    && let Some(connection) = &s.connection
                {
                    s.cancel = Some(connection.start_query().await);
                }
                let next = match s.cancel.as_mut() {
                    Some(cancel) => tokio::select! {
                        next = s.batches.recv() => Some(next),
                        _ = cancel => None,
                    },
                    None => Some(s.batches.recv().await),
                };
                match next {
                    // Cancelled: `Audited` records it as it is dropped.
                    None => Some((vec![Err(PgWireError::QueryCanceled)], None)),
                    Some(Some(Ok(batch))) => match encode::rows(&fields, &[batch]) {
                        Ok(rows) => Some((rows.into_iter().map(Ok).collect::<Vec<_>>(), Some(s))),
                        Err(e) => {
                            s.audited.finish(Err(e.to_string())).await;
                            Some((vec![Err(e)], None))
                        }
                    },
                    Some(Some(Err(e))) => {
                        s.audited.finish(Err(e.to_string())).await;
                        Some((vec![Err(sqlstate::error(&e))], None))
                    }
                    Some(None) => {
                        s.audited.finish(Ok(())).await;
                        None
                    }
                }
            }
        })
        .flat_map(stream::iter)
    }
}

impl Queries {
    /// Starts one statement of `tenant` (with its placeholders' values):
    /// its columns once it runs, its rows streamed as the client takes
    /// them (every row: the server holds a batch or two, never the
    /// result). An error before its first rows is the statement's error.
    async fn execute(
        &self,
        tenant: &str,
        sql: &str,
        params: Vec<datafusion::common::ScalarValue>,
    ) -> PgWireResult<Answering> {
        // A cancel request for this connection (psql's Ctrl-C) makes
        // pgwire drop this future and answer 57014: the query is dropped
        // with its channel, no further batch starts, and a guest call
        // already running ends within its CPU budget. `Audited` records
        // that.
        let audited = Audited {
            state: Some(self.state.clone()),
            tenant: tenant.to_string(),
        };
        let started = match self.request(tenant, sql).await {
            Ok(request) => query::stream(&self.state, tenant, request, params).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(streamed) => Ok(Answering {
                schema: streamed.schema,
                batches: streamed.batches,
                audited,
                connection: None,
            }),
            Err(e) => {
                audited.finish(Err(e.to_string())).await;
                Err(sqlstate::error(&e))
            }
        }
    }

    /// `sql` as a request of `tenant`: the UDFs it names, every row.
    async fn request(&self, tenant: &str, sql: &str) -> ServiceResult<SqlRequest> {
        let (udfs, sql, catalog) = {
            let (state, tenant, sql) = (self.state.clone(), tenant.to_string(), sql.to_string());
            tokio::task::spawn_blocking(move || -> ServiceResult<_> {
                // A registry that cannot answer is the statement's error
                // (57P03: retry), never "no UDFs" (which would read as
                // 42883).
                let versions = state.registry.list(&tenant)?;
                let udfs = crate::services::udfs::named_in(&versions, &sql);
                if !catalog::wanted(&sql) {
                    return Ok((udfs, sql, None));
                }
                let (sql, catalog) = catalog::prepare(&sql, &tenant, &versions)?;
                Ok((udfs, sql, Some(catalog)))
            })
            .await
            .map_err(ServiceError::internal)??
        };
        Ok(SqlRequest {
            sql,
            udfs,
            catalog,
            tables: Default::default(),
            topics: Default::default(),
            // The most the HTTP endpoint returns (its `max_rows` cap).
            max_rows: Some(usize::MAX),
        })
    }
}

/// The tenant a connection logged in as.
fn tenant_of(client: &impl ClientInfo) -> PgWireResult<String> {
    client
        .metadata()
        .get("user")
        .cloned()
        .ok_or(PgWireError::UserNameRequired)
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let tenant = tenant_of(client)?;
        if let Some(tag) = session_statement(sql) {
            return Ok(vec![Response::Execution(Tag::new(tag))]);
        }
        let answering = self.execute(&tenant, sql, Vec::new()).await?.on(client);
        let fields = encode::fields(&answering.schema, &Format::UnifiedText);
        Ok(vec![Response::Query(QueryResponse::new(
            fields.clone(),
            answering.rows(fields),
        ))])
    }
}

/// Transaction control and session settings clients send on their own
/// (psycopg's `BEGIN`, a driver's `SET`): weir's queries read only, so a
/// transaction has nothing to keep, and a session setting is accepted and
/// ignored. Answered with their command tag, not run.
fn session_statement(sql: &str) -> Option<&'static str> {
    let statement = sql.trim().trim_end_matches(';').trim();
    let first = statement
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "BEGIN" | "START" => Some("BEGIN"),
        "COMMIT" | "END" => Some("COMMIT"),
        "ROLLBACK" | "ABORT" => Some("ROLLBACK"),
        "SET" | "RESET" | "DISCARD" => Some("SET"),
        _ => None,
    }
}
