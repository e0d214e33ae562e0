//! The registry of a cluster: everything in the shared PostgreSQL database,
//! module bytes included (a node keeps them only as a cache under
//! `data_dir/modules`, content-addressed). Every change is announced on
//! [`CHANNEL`] in the transaction that makes it, so other nodes act on it
//! once it is committed, never before.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::{GenericClient, Row};

use super::{Registry, RegistryError, Result, StoredPipeline, UdfVersion};
use crate::auth::TokenConfig;
use crate::database::Database;
use crate::database::listen::CHANNEL;

pub struct PostgresRegistry {
    db: Arc<Database>,
    /// The local cache of module bytes.
    modules: PathBuf,
}

impl PostgresRegistry {
    pub fn new(db: Arc<Database>, data_dir: &Path) -> Result<Self> {
        let modules = data_dir.join("modules");
        std::fs::create_dir_all(&modules).map_err(|e| {
            RegistryError::Storage(format!("cannot create {}: {e}", modules.display()))
        })?;
        Ok(PostgresRegistry { db, modules })
    }

    /// Runs `f` on a connection of the shared database.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<T, postgres::Error>
        + Send
        + 'static,
    ) -> Result<T> {
        Ok(self.db.run(f)?)
    }
}

/// Announces a change of `kind` (`udf`, `pipeline`, `token`) to every node
/// once the transaction commits.
fn notify(
    c: &mut impl GenericClient,
    kind: &str,
    tenant: &str,
    name: &str,
) -> std::result::Result<(), postgres::Error> {
    let payload = serde_json::json!({ "kind": kind, "tenant": tenant, "name": name }).to_string();
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .map(|_| ())
}

fn udf_row(r: &Row) -> std::result::Result<UdfVersion, postgres::Error> {
    let functions: String = r.try_get(5)?;
    Ok(UdfVersion {
        tenant: r.try_get(0)?,
        name: r.try_get(1)?,
        version: r.try_get(2)?,
        sha256: r.try_get(3)?,
        size: r.try_get(4)?,
        functions: serde_json::from_str(&functions).unwrap_or_default(),
        published_at: r.try_get(6)?,
        published_by: r.try_get(7)?,
    })
}

fn pipeline_row(r: &Row) -> std::result::Result<StoredPipeline, postgres::Error> {
    Ok(StoredPipeline {
        tenant: r.try_get(0)?,
        name: r.try_get(1)?,
        config: r.try_get(2)?,
        running: r.try_get(3)?,
        updated_at: r.try_get(4)?,
        updated_by: r.try_get(5)?,
    })
}

fn token_row(r: &Row) -> std::result::Result<TokenConfig, postgres::Error> {
    let role: String = r.try_get(3)?;
    Ok(TokenConfig {
        name: r.try_get(0)?,
        sha256: r.try_get(1)?,
        tenant: r.try_get(2)?,
        role: serde_json::from_value(serde_json::Value::String(role))
            .unwrap_or(crate::auth::Role::Viewer),
    })
}

fn rows<T>(
    rows: Vec<Row>,
    f: fn(&Row) -> std::result::Result<T, postgres::Error>,
) -> std::result::Result<Vec<T>, postgres::Error> {
    rows.iter().map(f).collect()
}

const LATEST: &str =
    "SELECT * FROM weir_udf_versions WHERE tenant = $1 AND name = $2 ORDER BY version DESC LIMIT 1";

