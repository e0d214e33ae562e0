//! The dead-letter format, in one place: what weir writes for a record it
//! set aside (a line of a dead-letter file, or a record of a dead-letter
//! topic with weir's headers) and how `weir replay` reads it back
//! (docs/pipelines.md, "Replaying dead letters"). The sinks encode with
//! [`json_line`] and [`header`]'s names; the replay decodes with
//! [`parse_line`] and [`kafka_letter`].

use base64::Engine;
use serde_json::{Map, Value};

use crate::record::DeadLetter;

/// The headers of a record on a dead-letter topic: weir's own (all under
/// [`header::PREFIX`]), then the original record's.
pub mod header {
    /// Every header weir adds starts with this; the others are the
    /// original record's.
    pub const PREFIX: &str = "weir.";
    pub const PIPELINE: &str = "weir.pipeline";
    pub const STAGE: &str = "weir.stage";
    pub const ERROR: &str = "weir.error";
    pub const UDF: &str = "weir.udf";
    pub const SOURCE_TOPIC: &str = "weir.source.topic";
    pub const SOURCE_PARTITION: &str = "weir.source.partition";
    pub const SOURCE_OFFSET: &str = "weir.source.offset";
    /// The key or payload was cut to fit; the value is the original
    /// payload's length in bytes.
    pub const TRUNCATED: &str = "weir.truncated";
    /// The original headers did not fit; the value is how many there were.
    pub const HEADERS_DROPPED: &str = "weir.headers.dropped";
}

/// A record's headers: name and value (NULL is `None`), in order.
pub type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// One line of a dead-letter file (a JSON object, no newline).
pub fn json_line(pipeline: &str, l: &DeadLetter) -> Value {
    let mut line = serde_json::json!({
        "pipeline": pipeline,
        "stage": l.stage,
        "error": l.error,
        "udf": l.udf,
        "source_topic": &*l.record.topic,
        "source_partition": l.record.partition,
        "source_offset": l.record.offset,
    });
    put_bytes(&mut line, "key", l.record.key.as_deref());
    put_bytes(&mut line, "payload", l.record.payload.as_deref());
    if !l.record.headers.is_empty() {
        let headers: Vec<Value> = l
            .record
            .headers
            .iter()
            .map(|(name, value)| {
                let mut h = serde_json::json!({ "name": name });
                put_bytes(&mut h, "value", Some(value));
                h
            })
            .collect();
        line["headers"] = headers.into();
    }
    line
}

/// Sets `name` to the bytes as a string when they are UTF-8, else
/// `name_base64` (so that `weir replay` restores them exactly); null when
/// absent.
fn put_bytes(object: &mut Value, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => object[name] = Value::Null,
        Some(Ok(text)) => object[name] = text.into(),
        Some(Err(_)) => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(bytes.unwrap_or_default());
            object[format!("{name}_base64")] = encoded.into();
        }
    }
}

/// One dead letter, from a topic or a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Letter {
    /// Where the dead letter itself is: `topic/partition@offset` or `file:line`.
    pub at: String,
    pub pipeline: Option<String>,
    pub stage: Option<String>,
    pub error: Option<String>,
    pub udf: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The original headers, in order (weir's own removed).
    pub headers: HeaderList,
    /// The payload was cut to fit: it is incomplete.
    pub truncated: bool,
    /// The original payload length in bytes, when truncated and known.
    pub original_len: Option<u64>,
    /// Why this is not a replayable weir dead letter (a topic record
    /// without weir's headers, or with malformed ones).
    pub invalid: Option<String>,
}

impl Letter {
    /// `topic/partition@offset` of the original record (`?` where unknown).
    pub fn source(&self) -> String {
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".to_string());
        format!(
            "{}/{}@{}",
            self.source_topic.as_deref().unwrap_or("?"),
            or_unknown(self.source_partition.map(|p| p.to_string())),
            or_unknown(self.source_offset.map(|o| o.to_string())),
        )
    }
}

// Dead-letter files

/// What kind of JSON value `v` is, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field: absent or null is `None`.
pub fn text_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "`{name}` must be a string or null, not {}",
            kind(other)
        )),
    }
}

/// An integer field: absent or null is `None`.
pub fn integer_field(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be an integer, not {}", kind(v))),
    }
}

/// Bytes given as `name` (text) or `name_base64` (standard alphabet).
pub fn bytes_field(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    let encoded_name = format!("{name}_base64");
    match (text_field(obj, name)?, text_field(obj, &encoded_name)?) {
        (Some(_), Some(_)) => Err(format!(
            "both `{name}` and `{encoded_name}` are given; keep one"
        )),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(Some)
            .map_err(|e| format!("`{encoded_name}` is not base64 (standard alphabet): {e}")),
        (None, None) => Ok(None),
    }
}

