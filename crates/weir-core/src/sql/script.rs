//! Several `;`-separated statements in one request, and the one piece of
//! DDL weir opens: `CREATE FUNCTION … LANGUAGE javascript|python AS $$ … $$`,
//! which adds a JavaScript or Python function to the session (only to it).
//!
//! Every other statement is planned and checked against the caller's
//! [`SQLOptions`] exactly as a single query is.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{CreateFunction, DdlStatement, Expr, LogicalPlan, Volatility};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;

use crate::abi::AbiType;
use crate::lang::Signature;
use crate::lang::{javascript, python};
use crate::sandbox::{LoadError, UdfModule};

/// Loads a function's module for the caller (its tenant and limits) and
/// registers it in the session.
pub trait FunctionHost: Send + Sync {
    /// Loads module bytes under the caller's limits and policy (the
    /// JavaScript compiler too: it runs as a guest of the caller's).
    fn load(&self, label: &str, wasm: &[u8]) -> std::result::Result<Arc<UdfModule>, LoadError>;
    /// Registers the module's functions in `ctx`.
    fn register(&self, ctx: &SessionContext, module: &Arc<UdfModule>);
}

/// Runs every statement of `sql` in order and returns the batches of the
/// last one (a `CREATE FUNCTION` returns none), at most `limit` rows of
/// each query when given.
pub async fn run_script(
    ctx: &SessionContext,
    sql: &str,
    options: SQLOptions,
    host: &dyn FunctionHost,
    limit: Option<usize>,
) -> Result<Vec<RecordBatch>> {
    let statements = parse(ctx, sql)?;
    let mut last = Vec::new();
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        if let LogicalPlan::Ddl(DdlStatement::CreateFunction(create)) = &plan {
            create_function(ctx, create, host)?;
            last = Vec::new();
            continue;
        }
        options.verify_plan(&plan)?;
        let frame = ctx.execute_logical_plan(plan).await?;
        let frame = match limit {
            Some(n) => frame.limit(0, Some(n))?,
            None => frame,
        };
        last = collect_bounded(ctx, frame).await?;
    }
    Ok(last)
}

/// [`run_script`], with the values of the last statement's placeholders
/// (`$1`, `$2`, …: a prepared statement of the PostgreSQL protocol; a
/// value of another type than the statement gives its placeholder is
/// refused, naming both), and its rows as a stream instead of gathered:
/// the caller sends them on as they come (a client reading a large result
/// holds a batch or two, not the result). Polled under the
/// session's tenant's share like a gathered query; a script whose last
/// statement is a `CREATE FUNCTION` streams nothing.
pub async fn stream_script(
    ctx: &SessionContext,
    sql: &str,
    options: SQLOptions,
    host: &dyn FunctionHost,
    params: &[ScalarValue],
) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
    let statements = parse(ctx, sql)?;
    let count = statements.len();
    let mut last: Option<datafusion::physical_plan::SendableRecordBatchStream> = None;
    for (i, statement) in statements.into_iter().enumerate() {
        let mut plan = ctx.state().statement_to_plan(statement).await?;
        if let LogicalPlan::Ddl(DdlStatement::CreateFunction(create)) = &plan {
            create_function(ctx, create, host)?;
            last = None;
            continue;
        }
        options.verify_plan(&plan)?;
        if i + 1 == count && !params.is_empty() {
            plan = plan.with_param_values(params.to_vec())?;
        }
        let frame = ctx.execute_logical_plan(plan).await?;
        if i + 1 < count {
            // An earlier query's rows are not returned; it runs (as in
            // `run_script`) and its answer is dropped.
            collect_bounded(ctx, frame).await?;
            continue;
        }
        last = Some(stream_of(ctx, frame).await?);
    }
    Ok(last.unwrap_or_else(|| {
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                futures::stream::empty(),
            ),
        )
    }))
}

/// What a script's last statement takes and returns, found by planning it
/// without running it (its `CREATE FUNCTION`s are loaded, to plan the
/// calls to them).
#[derive(Debug, Clone)]
pub struct Described {
    /// The type of each placeholder (`$1` first); `None` where the
    /// statement does not tell it (`SELECT $1`).
    pub params: Vec<Option<datafusion::arrow::datatypes::DataType>>,
    /// The columns it returns (none for a `CREATE FUNCTION`).
    pub schema: datafusion::arrow::datatypes::SchemaRef,
}

