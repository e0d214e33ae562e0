//! The registry: UDF versions (immutable, numbered per tenant and name,
//! module bytes content-addressed), deployed pipelines and API tokens.
//! One interface, two stores: SQLite under `data_dir` for a single node
//! (the default), PostgreSQL shared by a cluster (`serve.database`).

pub mod postgres;
pub mod sqlite;

use serde::Serialize;

use crate::auth::TokenConfig;
use crate::database::DatabaseError;

pub use self::postgres::PostgresRegistry;
pub use sqlite::SqliteRegistry;

/// What every registry method returns.
pub type Result<T> = std::result::Result<T, RegistryError>;

/// Why the registry could not answer. The kind tells the caller what to
/// do: retry later ([`RegistryError::Unavailable`], HTTP `503`) or not
/// ([`RegistryError::Storage`], HTTP `500`); the words say what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The shared database (`serve.database`) did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed: a statement refused, a module file unreadable,
    /// the data directory unwritable.
    #[error("{0}")]
    Storage(String),
}

impl From<DatabaseError> for RegistryError {
    fn from(e: DatabaseError) -> Self {
        match e {
            DatabaseError::Unavailable(m) => RegistryError::Unavailable(m),
            DatabaseError::Failed(m) => RegistryError::Storage(m),
        }
    }
}

impl RegistryError {
    /// A storage failure described by `message`.
    pub fn storage(message: impl Into<String>) -> Self {
        RegistryError::Storage(message.into())
    }
}

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UdfVersion {
    pub tenant: String,
    pub name: String,
    pub version: i64,
    /// sha256 of the module's binary form.
    pub sha256: String,
    pub size: i64,
    /// `name(args) -> ret` of each function the module declares.
    pub functions: Vec<String>,
    /// Milliseconds since the epoch.
    pub published_at: i64,
    pub published_by: String,
}

/// A deployed pipeline: its TOML and whether it should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredPipeline {
    pub tenant: String,
    pub name: String,
    pub config: String,
    pub running: bool,
    pub updated_at: i64,
    pub updated_by: String,
}

/// What a registry stores and answers; every method is a short blocking
/// call (a local file, or a round trip to the shared database).
///
/// # Errors
/// Every method fails with [`RegistryError::Unavailable`] when the shared
/// database does not answer, and [`RegistryError::Storage`] when the store
/// fails; "not found" is `Ok(None)` or `Ok(false)`, never an error.
pub trait Registry: Send + Sync {
    /// Stores `bytes` (already validated) as the next version of `name`;
    /// publishing the latest version's exact bytes again returns it
    /// unchanged (`false`).
    fn publish(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
        sha256: &str,
        functions: Vec<String>,
        by: &str,
    ) -> Result<(UdfVersion, bool)>;

    /// The latest version of every UDF of `tenant`.
    fn list(&self, tenant: &str) -> Result<Vec<UdfVersion>>;

    fn versions(&self, tenant: &str, name: &str) -> Result<Vec<UdfVersion>>;

    /// A version, or the latest when `version` is `None`.
    fn get(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<UdfVersion>>;

    /// Removes a version (its module bytes stay while another version uses them).
    fn delete(&self, tenant: &str, name: &str, version: i64) -> Result<bool>;

    /// The module bytes of a version.
    fn module_bytes(&self, v: &UdfVersion) -> Result<Vec<u8>>;

    fn save_pipeline(&self, p: &StoredPipeline) -> Result<()>;

    fn pipeline(&self, tenant: &str, name: &str) -> Result<Option<StoredPipeline>>;

    /// Pipelines of `tenant`, or of every tenant for `*`.
    fn pipelines(&self, tenant: &str) -> Result<Vec<StoredPipeline>>;

    fn delete_pipeline(&self, tenant: &str, name: &str) -> Result<bool>;

    /// Stores a token created through the API (its sha256 only). `false`
    /// when the name is taken.
    fn create_token(&self, t: &TokenConfig, by: &str, at: i64) -> Result<bool>;

    fn token_by_sha256(&self, sha256: &str) -> Result<Option<TokenConfig>>;

    fn tokens(&self, tenant: &str) -> Result<Vec<TokenConfig>>;

    fn delete_token(&self, tenant: &str, name: &str) -> Result<bool>;
}
