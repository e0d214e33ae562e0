//! The embedded registry of a single node: metadata in SQLite under
//! `data_dir`, module bytes as content-addressed files beside it.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};

use super::{Registry, RegistryError, Result, StoredPipeline, UdfVersion};
use crate::auth::TokenConfig;
use rusqlite::{Connection, OptionalExtension, params};

pub struct SqliteRegistry {
    db: Mutex<Connection>,
    modules: PathBuf,
}

fn db_err(e: rusqlite::Error) -> RegistryError {
    RegistryError::Storage(format!("registry database: {e}"))
}

impl SqliteRegistry {
    /// Opens (or creates) the registry under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let modules = data_dir.join("modules");
        std::fs::create_dir_all(&modules).map_err(|e| {
            RegistryError::Storage(format!("cannot create {}: {e}", modules.display()))
        })?;
        let db = Connection::open(data_dir.join("registry.db")).map_err(db_err)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS udf_versions (
                 tenant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
                 sha256 TEXT NOT NULL, size INTEGER NOT NULL, functions TEXT NOT NULL,
                 published_at INTEGER NOT NULL, published_by TEXT NOT NULL,
                 PRIMARY KEY (tenant, name, version));
             CREATE TABLE IF NOT EXISTS pipelines (
                 tenant TEXT NOT NULL, name TEXT NOT NULL, config TEXT NOT NULL,
                 running INTEGER NOT NULL, updated_at INTEGER NOT NULL, updated_by TEXT NOT NULL,
                 PRIMARY KEY (tenant, name));
             CREATE TABLE IF NOT EXISTS tokens (
                 name TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
                 role TEXT NOT NULL, created_at INTEGER NOT NULL, created_by TEXT NOT NULL,
                 PRIMARY KEY (tenant, name));",
        )
        .map_err(db_err)?;
        Ok(SqliteRegistry {
            db: Mutex::new(db),
            modules,
        })
    }

    fn db(&self) -> parking_lot::MutexGuard<'_, Connection> {
        self.db.lock()
    }
}

