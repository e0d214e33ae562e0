//! What PostgreSQL clients read to describe a database — psql's `\df`,
//! `\dt`, `\d`, `\dn` and `\l`, a driver's `SHOW` of a session setting,
//! JDBC's `DatabaseMetaData` (schemas, tables, columns, functions, types),
//! Grafana's `quote_ident` over `information_schema` — answered from
//! the tenant's own objects: the functions of its published UDFs (latest
//! versions, what a statement calls by name), and no tables (a statement
//! reads only what it names). A catalog statement runs like any other of
//! the tenant's (its session, bounds, deadline and slot), with the catalog's
//! tables (schema `pg_catalog`) and functions added to its session.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::cast::as_int64_array;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use pgwire::api::Type;
use pgwire::api::auth::DefaultServerParameterProvider;
use weir_core::abi::{AbiType, ArrowType};

use crate::error::ServiceError;
use crate::registry::UdfVersion;
use crate::services::query::Catalog;

/// The namespaces: the system's two and `public`, where a tenant's
/// functions are (oids as PostgreSQL's).
const PG_CATALOG: i64 = 11;
const PUBLIC: i64 = 2200;
const INFORMATION_SCHEMA: i64 = 13_183;
/// The tenant as the owner of what it sees, its database, and UTF-8's
/// encoding number (oids and numbers as PostgreSQL's).
const OWNER: i64 = 10;
const DATABASE: i64 = 16_384;
const UTF8: i64 = 6;
/// The first oid of a tenant's functions.
const FIRST_FUNCTION: i64 = 100_000;

/// The parameters a connection is told at startup; `SHOW` answers the
/// same. A tenant is no superuser, and its statements only read.
pub fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p
}

/// Every setting `SHOW` knows: name (lower case), value, what it is.
fn settings() -> Vec<(&'static str, String, &'static str)> {
    let p = server_parameters();
    let on = |b: bool| if b { "on" } else { "off" }.to_string();
    vec![
        (
            "client_encoding",
            p.client_encoding.unwrap_or_else(|| "UTF8".into()),
            "the client's character set",
        ),
        ("datestyle", p.date_style, "how dates are written"),
        (
            "default_transaction_read_only",
            on(p.default_transaction_read_only),
            "statements only read",
        ),
        (
            "integer_datetimes",
            on(p.integer_datetimes),
            "timestamps are integers",
        ),
        (
            "intervalstyle",
            p.interval_style,
            "how intervals are written",
        ),
        (
            "is_superuser",
            on(p.is_superuser),
            "a tenant is no superuser",
        ),
        ("max_identifier_length", "63".into(), "the longest name"),
        (
            "search_path",
            p.search_path,
            "where unqualified functions are found",
        ),
        (
            "server_encoding",
            p.server_encoding,
            "the server's character set",
        ),
        (
            "server_version",
            p.server_version,
            "the protocol's version, and pgwire's",
        ),
        (
            "standard_conforming_strings",
            on(p.standard_conforming_strings),
            "backslashes in strings are plain",
        ),
        (
            "timezone",
            p.time_zone,
            "the zone timestamps are written in",
        ),
        (
            "transaction_isolation",
            "read committed".into(),
            "what a transaction sees (statements only read)",
        ),
        ("transaction_read_only", "on".into(), "statements only read"),
    ]
}

/// Whether `sql` reads the catalog (it names `pg_catalog.` or one of the
/// catalog's functions) or is a `SHOW`.
pub fn wanted(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    show(sql).is_some()
        || lower.contains("pg_catalog.")
        || SESSION_FUNCTIONS.iter().any(|f| lower.contains(f))
}

/// What drivers and dashboards call outside `pg_catalog.` on connect
/// (JDBC's `current_schema()`, Grafana's `quote_ident`): a statement that
/// names one gets the catalog too.
const SESSION_FUNCTIONS: [&str; 7] = [
    "current_schema",
    "current_database",
    "current_user",
    "session_user",
    "quote_ident",
    "format_type",
    "pg_get_",
];

