//! `weir replay`: re-send dead letters, after a fix, to their source topic
//! (or another topic), or append their payloads to a file.
//!
//! Every letter is read and parsed before anything is sent, so a malformed
//! dead-letter file stops the replay before it starts. Letters that arrive
//! on the dead-letter topic while replaying (say, the same records failing
//! again) are not read: the replay stops at each partition's end as of its
//! start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::pipeline::dead_letter::{HeaderList, Letter, kafka_letter, parse_line};
use crate::pipeline::kafka::{client_config, scrub};

/// Metadata and watermark requests give up after this long.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading the dead-letter topic fails when no record (or end of partition)
/// arrived for this long while partitions are still below their end.
const READ_STALL: Duration = Duration::from_secs(30);
/// The prefix of the headers weir adds to a dead letter.

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The dead-letter topic to read: every partition, from the beginning up
    /// to its end when the replay starts. Needs --brokers.
    #[arg(long, value_name = "DLQ")]
    pub topic: Option<String>,
    /// The brokers of --topic; letters are re-sent there too unless
    /// --to-brokers says otherwise.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// A dead-letter file (one JSON object per line) to read instead.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Re-send every letter to this topic instead of its source topic.
    #[arg(long, value_name = "TOPIC")]
    pub to_topic: Option<String>,
    /// The brokers to re-send to (default: --brokers; required with --file
    /// unless --to-file).
    #[arg(long, value_name = "HOST:PORT")]
    pub to_brokers: Option<String>,
    /// Append each letter's payload as one line to this file instead (for
    /// pipelines with a file source).
    #[arg(long, value_name = "OUT")]
    pub to_file: Option<PathBuf>,
    /// Only letters of this stage.
    #[arg(long, value_parser = ["decode", "transform", "sink"])]
    pub stage: Option<String>,
    /// Only letters whose failing UDF is this one (exact name).
    #[arg(long, value_name = "NAME")]
    pub udf: Option<String>,
    /// Only letters whose error contains this text.
    #[arg(long, value_name = "TEXT")]
    pub error_contains: Option<String>,
    /// Only letters of this pipeline (exact name).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// Report what would be replayed; send and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A librdkafka property for both the reading and the sending client
    /// (SASL, TLS, tuning); repeat for several.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

/// Where the dead letters come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Topic { topic: String, brokers: String },
    File(PathBuf),
}

/// Where replayed letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    /// Append the payloads, one per line.
    File(PathBuf),
    /// Produce to `topic`, or to each letter's source topic (and partition).
    Kafka {
        brokers: String,
        topic: Option<String>,
    },
}

/// The `--stage`, `--udf`, `--error-contains` and `--pipeline` filters: a
/// letter matches when it matches every one given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Filter {
    stage: Option<String>,
    udf: Option<String>,
    error_contains: Option<String>,
    pipeline: Option<String>,
}

impl Filter {
    fn from_args(args: &ReplayArgs) -> Self {
        Filter {
            stage: args.stage.clone(),
            udf: args.udf.clone(),
            error_contains: args.error_contains.clone(),
            pipeline: args.pipeline.clone(),
        }
    }

    fn matches(&self, letter: &Letter) -> bool {
        fn exact(want: &Option<String>, got: &Option<String>) -> bool {
            want.as_ref()
                .is_none_or(|w| got.as_deref() == Some(w.as_str()))
        }
        exact(&self.stage, &letter.stage)
            && exact(&self.udf, &letter.udf)
            && exact(&self.pipeline, &letter.pipeline)
            && self.error_contains.as_ref().is_none_or(|text| {
                letter
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains(text.as_str()))
            })
    }
}

/// What to do with one letter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    FilteredOut,
    /// Not replayed, and why; `to` is where it would have gone, if known.
    Skip {
        reason: String,
        to: Option<String>,
    },
    /// Re-send to `to` (a topic, or the file), at `partition` when given.
    Replay {
        to: String,
        partition: Option<i32>,
    },
}

