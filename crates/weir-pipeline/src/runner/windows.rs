//! A windowed pipeline's side of the loop: closing and emitting windows,
//! holding the source at the state bound, and a windows stage's origin
//! columns and internal partitions (`repartition.rs`).

use super::*;

impl Pipeline {
    /// A windows stage (`repartition.rs`): drops the windows of internal
    /// partitions another member took (their keys' state is rebuilt there
    /// from the committed offsets); partitions gained start from their
    /// committed offsets, below every open window's records.
    pub(super) fn follow_internal_partitions(&mut self) -> anyhow::Result<()> {
        let Some(origin) = &mut self.origin else {
            return Ok(());
        };
        let now: std::collections::BTreeSet<i32> = self
            .source
            .partitions()
            .iter()
            .filter_map(|tp| tp.rsplit('/').next()?.parse().ok())
            .collect();
        for gone in origin.owned.difference(&now) {
            tracing::info!(pipeline = %self.config.name, partition = gone, "internal partition revoked: its keys' windows or joined rows are rebuilt by their new owner");
            if let Some(windows) = &mut self.windows {
                windows.revoke(*gone);
            }
            if let Some(joins) = &mut self.joins {
                joins
                    .revoke(*gone)
                    .map_err(|e| anyhow::anyhow!("join: {e}"))?;
            }
            // Its new owner writes its checkpoints now.
            if let Some((_, scopes)) = self.changelog.as_mut().and_then(|c| c.pending.as_mut()) {
                scopes.retain(|s| s.scope != Some(*gone));
            }
        }
        origin.owned = now;
        Ok(())
    }

    /// Emits the windows the watermark passed (every open one with
    /// `flush`), then holds the source while the open windows exceed the
    /// tenant's `state_bytes`.
    pub(super) async fn emit_windows(
        &mut self,
        flush: bool,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        self.emit_and_deliver(
            flush,
            Vec::new(),
            crate::record::Offsets::new(),
            flight,
            shutdown,
        )
        .await
    }

    pub(super) async fn emit_and_deliver(
        &mut self,
        flush: bool,
        letters: Vec<DeadLetter>,
        offsets: crate::record::Offsets,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        if !self
            .emit_closed(flush, letters, offsets, flight, shutdown)
            .await?
        {
            return Ok(false);
        }
        self.hold_for_state(flight, shutdown).await
    }

    /// Runs the query once over the windows the watermark passed and
    /// delivers their results with `letters`; commits stop below the oldest
    /// record still in an open window.
    pub(super) async fn emit_closed(
        &mut self,
        flush: bool,
        mut letters: Vec<DeadLetter>,
        offsets: crate::record::Offsets,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        if self.origin.is_some() {
            self.follow_internal_partitions()?;
        }
        self.restore_state().await?;
        let Some(windows) = self.windows.as_mut() else {
            return self.deliver(Vec::new(), letters, offsets, flight).await;
        };
        match &self.origin {
            Some(o) => windows.expect_sources(o.partitions, Instant::now()),
            None => windows.expect_partitions(self.source.assigned_partitions(), Instant::now()),
        }
        windows.tick(Instant::now());
        let closed = windows
            .take_closed(flush)
            .map_err(|e| anyhow::anyhow!("windows: {e}"))?;
        if closed.is_none() && letters.is_empty() && offsets.is_empty() {
            self.window_gauges();
            self.checkpoint(flight.acknowledged(), flight.pushed())
                .await?;
            return Ok(true);
        }
        let mut out = Vec::new();
        if let Some(closed) = closed {
            let stage = if closed.aggregated {
                Stage::Emit
            } else {
                Stage::Whole
            };
            let Some(isolated) = self
                .transform_as(&closed.batch, stage, flight, shutdown)
                .await?
            else {
                // Nothing was sent; after a shutdown meanwhile nothing past
                // the open windows was committed either: they are rebuilt
                // by replay.
                return Ok(false);
            };
            self.stats.windows_emitted.add(closed.windows as u64);
            letters.extend(isolated.failed.into_iter().map(|f| DeadLetter {
                record: closed.records[f.row].clone(),
                stage: f.stage,
                error: f.error,
                udf: f.udf,
            }));
            out = isolated.outputs;
        }
        let offsets = match &self.windows {
            Some(w) => w.commit_floor(offsets),
            None => offsets,
        };
        self.window_gauges();
        if !self.deliver(out, letters, offsets, flight).await? {
            return Ok(false);
        }
        self.checkpoint(flight.acknowledged(), flight.pushed())
            .await?;
        Ok(true)
    }