/// `headers`: `[{"name", "value" | "value_base64"}]`; absent (older files)
/// or null is none. weir's own headers are left out.
pub fn headers_field(obj: &Map<String, Value>) -> Result<HeaderList, String> {
    let list = match obj.get("headers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "`headers` must be an array of {{\"name\", \"value\"}} objects, not {}",
                kind(other)
            ));
        }
    };
    let mut headers = Vec::with_capacity(list.len());
    for (i, header) in list.iter().enumerate() {
        let Some(header) = header.as_object() else {
            return Err(format!(
                "headers[{i}] must be an object {{\"name\", \"value\" or \"value_base64\"}}, not {}",
                kind(header)
            ));
        };
        let name = text_field(header, "name")
            .map_err(|e| format!("headers[{i}]: {e}"))?
            .ok_or_else(|| format!("headers[{i}] has no `name`"))?;
        let value = bytes_field(header, "value").map_err(|e| format!("headers[{i}]: {e}"))?;
        if !name.starts_with(header::PREFIX) {
            headers.push((name, value));
        }
    }
    Ok(headers)
}

/// One line of a dead-letter file; `at` names it. The error says what is
/// wrong with the line.
pub fn parse_line(line: &str, at: String) -> Result<Letter, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Some(obj) = value.as_object() else {
        return Err(format!("not a JSON object but {}", kind(&value)));
    };
    let stage = text_field(obj, "stage")?;
    if stage.is_none() {
        return Err("no `stage`: is this a weir dead-letter file?".to_string());
    }
    let source_partition = match integer_field(obj, "source_partition")? {
        None => None,
        Some(p) => Some(
            i32::try_from(p)
                .map_err(|_| format!("`source_partition` {p} is not a partition number"))?,
        ),
    };
    let (truncated, original_len) = match obj.get("truncated") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => (false, None),
        Some(v) => (true, v.as_u64()),
    };
    Ok(Letter {
        at,
        pipeline: text_field(obj, "pipeline")?,
        stage,
        error: text_field(obj, "error")?,
        udf: text_field(obj, "udf")?,
        source_topic: text_field(obj, "source_topic")?,
        source_partition,
        source_offset: integer_field(obj, "source_offset")?,
        key: bytes_field(obj, "key")?,
        payload: bytes_field(obj, "payload")?,
        headers: headers_field(obj)?,
        truncated,
        original_len,
        invalid: None,
    })
}

// Dead-letter topics

pub fn lossy(value: &Option<Vec<u8>>) -> Option<String> {
    value
        .as_deref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A dead letter from its record on a dead-letter topic: weir's headers
/// describe it, the other headers are the original record's.
pub fn kafka_letter(
    at: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: HeaderList,
) -> Letter {
    let mut letter = Letter {
        at,
        key,
        payload,
        ..Letter::default()
    };
    let mut problems = Vec::new();
    for (name, value) in headers {
        match name.as_str() {
            header::PIPELINE => letter.pipeline = lossy(&value),
            header::STAGE => letter.stage = lossy(&value),
            header::ERROR => letter.error = lossy(&value),
            header::UDF => letter.udf = lossy(&value),
            header::SOURCE_TOPIC => letter.source_topic = lossy(&value),
            header::SOURCE_PARTITION => {
                let text = lossy(&value).unwrap_or_default();
                match text.trim().parse::<i32>() {
                    Ok(p) => letter.source_partition = Some(p),
                    Err(_) => problems.push(format!(
                        "header `weir.source.partition` is `{text}`, not a partition number"
                    )),
                }
            }
            header::SOURCE_OFFSET => {
                let text = lossy(&value).unwrap_or_default();
                match text.trim().parse::<i64>() {
                    Ok(o) => letter.source_offset = Some(o),
                    Err(_) => problems.push(format!(
                        "header `weir.source.offset` is `{text}`, not an offset"
                    )),
                }
            }
            header::TRUNCATED => {
                letter.truncated = true;
                letter.original_len = lossy(&value).and_then(|t| t.trim().parse().ok());
            }
            other if other.starts_with(header::PREFIX) => {}
            _ => letter.headers.push((name, value)),
        }
    }
    if letter.stage.is_none() {
        problems.insert(
            0,
            "not a weir dead letter: the record has no `weir.stage` header".to_string(),
        );
    }
    if !problems.is_empty() {
        letter.invalid = Some(problems.join("; "));
    }
    letter
}
