//! A DataFusion session with weir's UDF modules and file tables.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::Result;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::tables::{TableSpec, register_table};
use crate::sandbox::{LoadError, Sandbox, UdfModule};
use crate::udf::register_module;

/// The session settings weir uses: default batch size 8192, one partition
/// per core.
/// Queries only: no DDL (`CREATE EXTERNAL TABLE` reads files), no DML
/// (`COPY … TO` writes files), no statements (`SET`). Every query from a
/// pipeline or the API is planned with these options.
pub fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

pub fn session_config() -> SessionConfig {
    SessionConfig::new().with_information_schema(true)
}

/// A `SessionContext` plus the sandbox its UDFs run in.
pub struct SqlSession {
    pub ctx: SessionContext,
    pub sandbox: Sandbox,
    modules: Vec<Arc<UdfModule>>,
}

impl SqlSession {
    pub fn new(sandbox: Sandbox) -> Self {
        SqlSession {
            ctx: {
                let limit = crate::tenant::TenantPolicy::default().query_memory_bytes;
                super::bounded_context(session_config(), limit, "defaults.query_memory_bytes")
            },
            sandbox,
            modules: Vec::new(),
        }
    }

    /// Loads a module file and registers its functions.
    pub fn add_udf_file(&mut self, path: &Path) -> Result<Arc<UdfModule>, LoadError> {
        let module = self.sandbox.load_file(path)?;
        register_module(&self.ctx, &module);
        self.modules.push(module.clone());
        Ok(module)
    }

    pub fn modules(&self) -> &[Arc<UdfModule>] {
        &self.modules
    }

    pub async fn add_table(&self, spec: &TableSpec) -> Result<()> {
        register_table(&self.ctx, spec).await
    }

    /// Plans and runs `sql` (one or more `;`-separated statements,
    /// `CREATE FUNCTION … LANGUAGE javascript|python` among them), collecting
    /// every batch of the last.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let host = LocalFunctions(&self.sandbox);
        super::run_script(&self.ctx, sql, SQLOptions::new(), &host, None).await
    }
}

/// `CREATE FUNCTION` in a local session (`weir sql`): the sandbox's own
/// limits, no tenant.
pub struct LocalFunctions<'a>(pub &'a Sandbox);

impl super::FunctionHost for LocalFunctions<'_> {
    fn load(&self, label: &str, wasm: &[u8]) -> std::result::Result<Arc<UdfModule>, LoadError> {
        self.0.load(label, wasm)
    }

    fn register(&self, ctx: &SessionContext, module: &Arc<UdfModule>) {
        register_module(ctx, module);
    }
}