    /// Writes the pending checkpoint once every batch before it was
    /// acknowledged (so that nothing it covers is lost if the process dies:
    /// outputs, dead letters), then raises the commit floor to it; takes
    /// the next one every `state.checkpoint_ms`.
    async fn checkpoint(&mut self, acknowledged: u64, pushed: u64) -> anyhow::Result<()> {
        let (Some(log), Some(windows)) = (self.changelog.as_mut(), self.windows.as_mut()) else {
            return Ok(());
        };
        if log
            .pending
            .as_ref()
            .is_some_and(|(after, _)| acknowledged >= *after)
            && let Some((_, scopes)) = log.pending.take()
        {
            let mut bytes = 0;
            let mut covered = crate::record::Offsets::new();
            let mut marks = crate::record::Marks::new();
            for scope in scopes {
                let partition = scope.scope.unwrap_or(0);
                if let Err(e) = log.changelog.write(partition, &scope.bytes).await {
                    // The floor stays: a restart replays more, loses nothing.
                    tracing::warn!(pipeline = %self.config.name, "{e:#}");
                    continue;
                }
                bytes += scope.bytes.len();
                tracing::debug!(pipeline = %self.config.name, partition, covered = ?scope.covered, watermark = %crate::window::state::fmt_us(scope.watermark), bytes = scope.bytes.len(), "checkpoint written");
                windows.checkpointed(&scope.covered);
                if scope.watermark != i64::MIN {
                    marks.extend(scope.covered.keys().map(|tp| (tp.clone(), scope.watermark)));
                }
                covered.extend(scope.covered);
            }
            self.stats.checkpoints.add(1);
            self.stats.checkpoint_bytes.set(bytes as i64);
            // Everything it covers was acknowledged: commit up to it now
            // (commits only move forward), with the watermark it was
            // taken at.
            self.source.commit_marked(&covered, &marks).await?;
        }
        if log.pending.is_some()
            || log.last.elapsed() < log.every
            || windows.changes() == log.changes
        {
            return Ok(());
        }
        log.last = Instant::now();
        let Some(mut scopes) = windows
            .checkpoint()
            .map_err(|e| anyhow::anyhow!("checkpointing the windows: {e}"))?
        else {
            return Ok(());
        };
        scopes.retain(|s| {
            let fits = s.bytes.len() <= crate::changelog::MAX_CHECKPOINT_BYTES;
            if !fits {
                tracing::warn!(pipeline = %self.config.name, bytes = s.bytes.len(), "the open windows' checkpoint is over {} bytes and is not written: a restart replays from the oldest open window", crate::changelog::MAX_CHECKPOINT_BYTES);
            }
            fits
        });
        log.pending = Some((pushed, scopes));
        log.changes = windows.changes();
        Ok(())
    }

    /// After partitions were assigned: restores the state of the scopes
    /// this member did not hold (a restart, or an internal partition taken
    /// over) from their last checkpoint, then the watermarks committed
    /// with the offsets.
    pub(super) async fn restore_state(&mut self) -> anyhow::Result<()> {
        if self.windows.is_none() {
            return Ok(());
        }
        let Some(marks) = self.source.take_committed_marks() else {
            return Ok(());
        };
        let now = Instant::now();
        let scopes: Vec<Option<i32>> = match &self.origin {
            Some(o) => o.owned.iter().map(|p| Some(*p)).collect(),
            None => vec![None],
        };
        let (Some(windows), log) = (self.windows.as_mut(), &self.changelog) else {
            return Ok(());
        };
        let fresh: Vec<Option<i32>> = scopes.into_iter().filter(|s| windows.fresh(*s)).collect();
        if let Some(log) = log {
            for scope in &fresh {
                let partition = scope.unwrap_or(0);
                // A checkpoint that cannot be read stops the pipeline: the
                // offsets committed with it are past its windows' records.
                let Some(bytes) = log.changelog.read_last(partition).await? else {
                    tracing::info!(pipeline = %self.config.name, partition, "no checkpoint in `{}` yet: open windows start from the committed offsets", log.changelog.topic());
                    continue;
                };
                match windows.restore_checkpoint(*scope, &bytes, now) {
                    Ok(n) => {
                        tracing::info!(pipeline = %self.config.name, partition, windows = n, "open windows restored from `{}`", log.changelog.topic())
                    }
                    Err(why) => {
                        tracing::warn!(pipeline = %self.config.name, partition, "the checkpoint in `{}` is not restored ({why}): its open windows start again from the committed offsets", log.changelog.topic())
                    }
                }
            }
        }
        windows.restore(&marks, &fresh, self.origin.is_some(), now);
        Ok(())
    }