/// What drivers write that DataFusion cannot plan, and the same in a form
/// it can (the session has no list indexing; a correlated scalar subquery
/// must be an aggregate).
const DRIVER_FORMS: [(&str, &str); 4] = [
    // JDBC's `getSchemas`: the first schema on the search path.
    (
        "(pg_catalog.current_schemas(true))[1]",
        "pg_catalog.current_schema()",
    ),
    (
        "(pg_catalog.current_schemas(false))[1]",
        "pg_catalog.current_schema()",
    ),
    // JDBC's `getTypeInfo`: a type of a composite relation (there are
    // none: every type listed is a base type).
    (
        " OR (SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid)",
        " OR false",
    ),
    // JDBC's `getProcedures`: three unnamed reserved columns (DataFusion
    // wants distinct names; JDBC reads them by position).
    (
        "AS PROCEDURE_NAME, NULL, NULL, NULL,",
        "AS PROCEDURE_NAME, NULL AS RESERVED1, NULL AS RESERVED2, NULL AS RESERVED3,",
    ),
];

/// Whole statements drivers send that DataFusion cannot plan (compared
/// with runs of white space made one), and what weir runs instead.
const DRIVER_STATEMENTS: [(&str, &str); 1] = [
    // JDBC's type cache (`getTypeInfo`): every type, its kind and whether
    // it is an array, in search-path order. Every type here is a base
    // type of `pg_catalog`, none an array.
    (
        "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns join ( select s.r, (current_schemas(false))[s.r] as nspname from generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r using ( nspname ) ) as sp ON sp.nspoid = typnamespace ORDER BY sp.r, pg_type.oid DESC",
        "SELECT false AS is_array, typtype, typname, pg_type.oid FROM pg_catalog.pg_type ORDER BY pg_type.oid DESC",
    ),
];

/// `sql` with its runs of white space made one space, trimmed.
fn one_spaced(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The oids `'name'::regclass` stands for (PostgreSQL's), for the catalog
/// tables drivers name that way; any other name is 0 (no such relation).
const REGCLASSES: [(&str, i64); 7] = [
    ("pg_class", 1259),
    ("pg_namespace", 2615),
    ("pg_proc", 1255),
    ("pg_type", 1247),
    ("pg_attribute", 1249),
    ("pg_database", 1262),
    ("pg_description", 2609),
];

/// `sql` with each `'name'::regclass` (a type DataFusion does not know)
/// replaced by the oid it stands for.
fn resolve_regclasses(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("::regclass") {
        let (before, after) = rest.split_at(at);
        let literal = before
            .strip_suffix('\'')
            .and_then(|b| b.rfind('\'').map(|open| (open, &b[open + 1..])));
        match literal {
            Some((open, name)) => {
                let oid = REGCLASSES
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name.trim_start_matches("pg_catalog.")))
                    .map_or(0, |(_, oid)| *oid);
                out.push_str(&before[..open]);
                out.push_str(&oid.to_string());
            }
            None => out.push_str(before),
        }
        rest = &after["::regclass".len()..];
    }
    out.push_str(rest);
    out
}

/// The setting a `SHOW` statement asks for (lower case; `all`), if it is one.
fn show(sql: &str) -> Option<String> {
    let statement = sql.trim().trim_end_matches(';').trim();
    let mut words = statement.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("show") {
        return None;
    }
    let rest: Vec<String> = words.map(str::to_ascii_lowercase).collect();
    Some(
        match rest.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["transaction", "isolation", "level"] => "transaction_isolation".into(),
            ["time", "zone"] => "timezone".into(),
            _ => rest.join(" ").trim_matches('"').to_string(),
        },
    )
}

