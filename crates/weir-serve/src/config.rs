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
    /// The cluster's shared control plane, `postgres://user@host/db`
    /// (password from `WEIR_DATABASE_PASSWORD` when the URL has none).
    /// Unset: a single node, its registry in SQLite under `data_dir`.
    pub database: Option<String>,
    /// This node's name in the cluster (default: hostname and listen port).
    pub node: Option<String>,
    /// How often a node writes its heartbeat and renews its leases.
    pub heartbeat_ms: u64,
    /// How long a node keeps a pipeline that cannot be shared (a file
    /// source) without renewing its lease; another node takes it after.
    pub lease_ms: u64,
    /// How often a node compares what it runs with what is stored (changes
    /// arrive at once by notification; this catches any it missed).
    pub reconcile_ms: u64,
    /// The PostgreSQL wire protocol on this address (`psql -h 127.0.0.1
    /// -p 5433 -U <tenant>`, password = an API token). Unset: off.
    pub postgres_listen: Option<String>,
    /// Arrow Flight SQL on this address (ADBC's `grpc://127.0.0.1:5434`,
    /// user = tenant, password = an API token). Unset: off.
    pub flight_sql_listen: Option<String>,
    /// TLS for `postgres_listen` and `flight_sql_listen`: the server's
    /// certificate chain and its private key (PEM files). Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Accept the token as a cleartext password (no TLS yet): required
    /// with `postgres_listen` and `flight_sql_listen`, which must then be
    /// loopback addresses.
    pub allow_insecure_password: bool,
    /// PostgreSQL connections open at once (every tenant's); one more is
    /// closed at once.
    pub postgres_max_connections: usize,
    /// Flight SQL connections open at once (every tenant's); one more is
    /// closed at once.
    pub flight_sql_max_connections: usize,
    /// Compile the JavaScript and Python runtimes when the server starts
    /// (into the code cache), so that a tenant's first `CREATE FUNCTION …
    /// LANGUAGE javascript|python` does not spend its statement's deadline
    /// on it; `/readyz` answers 503 until they are compiled.
    pub warm_languages: bool,
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
            database: None,
            node: None,
            heartbeat_ms: 1000,
            lease_ms: 10_000,
            reconcile_ms: 5000,
            postgres_listen: None,
            flight_sql_listen: None,
            tls_cert: None,
            tls_key: None,
            allow_insecure_password: false,
            postgres_max_connections: 64,
            flight_sql_max_connections: 64,
            warm_languages: true,
        }
    }
}

impl ServeConfig {
    /// This node's name: `serve.node`, else hostname and listen port.
    pub fn node_name(&self) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "weir".to_string());
        let port = self.listen.rsplit(':').next().unwrap_or("8080");
        format!("{host}:{port}")
    }

    /// The listeners' TLS identity, when `tls_cert` and `tls_key` are set.
    ///
    /// # Errors
    /// One of the two set without the other, or [`crate::tls::Tls::load`]'s.
    pub fn tls(&self) -> Result<Option<crate::tls::Tls>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => crate::tls::Tls::load(cert, key).map(Some),
            _ => Err(
                "serve.tls_cert and serve.tls_key go together: the certificate and its private key"
                    .to_string(),
            ),
        }
    }

    /// The cluster timings hold together: a lease outlives a few heartbeats.
    pub fn check_cluster(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 || self.reconcile_ms == 0 {
            return Err("serve.heartbeat_ms and serve.reconcile_ms must be above 0".to_string());
        }
        if self.lease_ms < 3 * self.heartbeat_ms {
            return Err(format!(
                "serve.lease_ms ({}) must be at least 3 × serve.heartbeat_ms ({}): a lease is renewed by heartbeats",
                self.lease_ms, self.heartbeat_ms
            ));
        }
        Ok(())
    }
}

/// The address of a listener that takes API tokens as passwords (`key`:
/// `serve.postgres_listen`, `serve.flight_sql_listen`), checked before
/// anything listens. With TLS (`tls`: `serve.tls_cert` set) any address;
/// without, tokens would travel in clear: only on loopback, and only when
/// the operator said so.
///
/// # Errors
/// Not an address; without TLS, not loopback or `allow_insecure_password`
/// unset.
pub fn password_listener(
    key: &str,
    listen: Option<&str>,
    example: &str,
    allow_insecure_password: bool,
    tls: bool,
) -> Result<Option<std::net::SocketAddr>, String> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("{key} = \"{listen}\" is not an address like \"{example}\": {e}"))?;
    if tls {
        return Ok(Some(addr));
    }
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{key} = \"{listen}\": tokens would cross the network in clear text; set serve.tls_cert and serve.tls_key (TLS), or listen on loopback (127.0.0.1)"
        ));
    }
    if !allow_insecure_password {
        return Err(format!(
            "{key} = \"{listen}\" takes the token as a cleartext password without TLS; set serve.tls_cert and serve.tls_key, or serve.allow_insecure_password = true to accept that on loopback"
        ));
    }
    Ok(Some(addr))
}
