//! Every resource a pipeline names outside itself — files, URLs, brokers,
//! topics, consumer groups, transactional ids, environment variables,
//! client properties, modules — with the key that names it.
//!
//! This is the one walk a boundary check runs on (weir-serve's
//! `services/boundary.rs` holds a deployed pipeline to its tenant's policy
//! with it). A key that names a resource and is missing here is a hole in
//! that boundary: the integration test `boundary::every_key_is_walked`
//! enumerates the pipeline file's schema and fails on a key that is
//! neither walked here nor declared plain data.

use std::path::{Path, PathBuf};

use crate::config::{AvroConfig, PipelineConfig, SinkConfig, SourceConfig, TableConfig};

/// What a pipeline does with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One resource a key of the pipeline names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A file read or written by the server (`source.path`, `tables[0].path`, …).
    File { path: &'a Path, access: Access },
    /// A UDF module: a file for `weir run`, a registry name for `weir serve`.
    Module { name: &'a Path },
    /// A URL the server sends requests to (a schema registry).
    Url { url: &'a str },
    /// A Kafka bootstrap list the server connects to.
    Brokers { brokers: &'a str },
    /// A Kafka topic read or written.
    Topic { name: &'a str },
    /// A Kafka consumer group joined.
    Group { name: &'a str },
    /// A schema-registry subject read or written (one namespace for every
    /// user of the registry, like topics).
    Subject { name: &'a str },
    /// The `transactional.id` of an exactly-once producer (the default one
    /// too: it is derived from the tenant and the pipeline).
    TransactionalId { id: String },
    /// An environment variable of the server that is read.
    EnvVar { name: &'a str },
    /// A client property handed to librdkafka (`name = value`).
    Property { name: &'a str, value: &'a str },
}

/// A resource and the key that names it (`tables[1].brokers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<'a> {
    pub key: String,
    pub resource: Resource<'a>,
}

impl PipelineConfig {
    /// Every resource the pipeline names, each with its key.
    pub fn resources(&self) -> Vec<Named<'_>> {
        let mut walk = Walk(Vec::new());
        for (i, m) in self.udfs.iter().enumerate() {
            walk.add(format!("udfs[{i}]"), Resource::Module { name: m });
        }
        match &self.source {
            // Generated in the process: names nothing.
            SourceConfig::Nexmark { .. } => {}
            SourceConfig::File { path, .. } => walk.add(
                "source.path",
                Resource::File {
                    path,
                    access: Access::Read,
                },
            ),
            SourceConfig::Kafka {
                brokers,
                topics,
                group,
                properties,
                avro,
                ..
            } => {
                walk.add("source.brokers", Resource::Brokers { brokers });
                for (i, name) in topics.iter().enumerate() {
                    walk.add(format!("source.topics[{i}]"), Resource::Topic { name });
                }
                walk.add("source.group", Resource::Group { name: group });
                walk.properties("source.properties", properties);
                walk.avro("source.avro", avro.as_deref(), Access::Read);
            }
        }
        match &self.sink {
            SinkConfig::Stdout { .. } => {}
            SinkConfig::File { path, .. } => walk.add(
                "sink.path",
                Resource::File {
                    path,
                    access: Access::Write,
                },
            ),
            SinkConfig::Kafka {
                brokers,
                topic,
                properties,
                avro,
                ..
            } => {
                walk.add("sink.brokers", Resource::Brokers { brokers });
                walk.add("sink.topic", Resource::Topic { name: topic });
                walk.properties("sink.properties", properties);
                walk.avro("sink.avro", avro.as_deref(), Access::Read);
                if let Some(id) = self.sink.transactional_id(&self.tenant, &self.name) {
                    walk.add("sink.transactional_id", Resource::TransactionalId { id });
                }
            }
        }
        if let Some(name) = &self.errors.topic {
            walk.add("errors.topic", Resource::Topic { name });
        }
        if let Some(path) = &self.errors.path {
            walk.add(
                "errors.path",
                Resource::File {
                    path,
                    access: Access::Write,
                },
            );
        }
        for (i, table) in self.tables.iter().enumerate() {
            match table {
                TableConfig::File { path, .. } => walk.add(
                    format!("tables[{i}].path"),
                    Resource::File {
                        path,
                        access: Access::Read,
                    },
                ),
                TableConfig::Kafka {
                    brokers,
                    topic,
                    properties,
                    ..
                } => {
                    walk.add(
                        format!("tables[{i}].brokers"),
                        Resource::Brokers { brokers },
                    );
                    walk.add(
                        format!("tables[{i}].topic"),
                        Resource::Topic { name: topic },
                    );
                    walk.properties(&format!("tables[{i}].properties"), properties);
                }
            }
        }
        walk.0
    }
}

struct Walk<'a>(Vec<Named<'a>>);

impl<'a> Walk<'a> {
    fn add(&mut self, key: impl Into<String>, resource: Resource<'a>) {
        self.0.push(Named {
            key: key.into(),
            resource,
        });
    }

    fn properties(
        &mut self,
        key: &str,
        properties: &'a std::collections::BTreeMap<String, String>,
    ) {
        for (name, value) in properties {
            self.add(format!("{key}.{name}"), Resource::Property { name, value });
        }
    }

    fn avro(&mut self, key: &str, avro: Option<&'a AvroConfig>, access: Access) {
        let Some(avro) = avro else { return };
        if let Some(path) = &avro.schema {
            self.add(format!("{key}.schema"), Resource::File { path, access });
        }
        if let Some(url) = &avro.registry {
            self.add(format!("{key}.registry"), Resource::Url { url });
        }
        if let Some(name) = &avro.subject {
            self.add(format!("{key}.subject"), Resource::Subject { name });
        }
        if let Some(name) = &avro.password_env {
            self.add(format!("{key}.password_env"), Resource::EnvVar { name });
        }
    }
}

/// The path made absolute: its nearest existing ancestor canonicalized
/// (symbolic links and `..` resolved), the rest appended; `None` when the
/// part that does not exist yet contains `..`.
pub fn resolve_path(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(base) = std::fs::canonicalize(existing) {
            let mut resolved = base;
            for part in rest.iter().rev() {
                resolved.push(part);
            }
            return Some(resolved);
        }
        let name = existing.file_name()?;
        if name == ".." {
            return None;
        }
        rest.push(name.to_os_string());
        existing = existing.parent()?;
    }
}

/// The folders a pipeline's files must stay in (`serve.file_roots`, with
/// `{tenant}` already replaced); checked when a pipeline is deployed and
/// again each time a file is opened or reopened (a symbolic link swapped
/// after the deploy does not lead out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
    /// The policy entry to name in a refusal.
    key: String,
}

impl FileRoots {
    /// `roots` for `tenant` (`{tenant}` in a root becomes the tenant).
    pub fn for_tenant(roots: &[PathBuf], tenant: &str, key: &str) -> Self {
        FileRoots {
            roots: roots
                .iter()
                .map(|r| PathBuf::from(r.to_string_lossy().replace("{tenant}", tenant)))
                .collect(),
            key: key.to_string(),
        }
    }

    /// The resolved path when it lies inside one of the roots; otherwise
    /// an error naming `key` (the pipeline's key) and the policy entry.
    pub fn check(&self, key: &str, path: &Path) -> Result<PathBuf, String> {
        let refused = || {
            format!(
                "{key} `{}` is outside the folders this pipeline may use ({}); use a file inside them or Kafka, or ask an operator to allow the folder",
                path.display(),
                self.key
            )
        };
        let resolved = resolve_path(path).ok_or_else(refused)?;
        let inside = self
            .roots
            .iter()
            .any(|root| resolve_path(root).is_some_and(|root| resolved.starts_with(root)));
        if inside { Ok(resolved) } else { Err(refused()) }
    }

    /// The path to open for `key`: resolved and checked against `roots`
    /// when the pipeline has them (deployed through `weir serve`), as
    /// given otherwise.
    pub fn confine(roots: Option<&FileRoots>, key: &str, path: &Path) -> anyhow::Result<PathBuf> {
        match roots {
            Some(roots) => roots.check(key, path).map_err(anyhow::Error::msg),
            None => Ok(path.to_path_buf()),
        }
    }
}
