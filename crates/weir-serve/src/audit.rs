//! The audit log: one JSON line per API request — who, when, what, on which
//! object, and the decision (allowed, or denied with the reason). Append-only;
//! admins read it back through the API.
//!
//! Records are written by a thread of their own (`weir-audit`): a request
//! hands its record over and awaits it being synced, without holding an API
//! thread through the `fsync` (which waits for the disk, and for every
//! other dirty page of the filesystem's journal). Records waiting together
//! are written and synced together (group commit).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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
    writer: mpsc::Sender<Pending>,
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
        Ok(AuditLog { path, writer })
    }

    /// Appends `record` and returns once it is synced to disk.
    pub async fn append(&self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let (done, synced) = oneshot::channel();
        if self.writer.send((line, done)).is_err() {
            tracing::error!("the audit writer of {} stopped", self.path.display());
            return;
        }
        let _ = synced.await;
    }

    /// Records, oldest first, of `tenant` (every tenant for `*`), at most the
    /// last `limit`.
    pub fn read(&self, tenant: &str, limit: usize) -> Vec<AuditRecord> {
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