impl Registry for SqliteRegistry {
    fn publish(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
        sha256: &str,
        functions: Vec<String>,
        by: &str,
    ) -> Result<(UdfVersion, bool)> {
        if let Some(latest) = self.get(tenant, name, None)?
            && latest.sha256 == sha256
        {
            return Ok((latest, false));
        }
        let path = self.modules.join(format!("{sha256}.wasm"));
        if !path.exists() {
            let tmp = self.modules.join(format!(".{sha256}.tmp"));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| RegistryError::Storage(format!("cannot store module: {e}")))?;
        }
        let db = self.db();
        let next: i64 = db
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM udf_versions WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let v = UdfVersion {
            tenant: tenant.to_string(),
            name: name.to_string(),
            version: next,
            sha256: sha256.to_string(),
            size: bytes.len() as i64,
            functions,
            published_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            published_by: by.to_string(),
        };
        db.execute(
            "INSERT INTO udf_versions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                v.tenant,
                v.name,
                v.version,
                v.sha256,
                v.size,
                serde_json::to_string(&v.functions).unwrap_or_default(),
                v.published_at,
                v.published_by
            ],
        )
        .map_err(db_err)?;
        Ok((v, true))
    }

    fn list(&self, tenant: &str) -> Result<Vec<UdfVersion>> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT * FROM udf_versions u WHERE tenant = ?1 AND version =
                   (SELECT MAX(version) FROM udf_versions WHERE tenant = u.tenant AND name = u.name)
                 ORDER BY name",
            )
            .map_err(db_err)?;
        stmt.query_map(params![tenant], udf_row)
            .and_then(|rows| rows.collect())
            .map_err(db_err)
    }

    fn versions(&self, tenant: &str, name: &str) -> Result<Vec<UdfVersion>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT * FROM udf_versions WHERE tenant = ?1 AND name = ?2 ORDER BY version")
            .map_err(db_err)?;
        stmt.query_map(params![tenant, name], udf_row)
            .and_then(|rows| rows.collect())
            .map_err(db_err)
    }

    fn get(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<UdfVersion>> {
        let db = self.db();
        let found = match version {
            Some(v) => db.query_row(
                "SELECT * FROM udf_versions WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                params![tenant, name, v],
                udf_row,
            ),
            None => db.query_row(
                "SELECT * FROM udf_versions WHERE tenant = ?1 AND name = ?2 ORDER BY version DESC LIMIT 1",
                params![tenant, name],
                udf_row,
            ),
        };
        found.optional().map_err(db_err)
    }

    // The module file stays: another version may use it.
    fn delete(&self, tenant: &str, name: &str, version: i64) -> Result<bool> {
        let db = self.db();
        let n = db
            .execute(
                "DELETE FROM udf_versions WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                params![tenant, name, version],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    fn module_bytes(&self, v: &UdfVersion) -> Result<Vec<u8>> {
        std::fs::read(self.modules.join(format!("{}.wasm", v.sha256))).map_err(|e| {
            RegistryError::Storage(format!("module file of {}@v{}: {e}", v.name, v.version))
        })
    }

    fn save_pipeline(&self, p: &StoredPipeline) -> Result<()> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO pipelines VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    p.tenant,
                    p.name,
                    p.config,
                    p.running,
                    p.updated_at,
                    p.updated_by
                ],
            )
            .map(|_| ())
            .map_err(db_err)
    }

    fn pipeline(&self, tenant: &str, name: &str) -> Result<Option<StoredPipeline>> {
        self.db()
            .query_row(
                "SELECT * FROM pipelines WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
                pipeline_row,
            )
            .optional()
            .map_err(db_err)
    }

    fn pipelines(&self, tenant: &str) -> Result<Vec<StoredPipeline>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT * FROM pipelines WHERE ?1 = '*' OR tenant = ?1 ORDER BY tenant, name")
            .map_err(db_err)?;
        stmt.query_map(params![tenant], pipeline_row)
            .and_then(|rows| rows.collect())
            .map_err(db_err)
    }

    fn delete_pipeline(&self, tenant: &str, name: &str) -> Result<bool> {
        self.db()
            .execute(
                "DELETE FROM pipelines WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
            )
            .map(|n| n > 0)
            .map_err(db_err)
    }

    fn create_token(&self, t: &TokenConfig, by: &str, at: i64) -> Result<bool> {
        let role = serde_json::to_value(t.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match self.db().execute(
            "INSERT INTO tokens VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.name, t.sha256, t.tenant, role, at, by],
        ) {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(db_err(e)),
        }
    }

    fn token_by_sha256(&self, sha256: &str) -> Result<Option<TokenConfig>> {
        self.db()
            .query_row(
                "SELECT * FROM tokens WHERE sha256 = ?1",
                params![sha256],
                token_row,
            )
            .optional()
            .map_err(db_err)
    }

    fn tokens(&self, tenant: &str) -> Result<Vec<TokenConfig>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT * FROM tokens WHERE tenant = ?1 ORDER BY name")
            .map_err(db_err)?;
        stmt.query_map(params![tenant], token_row)
            .and_then(|rows| rows.collect())
            .map_err(db_err)
    }

    fn delete_token(&self, tenant: &str, name: &str) -> Result<bool> {
        self.db()
            .execute(
                "DELETE FROM tokens WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
            )
            .map(|n| n > 0)
            .map_err(db_err)
    }
}

fn udf_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UdfVersion> {
    let functions: String = r.get(5)?;
    Ok(UdfVersion {
        tenant: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        sha256: r.get(3)?,
        size: r.get(4)?,
        functions: serde_json::from_str(&functions).unwrap_or_default(),
        published_at: r.get(6)?,
        published_by: r.get(7)?,
    })
}

fn pipeline_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPipeline> {
    Ok(StoredPipeline {
        tenant: r.get(0)?,
        name: r.get(1)?,
        config: r.get(2)?,
        running: r.get(3)?,
        updated_at: r.get(4)?,
        updated_by: r.get(5)?,
    })
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenConfig> {
    let role: String = r.get(3)?;
    Ok(TokenConfig {
        name: r.get(0)?,
        sha256: r.get(1)?,
        tenant: r.get(2)?,
        role: serde_json::from_value(serde_json::Value::String(role))
            .unwrap_or(crate::auth::Role::Viewer),
    })
}
