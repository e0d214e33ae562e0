//! Arrow Flight SQL (`[serve] flight_sql_listen`, issue 30): ADBC's Flight
//! SQL driver and other Arrow-native clients run a tenant's SQL and read
//! the result as Arrow batches, streamed from DataFusion without a text or
//! JSON detour. Statements run exactly as over the PostgreSQL protocol
//! (`services::query::stream`): the tenant's UDFs by name, its limits,
//! memory, deadline and fair share; each is audited.
//!
//! Who: the `authorization` header of every call. `Basic` with user = the
//! tenant and password = an API token (what ADBC's `username`/`password`
//! send to the handshake), or `Bearer <token>` (what the handshake answers
//! with, and what a client may send from the start) with the tenant in
//! `x-weir-tenant` when the token is not one tenant's. The token is checked
//! on every call, so a revoked one stops working at once.
//!
//! Built: statements (`CommandStatementQuery`: `GetFlightInfo` plans it
//! and answers its schema, `DoGet` runs it), prepared statements with
//! parameters (nothing is held between calls: the handle is the statement,
//! and bound parameters travel in it, `handle.rs`), what clients ask
//! before they query (`metadata.rs`: `GetSqlInfo`, `GetCatalogs`,
//! `GetDbSchemas`, `GetTables`, `GetTableTypes`), a bound on open
//! connections (`listener.rs`) and TLS (`serve.tls_cert`). Not yet: cancel.

mod handle;
mod listener;
mod metadata;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action as FlightAction, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, SchemaAsIpc, Ticket,
};
use base64::Engine;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::audit::AuditRecord;
use crate::auth::{Action, authorize};
use crate::error::ServiceError;
use crate::services::query::{self, SqlRequest};

/// Serves Flight SQL on `listener` until the task is dropped; with `tls`,
/// over TLS only (`grpc+tls://`).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    let bound = crate::connections::Bound::new(
        state.config.flight_sql_max_connections,
        "Flight SQL",
        "serve.flight_sql_max_connections",
    );
    let service = FlightServiceServer::new(WeirFlightSql { state });
    let incoming = listener::accept(listener, bound);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = match server.tls_config(tls.tonic()) {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("flight sql listener: TLS (serve.tls_cert, serve.tls_key): {e}");
                return;
            }
        };
    }
    if let Err(e) = server
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!("flight sql listener: {e}");
    }
}

struct WeirFlightSql {
    state: Arc<AppState>,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `e` as a gRPC status: a refusal (bad SQL, limits) is the caller's, the
/// rest the server's.
fn status(e: &ServiceError) -> Status {
    match e {
        ServiceError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        ServiceError::Forbidden(m) | ServiceError::NotFound(m) => {
            Status::permission_denied(m.clone())
        }
        ServiceError::Timeout(m) => Status::deadline_exceeded(m.clone()),
        ServiceError::RateLimited(m) => Status::resource_exhausted(m.clone()),
        ServiceError::Unavailable(m) => Status::unavailable(m.clone()),
        ServiceError::BadRequest(m) | ServiceError::Rejected(m) => {
            Status::invalid_argument(m.clone())
        }
        other => Status::internal(other.to_string()),
    }
}

/// The tenant and token a call's headers name (see the module's docs).
fn credentials(metadata: &MetadataMap) -> Result<(Option<String>, String), Status> {
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Status::unauthenticated(
                "no authorization header: send `Basic` (user = tenant, password = an API token) or `Bearer <token>`",
            )
        })?;
    let tenant_header = metadata
        .get("x-weir-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(basic) = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
    {
        // Padded or not: Arrow's Go client (ADBC's driver) sends it unpadded.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Status::unauthenticated("`Basic` credentials are not base64 of user:password")
            })?;
        let (tenant, token) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("`Basic` credentials have no `:`"))?;
        return Ok((Some(tenant.to_string()), token.to_string()));
    }
    if let Some(token) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    {
        return Ok((tenant_header, token.trim().to_string()));
    }
    Err(Status::unauthenticated(
        "the authorization header is neither `Basic` nor `Bearer`",
    ))
}