/// `sql` as the catalog's session plans it, and the catalog of `tenant`
/// whose published UDFs are `versions`.
///
/// # Errors
/// A `SHOW` of a setting there is not (42704, as PostgreSQL).
pub fn prepare(
    sql: &str,
    tenant: &str,
    versions: &[UdfVersion],
) -> Result<(String, Catalog), ServiceError> {
    let sql = match show(sql) {
        Some(name) if name == "all" => {
            "SELECT name, setting, short_desc AS description FROM pg_catalog.pg_settings ORDER BY name"
                .to_string()
        }
        Some(name) => {
            if !settings().iter().any(|(n, _, _)| *n == name) {
                return Err(ServiceError::Rejected(format!(
                    "unrecognized configuration parameter \"{name}\"; `SHOW ALL` lists those weir answers"
                )));
            }
            format!(
                "SELECT setting AS \"{name}\" FROM pg_catalog.pg_settings WHERE name = '{name}'"
            )
        }
        None => planned_form(sql),
    };
    Ok((sql, catalog(tenant, versions)?))
}

/// A catalog statement as weir plans it: a driver's statement or forms
/// DataFusion cannot plan replaced ([`DRIVER_STATEMENTS`],
/// [`DRIVER_FORMS`], `'name'::regclass`), psql's pattern syntax made
/// DataFusion's.
fn planned_form(sql: &str) -> String {
    let spaced = one_spaced(sql);
    if let Some((_, planned)) = DRIVER_STATEMENTS.iter().find(|(d, _)| *d == spaced) {
        return planned.to_string();
    }
    // psql's patterns (`\df name`) use PostgreSQL's operator and
    // collation syntax for a regular expression match.
    let mut sql = sql
        .replace("OPERATOR(pg_catalog.~)", "~")
        .replace(" COLLATE pg_catalog.default", "");
    for (driver, planned) in DRIVER_FORMS {
        sql = sql.replace(driver, planned);
    }
    resolve_regclasses(&sql)
}

/// One function of a UDF: its SQL name, argument and result types, and
/// whether it is an aggregate.
struct Function {
    name: String,
    args: String,
    result: String,
    /// The oid of its result's type (`pg_type`).
    result_oid: i64,
    aggregate: bool,
}

/// `name(float64, utf8) -> boolean`, or an aggregate's `… [aggregate, …]`
/// (`weir_core::abi::FunctionDecl::signature`), in PostgreSQL's type names.
fn function(signature: &str) -> Option<Function> {
    let (name, rest) = signature.split_once('(')?;
    let (args, rest) = rest.split_once(") -> ")?;
    let (result, aggregate) = match rest.split_once(" [") {
        Some((result, more)) => (result, more.starts_with("aggregate")),
        None => (rest, false),
    };
    let type_name = |t: &str| AbiType::from_name(t.trim()).map(|t| sql_type(&t.data_type()));
    let result_oid = AbiType::from_name(result.trim())
        .map(|t| i64::from(super::encode::pg_type(&t.data_type()).oid()))?;
    let args: Option<Vec<&str>> = args
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(type_name)
        .collect();
    Some(Function {
        name: name.trim().to_string(),
        args: args?.join(", "),
        result: type_name(result)?.to_string(),
        result_oid,
        aggregate,
    })
}

/// The name PostgreSQL's `format_type` gives the type a column of `ty`
/// is sent as (`pg::encode::pg_type`).
fn sql_type(ty: &DataType) -> &'static str {
    format_type(super::encode::pg_type(ty).name())
}

/// The types a tenant's catalog lists (`pg_type`): those weir sends its
/// columns as (`pg::encode::pg_type`), and those the catalog's own
/// columns and drivers' parameters name.
const TYPES: [Type; 15] = [
    Type::BOOL,
    Type::BYTEA,
    Type::NAME,
    Type::INT8,
    Type::INT2,
    Type::INT4,
    Type::TEXT,
    Type::OID,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::VARCHAR,
    Type::DATE,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
    Type::NUMERIC,
];

