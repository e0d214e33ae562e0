//! The audit log: one JSON line per API request — who, when, what, on which
//! object, and the decision (allowed, or denied with the reason). Append-only;
//! admins read it back through the API.
//!
//! Records are written by a thread of their own (`weir-audit`): a request
//! hands its record over and awaits it being synced, without holding an API
//! thread through the `fsync` (which waits for the disk, and for every
//! other dirty page of the filesystem's journal). Records waiting together
//! are written and synced together (group commit).
//!
//! In a cluster the log is a table of the shared database, with the node
//! that answered; while the database does not answer, a node keeps its
//! records in `data_dir/audit-spool.jsonl` and moves them to the table at
//! the next heartbeat that reaches it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use crate::database::{Database, DatabaseError};

use tokio::sync::oneshot;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The token's name, or `anonymous`.
    pub who: String,
    pub tenant: String,
    pub action: String,
    pub object: String,
    /// `allowed` or `denied`.
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub status: u16,
}

type Pending = (Vec<u8>, oneshot::Sender<()>);

pub struct AuditLog {
    path: PathBuf,
    store: Store,
}

enum Store {
    /// `audit.jsonl`, written by the writer thread.
    File(mpsc::Sender<Pending>),
    /// `weir_audit`; `path` is the spool, its lock held while it is written
    /// or moved.
    Database {
        db: Arc<Database>,
        node: String,
        spool: parking_lot::Mutex<()>,
    },
}

const INSERT: &str =
    "INSERT INTO weir_audit (at, who, tenant, action, object, decision, reason, status, node)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

fn insert(
    c: &mut impl postgres::GenericClient,
    r: &AuditRecord,
    node: &str,
) -> Result<u64, postgres::Error> {
    c.execute(
        INSERT,
        &[
            &r.at,
            &r.who,
            &r.tenant,
            &r.action,
            &r.object,
            &r.decision,
            &r.reason,
            &i32::from(r.status),
            &node,
        ],
    )
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join("audit.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?;
        let (writer, queue) = mpsc::channel::<Pending>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("weir-audit".into())
            .spawn(move || write_loop(file, &shown, &queue))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AuditLog {
            path,
            store: Store::File(writer),
        })
    }

    /// The audit log of a cluster: the `weir_audit` table, spooled under
    /// `data_dir` while the database does not answer.
    pub fn shared(data_dir: &Path, db: Arc<Database>, node: String) -> Self {
        AuditLog {
            path: data_dir.join("audit-spool.jsonl"),
            store: Store::Database {
                db,
                node,
                spool: parking_lot::Mutex::new(()),
            },
        }
    }

    /// Appends `record` and returns once it is durable (synced to disk, or
    /// committed in the shared database).
    pub async fn append(&self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        match &self.store {
            Store::File(writer) => {
                let (done, synced) = oneshot::channel();
                if writer.send((line, done)).is_err() {
                    tracing::error!("the audit writer of {} stopped", self.path.display());
                    return;
                }
                let _ = synced.await;
            }
            Store::Database { db, node, .. } => {
                let (db, node, r) = (db.clone(), node.clone(), record.clone());
                let stored =
                    tokio::task::spawn_blocking(move || db.run(move |c| insert(c, &r, &node)))
                        .await
                        .unwrap_or_else(|e| Err(DatabaseError::Unavailable(e.to_string())));
                if let Err(e) = stored {
                    tracing::warn!("audit: {e}; spooled to {}", self.path.display());
                    self.spool(&line);
                }
            }
        }
    }

    fn spool(&self, line: &[u8]) {
        let Store::Database { spool, .. } = &self.store else {
            return;
        };
        let _held = spool.lock();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line).and_then(|()| f.sync_data()));
        if let Err(e) = written {
            tracing::error!(
                "cannot spool an audit record to {}: {e}",
                self.path.display()
            );
        }
    }

    /// Moves spooled records to the shared database (a cluster's heartbeat
    /// calls this once the database answers).
    pub fn flush_spool(&self) -> Result<usize, String> {
        let Store::Database { db, node, spool } = &self.store else {
            return Ok(0);
        };
        let _held = spool.lock();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) if !t.is_empty() => t,
            _ => return Ok(0),
        };
        let records: Vec<AuditRecord> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let n = records.len();
        let node = node.clone();
        db.run(move |c| {
            let mut tx = c.transaction()?;
            for r in &records {
                insert(&mut tx, r, &node)?;
            }
            tx.commit()
        })
        .map_err(|e| e.to_string())?;
        std::fs::remove_file(&self.path)
            .map_err(|e| format!("cannot remove {}: {e}", self.path.display()))?;
        Ok(n)
    }

    /// Records, oldest first, of `tenant` (every tenant for `*`), at most the
    /// last `limit`.
    pub fn read(&self, tenant: &str, limit: usize) -> Vec<AuditRecord> {
        if let Store::Database { db, .. } = &self.store {
            let (t, n) = (tenant.to_string(), limit as i64);
            let read = db.run(move |c| {
                let rows = c.query(
                    "SELECT at, who, tenant, action, object, decision, reason, status FROM weir_audit
                     WHERE $1 = '*' OR tenant = $1 ORDER BY id DESC LIMIT $2",
                    &[&t, &n],
                )?;
                let mut records = Vec::with_capacity(rows.len());
                for r in rows.iter().rev() {
                    records.push(AuditRecord {
                        at: r.try_get(0)?,
                        who: r.try_get(1)?,
                        tenant: r.try_get(2)?,
                        action: r.try_get(3)?,
                        object: r.try_get(4)?,
                        decision: r.try_get(5)?,
                        reason: r.try_get(6)?,
                        status: u16::try_from(r.try_get::<_, i32>(7)?).unwrap_or(0),
                    });
                }
                Ok(records)
            });
            match read {
                Ok(records) => return records,
                Err(e) => tracing::warn!("audit: {e}; showing this node's spool"),
            }
        }
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let records: Vec<AuditRecord> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
            .filter(|r| tenant == "*" || r.tenant == tenant)
            .collect();
        let skip = records.len().saturating_sub(limit);
        records.into_iter().skip(skip).collect()
    }
}

/// Writes what is queued, one sync per group of records, until the log is
/// dropped.
fn write_loop(mut file: std::fs::File, path: &str, queue: &mpsc::Receiver<Pending>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter());
        let mut bytes = Vec::new();
        for (line, _) in &group {
            bytes.extend_from_slice(line);
        }
        if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            tracing::error!("cannot write the audit log {path}: {e}");
        }
        for (_, done) in group {
            let _ = done.send(());
        }
    }
}