impl Registry for PostgresRegistry {
    fn publish(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
        sha256: &str,
        functions: Vec<String>,
        by: &str,
    ) -> Result<(UdfVersion, bool)> {
        let (tenant, name, sha256, by) = (
            tenant.to_string(),
            name.to_string(),
            sha256.to_string(),
            by.to_string(),
        );
        let bytes = bytes.to_vec();
        self.run(move |c| {
            let mut tx = c.transaction()?;
            // Publishes of one UDF, from any node, take their turn.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[&format!("{tenant}/{name}")],
            )?;
            if let Some(row) = tx.query_opt(LATEST, &[&tenant, &name])? {
                let latest = udf_row(&row)?;
                if latest.sha256 == sha256 {
                    return Ok((latest, false));
                }
            }
            tx.execute(
                "INSERT INTO weir_modules VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&sha256, &bytes],
            )?;
            let next: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM weir_udf_versions WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name],
                )?
                .try_get(0)?;
            let v = UdfVersion {
                tenant,
                name,
                version: next,
                sha256,
                size: bytes.len() as i64,
                functions,
                published_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                published_by: by,
            };
            tx.execute(
                "INSERT INTO weir_udf_versions VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &v.tenant,
                    &v.name,
                    &v.version,
                    &v.sha256,
                    &v.size,
                    &serde_json::to_string(&v.functions).unwrap_or_default(),
                    &v.published_at,
                    &v.published_by,
                ],
            )?;
            notify(&mut tx, "udf", &v.tenant, &v.name)?;
            tx.commit()?;
            Ok((v, true))
        })
    }

    fn list(&self, tenant: &str) -> Result<Vec<UdfVersion>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            rows(
                c.query(
                    "SELECT DISTINCT ON (name) * FROM weir_udf_versions WHERE tenant = $1
                     ORDER BY name, version DESC",
                    &[&tenant],
                )?,
                udf_row,
            )
        })
    }

    fn versions(&self, tenant: &str, name: &str) -> Result<Vec<UdfVersion>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.run(move |c| {
            rows(
                c.query(
                    "SELECT * FROM weir_udf_versions WHERE tenant = $1 AND name = $2 ORDER BY version",
                    &[&tenant, &name],
                )?,
                udf_row,
            )
        })
    }

    fn get(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<UdfVersion>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.run(move |c| {
            let row = match version {
                Some(v) => c.query_opt(
                    "SELECT * FROM weir_udf_versions WHERE tenant = $1 AND name = $2 AND version = $3",
                    &[&tenant, &name, &v],
                )?,
                None => c.query_opt(LATEST, &[&tenant, &name])?,
            };
            row.as_ref().map(udf_row).transpose()
        })
    }

    fn delete(&self, tenant: &str, name: &str, version: i64) -> Result<bool> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.run(move |c| {
            let mut tx = c.transaction()?;
            let gone = tx.query_opt(
                "DELETE FROM weir_udf_versions WHERE tenant = $1 AND name = $2 AND version = $3
                 RETURNING sha256",
                &[&tenant, &name, &version],
            )?;
            let Some(gone) = gone else {
                return Ok(false);
            };
            let sha256: String = gone.try_get(0)?;
            // The bytes go with the last version that used them.
            tx.execute(
                "DELETE FROM weir_modules m WHERE sha256 = $1
                 AND NOT EXISTS (SELECT 1 FROM weir_udf_versions v WHERE v.sha256 = m.sha256)",
                &[&sha256],
            )?;
            notify(&mut tx, "udf", &tenant, &name)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn module_bytes(&self, v: &UdfVersion) -> Result<Vec<u8>> {
        let cached = self.modules.join(format!("{}.wasm", v.sha256));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(bytes);
        }
        let sha256 = v.sha256.clone();
        let bytes: Option<Vec<u8>> = self.run(move |c| {
            c.query_opt(
                "SELECT bytes FROM weir_modules WHERE sha256 = $1",
                &[&sha256],
            )?
            .map(|r| r.try_get(0))
            .transpose()
        })?;
        let bytes = bytes.ok_or_else(|| {
            RegistryError::Storage(format!(
                "the module bytes of {}@v{} are not in the database",
                v.name, v.version
            ))
        })?;
        let tmp = self.modules.join(format!(".{}.tmp", v.sha256));
        if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &cached)) {
            tracing::warn!("cannot cache module {}: {e}", cached.display());
        }
        Ok(bytes)
    }

    fn save_pipeline(&self, p: &StoredPipeline) -> Result<()> {
        let p = p.clone();
        self.run(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO weir_pipelines VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant, name) DO UPDATE SET config = $3, running = $4,
                     updated_at = $5, updated_by = $6",
                &[
                    &p.tenant,
                    &p.name,
                    &p.config,
                    &p.running,
                    &p.updated_at,
                    &p.updated_by,
                ],
            )?;
            notify(&mut tx, "pipeline", &p.tenant, &p.name)?;
            tx.commit()
        })
    }

    fn pipeline(&self, tenant: &str, name: &str) -> Result<Option<StoredPipeline>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.run(move |c| {
            c.query_opt(
                "SELECT * FROM weir_pipelines WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )?
            .as_ref()
            .map(pipeline_row)
            .transpose()
        })
    }

    fn pipelines(&self, tenant: &str) -> Result<Vec<StoredPipeline>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            rows(
                c.query(
                    "SELECT * FROM weir_pipelines WHERE $1 = '*' OR tenant = $1 ORDER BY tenant, name",
                    &[&tenant],
                )?,
                pipeline_row,
            )
        })
    }

    fn delete_pipeline(&self, tenant: &str, name: &str) -> Result<bool> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.run(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM weir_pipelines WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )?;
            tx.execute(
                "DELETE FROM weir_leases WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )?;
            notify(&mut tx, "pipeline", &tenant, &name)?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn create_token(&self, t: &TokenConfig, by: &str, at: i64) -> Result<bool> {
        let role = serde_json::to_value(t.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let (t, by) = (t.clone(), by.to_string());
        self.run(move |c| {
            // A taken name (or digest) inserts nothing.
            c.execute(
                "INSERT INTO weir_tokens VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&t.name, &t.sha256, &t.tenant, &role, &at, &by],
            )
            .map(|n| n > 0)
        })
    }

    fn token_by_sha256(&self, sha256: &str) -> Result<Option<TokenConfig>> {
        let sha256 = sha256.to_string();
        self.run(move |c| {
            c.query_opt("SELECT * FROM weir_tokens WHERE sha256 = $1", &[&sha256])?
                .as_ref()
                .map(token_row)
                .transpose()
        })
    }

    fn tokens(&self, tenant: &str) -> Result<Vec<TokenConfig>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            rows(
                c.query(
                    "SELECT * FROM weir_tokens WHERE tenant = $1 ORDER BY name",
                    &[&tenant],
                )?,
                token_row,
            )
        })
    }

    fn delete_token(&self, tenant: &str, name: &str) -> Result<bool> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.run(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM weir_tokens WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )?;
            notify(&mut tx, "token", &tenant, &name)?;
            tx.commit()?;
            Ok(n > 0)
        })
    }
}
