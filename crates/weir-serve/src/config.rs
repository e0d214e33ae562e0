//! `[serve]` of `config/weir.toml`: where `weir serve` listens, keeps its
//! data, whom it lets in and how fast.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::auth::TokenConfig;

/// `[serve]` in `config/weir.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: String,
    /// Registry database, module files and audit log.
    pub data_dir: PathBuf,
    /// Largest request body (a module upload), in bytes.
    pub max_body_bytes: usize,
    /// Bearer tokens, stored as sha256.
    pub tokens: Vec<TokenConfig>,
    /// Directories that pipelines deployed through the API may read and
    /// write files in (file sources, file sinks, dead-letter files). Empty:
    /// no file access at all — tenants must not reach the server's files.
    pub file_roots: Vec<PathBuf>,
    /// Requests per second each token may make (sustained); 0 = unlimited.
    pub requests_per_s: u32,
    /// Requests a token may make in a burst above `requests_per_s`.
    pub burst_requests: u32,
    /// Serve `/metrics` on this address only (e.g. a loopback or internal
    /// port for Prometheus), not on `listen`: the metrics name every
    /// tenant's pipelines and UDFs. Unset: `/metrics` is on `listen`.
    pub metrics_listen: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".to_string(),
            data_dir: PathBuf::from("weir-data"),
            max_body_bytes: 16 << 20,
            tokens: Vec::new(),
            file_roots: Vec::new(),
            requests_per_s: 20,
            burst_requests: 100,
            metrics_listen: None,
        }
    }
}