/// Plans every statement of `sql` as [`run_script`] would and describes
/// the last one, running none. `declared`: the types the caller gives the
/// placeholders (`$1` first; `None` where it gives none), used where the
/// statement does not type one itself (`SELECT $1`), as PostgreSQL does.
pub async fn describe_script(
    ctx: &SessionContext,
    sql: &str,
    options: SQLOptions,
    host: &dyn FunctionHost,
    declared: &[Option<datafusion::arrow::datatypes::DataType>],
) -> Result<Described> {
    let statements = parse(ctx, sql)?;
    let mut described = Described {
        params: Vec::new(),
        schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
    };
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        if let LogicalPlan::Ddl(DdlStatement::CreateFunction(create)) = &plan {
            create_function(ctx, create, host)?;
            described.params.clear();
            described.schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
            continue;
        }
        options.verify_plan(&plan)?;
        let types = plan.get_parameter_types()?;
        let mut params = Vec::new();
        for (name, ty) in types {
            // Positional placeholders only: `$1`, `$2`, ….
            let index = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=65_535).contains(n))
                .ok_or_else(|| {
                    plan_err(format!(
                        "placeholder `{name}`: only numbered ones ($1, $2, …) are supported"
                    ))
                })?;
            if params.len() < index {
                params.resize(index, None);
            }
            params[index - 1] = ty;
        }
        for (i, ty) in params.iter_mut().enumerate() {
            if ty.is_none() {
                *ty = declared.get(i).cloned().flatten();
            }
        }
        // The columns once the placeholders have their types: planned
        // again with a NULL of each type in their place (text where
        // nothing types one).
        let plan = if params.is_empty() {
            plan
        } else {
            let nulls = params
                .iter()
                .map(|t| {
                    ScalarValue::try_from(
                        t.as_ref()
                            .unwrap_or(&datafusion::arrow::datatypes::DataType::Utf8),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            plan.with_param_values(nulls)?
        };
        described.params = params;
        described.schema = Arc::new(plan.schema().as_arrow().clone());
    }
    Ok(described)
}

/// The frame's batches, held to the session's memory pool while they are
/// gathered: the answer counts toward the query's memory like its
/// operators (a `ResourcesExhausted` error past it).
async fn collect_bounded(
    ctx: &SessionContext,
    frame: datafusion::dataframe::DataFrame,
) -> Result<Vec<RecordBatch>> {
    use datafusion::execution::memory_pool::MemoryConsumer;
    use futures::StreamExt;
    let reservation = MemoryConsumer::new("query answer").register(&ctx.runtime_env().memory_pool);
    let mut stream = stream_of(ctx, frame).await?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        reservation.try_grow(batch.get_array_memory_size())?;
        batches.push(batch);
    }
    Ok(batches)
}

/// The frame's rows as a stream. In a tenant's session, the streams
/// DataFusion polls in tasks of its own are polled under the tenant's
/// share too (the caller gates this one).
async fn stream_of(
    ctx: &SessionContext,
    frame: datafusion::dataframe::DataFrame,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
    match ctx
        .state()
        .config()
        .get_extension::<crate::tenant::Tenant>()
    {
        Some(tenant) => {
            let task = Arc::new(frame.task_ctx());
            let plan = frame.create_physical_plan().await?;
            let plan = crate::tenant::gate_plan(plan, &tenant)?;
            datafusion::physical_plan::execute_stream(plan, task)
        }
        None => frame.execute_stream().await,
    }
}

/// The statements of `sql` in the session's dialect; at least one.
/// The text is first held to the session's [`super::SqlBounds`]: nothing
/// recursive runs on a text over them.
fn parse(ctx: &SessionContext, sql: &str) -> Result<VecDeque<DFStatement>> {
    super::check_bounds(ctx, sql)?;
    let state = ctx.state();
    let config = state.config().options();
    let dialect = dialect_from_str(config.sql_parser.dialect).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "unsupported SQL dialect `{}`",
            config.sql_parser.dialect
        ))
    })?;
    let statements = DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(config.sql_parser.recursion_limit.get())
        .build()?
        .parse_statements()?;
    if statements.is_empty() {
        return Err(DataFusionError::Plan(
            "no SQL statement was given".to_string(),
        ));
    }
    Ok(statements)
}