/// A type's size in bytes, -1 for variable (`pg_type.typlen`).
fn type_length(ty: &Type) -> i64 {
    match ty.name() {
        "bool" => 1,
        "int2" => 2,
        "int4" | "float4" | "date" | "oid" => 4,
        "int8" | "float8" | "timestamp" | "timestamptz" => 8,
        "name" => 64,
        _ => -1,
    }
}

/// PostgreSQL's `format_type` name of the type named `name` in `pg_type`.
fn format_type(name: &str) -> &'static str {
    match name {
        "bool" => "boolean",
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "numeric" => "numeric",
        "bytea" => "bytea",
        "date" => "date",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "varchar" => "character varying",
        "name" => "name",
        "oid" => "oid",
        _ => "text",
    }
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn ints(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn bools(values: impl IntoIterator<Item = bool>) -> ArrayRef {
    Arc::new(BooleanArray::from_iter(values.into_iter().map(Some)))
}

/// A table of `columns` (name, values); all of one length. A column with
/// a NULL is nullable.
fn table(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ServiceError> {
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, a)| Field::new(*name, a.data_type().clone(), a.null_count() > 0))
            .collect::<Vec<_>>(),
    );
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    RecordBatch::try_new(Arc::new(schema), arrays).map_err(ServiceError::internal)
}

