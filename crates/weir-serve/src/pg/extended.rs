//! The extended query protocol: `Parse` plans the statement in the
//! tenant's session (its UDFs, its bounds) to learn its placeholders' types
//! and its columns without running it; `Bind` holds the parameters;
//! `Describe` answers from the plan; `Execute` runs it with the values
//! (`params.rs`) under the same rules, audit and cancel as a simple query,
//! each column in the format the client bound (`encode.rs`).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::Execute;

use super::{Queries, encode, params, session_statement, sqlstate, tenant_of};
use crate::services::query;
use crate::sql::Described;

/// A parsed statement: its text and what planning it told.
#[derive(Debug, Clone)]
pub struct Statement {
    sql: String,
    /// A transaction or session statement (`BEGIN`, `SET`): answered with
    /// this tag, not run.
    session: Option<&'static str>,
    described: Arc<Described>,
}

pub struct Extended {
    parser: Arc<Parser>,
}

impl Extended {
    pub(super) fn new(queries: Arc<Queries>) -> Self {
        Extended {
            parser: Arc::new(Parser { queries }),
        }
    }
}

pub struct Parser {
    queries: Arc<Queries>,
}

fn nothing() -> Arc<Described> {
    Arc::new(Described {
        params: Vec::new(),
        schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
    })
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let tenant = tenant_of(client)?;
        if let Some(tag) = session_statement(sql) {
            return Ok(Some(Statement {
                sql: sql.to_string(),
                session: Some(tag),
                described: nothing(),
            }));
        }
        // Planned now, as PostgreSQL does at `Parse`: a syntax error or an
        // unknown function is the `Parse`'s error.
        let request = self
            .queries
            .request(&tenant, sql)
            .await
            .map_err(|e| sqlstate::error(&e))?;
        let declared = types
            .iter()
            .map(|t| t.as_ref().and_then(encode::arrow_type))
            .collect();
        let described = query::describe(&self.queries.state, &tenant, request, declared)
            .await
            .map_err(|e| sqlstate::error(&e))?;
        Ok(Some(Statement {
            sql: sql.to_string(),
            session: None,
            described: Arc::new(described),
        }))
    }

    fn get_parameter_types(&self, statement: &Statement) -> PgWireResult<Vec<Type>> {
        // A placeholder the statement does not type takes text, as in
        // PostgreSQL.
        Ok(statement
            .described
            .params
            .iter()
            .map(|t| t.as_ref().map_or(Type::TEXT, encode::pg_type))
            .collect())
    }

    fn get_result_schema(
        &self,
        statement: &Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let fields = encode::fields(
            &statement.described.schema,
            format.unwrap_or(&Format::UnifiedText),
        );
        Ok(fields.as_ref().clone())
    }
}

impl Extended {
    /// Runs a fresh portal and sends every row as it comes, then the
    /// command tag. A cancel request stops it while it starts (watched
    /// here, as pgwire does) and while its rows stream (watched by the
    /// rows, `Answering::rows`).
    async fn stream_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        cancel: Option<futures::channel::oneshot::Receiver<()>>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::{SinkExt, StreamExt};
        let started = Box::pin(self.do_query(client, portal, 0));
        let response = match cancel {
            Some(cancel) => match futures::future::select(started, cancel).await {
                futures::future::Either::Left((response, _)) => response?,
                futures::future::Either::Right(_) => return Err(PgWireError::QueryCanceled),
            },
            None => started.await?,
        };
        let Response::Query(mut results) = response else {
            return Err(PgWireError::ApiError(
                "a query answered without rows".into(),
            ));
        };
        let tag = results.command_tag().to_owned();
        let mut rows = 0;
        let data = results.data_rows();
        while let Some(row) = data.next().await {
            client.feed(PgWireBackendMessage::DataRow(row?)).await?;
            rows += 1;
        }
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new(&tag).with_rows(rows).into(),
            ))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// pgwire gathers a portal's rows before it sends them when the client
    /// asks for all of them (`max_rows` 0, what psycopg and JDBC do):
    /// weir sends them as they come instead (the server holds a batch or
    /// two, never a result), and watches for a cancel until the last one.
    /// A client fetching in steps (`max_rows` > 0) gets pgwire's portal,
    /// which holds one step.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal))
                if message.max_rows == 0 && portal.statement.statement.session.is_none() =>
            {
                portal
            }
            _ => return self._on_execute(client, message).await,
        };
        if !matches!(*portal.state().lock().await, PortalExecutionState::Initial) {
            return self._on_execute(client, message).await;
        }
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        self.stream_portal(client, &portal, cancel).await?;
        *portal.state().lock().await = PortalExecutionState::Finished;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let tenant = tenant_of(client)?;
        let statement = &portal.statement.statement;
        if let Some(tag) = statement.session {
            return Ok(Response::Execution(Tag::new(tag)));
        }
        let values = params::values(
            &portal.parameters,
            &portal.parameter_format,
            &portal.statement.parameter_types,
            &statement.described.params,
        )?;
        let answering = self
            .parser
            .queries
            .execute(&tenant, &statement.sql, values)
            .await?
            .on(client);
        // The columns as described at `Parse` (the client already has
        // their types), in the formats bound; each value is cast to the
        // described type where the run's differs.
        let fields = encode::fields(&statement.described.schema, &portal.result_column_format);
        // pgwire's portal hands the rows out `max_rows` at a time
        // (`PortalSuspended` between them), taking them from the stream.
        Ok(Response::Query(QueryResponse::new(
            fields.clone(),
            answering.rows(fields),
        )))
    }
}