/// Whether `name` can be a Kafka topic (a file source's "topic" is its path).
fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn decide(letter: &Letter, filter: &Filter, destination: &Destination) -> Decision {
    if !filter.matches(letter) {
        return Decision::FilteredOut;
    }
    if let Some(problem) = &letter.invalid {
        return Decision::Skip {
            reason: problem.clone(),
            to: None,
        };
    }
    let target: Result<(String, Option<i32>), String> = match destination {
        Destination::File(path) => Ok((path.display().to_string(), None)),
        Destination::Kafka {
            topic: Some(topic), ..
        } => Ok((topic.clone(), None)),
        Destination::Kafka { topic: None, .. } => match &letter.source_topic {
            Some(topic) if is_topic_name(topic) => {
                Ok((topic.clone(), letter.source_partition.filter(|p| *p >= 0)))
            }
            Some(source) => Err(format!(
                "its source `{source}` is not a Kafka topic (a pipeline with a file source?): \
                 replay it with --to-file, or give --to-topic"
            )),
            None => Err("no source topic is recorded: give --to-topic".to_string()),
        },
    };
    let to = target.as_ref().ok().map(|(to, _)| to.clone());
    if letter.truncated {
        let kept = letter.payload.as_ref().map_or(0, Vec::len);
        let how = match letter.original_len {
            Some(len) => format!("holds {kept} of the payload's {len} bytes"),
            None => format!("holds {kept} bytes of a longer payload"),
        };
        return Decision::Skip {
            reason: format!(
                "truncated: the dead letter {how}; re-process the original record ({}) instead",
                letter.source()
            ),
            to,
        };
    }
    let (to, partition) = match target {
        Ok(target) => target,
        Err(reason) => return Decision::Skip { reason, to: None },
    };
    if let Destination::File(_) = destination {
        match &letter.payload {
            None => {
                return Decision::Skip {
                    reason: "no payload: there is no line to append".to_string(),
                    to: Some(to),
                };
            }
            Some(p) if p.contains(&b'\n') => {
                return Decision::Skip {
                    reason: "the payload contains a line break: appended, it would become \
                             several records"
                        .to_string(),
                    to: Some(to),
                };
            }
            Some(_) => {}
        }
    }
    Decision::Replay { to, partition }
}

/// Checks the flags: where to read, where to send.
fn plan(args: &ReplayArgs) -> anyhow::Result<(Input, Destination)> {
    for (flag, value) in [
        ("--topic", &args.topic),
        ("--brokers", &args.brokers),
        ("--to-topic", &args.to_topic),
        ("--to-brokers", &args.to_brokers),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            bail!("{flag} is empty");
        }
    }
    let input = match (&args.topic, &args.file) {
        (Some(_), Some(_)) => {
            bail!(
                "give either --topic (a dead-letter topic) or --file (a dead-letter file), not both"
            )
        }
        (None, None) => {
            bail!(
                "give the dead letters to replay: --topic DLQ --brokers HOST:PORT, or --file PATH"
            )
        }
        (Some(topic), None) => {
            let Some(brokers) = &args.brokers else {
                bail!("--topic {topic} needs --brokers: the brokers the dead-letter topic is on")
            };
            Input::Topic {
                topic: topic.clone(),
                brokers: brokers.clone(),
            }
        }
        (None, Some(path)) => {
            if args.brokers.is_some() {
                bail!(
                    "--brokers goes with --topic; with --file, give the brokers to re-send to \
                     as --to-brokers"
                )
            }
            Input::File(path.clone())
        }
    };
    let destination = match &args.to_file {
        Some(path) => {
            if args.to_topic.is_some() || args.to_brokers.is_some() {
                bail!(
                    "--to-file appends the payloads to a file: drop --to-topic and --to-brokers, \
                     or drop --to-file to re-send to Kafka"
                )
            }
            Destination::File(path.clone())
        }
        None => {
            let brokers = match (&args.to_brokers, &input) {
                (Some(brokers), _) => brokers.clone(),
                (None, Input::Topic { brokers, .. }) => brokers.clone(),
                (None, Input::File(_)) => bail!(
                    "with --file, give --to-brokers (the brokers to re-send the dead letters \
                     to), or --to-file OUT to append their payloads to a file"
                ),
            };
            Destination::Kafka {
                brokers,
                topic: args.to_topic.clone(),
            }
        }
    };
    if let (Input::File(from), Destination::File(to)) = (&input, &destination)
        && same_file(from, to)
    {
        bail!(
            "--to-file {} is the dead-letter file itself: write the payloads elsewhere",
            to.display()
        )
    }
    Ok((input, destination))
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// `--property KEY=VALUE` flags. Values are never echoed (they may be secrets).
fn parse_properties(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut properties = BTreeMap::new();
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            bail!(
                "--property takes KEY=VALUE (a librdkafka property, e.g. \
                 security.protocol=SASL_SSL); one has no `=`"
            )
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--property takes KEY=VALUE; one has an empty KEY");
        }
        properties.insert(key.to_string(), value.to_string());
    }
    Ok(properties)
}