/// The catalog of `tenant`: tables `pg_namespace`, `pg_database`,
/// `pg_proc`, `pg_class`, `pg_am`, `pg_attribute`, `pg_attrdef`,
/// `pg_description` (the last five empty), `pg_settings`, `pg_type`, and
/// the functions psql and JDBC call on them.
fn catalog(tenant: &str, versions: &[UdfVersion]) -> Result<Catalog, ServiceError> {
    let mut functions: Vec<Function> = versions
        .iter()
        .flat_map(|v| v.functions.iter().filter_map(|s| function(s)))
        .collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let oids: Vec<i64> = (FIRST_FUNCTION..).take(functions.len()).collect();
    let namespaces = table(vec![
        ("oid", ints([PG_CATALOG, PUBLIC, INFORMATION_SCHEMA])),
        (
            "nspname",
            strings(["pg_catalog", "public", "information_schema"]),
        ),
        ("nspowner", ints([OWNER; 3])),
    ])?;
    // The one database a connection is in, whatever name it gave (the
    // name is not used): `weir`, UTF-8, owned by the tenant.
    let no_text = |n| datafusion::arrow::array::new_null_array(&DataType::Utf8, n);
    let databases = table(vec![
        ("oid", ints([DATABASE])),
        ("datname", strings(["weir"])),
        ("datdba", ints([OWNER])),
        ("encoding", ints([UTF8])),
        ("datlocprovider", strings(["c"])),
        ("datcollate", strings(["C"])),
        ("datctype", strings(["C"])),
        ("daticulocale", no_text(1)),
        ("datlocale", no_text(1)),
        ("daticurules", no_text(1)),
        (
            "datacl",
            datafusion::arrow::array::new_null_array(
                &DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                1,
            ),
        ),
    ])?;
    let procs = table(vec![
        ("oid", ints(oids.iter().copied())),
        (
            "proname",
            strings(functions.iter().map(|f| f.name.as_str())),
        ),
        ("pronamespace", ints(functions.iter().map(|_| PUBLIC))),
        ("prorettype", ints(functions.iter().map(|f| f.result_oid))),
        (
            "prokind",
            strings(
                functions
                    .iter()
                    .map(|f| if f.aggregate { "a" } else { "f" }),
            ),
        ),
    ])?;
    let classes = table(vec![
        ("oid", ints([])),
        ("relname", strings([])),
        ("relnamespace", ints([])),
        ("relkind", strings([])),
        ("relowner", ints([])),
        ("relam", ints([])),
    ])?;
    let methods = table(vec![("oid", ints([])), ("amname", strings([]))])?;
    // The columns of its relations (none: a statement here reads only
    // what it names), their defaults, and comments on any object (none);
    // JDBC's `getColumns`, `getTables` and `getFunctions` join them.
    let attributes = table(vec![
        ("attrelid", ints([])),
        ("attname", strings([])),
        ("atttypid", ints([])),
        ("attnotnull", bools([])),
        ("atttypmod", ints([])),
        ("attlen", ints([])),
        ("attnum", ints([])),
        ("attidentity", strings([])),
        ("attgenerated", strings([])),
        ("attisdropped", bools([])),
    ])?;
    let defaults = table(vec![
        ("adrelid", ints([])),
        ("adnum", ints([])),
        ("adbin", strings([])),
    ])?;
    let descriptions = table(vec![
        ("objoid", ints([])),
        ("classoid", ints([])),
        ("objsubid", ints([])),
        ("description", strings([])),
    ])?;
    let n = TYPES.len();
    let types = table(vec![
        ("oid", ints(TYPES.iter().map(|t| i64::from(t.oid())))),
        ("typname", strings(TYPES.iter().map(Type::name))),
        ("typnamespace", ints([PG_CATALOG; TYPES.len()])),
        ("typowner", ints([OWNER; TYPES.len()])),
        ("typlen", ints(TYPES.iter().map(type_length))),
        ("typtype", strings(std::iter::repeat_n("b", n))),
        ("typnotnull", bools(std::iter::repeat_n(false, n))),
        ("typtypmod", ints(std::iter::repeat_n(-1, n))),
        ("typbasetype", ints(std::iter::repeat_n(0, n))),
        ("typrelid", ints(std::iter::repeat_n(0, n))),
        ("typelem", ints(std::iter::repeat_n(0, n))),
        ("typarray", ints(std::iter::repeat_n(0, n))),
    ])?;
    let settings = settings();
    let settings = table(vec![
        ("name", strings(settings.iter().map(|(n, _, _)| *n))),
        (
            "setting",
            strings(settings.iter().map(|(_, v, _)| v.as_str())),
        ),
        ("short_desc", strings(settings.iter().map(|(_, _, d)| *d))),
    ])?;
    let by_oid: Arc<HashMap<i64, (String, String)>> = Arc::new(
        oids.iter()
            .zip(&functions)
            .map(|(oid, f)| (*oid, (f.result.clone(), f.args.clone())))
            .collect(),
    );
    let result = {
        let by_oid = by_oid.clone();
        text_of_oid("pg_get_function_result", move |oid| {
            by_oid.get(&oid).map(|(result, _)| result.clone())
        })
    };
    let arguments = text_of_oid("pg_get_function_arguments", move |oid| {
        by_oid.get(&oid).map(|(_, args)| args.clone())
    });
    let owner = {
        let tenant = tenant.to_string();
        text_of_oid("pg_get_userbyid", move |_| Some(tenant.clone()))
    };
    Ok(Catalog {
        tables: vec![
            ("pg_namespace".into(), namespaces),
            ("pg_database".into(), databases),
            ("pg_proc".into(), procs),
            ("pg_class".into(), classes),
            ("pg_am".into(), methods),
            ("pg_settings".into(), settings),
            ("pg_type".into(), types),
            ("pg_attribute".into(), attributes),
            ("pg_attrdef".into(), defaults),
            ("pg_description".into(), descriptions),
        ],
        functions: vec![
            result,
            arguments,
            owner,
            visible("pg_function_is_visible"),
            visible("pg_table_is_visible"),
            visible("pg_type_is_visible"),
            text_of_oid("pg_encoding_to_char", |encoding| {
                (encoding == UTF8).then(|| "UTF8".to_string())
            }),
            array_to_string(),
            constant("current_schema", "public"),
            constant("current_database", "weir"),
            constant("current_user", tenant),
            constant("session_user", tenant),
            current_schemas(),
            quote_ident(),
            format_type_of_oid(),
            pg_get_expr(),
            obj_description(),
        ],
    })
}

/// `pg_catalog.<name>() → text`, also by its bare name: always `value`
/// (the connection's schema, database, user).
fn constant(name: &'static str, value: &str) -> ScalarUDF {
    let value = value.to_string();
    let udf = create_udf(
        &format!("pg_catalog.{name}"),
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                value.clone(),
            ))))
        }),
    );
    udf.with_aliases([name])
}

