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
    serde_json::to_value(Line {
        pipeline,
        letter: l,
    })
    .unwrap_or(Value::Null)
}

/// Appends one line of a dead-letter file, with its newline, to `out`:
/// the same object as [`json_line`], written without building it (a dirty
/// stream writes thousands a second).
pub fn write_line(out: &mut Vec<u8>, pipeline: &str, l: &DeadLetter) -> serde_json::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &Line {
            pipeline,
            letter: l,
        },
    )?;
    out.push(b'\n');
    Ok(())
}

/// A dead letter as its line: keys in the order `serde_json::Map` keeps
/// them (sorted), so that the bytes do not depend on how it was written.
/// Bytes that are UTF-8 are a string under their name, others base64 under
/// `<name>_base64` (so that `weir replay` restores them exactly); an
/// absent key or payload is null.
struct Line<'a> {
    pipeline: &'a str,
    letter: &'a DeadLetter,
}

impl serde::Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let l = self.letter;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("error", &l.error)?;
        if !l.record.headers.is_empty() {
            map.serialize_entry("headers", &Headers(&l.record.headers))?;
        }
        put_bytes(&mut map, "key", l.record.key.as_deref())?;
        put_bytes(&mut map, "payload", l.record.payload.as_deref())?;
        map.serialize_entry("pipeline", self.pipeline)?;
        map.serialize_entry("source_offset", &l.record.offset)?;
        map.serialize_entry("source_partition", &l.record.partition)?;
        map.serialize_entry("source_topic", &*l.record.topic)?;
        map.serialize_entry("stage", l.stage)?;
        map.serialize_entry("udf", &l.udf)?;
        map.end()
    }
}

/// A record's headers: `[{"name", "value" | "value_base64"}]`.
struct Headers<'a>(&'a [(String, Vec<u8>)]);

impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Header<'a>(&'a str, &'a [u8]);
        impl serde::Serialize for Header<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("name", self.0)?;
                put_bytes(&mut map, "value", Some(self.1))?;
                map.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (name, value) in self.0 {
            seq.serialize_element(&Header(name, value))?;
        }
        seq.end()
    }
}

/// `name`: the bytes as a string when they are UTF-8, else
/// `name_base64`; null when absent.
fn put_bytes<M: serde::ser::SerializeMap>(
    map: &mut M,
    name: &str,
    bytes: Option<&[u8]>,
) -> Result<(), M::Error> {
    match bytes.map(|b| (b, std::str::from_utf8(b))) {
        None => map.serialize_entry(name, &()),
        Some((_, Ok(text))) => map.serialize_entry(name, text),
        Some((raw, Err(_))) => map.serialize_entry(
            &format!("{name}_base64"),
            &base64::engine::general_purpose::STANDARD.encode(raw),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SourceRecord;

    /// The line as it was built before it was written directly: a
    /// `serde_json::Value`, its keys sorted.
    fn built(pipeline: &str, l: &DeadLetter) -> Value {
        let bytes = |b: Option<&[u8]>, name: &str, o: &mut Map<String, Value>| match b
            .map(std::str::from_utf8)
        {
            None => {
                o.insert(name.into(), Value::Null);
            }
            Some(Ok(t)) => {
                o.insert(name.into(), t.into());
            }
            Some(Err(_)) => {
                o.insert(
                    format!("{name}_base64"),
                    base64::engine::general_purpose::STANDARD
                        .encode(b.unwrap_or_default())
                        .into(),
                );
            }
        };
        let mut o = Map::new();
        o.insert("pipeline".into(), pipeline.into());
        o.insert("stage".into(), l.stage.into());
        o.insert("error".into(), l.error.clone().into());
        o.insert("udf".into(), l.udf.clone().into());
        o.insert("source_topic".into(), (*l.record.topic).into());
        o.insert("source_partition".into(), l.record.partition.into());
        o.insert("source_offset".into(), l.record.offset.into());
        bytes(l.record.key.as_deref(), "key", &mut o);
        bytes(l.record.payload.as_deref(), "payload", &mut o);
        if !l.record.headers.is_empty() {
            let headers: Vec<Value> = l
                .record
                .headers
                .iter()
                .map(|(n, v)| {
                    let mut h = Map::new();
                    h.insert("name".into(), n.clone().into());
                    bytes(Some(v), "value", &mut h);
                    Value::Object(h)
                })
                .collect();
            o.insert("headers".into(), headers.into());
        }
        Value::Object(o)
    }

    #[test]
    fn a_line_written_directly_is_the_object_and_bytes_it_was() {
        let record =
            |key: Option<&[u8]>, payload: Option<&[u8]>, headers: Vec<(String, Vec<u8>)>| {
                SourceRecord {
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.map(<[u8]>::to_vec),
                    topic: "in \"quoted\"".into(),
                    partition: 3,
                    offset: 41,
                    timestamp: None,
                    headers,
                }
            };
        let letters = [
            DeadLetter {
                record: record(None, Some(b"{\"amount\":\"x\"}"), Vec::new()),
                stage: "transform",
                error: "udf `parse_cents` v1: row 0: not a number \u{1F4A5}".into(),
                udf: Some("parse_cents".into()),
            },
            DeadLetter {
                record: record(
                    Some(&[0xff, 0x00]),
                    Some(&[0xc3, 0x28]),
                    vec![("h".into(), b"v".to_vec()), ("bin".into(), vec![0x80])],
                ),
                stage: "decode",
                error: "not JSON".into(),
                udf: None,
            },
        ];
        for l in &letters {
            let mut out = Vec::new();
            write_line(&mut out, "p", l).unwrap();
            let expected = built("p", l);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{}\n", serde_json::to_string(&expected).unwrap())
            );
            assert_eq!(json_line("p", l), expected);
        }
    }
}