/// A function a `CREATE FUNCTION` statement defines: its name and module.
pub struct InlineFunction {
    pub name: String,
    /// The module (the JavaScript or Python runtime with the function's program).
    pub wasm: Vec<u8>,
}

impl InlineFunction {
    /// The label modules loaded from it carry (in messages and metrics).
    pub fn label(&self) -> String {
        format!("function `{}` (CREATE FUNCTION)", self.name)
    }
}

/// A pipeline's SQL: `CREATE FUNCTION … LANGUAGE javascript` statements,
/// then the one query run for every micro-batch. Returns the functions'
/// modules (compiled by the JavaScript compiler that `load` loads: the
/// pipeline's tenant's limits) and the query's text; SQL without `CREATE
/// FUNCTION` comes back unchanged. `bounds`: the pipeline tenant's.
pub async fn split_functions(
    sql: &str,
    bounds: super::SqlBounds,
    load: javascript::Loader<'_>,
) -> Result<(Vec<InlineFunction>, String)> {
    let ctx = SessionContext::new_with_config(bounds.install(super::session_config()));
    let statements = parse(&ctx, sql)?;
    let is_create = |s: &DFStatement| matches!(s, DFStatement::Statement(s) if matches!(**s, SqlStatement::CreateFunction(_)));
    if !statements.iter().any(is_create) {
        return Ok((Vec::new(), sql.to_string()));
    }
    let mut functions = Vec::new();
    let mut query = None;
    for statement in statements {
        if query.is_some() {
            return Err(plan_err(
                "a pipeline's SQL is `CREATE FUNCTION` statements, then one query: nothing may follow the query".to_string(),
            ));
        }
        if !is_create(&statement) {
            query = Some(statement.to_string());
            continue;
        }
        let plan = ctx.state().statement_to_plan(statement).await?;
        if let LogicalPlan::Ddl(DdlStatement::CreateFunction(create)) = &plan {
            functions.push(function_module(create, load)?);
        }
    }
    let query = query.ok_or_else(|| {
        plan_err("the SQL creates functions but has no query to run; add a `SELECT … FROM source` after them".to_string())
    })?;
    Ok((functions, query))
}