/// `pg_catalog.current_schemas(include_implicit) → text[]`: `public`
/// (JDBC's `getSchemas` reads its first element).
fn current_schemas() -> ScalarUDF {
    let udf = create_udf(
        "pg_catalog.current_schemas",
        vec![DataType::Boolean],
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
        Volatility::Stable,
        Arc::new(|_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::List(
                ScalarValue::new_list_nullable(
                    &[ScalarValue::Utf8(Some("public".to_string()))],
                    &DataType::Utf8,
                ),
            )))
        }),
    );
    udf.with_aliases(["current_schemas"])
}

/// PostgreSQL's `quote_ident(text)`: the name as is when it is a plain
/// lower-case identifier, else in double quotes (inner ones doubled).
fn quote_ident() -> ScalarUDF {
    let udf = create_udf(
        "pg_catalog.quote_ident",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(one_argument(&arrays)?)?;
            let out: StringArray = names.iter().map(|n| n.map(quoted)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    udf.with_aliases(["quote_ident"])
}

/// `name` as `quote_ident` writes it.
fn quoted(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `pg_catalog.format_type(type_oid, typmod) → text`: the SQL name of
/// one of the catalog's types, NULL for another oid.
fn format_type_of_oid() -> ScalarUDF {
    let udf = create_udf(
        "pg_catalog.format_type",
        vec![DataType::Int64, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let Some(oids) = arrays.first() else {
                return Err(datafusion::error::DataFusionError::Plan(
                    "format_type takes a type's oid and a modifier".to_string(),
                ));
            };
            let oids = as_int64_array(oids)?;
            let out: StringArray = oids
                .iter()
                .map(|oid| {
                    let ty = TYPES.iter().find(|t| Some(i64::from(t.oid())) == oid)?;
                    Some(format_type(ty.name()).to_string())
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    udf.with_aliases(["format_type"])
}

/// `pg_catalog.obj_description(oid, catalog) → text`: NULL (nothing here
/// has a comment).
fn obj_description() -> ScalarUDF {
    null_text("obj_description", vec![DataType::Int64, DataType::Utf8])
}

/// `pg_catalog.pg_get_expr(expression, relation) → text`: NULL (no
/// relation here has a default to show).
fn pg_get_expr() -> ScalarUDF {
    null_text("pg_get_expr", vec![DataType::Utf8, DataType::Int64])
}

/// `pg_catalog.<name>(args) → text`, also by its bare name: always NULL.
fn null_text(name: &'static str, args: Vec<DataType>) -> ScalarUDF {
    let udf = create_udf(
        &format!("pg_catalog.{name}"),
        args,
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    );
    udf.with_aliases([name])
}

/// The one argument of a catalog function (its signature says one; an
/// error, never a panic, if the planner ever let another count through).
fn one_argument(arrays: &[ArrayRef]) -> datafusion::error::Result<&ArrayRef> {
    match arrays {
        [one] => Ok(one),
        _ => Err(datafusion::error::DataFusionError::Plan(format!(
            "a catalog function takes one oid, got {} arguments",
            arrays.len()
        ))),
    }
}

/// `pg_catalog.<name>(oid) → text`, also by its bare name: `text(oid)`,
/// NULL where it says nothing.
fn text_of_oid(
    name: &'static str,
    text: impl Fn(i64) -> Option<String> + Send + Sync + 'static,
) -> ScalarUDF {
    let udf = create_udf(
        &format!("pg_catalog.{name}"),
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = as_int64_array(one_argument(&arrays)?)?;
            let out: StringArray = oids.iter().map(|oid| oid.and_then(&text)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    udf.with_aliases([name])
}

/// `pg_catalog.array_to_string(text[], separator) → text` (psql's `\l`
/// joins a database's privileges): NULL for a NULL list.
fn array_to_string() -> ScalarUDF {
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    let udf = create_udf(
        "pg_catalog.array_to_string",
        vec![list, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let [lists, separators] = &arrays[..] else {
                return Err(datafusion::error::DataFusionError::Plan(
                    "array_to_string takes a list and a separator".to_string(),
                ));
            };
            let lists = datafusion::common::cast::as_list_array(lists)?;
            let separators = datafusion::common::cast::as_string_array(separators)?;
            let mut out = Vec::with_capacity(lists.len());
            for row in 0..lists.len() {
                if lists.is_null(row) || separators.is_null(row) {
                    out.push(None);
                    continue;
                }
                let items = lists.value(row);
                let items = datafusion::common::cast::as_string_array(&items)?;
                let parts: Vec<&str> = items.iter().flatten().collect();
                out.push(Some(parts.join(separators.value(row))));
            }
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
        }),
    );
    udf.with_aliases(["array_to_string"])
}

/// `pg_catalog.<name>(oid) → true`: everything a tenant's catalog holds is
/// on its search path.
fn visible(name: &'static str) -> ScalarUDF {
    let udf = create_udf(
        &format!("pg_catalog.{name}"),
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let out = BooleanArray::from(vec![true; one_argument(&arrays)?.len()]);
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    udf.with_aliases([name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_read_as_postgresql_types() {
        let f = function("score(float64, utf8) -> boolean").unwrap();
        assert_eq!(
            (
                f.name.as_str(),
                f.args.as_str(),
                f.result.as_str(),
                f.aggregate
            ),
            ("score", "double precision, text", "boolean", false)
        );
        let f = function("median(float64) -> float64 [aggregate, state: binary]").unwrap();
        assert!(f.aggregate);
        assert_eq!(function("now() -> int64").unwrap().args, "");
        assert!(function("odd(decimal) -> int64").is_none());
    }

    #[test]
    fn show_names_a_setting() {
        assert_eq!(show("SHOW TimeZone;").as_deref(), Some("timezone"));
        assert_eq!(
            show("show transaction isolation level").as_deref(),
            Some("transaction_isolation")
        );
        assert_eq!(show("SHOW ALL").as_deref(), Some("all"));
        assert_eq!(show("SELECT 1"), None);
        assert!(prepare("SHOW work_mem", "acme", &[]).is_err());
        let (sql, _) = prepare("SHOW DateStyle", "acme", &[]).unwrap();
        assert_eq!(
            sql,
            "SELECT setting AS \"datestyle\" FROM pg_catalog.pg_settings WHERE name = 'datestyle'"
        );
    }

    #[test]
    fn regclass_literals_become_oids() {
        assert_eq!(
            resolve_regclasses("d.classoid = 'pg_class'::regclass AND x = 'nope'::regclass"),
            "d.classoid = 1259 AND x = 0"
        );
        assert_eq!(
            resolve_regclasses("'pg_catalog.pg_namespace'::regclass"),
            "2615"
        );
        // Not a literal before it: left as it was (DataFusion says why).
        assert_eq!(resolve_regclasses("c::regclass"), "c");
        assert_eq!(resolve_regclasses("'::regclass"), "'");
    }

    #[test]
    fn quote_ident_quotes_what_is_not_a_plain_name() {
        assert_eq!(quoted("plain_1"), "plain_1");
        assert_eq!(quoted("Mixed"), "\"Mixed\"");
        assert_eq!(quoted("1st"), "\"1st\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(quoted(""), "\"\"");
    }

    #[test]
    fn a_drivers_statement_is_matched_whatever_its_spacing() {
        let (driver, planned) = DRIVER_STATEMENTS[0];
        let spaced = driver.replace(" FROM ", "\n   FROM   ");
        assert_eq!(planned_form(&spaced), planned);
        assert_eq!(
            planned_form("SELECT (pg_catalog.current_schemas(true))[1]"),
            "SELECT pg_catalog.current_schema()"
        );
    }
}