impl WeirFlightSql {
    /// The tenant a call may run SQL for, from its headers; a refusal is
    /// audited.
    async fn tenant(&self, metadata: &MetadataMap) -> Result<(String, String), Status> {
        let (tenant, token) = credentials(metadata)?;
        let state = self.state.clone();
        let bearer = format!("Bearer {token}");
        // The registry lookup may touch SQLite or PostgreSQL.
        let principal = tokio::task::spawn_blocking(move || state.authenticate(Some(&bearer)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let outcome = principal.map_err(|d| d.reason()).and_then(|p| {
            let tenant = match tenant {
                Some(t) => t,
                None if p.tenant != "*" => p.tenant.clone(),
                None => {
                    return Err(
                        "a token of every tenant must name one: send the `x-weir-tenant` header"
                            .to_string(),
                    );
                }
            };
            // A name the HTTP API would refuse in a URL.
            if !crate::auth::is_tenant_name(&tenant) {
                let shown: String = tenant.chars().take(64).collect();
                return Err(format!(
                    "invalid tenant `{shown}`: the user must be a tenant's name (1 to 64 letters, digits, `-` and `_`)"
                ));
            }
            authorize(&p, Action::Try, &tenant)
                .map(|()| tenant)
                .map_err(|d| d.reason())
        });
        match outcome {
            Ok(tenant) => Ok((tenant, token)),
            Err(why) => {
                self.audit("-", "denied", Some(why.clone()), 401).await;
                Err(Status::unauthenticated(why))
            }
        }
    }

    async fn audit(&self, tenant: &str, decision: &str, reason: Option<String>, status: u16) {
        let record = AuditRecord {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            who: "flight sql".to_string(),
            tenant: tenant.to_string(),
            action: "try".to_string(),
            object: "sql query (flight sql)".to_string(),
            decision: decision.to_string(),
            reason,
            status,
        };
        self.state.audit.append(&record).await;
    }

    /// `sql` planned in `tenant`'s session, its placeholders typed by
    /// `params` where it does not type them itself: its result's schema
    /// (every column nullable, see [`nullable`]) and its placeholders'
    /// types. A failure is audited.
    async fn plan(
        &self,
        tenant: &str,
        sql: &str,
        params: &[ScalarValue],
    ) -> Result<(SchemaRef, Vec<Option<DataType>>), Status> {
        match self.describe(tenant, sql, params).await {
            Ok(planned) => Ok(planned),
            Err(e) => Err(self.failed(tenant, &e).await),
        }
    }

    /// [`Self::plan`] without the audit.
    async fn describe(
        &self,
        tenant: &str,
        sql: &str,
        params: &[ScalarValue],
    ) -> Result<(SchemaRef, Vec<Option<DataType>>), ServiceError> {
        let declared = params.iter().map(|p| Some(p.data_type())).collect();
        let req = self.request(tenant, sql).await?;
        let d = query::describe(&self.state, tenant, req, declared).await?;
        Ok((nullable(&d.schema), d.params))
    }

    /// A statement of `tenant` that failed: audited, as the client's status.
    async fn failed(&self, tenant: &str, e: &ServiceError) -> Status {
        self.audit(tenant, "failed", Some(e.to_string()), 422).await;
        status(e)
    }

    /// Runs `sql` for `tenant`, its batches streamed as Flight data;
    /// audited.
    async fn run(
        &self,
        tenant: &str,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Response<DoGetStream>, Status> {
        // Bound values are cast to the types the statement gives its
        // placeholders, as over the PostgreSQL protocol.
        let params = if params.is_empty() {
            params
        } else {
            let (_, expected) = self.plan(tenant, sql, &params).await?;
            match cast_params(params, &expected) {
                Ok(params) => params,
                Err(e) => return Err(self.failed(tenant, &e).await),
            }
        };
        let started = match self.request(tenant, sql).await {
            Ok(req) => query::stream(&self.state, tenant, req, params).await,
            Err(e) => Err(e),
        };
        let streamed = match started {
            Ok(s) => s,
            Err(e) => return Err(self.failed(tenant, &e).await),
        };
        self.audit(tenant, "allowed", None, 200).await;
        let schema = nullable(&streamed.schema);
        let batches = {
            let schema = schema.clone();
            tokio_stream_of(streamed.batches).map(move |b| {
                b.map_err(|e| FlightError::Tonic(Box::new(status(&e))))
                    .and_then(|b| b.with_schema(schema.clone()).map_err(FlightError::Arrow))
            })
        };
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map(|d| d.map_err(Status::from));
        Ok(Response::new(Box::pin(data)))
    }

    /// `sql` as a request of `tenant`: the published UDFs it names.
    async fn request(&self, tenant: &str, sql: &str) -> Result<SqlRequest, ServiceError> {
        let (state, t, s) = (self.state.clone(), tenant.to_string(), sql.to_string());
        let udfs = tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
            let versions = state.registry.list(&t)?;
            Ok(crate::services::udfs::named_in(&versions, &s))
        })
        .await
        .map_err(ServiceError::internal)??;
        Ok(SqlRequest {
            sql: sql.to_string(),
            udfs,
            tables: Default::default(),
            topics: Default::default(),
            max_rows: Some(usize::MAX),
            catalog: None,
        })
    }
}

#[tonic::async_trait]
impl FlightSqlService for WeirFlightSql {
    type FlightService = WeirFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Stream_<HandshakeResponse>>, Status> {
        let (_, token) = self.tenant(request.metadata()).await?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        let mut response: Response<Stream_<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::unauthenticated("the token cannot be sent back as a header"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (tenant, _) = self.tenant(request.metadata()).await?;
        // Planned now (its errors are the client's at once, and its schema
        // goes with the answer); run when the ticket comes back.
        let (schema, _) = self.plan(&tenant, &query.query, &[]).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        flight_info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (tenant, _) = self.tenant(request.metadata()).await?;
        let statement = handle::open(&ticket.statement_handle)?;
        self.run(&tenant, &statement.sql, statement.params).await
    }

    /// A prepared statement (JDBC's Flight SQL driver prepares every
    /// query; ADBC's `adbc_prepare`): planned now, its handle is its SQL
    /// (nothing is held between calls). No parameters yet.
    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<FlightAction>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (tenant, _) = self.tenant(request.metadata()).await?;
        let (schema, params) = match self.describe(&tenant, &query.query, &[]).await {
            Ok(planned) => planned,
            // A placeholder only the bound value types (`double($1)`: a
            // function's argument): planned again once values are bound,
            // when an error is the execution's.
            Err(_) if query.query.contains('$') => {
                let handle = query.query.into_bytes().into();
                return Ok(ActionCreatePreparedStatementResult {
                    prepared_statement_handle: handle,
                    dataset_schema: Default::default(),
                    parameter_schema: Default::default(),
                });
            }
            Err(e) => return Err(self.failed(&tenant, &e).await),
        };
        // The placeholders `$1`, `$2`, … as the statement types them (Null
        // where it does not: a bound value keeps its own type).
        let parameters = datafusion::arrow::datatypes::Schema::new(
            params
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let t = t.clone().unwrap_or(DataType::Null);
                    datafusion::arrow::datatypes::Field::new(format!("${}", i + 1), t, true)
                })
                .collect::<Vec<_>>(),
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: ipc_schema(&schema)?,
            parameter_schema: if params.is_empty() {
                Default::default()
            } else {
                ipc_schema(&Arc::new(parameters))?
            },
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (tenant, _) = self.tenant(request.metadata()).await?;
        let statement = handle::open(&query.prepared_statement_handle)?;
        let (schema, _) = self
            .plan(&tenant, &statement.sql, &statement.params)
            .await?;
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (tenant, _) = self.tenant(request.metadata()).await?;
        let statement = handle::open(&query.prepared_statement_handle)?;
        self.run(&tenant, &statement.sql, statement.params).await
    }

