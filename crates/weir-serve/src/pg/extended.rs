//! The extended query protocol: `Parse` plans the statement in the
//! tenant's session (its UDFs, its bounds) to learn its placeholders' types
//! and its columns without running it; `Bind` holds the parameters;
//! `Describe` answers from the plan; `Execute` runs it with the values
//! (`params.rs`) under the same rules, audit and cancel as a simple query,
//! each column in the format the client bound (`encode.rs`).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

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
        let request = self.queries.request(&tenant, sql).await;
        let declared = types
            .iter()
            .map(|t| t.as_ref().and_then(params::arrow_type))
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

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Statement>,
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
        let batches = self
            .parser
            .queries
            .execute(&tenant, &statement.sql, values)
            .await?;
        // The columns as described at `Parse` (the client already has
        // their types), in the formats bound; each value is cast to the
        // described type where the run's differs.
        let fields = encode::fields(&statement.described.schema, &portal.result_column_format);
        let rows = encode::rows(&fields, &batches)?;
        // pgwire's portal hands the rows out `max_rows` at a time
        // (`PortalSuspended` between them).
        Ok(Response::Query(QueryResponse::new(
            fields,
            stream::iter(rows.into_iter().map(Ok)),
        )))
    }
}
