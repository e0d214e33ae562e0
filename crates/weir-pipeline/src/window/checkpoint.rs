//! A checkpoint of folded windows: what the state changelog
//! (`changelog.rs`) keeps per scope (the whole pipeline, or one internal
//! partition of a windows stage), one message each.
//!
//! The bytes are a JSON header (length-prefixed) and, per open window,
//! its groups as an Arrow IPC stream ([`super::groups::Groups::snapshot`]).
//! The header names the aggregate the state belongs to: a checkpoint of
//! another query is not restored.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

/// Layout version of the bytes.
const VERSION: u32 = 1;

/// One scope's folded windows, and where its input stood.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// [`super::groups::Aggregation::fingerprint`] of the query.
    pub fingerprint: String,
    /// The scope's watermark (µs).
    pub watermark: i64,
    /// What it is computed from: per (topic, partition) of the source,
    /// the largest event time seen (the records that set them are not
    /// read again after a restore).
    #[serde(default)]
    pub maxima: Vec<(String, i32, i64)>,
    /// Per consumed (topic, partition), the next offset: every record
    /// before it is in this state (or in a window emitted and
    /// acknowledged before).
    pub covered: Vec<(String, i32, i64)>,
    /// A windows stage: per source partition, the last source offset
    /// admitted (a record written twice to the internal topic is folded
    /// once).
    pub admitted: Vec<(i32, i64)>,
    /// The open windows: (start, end, bytes of its groups).
    pub windows: Vec<(i64, i64, usize)>,
}

/// A decoded checkpoint.
pub struct Checkpoint {
    pub header: Header,
    /// Each window's groups, in `header.windows` order.
    pub groups: Vec<RecordBatch>,
}

pub fn encode(mut header: Header, groups: &[RecordBatch]) -> Result<Vec<u8>, String> {
    if header.windows.len() != groups.len() {
        return Err("internal: a checkpoint's windows and groups differ in number".into());
    }
    let mut blobs = Vec::with_capacity(groups.len());
    for batch in groups {
        let mut blob = Vec::new();
        let mut writer =
            StreamWriter::try_new(&mut blob, &batch.schema()).map_err(|e| e.to_string())?;
        writer.write(batch).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        drop(writer);
        blobs.push(blob);
    }
    header.version = VERSION;
    for (w, blob) in header.windows.iter_mut().zip(&blobs) {
        w.2 = blob.len();
    }
    let meta = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let len = u32::try_from(meta.len()).map_err(|_| "the checkpoint header is too large")?;
    let mut out = Vec::with_capacity(4 + meta.len() + blobs.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&meta);
    for blob in blobs {
        out.extend_from_slice(&blob);
    }
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let truncated = || "the checkpoint is truncated".to_string();
    let len = bytes
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(truncated)? as usize;
    let meta = bytes
        .get(4..4usize.saturating_add(len))
        .ok_or_else(truncated)?;
    let header: Header = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
    if header.version != VERSION {
        return Err(format!(
            "the checkpoint's layout is version {}, this weir reads {VERSION}",
            header.version
        ));
    }
    let mut at = 4 + len;
    let mut groups = Vec::with_capacity(header.windows.len());
    for &(_, _, size) in &header.windows {
        let end = at.checked_add(size).ok_or_else(truncated)?;
        let blob = bytes.get(at..end).ok_or_else(truncated)?;
        at = end;
        let mut reader = StreamReader::try_new(blob, None).map_err(|e| e.to_string())?;
        let batch = reader
            .next()
            .ok_or("a window of the checkpoint has no groups")?
            .map_err(|e| e.to_string())?;
        groups.push(batch);
    }
    Ok(Checkpoint { header, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_checkpoint_reads_back_as_written_and_a_cut_one_is_refused() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("c0", DataType::Utf8, true),
            Field::new("c1", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["rome", "oslo"])),
                Arc::new(Int64Array::from(vec![3, 4])),
            ],
        )
        .unwrap();
        let header = Header {
            fingerprint: "f".into(),
            watermark: 42,
            covered: vec![("t".into(), 0, 10)],
            windows: vec![(0, 60, 0)],
            ..Header::default()
        };
        let bytes = encode(header, std::slice::from_ref(&batch)).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.header.watermark, 42);
        assert_eq!(back.header.covered, vec![("t".to_string(), 0, 10)]);
        assert_eq!(back.groups, vec![batch]);
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode(&[0, 0]).is_err());
    }
}