// ---------------------------------------------------------------------------
// Dead-letter files

/// Every letter of a dead-letter file (blank lines ignored).
fn read_file(path: &Path) -> anyhow::Result<Vec<Letter>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the dead-letter file {}", path.display()))?;
    let mut letters = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        match parse_line(line, at.clone()) {
            Ok(letter) => letters.push(letter),
            Err(e) => bail!("{at}: {e}; fix or delete that line, then replay again"),
        }
    }
    Ok(letters)
}

// ---------------------------------------------------------------------------
// Dead-letter topics

fn letter_from_message(m: &BorrowedMessage<'_>) -> Letter {
    let headers: HeaderList = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    kafka_letter(
        format!("{}/{}@{}", m.topic(), m.partition(), m.offset()),
        m.key().map(<[u8]>::to_vec),
        m.payload().map(<[u8]>::to_vec),
        headers,
    )
}

/// Every letter of `topic`, up to each partition's end as of now, in
/// (partition, offset) order. Blocking; joins no group, commits nothing.
fn read_topic(
    brokers: &str,
    topic: &str,
    properties: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Letter>> {
    let kafka_error = |e: KafkaError| anyhow::anyhow!(scrub(e.to_string(), properties));
    // `group.id` is a default so that `--property group.id=…` can satisfy
    // ACLs on group names; nothing is ever committed.
    let mut config = client_config(brokers, &[("group.id", "weir-replay")], properties);
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = config
        .create()
        .map_err(kafka_error)
        .context("creating the Kafka consumer (check the --property settings)")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(kafka_error)
        .with_context(|| {
            format!(
                "reading the metadata of topic `{topic}` from {brokers}: check --brokers and \
                 the --property settings"
            )
        })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic `{topic}` does not exist on {brokers} (or has no partitions): check --topic");
    }
    let mut assignment = TopicPartitionList::new();
    // Per partition still to read, its end (the high watermark) as of now.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
            .map_err(kafka_error)
            .with_context(|| format!("reading the offsets of `{topic}` partition {p}"))?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
            ends.insert(p, high);
        }
    }
    let mut letters: Vec<(i32, i64, Letter)> = Vec::new();
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_error)
        .with_context(|| format!("assigning the partitions of `{topic}`"))?;
    let mut progress = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                progress = Instant::now();
                let (p, offset) = (m.partition(), m.offset());
                let Some(&end) = ends.get(&p) else {
                    continue;
                };
                if offset >= end {
                    // Arrived after the replay started: not this replay's.
                    ends.remove(&p);
                    continue;
                }
                letters.push((p, offset, letter_from_message(&m)));
                if offset + 1 >= end {
                    ends.remove(&p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                progress = Instant::now();
                ends.remove(&p);
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                bail!("reading `{topic}`: fatal consumer error: {code}");
            }
            Some(Err(e)) => {
                tracing::warn!("reading `{}`: {}", topic, scrub(e.to_string(), properties));
            }
        }
        if !ends.is_empty() && progress.elapsed() >= READ_STALL {
            let left: Vec<String> = ends
                .iter()
                .map(|(p, end)| format!("partition {p} (end {end})"))
                .collect();
            bail!(
                "reading `{topic}`: nothing arrived for {}s from {}; check that {brokers} is \
                 reachable and the --property settings (the warnings above may say more)",
                READ_STALL.as_secs(),
                left.join(", ")
            );
        }
    }
    letters.sort_by_key(|(p, offset, _)| (*p, *offset));
    Ok(letters.into_iter().map(|(_, _, l)| l).collect())
}

// ---------------------------------------------------------------------------
// Sending and reporting

