//! What a Flight SQL client asks before it queries: the server's
//! description (`GetSqlInfo`: ADBC's `adbc_get_info`, JDBC's
//! `DatabaseMetaData`) and its objects (`GetCatalogs`, `GetDbSchemas`,
//! `GetTables`, `GetTableTypes`: ADBC's `adbc_get_objects`, DBeaver's
//! navigator).
//!
//! The objects are the truth of a tenant's session: DataFusion's one
//! catalog and schema, and no table, because a statement over this
//! protocol reads no stored table (it reads what it names: `VALUES`,
//! generated series, the tenant's functions). The answers are built by
//! arrow-flight's builders, which also apply the client's filters.

use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, SqlInfo, SqlSupportedCaseSensitivity, SqlSupportedTransaction,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tonic::Status;

/// The catalog and schema of every tenant's session (DataFusion's
/// defaults, which its statements may name).
pub const CATALOG: &str = "datafusion";
pub const SCHEMA: &str = "public";

/// The kinds of table the server would list (none exists yet).
const TABLE_TYPES: [&str; 2] = ["TABLE", "VIEW"];

/// An answer: its schema (for `GetFlightInfo`) and its one batch (for
/// `DoGet`).
pub struct Answer {
    pub schema: SchemaRef,
    pub batch: Result<RecordBatch, Status>,
}

fn answer(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> Answer {
    Answer {
        schema,
        batch: batch.map_err(|e| Status::internal(e.to_string())),
    }
}

/// What the server says of itself. Built per call (it is small), so that
/// a builder error is a status, not a panic.
fn sql_info() -> Result<SqlInfoData, Status> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "weir");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow columnar format's version (Schema.fbs).
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    // Statements read; nothing a client sends is stored.
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    // DataFusion folds unquoted identifiers to lower case.
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().map_err(|e| Status::internal(e.to_string()))
}

/// `GetSqlInfo`: the infos the client asked for (all when it named none).
pub fn sql_info_of(query: CommandGetSqlInfo) -> Result<Answer, Status> {
    let infos = sql_info()?;
    let builder = query.into_builder(&infos);
    Ok(answer(builder.schema(), builder.build()))
}

/// `GetCatalogs`.
pub fn catalogs(query: CommandGetCatalogs) -> Answer {
    let mut builder = query.into_builder();
    builder.append(CATALOG);
    answer(builder.schema(), builder.build())
}

/// `GetDbSchemas` (the client's catalog and schema pattern applied).
pub fn schemas(query: CommandGetDbSchemas) -> Answer {
    let mut builder = query.into_builder();
    builder.append(CATALOG, SCHEMA);
    answer(builder.schema(), builder.build())
}

/// `GetTables`: none (see the module's docs), with the columns the client
/// asked for (`include_schema` adds `table_schema`).
pub fn tables(query: CommandGetTables) -> Answer {
    let builder = query.into_builder();
    answer(builder.schema(), builder.build())
}

/// `GetTableTypes`.
pub fn table_types(query: CommandGetTableTypes) -> Answer {
    let mut builder = query.into_builder();
    for kind in TABLE_TYPES {
        builder.append(kind);
    }
    answer(builder.schema(), builder.build())
}