fn plan_err(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// `CREATE FUNCTION name(a DOUBLE, …) RETURNS T LANGUAGE javascript AS $$ … $$`:
/// the body is either a script defining `function name(…)`, or the body of
/// that function (its parameters are the SQL arguments' names). The same
/// with `LANGUAGE python` and `def name(…):`.
fn create_function(
    ctx: &SessionContext,
    create: &CreateFunction,
    host: &dyn FunctionHost,
) -> Result<()> {
    let function = function_module(create, &|label, wasm| host.load(label, wasm))?;
    let module = host
        .load(&function.label(), &function.wasm)
        .map_err(|e| plan_err(format!("CREATE FUNCTION {}: {e}", function.name)))?;
    host.register(ctx, &module);
    Ok(())
}

/// The module of a `CREATE FUNCTION`, compiled by the compiler `load` loads.
fn function_module(
    create: &CreateFunction,
    load: javascript::Loader<'_>,
) -> Result<InlineFunction> {
    let name = create.name.to_ascii_lowercase();
    let language = create
        .params
        .language
        .as_ref()
        .map(|l| l.value.to_ascii_lowercase());
    let language = match language.as_deref() {
        Some("javascript" | "js") => Language::JavaScript,
        Some("python" | "py") => Language::Python,
        _ => {
            return Err(plan_err(format!(
                "CREATE FUNCTION {name}: weir creates functions in LANGUAGE javascript or LANGUAGE python{}; other languages are modules (`weir udf build`)",
                language
                    .map(|l| format!(" (not `{l}`)"))
                    .unwrap_or_default()
            )));
        }
    };
    let mut args = Vec::new();
    for (i, arg) in create.args.iter().flatten().enumerate() {
        if arg.default_expr.is_some() {
            return Err(plan_err(format!(
                "CREATE FUNCTION {name}: argument {} has a default; weir functions take every argument",
                i + 1
            )));
        }
        let arg_name = arg
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| format!("arg{i}"));
        args.push((
            arg_name.clone(),
            abi_type(&name, &arg_name, &arg.data_type)?,
        ));
    }
    let ret_type = create.return_type.as_ref().ok_or_else(|| {
        plan_err(format!(
            "CREATE FUNCTION {name}: declare the result type with RETURNS"
        ))
    })?;
    let ret = abi_type(&name, "the result", ret_type)?;
    let body = match &create.params.function_body {
        Some(Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        )) => s.clone(),
        _ => {
            return Err(plan_err(format!(
                "CREATE FUNCTION {name}: give the {} as a string, `AS $$ … $$`",
                language.name()
            )));
        }
    };
    let params: Vec<String> = args.iter().map(|(n, _)| n.clone()).collect();
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let signature = Signature {
        name: name.clone(),
        args,
        ret,
        deterministic: !matches!(create.params.behavior, Some(Volatility::Volatile)),
    };
    let wasm = match language {
        Language::JavaScript => {
            let source = if defines_function(&body, &name) {
                body
            } else {
                format!("function {name}({}) {{\n{body}\n}}\n", params.join(", "))
            };
            javascript::module_with(load, &format!("{name}.js"), &source, &[signature])
                .map_err(|e| e.to_string())
        }
        Language::Python => {
            let source = python::inline_source(&name, &params, &body);
            python::module(&format!("{name}.py"), &source, &[signature]).map_err(|e| e.to_string())
        }
    }
    .map_err(|e| plan_err(format!("CREATE FUNCTION {name}: {e}")))?;
    Ok(InlineFunction { name, wasm })
}

/// The languages `CREATE FUNCTION` takes.
#[derive(Clone, Copy)]
enum Language {
    JavaScript,
    Python,
}

impl Language {
    fn name(self) -> &'static str {
        match self {
            Language::JavaScript => "JavaScript",
            Language::Python => "Python",
        }
    }
}

/// Whether `body` is a script that defines `function name(`.
fn defines_function(body: &str, name: &str) -> bool {
    body.match_indices("function").any(|(at, _)| {
        let rest = body[at + "function".len()..].trim_start();
        rest.strip_prefix(name)
            .is_some_and(|r| r.trim_start().starts_with('('))
    })
}

fn abi_type(
    function: &str,
    what: &str,
    t: &datafusion::arrow::datatypes::DataType,
) -> Result<AbiType> {
    use datafusion::arrow::datatypes::DataType as D;
    Ok(match t {
        D::Boolean => AbiType::Boolean,
        D::Int8 => AbiType::Int8,
        D::Int16 => AbiType::Int16,
        D::Int32 => AbiType::Int32,
        D::Int64 => AbiType::Int64,
        D::UInt8 => AbiType::UInt8,
        D::UInt16 => AbiType::UInt16,
        D::UInt32 => AbiType::UInt32,
        D::UInt64 => AbiType::UInt64,
        D::Float32 => AbiType::Float32,
        D::Float64 => AbiType::Float64,
        D::Utf8 | D::Utf8View | D::LargeUtf8 => AbiType::Utf8,
        D::Binary | D::BinaryView | D::LargeBinary => AbiType::Binary,
        D::Timestamp(_, _) => AbiType::TimestampMicros,
        D::Date32 | D::Date64 => AbiType::Date32,
        other => {
            return Err(plan_err(format!(
                "CREATE FUNCTION {function}: {what} is {other}, which a weir function cannot take; use BOOLEAN, an integer, REAL/DOUBLE, VARCHAR, BYTEA, TIMESTAMP or DATE"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::defines_function;

    #[test]
    fn a_body_that_defines_the_function_is_a_script() {
        assert!(defines_function("function f (a) { return a }", "f"));
        assert!(!defines_function("return a + 1", "f"));
        assert!(!defines_function("function fx(a) {}", "f"));
    }
}
