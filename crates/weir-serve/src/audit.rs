//! The audit log: one JSON line per API request — who, when, what, on which
//! object, and the decision (allowed, or denied with the reason). Append-only;
//! admins read it back through the API.

use parking_lot::Mutex;
use std::io::Write;
use std::path::{Path, PathBuf};

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

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join("audit.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn append(&self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock();
        if let Err(e) = f.write_all(&line).and_then(|()| f.sync_data()) {
            tracing::error!("cannot write the audit log {}: {e}", self.path.display());
        }
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
