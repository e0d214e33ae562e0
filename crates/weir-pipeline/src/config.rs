//! Pipelines declared in TOML (`config/pipelines/*.toml`, `docs/pipelines.md`).
//! Unknown keys are rejected naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::abi::AbiType;

/// One pipeline: a source, UDF modules, one SQL query, a sink, an error policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    /// The owning tenant (policy arrives with the tenancy work).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub source: SourceConfig,
    /// UDF modules (.wasm / .wat), relative to the pipeline file.
    #[serde(default)]
    pub udfs: Vec<PathBuf>,
    /// `SELECT … FROM source …`
    pub sql: String,
    pub sink: SinkConfig,
    #[serde(default)]
    pub errors: ErrorConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Event time: watermarks and lateness of windowed queries.
    #[serde(default)]
    pub watermark: WatermarkConfig,
    /// Window state: how often folded windows are checkpointed.
    #[serde(default)]
    pub state: StateConfig,
    /// Lookup tables the SQL may JOIN (`[[tables]]`).
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Not a key of the file: the folders its files must stay in, set by
    /// `weir serve` for a deployed pipeline (checked again at every open
    /// and reload of a file); `None` for `weir run`.
    #[serde(skip)]
    #[schemars(skip)]
    pub file_roots: Option<crate::resources::FileRoots>,
}

/// `[[tables]]`: reference data registered beside `source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TableConfig {
    /// A CSV (with a header), NDJSON or Parquet file, by extension;
    /// reloaded when it changes.
    File { name: String, path: PathBuf },
    /// A compacted topic: the latest value per key, kept up to date.
    Kafka {
        name: String,
        brokers: String,
        topic: String,
        format: Format,
        #[serde(default)]
        fields: Vec<FieldConfig>,
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

impl TableConfig {
    pub fn name(&self) -> &str {
        match self {
            TableConfig::File { name, .. } | TableConfig::Kafka { name, .. } => name,
        }
    }
}

/// `[state]`: the changelog of a windowed pipeline over Kafka whose
/// windows fold their rows (docs/pipelines.md, "Window state and
/// recovery").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// How often the open windows' state is written to the changelog topic
    /// `<source topic>.weir-changelog.<pipeline>` (0: never; a restart
    /// then replays from the oldest open window's first record).
    pub checkpoint_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            checkpoint_ms: 1000,
        }
    }
}

/// `[watermark]`: how far behind the largest event time seen records may
/// arrive, when a quiet partition stops holding windows open, and how long
/// after its end a window still takes records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WatermarkConfig {
    /// Bounded out-of-orderness: the watermark of a partition is its
    /// largest event time less this.
    pub max_out_of_order_ms: u64,
    /// A partition without records for this long no longer holds the
    /// watermark back (0 = never idle).
    pub idle_partition_ms: u64,
    /// A window is emitted once the watermark passes its end plus this;
    /// records for it until then are still counted.
    pub allowed_lateness_ms: u64,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_out_of_order_ms: 0,
            idle_partition_ms: 30_000,
            allowed_lateness_ms: 0,
        }
    }
}

fn default_tenant() -> String {
    "default".to_string()
}

/// Record payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, columns in schema order, no header.
    Csv,
    /// The payload as one `value` column (binary).
    Raw,
    /// One Avro datum per record: plain, or in the Confluent wire format
    /// with a schema registry (`[source.avro]`, `[sink.avro]`).
    Avro,
}

/// `[source.avro]` / `[sink.avro]`: where Avro schemas come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AvroConfig {
    /// An `.avsc` file. Plain Avro: the writer schema. With a registry: a
    /// source's reader schema (default: the subject's latest version), a
    /// sink's schema to register (default: derived from the query output).
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// A schema registry URL: records in the Confluent wire format.
    #[serde(default)]
    pub registry: Option<String>,
    /// The registry subject (default `<topic>-value`).
    #[serde(default)]
    pub subject: Option<String>,
    /// HTTP basic auth with the registry.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// An environment variable holding the password (kept out of the file).
    #[serde(default)]
    pub password_env: Option<String>,
}

impl AvroConfig {
    /// The basic-auth password in force, if any.
    pub fn password(&self) -> Result<Option<String>, String> {
        match (&self.password, &self.password_env) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
                format!("avro.password_env names `{var}`, which is not set in the environment")
            }),
            (None, None) => Ok(None),
        }
    }
}

/// Where a Kafka consumer group starts when it has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}

/// Kafka metadata exposed as columns `_key`, `_partition`, `_offset`,
/// `_timestamp`, `_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metadata {
    Key,
    Partition,
    Offset,
    Timestamp,
    Headers,
}

