//! A join of the stream with itself's side of the loop (`crate::join`):
//! each batch's rows are sorted (late, untimed, joining), joined with
//! themselves and the rows kept, then kept; the offsets stop below the
//! oldest row kept.

use super::*;

impl Pipeline {
    pub(super) async fn join_batch(
        &mut self,
        decoded: crate::decode::Decoded,
        records: Vec<SourceRecord>,
        mut letters: Vec<DeadLetter>,
        offsets: crate::record::Offsets,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let Some(joins) = self.joins.as_mut() else {
            return self.deliver(Vec::new(), letters, offsets, flight).await;
        };
        // A joins stage (`repartition.rs`): the query's columns, and where
        // each row came from.
        let origins = match &self.origin {
            Some(o) => {
                joins.expect_sources(o.partitions, Instant::now());
                Some(o.split(&decoded.batch)?)
            }
            None => {
                joins.expect_partitions(self.source.assigned_partitions(), Instant::now());
                None
            }
        };
        let batch = origins
            .as_ref()
            .map_or(&decoded.batch, |(visible, _)| visible);
        let rows: Vec<&SourceRecord> = decoded.rows.iter().map(|&i| &records[i]).collect();
        let admitted = joins
            .admit(
                batch,
                &rows,
                origins.as_ref().map(|(_, o)| o),
                Instant::now(),
            )
            .map_err(|e| anyhow::anyhow!("join: {e}"))?;
        drop(rows);
        if self.origin.is_some() {
            self.stats
                .records_in
                .add(records.len().saturating_sub(admitted.marks) as u64);
        }
        self.stats.late.add(admitted.late.len() as u64);
        for (stage, list) in [("late", admitted.late), ("event_time", admitted.untimed)] {
            letters.extend(list.into_iter().map(|(row, error)| DeadLetter {
                record: records[decoded.rows[row]].clone(),
                stage,
                error,
                udf: None,
            }));
        }
        let take = |batch: &datafusion::arrow::array::RecordBatch, rows: &[usize]| {
            let indices = datafusion::arrow::array::UInt32Array::from_iter_values(
                rows.iter().map(|&r| r as u32),
            );
            datafusion::arrow::compute::take_record_batch(batch, &indices)
        };
        let joining = take(batch, &admitted.rows)?;
        self.query.set_history(joins.history());
        let Some(isolated) = self.transform(&joining, false, flight, shutdown).await? else {
            return Ok(false);
        };
        // Rows that failed (a UDF on them) are dead letters and not kept.
        let failed: std::collections::HashSet<usize> =
            isolated.failed.iter().map(|f| f.row).collect();
        let kept: Vec<usize> = (0..admitted.rows.len())
            .filter(|i| !failed.contains(i))
            .collect();
        let batch = take(&joining, &kept)?;
        let kept_records: Vec<&SourceRecord> = kept
            .iter()
            .map(|&i| &records[decoded.rows[admitted.rows[i]]])
            .collect();
        if let Some(joins) = self.joins.as_mut() {
            joins
                .keep(batch, &kept_records)
                .map_err(|e| anyhow::anyhow!("join: {e}"))?;
            self.stats.window_state_bytes.set(joins.bytes() as i64);
            if joins.watermark() != i64::MIN {
                self.stats
                    .watermark
                    .set(joins.watermark().div_euclid(1_000_000));
            }
        }
        drop(kept_records);
        let joined: Vec<usize> = admitted.rows.iter().map(|&r| decoded.rows[r]).collect();
        letters.extend(failed_letters(isolated.failed, records, &joined));
        let offsets = match &self.joins {
            Some(j) => j.commit_floor(offsets),
            None => offsets,
        };
        if !self
            .deliver(isolated.outputs, letters, offsets, flight)
            .await?
        {
            return Ok(false);
        }
        self.check_join_state()
    }

    /// Rows kept over the tenant's `state_bytes` stop the pipeline, naming
    /// what to change: holding the source would not help, since only newer
    /// records move the watermark that lets rows go. What was delivered
    /// is committed; the rest is read again after the change.
    fn check_join_state(&mut self) -> anyhow::Result<bool> {
        let limit = (self.tenant.policy().state_bytes as usize).saturating_sub(self.tables.bytes());
        let Some(joins) = &self.joins else {
            return Ok(true);
        };
        if joins.bytes() <= limit {
            self.state_full_logged = false;
            return Ok(true);
        }
        anyhow::bail!(
            "the join of the stream with itself keeps {} bytes of rows ({} rows within {} of the watermark), over `{}` = {limit}; raise the key, or narrow the join's interval or `watermark.max_out_of_order_ms`",
            joins.bytes(),
            joins.rows(),
            humantime_us(joins.spec().reach_us()),
            self.tenant.policy().key("state_bytes"),
        )
    }
}

fn humantime_us(us: i64) -> String {
    if us % 1_000_000 == 0 {
        format!("{} s", us / 1_000_000)
    } else {
        format!("{} ms", us / 1_000)
    }
}