/// One line on stdout per replayed (or would-be-replayed) or skipped letter.
#[derive(Serialize)]
struct Report<'a> {
    replayed: bool,
    source_topic: Option<&'a str>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    dead_letter: &'a str,
    stage: Option<&'a str>,
    udf: Option<&'a str>,
    error: Option<&'a str>,
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn report(letter: &Letter, to: Option<&str>, skipped: Option<&str>) -> anyhow::Result<()> {
    let line = serde_json::to_string(&Report {
        replayed: skipped.is_none(),
        source_topic: letter.source_topic.as_deref(),
        source_partition: letter.source_partition,
        source_offset: letter.source_offset,
        dead_letter: &letter.at,
        stage: letter.stage.as_deref(),
        udf: letter.udf.as_deref(),
        error: letter.error.as_deref(),
        to,
        reason: skipped,
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing the report to stdout")
}

/// Appends `payloads`, one per line, to `path` (created if missing), synced.
fn append_lines(path: &Path, payloads: &[&[u8]]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.len() + 1).sum());
    for p in payloads {
        buf.extend_from_slice(p);
        buf.push(b'\n');
    }
    file.write_all(&buf)
        .with_context(|| format!("writing to {}", path.display()))?;
    // Pipes and character devices cannot be synced.
    if file.metadata().is_ok_and(|m| m.is_file()) {
        file.sync_data()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    Ok(())
}

fn make_producer(
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> anyhow::Result<FutureProducer> {
    let mut config = client_config(brokers, &[("linger.ms", "5")], properties);
    config.set("enable.idempotence", "true").set("acks", "all");
    config
        .create()
        .map_err(|e: KafkaError| anyhow::anyhow!(scrub(e.to_string(), properties)))
        .with_context(|| {
            format!("creating the Kafka producer for {brokers} (check the --property settings)")
        })
}

/// Enqueues `letter` (original key, payload and headers) to `topic`,
/// waiting while the producer queue is full.
async fn enqueue(
    producer: &FutureProducer,
    letter: &Letter,
    topic: &str,
    partition: Option<i32>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(key) = letter.key.as_deref() {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload.as_deref() {
            record = record.payload(payload);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if !letter.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
            for (name, value) in &letter.headers {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: value.as_deref(),
                });
            }
            record = record.headers(headers);
        }
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The outcome of one letter that passed the filters, in letter order.
enum Outcome {
    Skipped {
        reason: String,
        to: Option<String>,
    },
    /// Written (or, in a dry run, would be).
    Done {
        to: String,
    },
    /// Handed to the producer (or refused by it).
    Sending {
        to: String,
        delivery: Result<DeliveryFuture, String>,
    },
}

pub async fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let (input, destination) = plan(args)?;
    let properties = parse_properties(&args.properties)?;
    let filter = Filter::from_args(args);
    let letters = match &input {
        Input::File(path) => read_file(path)?,
        Input::Topic { topic, brokers } => {
            let (topic, brokers, props) = (topic.clone(), brokers.clone(), properties.clone());
            tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, &props))
                .await
                .context("reading the dead-letter topic")??
        }
    };

    let mut filtered_out = 0usize;
    let mut chosen: Vec<(&Letter, Decision)> = Vec::new();
    for letter in &letters {
        match decide(letter, &filter, &destination) {
            Decision::FilteredOut => filtered_out += 1,
            decision => chosen.push((letter, decision)),
        }
    }

    // Send (or write) everything first, then report in letter order.
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(chosen.len());
    let mut sender: Option<FutureProducer> = None;
    if let (Destination::Kafka { brokers, .. }, false) = (&destination, args.dry_run)
        && chosen
            .iter()
            .any(|(_, d)| matches!(d, Decision::Replay { .. }))
    {
        sender = Some(make_producer(brokers, &properties)?);
    }
    let mut lines: Vec<&[u8]> = Vec::new();
    for (letter, decision) in &chosen {
        let outcome = match decision {
            Decision::FilteredOut => continue,
            Decision::Skip { reason, to } => Outcome::Skipped {
                reason: reason.clone(),
                to: to.clone(),
            },
            Decision::Replay { to, partition } => match &sender {
                Some(producer) => Outcome::Sending {
                    to: to.clone(),
                    delivery: enqueue(producer, letter, to, *partition)
                        .await
                        .map_err(|e| scrub(e.to_string(), &properties)),
                },
                None => {
                    if let Some(payload) = letter.payload.as_deref() {
                        lines.push(payload);
                    }
                    Outcome::Done { to: to.clone() }
                }
            },
        };
        outcomes.push(outcome);
    }
    if let (Destination::File(path), false) = (&destination, args.dry_run)
        && !lines.is_empty()
    {
        append_lines(path, &lines)?;
    }

    let (mut replayed, mut skipped) = (0usize, 0usize);
    let mut failures: Vec<String> = Vec::new();
    for ((letter, _), outcome) in chosen.iter().zip(outcomes) {
        match outcome {
            Outcome::Skipped { reason, to } => {
                skipped += 1;
                report(letter, to.as_deref(), Some(reason.as_str()))?;
            }
            Outcome::Done { to } => {
                replayed += 1;
                report(letter, Some(to.as_str()), None)?;
            }
            Outcome::Sending { to, delivery } => {
                let result =
                    match delivery {
                        Err(e) => Err(e),
                        Ok(delivery) => match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(scrub(e.to_string(), &properties)),
                            Err(_) => Err("the producer stopped before the delivery was confirmed"
                                .to_string()),
                        },
                    };
                match result {
                    Ok(()) => {
                        replayed += 1;
                        report(letter, Some(to.as_str()), None)?;
                    }
                    Err(e) => failures.push(format!(
                        "  {} (the record from {}) to `{to}`: {e}",
                        letter.at,
                        letter.source()
                    )),
                }
            }
        }
    }

    let failed = if failures.is_empty() {
        String::new()
    } else {
        format!(", {} failed", failures.len())
    };
    let summary = format!(
        "{} {replayed} of {} dead letters ({filtered_out} filtered out, {skipped} skipped{failed})",
        if args.dry_run {
            "dry run: would replay"
        } else {
            "replayed"
        },
        letters.len(),
    );
    let _ = writeln!(std::io::stderr(), "{summary}");
    if !failures.is_empty() {
        bail!(
            "{} dead letter(s) could not be re-sent (the others were, see stdout):\n{}\n\
             fix the cause, then replay those again (the filters --stage, --udf, \
             --error-contains and --pipeline narrow a replay; a replay re-sends every letter \
             that matches, including ones already replayed)",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(flags: &[&str]) -> ReplayArgs {
        let mut argv = vec!["weir", "replay"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Replay(args),
                ..
            }) => args,
            Ok(other) => panic!("not a replay command: {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    fn plan_error(flags: &[&str]) -> String {
        format!("{:#}", plan(&args(flags)).unwrap_err())
    }

    const TRANSFORM: &str = r#"{"pipeline":"payments","stage":"transform","error":"udf `parse_cents` failed on row 0: `oops` is not an amount","udf":"parse_cents","source_topic":"payments","source_partition":2,"source_offset":41,"key":"k3","payload":"{\"id\":3,\"amount\":\"oops\"}","headers":[{"name":"trace","value":"abc"},{"name":"bin","value_base64":"//4="}]}"#;

    #[test]
    fn a_line_with_text_fields_and_headers() {
        let l = parse_line(TRANSFORM, "dlq.ndjson:1".to_string()).unwrap();
        assert_eq!(l.at, "dlq.ndjson:1");
        assert_eq!(l.pipeline.as_deref(), Some("payments"));
        assert_eq!(l.stage.as_deref(), Some("transform"));
        assert_eq!(l.udf.as_deref(), Some("parse_cents"));
        assert_eq!(l.source_topic.as_deref(), Some("payments"));
        assert_eq!(l.source_partition, Some(2));
        assert_eq!(l.source_offset, Some(41));
        assert_eq!(l.key.as_deref(), Some(&b"k3"[..]));
        assert_eq!(
            l.payload.as_deref(),
            Some(&br#"{"id":3,"amount":"oops"}"#[..])
        );
        assert_eq!(
            l.headers,
            vec![
                ("trace".to_string(), Some(b"abc".to_vec())),
                ("bin".to_string(), Some(vec![0xff, 0xfe])),
            ]
        );
        assert!(!l.truncated);
        assert_eq!(l.invalid, None);
        assert_eq!(l.source(), "payments/2@41");
    }

    #[test]
    fn a_line_with_base64_payload_and_no_headers() {
        let line = r#"{"pipeline":"p","stage":"decode","error":"not JSON","udf":null,"source_topic":"in","source_partition":0,"source_offset":7,"key":null,"key_base64":"AAE=","payload_base64":"/wA="}"#;
        let l = parse_line(line, "f:3".to_string()).unwrap();
        assert_eq!(l.key, Some(vec![0x00, 0x01]));
        assert_eq!(l.payload, Some(vec![0xff, 0x00]));
        assert_eq!(l.udf, None);
        assert!(l.headers.is_empty());
    }

    #[test]
    fn truncated_lines_and_weir_headers() {
        let line = r#"{"pipeline":"p","stage":"sink","error":"too large","source_topic":"t","source_partition":0,"source_offset":1,"payload":"abc","truncated":1048576,"headers":[{"name":"weir.stage","value":"x"},{"name":"h","value":null}]}"#;
        let l = parse_line(line, "f:1".to_string()).unwrap();
        assert!(l.truncated);
        assert_eq!(l.original_len, Some(1_048_576));
        assert_eq!(l.headers, vec![("h".to_string(), None)]);
        let line = r#"{"stage":"sink","truncated":null}"#;
        assert!(!parse_line(line, "f:1".to_string()).unwrap().truncated);
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let err = |line: &str| parse_line(line, "f:1".to_string()).unwrap_err();
        assert!(
            err("{not json").contains("not JSON"),
            "{}",
            err("{not json")
        );
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err(r#"{"payload":"x"}"#).contains("no `stage`"));
        assert!(
            err(r#"{"stage":"decode","payload":"x","payload_base64":"eA=="}"#).contains("keep one")
        );
        assert!(
            err(r#"{"stage":"decode","payload_base64":"%%%"}"#)
                .contains("`payload_base64` is not base64")
        );
        assert!(
            err(r#"{"stage":"decode","source_offset":"7"}"#)
                .contains("`source_offset` must be an integer")
        );
        assert!(
            err(r#"{"stage":"decode","source_partition":9999999999}"#)
                .contains("not a partition number")
        );
        assert!(
            err(r#"{"stage":"decode","headers":{"a":"b"}}"#).contains("`headers` must be an array")
        );
        assert!(
            err(r#"{"stage":"decode","headers":[{"value":"b"}]}"#)
                .contains("headers[0] has no `name`")
        );
        assert!(err(r#"{"stage":7}"#).contains("`stage` must be a string"));
    }

    #[test]
    fn kafka_letters_from_headers() {
        let h = |k: &str, v: &str| (k.to_string(), Some(v.as_bytes().to_vec()));
        let l = kafka_letter(
            "dlq/1@5".to_string(),
            Some(b"k".to_vec()),
            Some(b"v".to_vec()),
            vec![
                h("trace", "t1"),
                h("weir.pipeline", "payments"),
                h("weir.stage", "transform"),
                h("weir.error", "boom"),
                h("weir.udf", "parse_cents"),
                h("weir.source.topic", "payments"),
                h("weir.source.partition", "2"),
                h("weir.source.offset", "41"),
                ("empty".to_string(), None),
                h("weir.something.new", "x"),
            ],
        );
        assert_eq!(l.invalid, None);
        assert_eq!(l.stage.as_deref(), Some("transform"));
        assert_eq!(l.udf.as_deref(), Some("parse_cents"));
        assert_eq!(l.source(), "payments/2@41");
        assert_eq!(
            l.headers,
            vec![h("trace", "t1"), ("empty".to_string(), None)],
            "original headers in order, weir's removed"
        );
        assert!(!l.truncated);

        let t = kafka_letter(
            "dlq/0@0".to_string(),
            None,
            Some(b"ab".to_vec()),
            vec![h("weir.stage", "sink"), h("weir.truncated", "900")],
        );
        assert!(t.truncated);
        assert_eq!(t.original_len, Some(900));

        let foreign = kafka_letter("dlq/0@1".to_string(), None, None, vec![h("trace", "x")]);
        assert!(foreign.invalid.unwrap().contains("no `weir.stage` header"));
        let bad = kafka_letter(
            "dlq/0@2".to_string(),
            None,
            None,
            vec![h("weir.stage", "decode"), h("weir.source.offset", "x")],
        );
        assert!(bad.invalid.unwrap().contains("`weir.source.offset` is `x`"));
    }

    fn letter(stage: &str, udf: Option<&str>, error: &str, pipeline: &str) -> Letter {
        Letter {
            at: "f:1".to_string(),
            pipeline: Some(pipeline.to_string()),
            stage: Some(stage.to_string()),
            error: Some(error.to_string()),
            udf: udf.map(str::to_string),
            source_topic: Some("payments".to_string()),
            source_partition: Some(1),
            source_offset: Some(10),
            payload: Some(b"{}".to_vec()),
            ..Letter::default()
        }
    }

    #[test]
    fn filters_must_all_match() {
        let l = letter(
            "transform",
            Some("parse_cents"),
            "`oops` is not an amount",
            "payments",
        );
        let decode = letter("decode", None, "expected value", "payments");
        let f =
            |stage: Option<&str>, udf: Option<&str>, text: Option<&str>, pipeline: Option<&str>| {
                Filter {
                    stage: stage.map(str::to_string),
                    udf: udf.map(str::to_string),
                    error_contains: text.map(str::to_string),
                    pipeline: pipeline.map(str::to_string),
                }
            };
        assert!(Filter::default().matches(&l));
        assert!(Filter::default().matches(&decode));
        assert!(f(Some("transform"), None, None, None).matches(&l));
        assert!(!f(Some("transform"), None, None, None).matches(&decode));
        assert!(f(Some("transform"), Some("parse_cents"), None, None).matches(&l));
        assert!(
            !f(Some("transform"), Some("parse"), None, None).matches(&l),
            "udf is exact"
        );
        assert!(
            !f(None, Some("parse_cents"), None, None).matches(&decode),
            "no udf"
        );
        assert!(f(None, None, Some("not an amount"), None).matches(&l));
        assert!(!f(None, None, Some("Not An Amount"), None).matches(&l));
        assert!(
            f(
                Some("transform"),
                Some("parse_cents"),
                Some("oops"),
                Some("payments")
            )
            .matches(&l)
        );
        assert!(
            !f(
                Some("transform"),
                Some("parse_cents"),
                Some("oops"),
                Some("pay")
            )
            .matches(&l)
        );
        assert!(!f(None, None, None, Some("other")).matches(&decode));
    }

    #[test]
    fn decisions() {
        let kafka = Destination::Kafka {
            brokers: "b:9092".to_string(),
            topic: None,
        };
        let all = Filter::default();
        let l = letter("transform", Some("parse_cents"), "boom", "payments");
        assert_eq!(
            decide(&l, &all, &kafka),
            Decision::Replay {
                to: "payments".to_string(),
                partition: Some(1)
            },
            "back to the source topic and partition"
        );
        let other = Destination::Kafka {
            brokers: "b:9092".to_string(),
            topic: Some("payments-retry".to_string()),
        };
        assert_eq!(
            decide(&l, &all, &other),
            Decision::Replay {
                to: "payments-retry".to_string(),
                partition: None
            }
        );
        let only_decode = Filter {
            stage: Some("decode".to_string()),
            ..Filter::default()
        };
        assert_eq!(decide(&l, &only_decode, &kafka), Decision::FilteredOut);

        let mut truncated = l.clone();
        truncated.truncated = true;
        truncated.original_len = Some(5000);
        match decide(&truncated, &all, &kafka) {
            Decision::Skip { reason, to } => {
                assert!(reason.contains("truncated"), "{reason}");
                assert!(reason.contains("2 of the payload's 5000 bytes"), "{reason}");
                assert!(reason.contains("payments/1@10"), "{reason}");
                assert_eq!(to.as_deref(), Some("payments"));
            }
            d => panic!("{d:?}"),
        }

        let mut from_file = l.clone();
        from_file.source_topic = Some("in/payments.ndjson".to_string());
        match decide(&from_file, &all, &kafka) {
            Decision::Skip { reason, .. } => assert!(reason.contains("--to-file"), "{reason}"),
            d => panic!("{d:?}"),
        }
        let file = Destination::File(PathBuf::from("out/retry.ndjson"));
        assert_eq!(
            decide(&from_file, &all, &file),
            Decision::Replay {
                to: "out/retry.ndjson".to_string(),
                partition: None
            }
        );
        let mut two_lines = from_file.clone();
        two_lines.payload = Some(b"a\nb".to_vec());
        assert!(matches!(
            decide(&two_lines, &all, &file),
            Decision::Skip { .. }
        ));
        let mut no_topic = l.clone();
        no_topic.source_topic = None;
        match decide(&no_topic, &all, &kafka) {
            Decision::Skip { reason, .. } => assert!(reason.contains("--to-topic"), "{reason}"),
            d => panic!("{d:?}"),
        }
        let mut foreign = l.clone();
        foreign.invalid = Some("not a weir dead letter".to_string());
        assert!(matches!(
            decide(&foreign, &all, &kafka),
            Decision::Skip { .. }
        ));
    }

    #[test]
    fn flags_are_checked() {
        let (input, dest) = plan(&args(&["--topic", "dlq", "--brokers", "b:1"])).unwrap();
        assert_eq!(
            input,
            Input::Topic {
                topic: "dlq".to_string(),
                brokers: "b:1".to_string()
            }
        );
        assert_eq!(
            dest,
            Destination::Kafka {
                brokers: "b:1".to_string(),
                topic: None
            }
        );
        let (_, dest) = plan(&args(&[
            "--topic",
            "dlq",
            "--brokers",
            "b:1",
            "--to-brokers",
            "c:2",
            "--to-topic",
            "t",
        ]))
        .unwrap();
        assert_eq!(
            dest,
            Destination::Kafka {
                brokers: "c:2".to_string(),
                topic: Some("t".to_string())
            }
        );
        let (_, dest) = plan(&args(&["--file", "d.ndjson", "--to-file", "o.ndjson"])).unwrap();
        assert_eq!(dest, Destination::File(PathBuf::from("o.ndjson")));

        assert!(plan_error(&["--file", "d.ndjson"]).contains("--to-brokers"));
        assert!(plan_error(&["--topic", "dlq"]).contains("needs --brokers"));
        assert!(plan_error(&[]).contains("--file PATH"));
        assert!(
            plan_error(&["--topic", "dlq", "--brokers", "b", "--file", "f"]).contains("not both")
        );
        assert!(
            plan_error(&["--file", "f", "--to-file", "o", "--to-topic", "t"])
                .contains("drop --to-topic")
        );
        assert!(
            plan_error(&["--file", "f", "--brokers", "b", "--to-file", "o"])
                .contains("--to-brokers")
        );
        assert!(plan_error(&["--file", "f", "--to-file", "f"]).contains("dead-letter file itself"));
        assert!(plan_error(&["--topic", "", "--brokers", "b"]).contains("--topic is empty"));

        let parsed = args(&[
            "--file",
            "f",
            "--to-file",
            "o",
            "--stage",
            "transform",
            "--udf",
            "parse_cents",
            "--error-contains",
            "oops",
            "--pipeline",
            "payments",
            "--dry-run",
        ]);
        assert!(parsed.dry_run);
        assert_eq!(
            Filter::from_args(&parsed),
            Filter {
                stage: Some("transform".to_string()),
                udf: Some("parse_cents".to_string()),
                error_contains: Some("oops".to_string()),
                pipeline: Some("payments".to_string()),
            }
        );
        assert!(
            Cli::try_parse_from(["weir", "replay", "--file", "f", "--stage", "later"]).is_err(),
            "unknown stage"
        );
    }

    #[test]
    fn properties() {
        let p = parse_properties(&[
            "security.protocol=SASL_SSL".to_string(),
            "sasl.password=a=b".to_string(),
        ])
        .unwrap();
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.password"], "a=b");
        let err = parse_properties(&["hunter2".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("KEY=VALUE") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(parse_properties(&["=x".to_string()]).is_err());
    }

    #[test]
    fn topic_names() {
        assert!(is_topic_name("payments-dlq"));
        assert!(is_topic_name("a.b_c"));
        assert!(!is_topic_name("in/payments.ndjson"));
        assert!(!is_topic_name(""));
        assert!(!is_topic_name(".."));
    }
}