    /// Parameters bound to a prepared statement (one row): the answer is
    /// a new handle carrying them ([`handle`]), which the client uses from
    /// then on; nothing is held here.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.tenant(request.metadata()).await?;
        let statement = handle::open(&query.prepared_statement_handle)?;
        let mut batches = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let mut row: Option<RecordBatch> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if batch.num_rows() == 0 {
                continue;
            }
            if row.is_some() {
                return Err(Status::invalid_argument(
                    "bind one row of parameters per execution (more were bound)",
                ));
            }
            row = Some(batch);
        }
        let Some(row) = row else {
            return Err(Status::invalid_argument("no parameters were bound"));
        };
        handle::params_of(&row)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle::with_params(&statement.sql, &row)?.into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<FlightAction>,
    ) -> Result<(), Status> {
        // Nothing is held for a prepared statement.
        self.tenant(request.metadata()).await.map(|_| ())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.tenant(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        let schema = metadata::sql_info_of(query)?.schema;
        flight_info(&schema, ticket, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.tenant(request.metadata()).await?;
        Ok(one_batch(metadata::sql_info_of(query)?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.tenant(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        flight_info(
            &metadata::catalogs(query).schema,
            ticket,
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.tenant(request.metadata()).await?;
        Ok(one_batch(metadata::catalogs(query)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.tenant(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        flight_info(
            &metadata::schemas(query).schema,
            ticket,
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.tenant(request.metadata()).await?;
        Ok(one_batch(metadata::schemas(query)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.tenant(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        flight_info(
            &metadata::tables(query).schema,
            ticket,
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.tenant(request.metadata()).await?;
        Ok(one_batch(metadata::tables(query)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.tenant(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        flight_info(
            &metadata::table_types(query).schema,
            ticket,
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.tenant(request.metadata()).await?;
        Ok(one_batch(metadata::table_types(query)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A metadata answer as Flight data: its schema, then its one batch.
fn one_batch(answer: metadata::Answer) -> Response<DoGetStream> {
    let batch = answer.batch.map_err(|s| FlightError::Tonic(Box::new(s)));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(answer.schema)
        .build(futures::stream::once(async move { batch }))
        .map(|d| d.map_err(Status::from));
    Response::new(Box::pin(data))
}

type DoGetStream =
    <WeirFlightSql as arrow_flight::flight_service_server::FlightService>::DoGetStream;

/// `schema` as the IPC message Flight SQL answers schemas in.
fn ipc_schema(schema: &SchemaRef) -> Result<bytes::Bytes, Status> {
    let options = datafusion::arrow::ipc::writer::IpcWriteOptions::default();
    let message: arrow_flight::IpcMessage = SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

/// Bound values cast to the types the statement gives its placeholders;
/// one that does not fit is refused naming it, never guessed.
fn cast_params(
    params: Vec<ScalarValue>,
    expected: &[Option<DataType>],
) -> Result<Vec<ScalarValue>, ServiceError> {
    if !expected.is_empty() && params.len() != expected.len() {
        return Err(ServiceError::BadRequest(format!(
            "the statement takes {} parameters, {} were bound",
            expected.len(),
            params.len()
        )));
    }
    params
        .into_iter()
        .enumerate()
        .map(|(i, p)| match expected.get(i).cloned().flatten() {
            Some(t) if p.data_type() != t => p.cast_to(&t).map_err(|e| {
                ServiceError::BadRequest(format!("parameter ${} cannot be read as {t}: {e}", i + 1))
            }),
            _ => Ok(p),
        })
        .collect()
}

/// What `GetFlightInfo` answers: the result's schema and one endpoint
/// whose ticket is `ticket`.
fn flight_info(
    schema: &SchemaRef,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// `schema` with every column nullable: what `GetFlightInfo` announces
/// and `DoGet` sends must be equal, and planning alone does not always
/// know a column's nullability as running does (constant folding).
fn nullable(
    schema: &datafusion::arrow::datatypes::Schema,
) -> datafusion::arrow::datatypes::SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// A channel's receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
