//! Versioned schema migrations (`migrations/NNNN_*.sql`), applied at start
//! by whichever node gets there first: under a transaction-scoped advisory
//! lock, each in the transaction that records it. A database whose schema
//! is newer than this build is refused rather than guessed at.

use postgres::Client;

/// Every migration, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/0001_control_plane.sql"))];

/// The advisory lock key that serializes migrations across nodes.
const LOCK: i64 = 0x7765_6972; // "weir"

/// Applies the migrations the database lacks; the schema version it is at.
pub fn apply(client: &mut Client) -> Result<i32, String> {
    let e = |e: postgres::Error| format!("schema migration: {}", super::describe(&e));
    let mut tx = client.transaction().map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .map_err(e)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS weir_schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .map_err(e)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM weir_schema_migrations",
            &[],
        )
        .map_err(e)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(format!(
            "the database's schema is at version {current}, newer than this weir knows ({known}): upgrade weir on this node"
        ));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .map_err(|err| format!("migration {version}: {}", super::describe(&err)))?;
        tx.execute(
            "INSERT INTO weir_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .map_err(e)?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().map_err(e)?;
    Ok(known)
}
