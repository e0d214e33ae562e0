//! A batch through the query: on the pipeline's own task or its workers,
//! whole windows or row by row, around the aggregate of folding windows.

use super::*;

impl Pipeline {
    /// Delivers batches the workers transformed, oldest first: every one
    /// ([`Take::All`]), until a worker is free, or those already done.
    /// `false` if the pipeline was told to stop meanwhile.
    pub(super) async fn take_transformed(
        &mut self,
        take: Take,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        loop {
            let Some(workers) = &mut self.workers else {
                return Ok(true);
            };
            let wait = match take {
                Take::All => true,
                Take::UntilRoom => workers.is_full(),
                Take::Done => false,
            };
            if !wait && !workers.front_is_done() {
                return Ok(true);
            }
            let Some(taken) = workers.take().await else {
                return Ok(true);
            };
            let (job, isolated) = taken?;
            self.record_breakers(&isolated.failed, &job.calls_before);
            // No capacity, or a breaker that holds the pipeline opened
            // under it: run it again here, in order, with the waits and
            // retries of a batch of the pipeline's own loop.
            let rerun = isolated.failed.iter().any(|f| f.capacity)
                || (self.tenant.policy().breaker_action == BreakerAction::Pause
                    && isolated.failed.iter().any(|f| f.circuit_open));
            let isolated = if rerun {
                match self.transform(&job.batch, false, flight, shutdown).await? {
                    Some(isolated) => isolated,
                    None => return Ok(false),
                }
            } else {
                isolated
            };
            let mut letters = job.letters;
            letters.extend(failed_letters(isolated.failed, job.records, &job.rows));
            if !self
                .deliver(isolated.outputs, letters, job.offsets, flight)
                .await?
            {
                return Ok(false);
            }
        }
    }

    /// Runs `batch` through the query, poison rows set aside (`whole`: as
    /// the records of whole windows, see `run_whole`), until no row failed
    /// for want of capacity or an open breaker that holds the pipeline.
    /// `None` if the pipeline was told to stop meanwhile (nothing was sent).
    pub(super) async fn transform(
        &mut self,
        batch: &datafusion::arrow::array::RecordBatch,
        whole: bool,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<crate::isolate::Isolated>> {
        let stage = if whole { Stage::Whole } else { Stage::Rows };
        self.transform_as(batch, stage, flight, shutdown).await
    }

    /// [`Self::transform`] through the query, or one of its stages around
    /// the aggregate of folding windows.
    pub(super) async fn transform_as(
        &mut self,
        batch: &datafusion::arrow::array::RecordBatch,
        stage: Stage<'_>,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<crate::isolate::Isolated>> {
        let mut capacity_waits = 0u32;
        let stages = self.stages.clone();
        let split = || {
            stages
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("internal: the query is not cut at its aggregate"))
        };
        loop {
            let before = self.calls_snapshot();
            let isolated = {
                let encoder = &self.encoder;
                let limit = self.sink.max_record_bytes();
                let finish = move |batches: &[datafusion::arrow::array::RecordBatch]| {
                    crate::encode::encode_checked(encoder, limit.as_ref(), batches)
                };
                match stage {
                    Stage::Rows => run_isolating(&self.query, batch.clone(), &finish).await,
                    Stage::Whole => {
                        crate::isolate::run_whole(&self.query, batch.clone(), &finish).await
                    }
                    Stage::Fold(stash) => {
                        // Outputs of an attempt that waited for capacity
                        // are not kept: it runs again whole.
                        stash.lock().clear();
                        let keep = |batches: &[datafusion::arrow::array::RecordBatch]| {
                            stash.lock().extend(batches.iter().cloned());
                            Ok(Vec::new())
                        };
                        run_isolating(&split()?.below, batch.clone(), &keep).await
                    }
                    Stage::Emit => {
                        crate::isolate::run_whole(&split()?.above, batch.clone(), &finish).await
                    }
                }
            };
            self.record_breakers(&isolated.failed, &before);
            if let Some(short) = isolated
                .failed
                .iter()
                .find(|f| f.capacity)
                .filter(|_| capacity_waits < MAX_CAPACITY_WAITS)
            {
                // No instance slot, or the tenant's memory total held by its
                // other instances: load, not bad records. Nothing of the
                // batch was sent; it runs again after a pause.
                capacity_waits += 1;
                if !self
                    .wait_for_capacity(&short.error, capacity_waits, flight, shutdown)
                    .await?
                {
                    return Ok(None);
                }
                continue;
            }
            // A breaker opened under the batch (another pipeline of the
            // same UDF version tripped it): with `breaker_action = "pause"`
            // the batch waits and runs again; nothing of it was sent.
            let held = self.tenant.policy().breaker_action == BreakerAction::Pause
                && isolated.failed.iter().any(|f| f.circuit_open);
            if !held {
                return Ok(Some(isolated));
            }
            if !self.wait_out_breaker(flight, shutdown).await? {
                return Ok(None);
            }
        }
    }
}

/// Which transformed batches [`Pipeline::take_transformed`] delivers.
#[derive(Clone, Copy)]
pub(super) enum Take {
    All,
    UntilRoom,
    Done,
}

/// Dead letters of the rows a transform set aside (`rows`: the record of
/// each row of the batch). The records are the batch's, done with: each
/// failed one moves into its letter (copied only when a second row of the
/// same record failed too).
pub(super) fn failed_letters(
    failed: Vec<crate::isolate::FailedRow>,
    mut records: Vec<SourceRecord>,
    rows: &[usize],
) -> Vec<DeadLetter> {
    let mut letters: Vec<DeadLetter> = Vec::with_capacity(failed.len());
    // Record → its letter, for a record with more than one failed row.
    let mut lettered: std::collections::HashMap<usize, usize> = Default::default();
    for f in failed {
        let Some(&at) = rows.get(f.row) else {
            continue;
        };
        let record = match lettered.get(&at) {
            Some(&letter) => letters[letter].record.clone(),
            None => match records.get_mut(at) {
                Some(record) => {
                    lettered.insert(at, letters.len());
                    record.take()
                }
                None => continue,
            },
        };
        letters.push(DeadLetter {
            record,
            stage: f.stage,
            error: f.error,
            udf: f.udf,
        });
    }
    letters
}

/// How a batch goes through the query ([`Pipeline::transform_as`]).
#[derive(Clone, Copy)]
pub(super) enum Stage<'a> {
    /// Row by row, poison rows set aside.
    Rows,
    /// The records of whole windows (`isolate::run_whole`).
    Whole,
    /// Folding windows: the stage before the aggregate, row by row; its
    /// output is kept in the stash.
    Fold(&'a parking_lot::Mutex<Vec<datafusion::arrow::array::RecordBatch>>),
    /// Folding windows: the stage after the aggregate, over the
    /// aggregate's output rows of whole windows.
    Emit,
}