/// A declared column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub name: String,
    /// An ABI type name: int64, float64, utf8, boolean, timestamp_us, …
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// A file read as a stream of records (NDJSON lines or CSV rows).
    File {
        path: PathBuf,
        format: Format,
        #[serde(default)]
        fields: Vec<FieldConfig>,
        /// CSV only: whether the first line is a header (skipped).
        #[serde(default)]
        header: bool,
    },
    Kafka {
        brokers: String,
        topics: Vec<String>,
        group: String,
        #[serde(default)]
        start: StartPosition,
        format: Format,
        #[serde(default)]
        fields: Vec<FieldConfig>,
        #[serde(default)]
        metadata: Vec<Metadata>,
        /// librdkafka properties (SASL/TLS, tuning). Values are masked in logs.
        #[serde(default)]
        properties: BTreeMap<String, String>,
        /// No partitions assigned, or lag and no record received, for this
        /// long: warn, and say so in status and metrics. 0 = never.
        #[serde(default = "default_stall_warn_ms")]
        stall_warn_ms: u64,
        /// Where Avro schemas come from (`format = "avro"`).
        #[serde(default)]
        avro: Option<Box<AvroConfig>>,
        /// A windowed query or a join of the stream with itself: re-key the
        /// records by its grouping (or joined) columns through an internal
        /// topic, so that the members of the group each hold whole windows,
        /// or every row a join pairs, of their keys (`repartition.rs`).
        #[serde(default)]
        repartition: bool,
    },
    /// The Nexmark benchmark's events, generated (`source/nexmark.rs`).
    Nexmark {
        /// How many events, then the source ends.
        events: u64,
        /// Events per second of event time (their spacing, not a pace).
        #[serde(default = "default_nexmark_rate")]
        rate: u64,
        /// The same seed gives the same events.
        #[serde(default)]
        seed: u64,
        /// The event stream's columns (fixed).
        #[serde(skip, default = "crate::source::nexmark::fields")]
        #[schemars(skip)]
        fields: Vec<FieldConfig>,
    },
}

fn default_nexmark_rate() -> u64 {
    10_000
}

fn default_stall_warn_ms() -> u64 {
    60_000
}

impl SourceConfig {
    pub fn format(&self) -> Format {
        match self {
            SourceConfig::File { format, .. } | SourceConfig::Kafka { format, .. } => *format,
            SourceConfig::Nexmark { .. } => Format::Json,
        }
    }

    pub fn fields(&self) -> &[FieldConfig] {
        match self {
            SourceConfig::File { fields, .. }
            | SourceConfig::Kafka { fields, .. }
            | SourceConfig::Nexmark { fields, .. } => fields,
        }
    }

    /// See `source.stall_warn_ms` (0 for file sources: they cannot stall).
    pub fn stall_warn_ms(&self) -> u64 {
        match self {
            SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => 0,
            SourceConfig::Kafka { stall_warn_ms, .. } => *stall_warn_ms,
        }
    }

    pub fn metadata(&self) -> &[Metadata] {
        match self {
            SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => &[],
            SourceConfig::Kafka { metadata, .. } => metadata,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// Records to standard output, one per line.
    Stdout {
        #[serde(default = "json")]
        format: Format,
    },
    /// Records appended to a file, one per line.
    File {
        path: PathBuf,
        #[serde(default = "json")]
        format: Format,
    },
    Kafka {
        brokers: String,
        topic: String,
        #[serde(default = "json")]
        format: Format,
        /// Output column whose value becomes the record key.
        #[serde(default)]
        key: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, String>,
        /// Where the Avro schema comes from (`format = "avro"`).
        #[serde(default)]
        avro: Option<Box<AvroConfig>>,
        /// At-least-once (the default) or exactly-once (Kafka transactions).
        #[serde(default)]
        delivery: Delivery,
        /// The `transactional.id` of an exactly-once sink (default
        /// `weir.<tenant>.<pipeline>`); one per process of the pipeline.
        #[serde(default)]
        transactional_id: Option<String>,
    },
}

/// `sink.delivery`: what a crash may do to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets are committed after the sink acknowledged: a crash may
    /// deliver the last micro-batches again, never lose them.
    #[default]
    AtLeastOnce,
    /// Outputs, dead letters and consumed offsets of each micro-batch in one
    /// Kafka transaction; read them with `isolation.level=read_committed`.
    ExactlyOnce,
}

fn json() -> Format {
    Format::Json
}

impl SinkConfig {
    /// Whether `delivery = "exactly-once"` (Kafka transactions).
    pub fn exactly_once(&self) -> bool {
        matches!(
            self,
            SinkConfig::Kafka {
                delivery: Delivery::ExactlyOnce,
                ..
            }
        )
    }