    pub(super) fn window_gauges(&self) {
        if let Some(w) = &self.windows {
            self.stats.open_windows.set(w.open_windows() as i64);
            self.stats.window_state_bytes.set(w.bytes() as i64);
            if w.watermark() != i64::MIN {
                self.stats
                    .watermark
                    .set(w.watermark().div_euclid(1_000_000));
            }
        }
    }

    /// While the open windows hold more than the tenant's `state_bytes`:
    /// pauses the source (backpressure, nothing dropped), says why, and
    /// emits windows as the watermark moves (a partition going idle).
    pub(super) async fn hold_for_state(
        &mut self,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        // Lookup tables take their share of `state_bytes` first.
        let limit = (self.tenant.policy().state_bytes as usize).saturating_sub(self.tables.bytes());
        let over = |p: &Self| p.windows.as_ref().is_some_and(|w| w.bytes() > limit);
        if !over(self) {
            self.state_full_logged = false;
            return Ok(true);
        }
        let message = format!(
            "paused: the open windows hold {} bytes of state, over `{}` = {limit}; the source resumes as windows close (raise the key, use shorter windows or a smaller `watermark.max_out_of_order_ms`)",
            self.windows.as_ref().map_or(0, |w| w.bytes()),
            self.tenant.policy().key("state_bytes"),
        );
        if !self.state_full_logged {
            tracing::warn!(pipeline = %self.config.name, "{message}");
            self.state_full_logged = true;
        }
        self.stats.set_condition(Some(message));
        self.source.pause().await?;
        let result = async {
            while over(self) {
                flight.commit_acknowledged(&mut *self.source).await?;
                self.source.keepalive().await?;
                tokio::select! {
                    _ = tokio::time::sleep(STATE_POLL) => {}
                    _ = shutdown.changed() => return Ok(false),
                }
                if !self
                    .emit_closed(
                        false,
                        Vec::new(),
                        crate::record::Offsets::new(),
                        flight,
                        shutdown,
                    )
                    .await?
                {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        .await;
        self.source.resume().await?;
        self.stats.set_condition(None);
        result
    }
}

/// A pipeline's changelog, and its checkpoint waiting for its batches.
pub(super) struct Checkpoints {
    pub(super) changelog: crate::changelog::Changelog,
    /// Taken after batch number `.0` was pushed to the in-flight window.
    pub(super) pending: Option<(u64, Vec<crate::window::state::ScopeCheckpoint>)>,
    pub(super) last: Instant,
    pub(super) every: Duration,
    /// [`crate::window::WindowState::changes`] after the last checkpoint.
    pub(super) changes: u64,
}

/// A windows stage's records carry the key and the source partition and
/// offset of each record after its columns (`repartition.rs`).
pub(super) struct Origin {
    pub(super) topic: Arc<str>,
    /// Partitions of the source topic.
    pub(super) partitions: usize,
    /// The query's columns: the first `columns` of the decoded batch.
    pub(super) columns: usize,
    pub(super) visible: SchemaRef,
    /// The internal partitions this member owned at the last batch.
    pub(super) owned: std::collections::BTreeSet<i32>,
}

impl Origin {
    /// The query's columns of `batch`, and where each row came from.
    pub(super) fn split(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
    ) -> anyhow::Result<(
        datafusion::arrow::array::RecordBatch,
        crate::window::Origins,
    )> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Int32Type, Int64Type};
        let column = |i: usize| {
            batch
                .columns()
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("internal: a re-keyed record lacks its origin"))
        };
        let partitions = column(self.columns + 1)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| anyhow::anyhow!("internal: the origin partition is not an int32"))?;
        let offsets = column(self.columns + 2)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| anyhow::anyhow!("internal: the origin offset is not an int64"))?;
        let visible = batch.project(&(0..self.columns).collect::<Vec<_>>())?;
        let visible = datafusion::arrow::array::RecordBatch::try_new(
            self.visible.clone(),
            visible.columns().to_vec(),
        )?;
        Ok((
            visible,
            crate::window::Origins {
                topic: self.topic.clone(),
                partitions: partitions.values().to_vec(),
                offsets: offsets.values().to_vec(),
                owned: self.owned.clone(),
            },
        ))
    }
}