    /// The transactional id of an exactly-once sink (`None`: at-least-once).
    pub fn transactional_id(&self, tenant: &str, pipeline: &str) -> Option<String> {
        match self {
            SinkConfig::Kafka {
                delivery: Delivery::ExactlyOnce,
                transactional_id,
                ..
            } => Some(
                transactional_id
                    .clone()
                    .unwrap_or_else(|| format!("weir.{tenant}.{pipeline}")),
            ),
            _ => None,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            SinkConfig::Stdout { format }
            | SinkConfig::File { format, .. }
            | SinkConfig::Kafka { format, .. } => *format,
        }
    }
}

/// What happens to a record that fails to decode or makes a UDF fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Stop the pipeline with the error (nothing is committed past it).
    Fail,
    /// Send the record, with headers saying why, to the dead-letter target.
    #[default]
    DeadLetter,
    /// Drop the record and count it.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ErrorConfig {
    #[serde(default)]
    pub policy: ErrorPolicy,
    /// Dead-letter Kafka topic (Kafka sources).
    #[serde(default)]
    pub topic: Option<String>,
    /// Dead-letter file, one JSON object per record (file sources, or local runs).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Records per micro-batch at most.
    pub max_records: usize,
    /// How long a partial micro-batch may wait for more records.
    pub max_linger_ms: u64,
    /// Micro-batches handed to the sink and not yet acknowledged, at most.
    pub max_in_flight_batches: usize,
    /// Payload bytes in flight at most.
    pub max_in_flight_bytes: usize,
    /// Micro-batches transformed at once (0: one per core), at most the
    /// tenant's `max_concurrent_calls` and the in-flight bound.
    pub workers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 4096,
            max_linger_ms: 100,
            max_in_flight_batches: 8,
            max_in_flight_bytes: 64 << 20,
            workers: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineConfigError {
    #[error("cannot read pipeline file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pipeline file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl PipelineConfig {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: PipelineConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`Self::from_file`], but a json or csv source may leave
    /// `fields` out (`weir run --infer` fills them, then calls
    /// [`Self::validate`]).
    pub fn from_file_to_infer(path: &Path) -> Result<Self, PipelineConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| PipelineConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let invalid = |message| PipelineConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut config: PipelineConfig =
            toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.validate_with(false).map_err(invalid)?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// The JSON schema of a pipeline file: every key, with its docs.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(PipelineConfig)).unwrap_or_default()
    }

    /// Whether the query reads an event-time window.
    pub fn is_windowed(&self) -> bool {
        crate::window::spec::reads_a_window(&self.sql)
    }

    /// Whether the query keeps state across micro-batches (open windows,
    /// or the rows of a join of the stream with itself): the state must
    /// see every partition of the source, so one process runs it at a time
    /// (`weir serve` clusters: the lease holder), unless it is re-keyed
    /// ([`Self::repartitions`]).
    pub fn is_stateful(&self) -> bool {
        self.is_windowed() || crate::join::spec::joins_the_stream(&self.sql)
    }

    /// Whether a stateful query's records are re-keyed through an internal
    /// topic (`source.repartition`): then every member of the group holds
    /// whole windows, or all the rows a join pairs, of its keys, and the
    /// pipeline may run on several at once.
    pub fn repartitions(&self) -> bool {
        matches!(
            self.source,
            SourceConfig::Kafka {
                repartition: true,
                ..
            }
        ) && self.is_stateful()
    }

    /// Whether the source is json or csv and declares no `fields`.
    pub fn needs_fields(&self) -> bool {
        matches!(self.source.format(), Format::Json | Format::Csv)
            && self.source.fields().is_empty()
    }

    /// Most UDF modules one pipeline may load (each holds instances).
    pub const MAX_UDFS: usize = 32;

    /// Reads a pipeline file; relative paths inside it are resolved against
    /// the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, PipelineConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| PipelineConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let invalid = |message| PipelineConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut config = Self::from_toml(&text).map_err(invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.udfs.iter_mut().for_each(fix);
        if let SourceConfig::File { path, .. } = &mut self.source {
            fix(path);
        }
        if let SinkConfig::File { path, .. } = &mut self.sink {
            fix(path);
        }
        for avro in [self.source.avro_mut(), self.sink.avro_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(p) = &mut avro.schema {
                fix(p);
            }
        }
        if let Some(p) = &mut self.errors.path {
            fix(p);
        }
        for t in &mut self.tables {
            if let TableConfig::File { path, .. } = t {
                fix(path);
            }
        }
    }

    /// Checks the whole file (every key's value, and that keys agree).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_with(true)
    }

    fn validate_with(&self, need_fields: bool) -> Result<(), String> {
        if let SourceConfig::Nexmark { events, rate, .. } = &self.source {
            // Event times stay within a timestamp's range.
            if !(1..=1_000_000_000).contains(rate) {
                return Err(format!(
                    "source.rate = {rate}: Nexmark events per second of event time are 1 to 1 000 000 000"
                ));
            }
            if *events > 1_000_000_000_000 {
                return Err(format!(
                    "source.events = {events}: at most 1 000 000 000 000 Nexmark events"
                ));
            }
        }
        if self.udfs.len() > Self::MAX_UDFS {
            return Err(format!(
                "udfs lists {} modules; a pipeline may load at most {}",
                self.udfs.len(),
                Self::MAX_UDFS
            ));
        }
        if let Some((i, dup)) = self
            .udfs
            .iter()
            .enumerate()
            .find(|(i, u)| self.udfs[..*i].contains(u))
        {
            return Err(format!(
                "udfs[{i}] `{}` is listed twice; each module is loaded once",
                dup.display()
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(format!(
                "name `{}` must be letters, digits, `-` and `_`",
                self.name
            ));
        }
        let format = self.source.format();
        let fields = self.source.fields();
        if need_fields && matches!(format, Format::Json | Format::Csv) && fields.is_empty() {
            return Err("source.fields must declare the record's columns for json and csv (`weir run --infer` reads a sample and prints them)".into());
        }
        self.validate_avro()?;
        self.validate_tables()?;
        for (i, f) in fields.iter().enumerate() {
            if AbiType::from_name(&f.ty).is_none() {
                return Err(format!(
                    "source.fields[{i}].type `{}` is unknown; use one of {}",
                    f.ty,
                    AbiType::ALL.map(|t| t.name()).join(", ")
                ));
            }
        }
        if let SourceConfig::Kafka { topics, .. } = &self.source
            && topics.is_empty()
        {
            return Err("source.topics must name at least one topic".into());
        }
        if self.errors.policy == ErrorPolicy::DeadLetter
            && self.errors.topic.is_none()
            && self.errors.path.is_none()
        {
            return Err("errors.policy = \"dead-letter\" needs errors.topic or errors.path".into());
        }
        self.validate_delivery()?;
        let b = &self.batch;
        if b.max_records == 0 || b.max_in_flight_batches == 0 || b.max_in_flight_bytes == 0 {
            return Err("batch.max_records, batch.max_in_flight_batches and batch.max_in_flight_bytes must be positive".into());
        }
        Ok(())
    }
}

impl PipelineConfig {
    fn validate_tables(&self) -> Result<(), String> {
        for (i, t) in self.tables.iter().enumerate() {
            let name = t.name();
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "tables[{i}].name `{name}` must be letters, digits and `_`, not starting with a digit"
                ));
            }
            if name.eq_ignore_ascii_case("source") {
                return Err(format!(
                    "tables[{i}].name `source` is the stream itself; name the table otherwise"
                ));
            }
            if self.tables[..i].iter().any(|o| o.name() == name) {
                return Err(format!("tables[{i}].name `{name}` is used twice"));
            }
            if let TableConfig::Kafka { format, fields, .. } = t {
                match format {
                    Format::Json | Format::Csv if fields.is_empty() => {
                        return Err(format!(
                            "tables[{i}] (`{name}`) needs `fields` for its json or csv values"
                        ));
                    }
                    Format::Avro => {
                        return Err(format!(
                            "tables[{i}] (`{name}`): a topic table reads json, csv or raw values"
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn validate_delivery(&self) -> Result<(), String> {
        let SinkConfig::Kafka {
            delivery,
            transactional_id,
            ..
        } = &self.sink
        else {
            return Ok(());
        };
        if *delivery == Delivery::AtLeastOnce {
            return match transactional_id {
                Some(_) => Err(
                    "sink.transactional_id is set but sink.delivery is not \"exactly-once\"".into(),
                ),
                None => Ok(()),
            };
        }
        if !matches!(self.source, SourceConfig::Kafka { .. }) {
            return Err("sink.delivery = \"exactly-once\" needs a Kafka source: its offsets are committed in the sink's transaction".into());
        }
        if self.errors.path.is_some() {
            return Err("sink.delivery = \"exactly-once\": dead letters must go to a Kafka topic (errors.topic), in the same transaction; a file (errors.path) cannot take part".into());
        }
        if transactional_id.as_deref().is_some_and(str::is_empty) {
            return Err("sink.transactional_id must not be empty".into());
        }
        Ok(())
    }

    fn validate_avro(&self) -> Result<(), String> {
        let check = |side: &str, format: Format, avro: Option<&AvroConfig>, kafka: bool| match (
            format, avro,
        ) {
            (Format::Avro, _) if !kafka => Err(format!(
                "{side}.format = \"avro\" needs a Kafka {side} (one datum per record); files hold one record per line"
            )),
            (Format::Avro, None) if side == "source" => Err(format!(
                "{side}.format = \"avro\" needs [{side}.avro] with `schema` (an .avsc file) or `registry` (a schema registry URL)"
            )),
            (Format::Avro, Some(a))
                if side == "source" && a.schema.is_none() && a.registry.is_none() =>
            {
                Err(format!(
                    "[{side}.avro] needs `schema` (an .avsc file) or `registry` (a schema registry URL)"
                ))
            }
            (Format::Avro, _) => Ok(()),
            (_, Some(_)) => Err(format!(
                "[{side}.avro] is set but {side}.format is not \"avro\""
            )),
            (_, None) => Ok(()),
        };
        let source_kafka = matches!(self.source, SourceConfig::Kafka { .. });
        check(
            "source",
            self.source.format(),
            self.source.avro(),
            source_kafka,
        )?;
        let sink_kafka = matches!(self.sink, SinkConfig::Kafka { .. });
        check("sink", self.sink.format(), self.sink.avro(), sink_kafka)?;
        if self.source.format() == Format::Avro && !self.source.fields().is_empty() {
            return Err("source.fields must be empty with format = \"avro\": the columns are the Avro schema's fields".into());
        }
        Ok(())
    }
}

impl SourceConfig {
    /// Replaces the declared fields (`weir run --infer`).
    pub fn set_fields(&mut self, new: Vec<FieldConfig>) {
        match self {
            SourceConfig::File { fields, .. } | SourceConfig::Kafka { fields, .. } => *fields = new,
            SourceConfig::Nexmark { .. } => {}
        }
    }

    pub fn avro(&self) -> Option<&AvroConfig> {
        match self {
            SourceConfig::Kafka { avro, .. } => avro.as_deref(),
            SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => None,
        }
    }

    fn avro_mut(&mut self) -> Option<&mut AvroConfig> {
        match self {
            SourceConfig::Kafka { avro, .. } => avro.as_deref_mut(),
            SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => None,
        }
    }
}

impl SinkConfig {
    pub fn avro(&self) -> Option<&AvroConfig> {
        match self {
            SinkConfig::Kafka { avro, .. } => avro.as_deref(),
            _ => None,
        }
    }

    fn avro_mut(&mut self) -> Option<&mut AvroConfig> {
        match self {
            SinkConfig::Kafka { avro, .. } => avro.as_deref_mut(),
            _ => None,
        }
    }
}

/// Properties as they may be logged or shown: secret values redacted by
/// weir-core's one rule (`secrets::shown`).
pub fn masked(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(k, v)| (k.clone(), weir_core::secrets::shown(k, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "trips"
sql = "SELECT * FROM source"
[source]
kind = "file"
path = "trips.ndjson"
format = "json"
fields = [{ name = "id", type = "int64" }]
[sink]
kind = "stdout"
[errors]
policy = "skip"
"#;

    #[test]
    fn parses_and_applies_defaults() {
        let c = PipelineConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.tenant, "default");
        assert_eq!(c.batch, BatchConfig::default());
        assert_eq!(c.sink.format(), Format::Json);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = PipelineConfig::from_toml(&EXAMPLE.replace("policy", "polcy")).unwrap_err();
        assert!(err.contains("polcy"), "{err}");
        let err =
            PipelineConfig::from_toml(&EXAMPLE.replace("\"int64\"", "\"int65\"")).unwrap_err();
        assert!(err.contains("source.fields[0].type `int65`"), "{err}");
        let err =
            PipelineConfig::from_toml(&EXAMPLE.replace("\"skip\"", "\"dead-letter\"")).unwrap_err();
        assert!(err.contains("needs errors.topic or errors.path"), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        let mut p = BTreeMap::new();
        p.insert("sasl.password".to_string(), "hunter2".to_string());
        p.insert("ssl.ca.location".to_string(), "/etc/ca.pem".to_string());
        p.insert("linger.ms".to_string(), "5".to_string());
        let m = masked(&p);
        assert_eq!(m["sasl.password"], weir_core::secrets::REDACTED);
        assert_eq!(m["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(m["linger.ms"], "5");
    }
}
