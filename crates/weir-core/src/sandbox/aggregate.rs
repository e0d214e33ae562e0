//! One aggregate's groups, kept in a guest instance of their own between
//! calls (docs/abi.md §9).
//!
//! An [`AggregateRun`] holds one instance for its lifetime: the state of
//! its groups lives in that instance's memory, so a batch costs one guest
//! call and no state crosses the boundary until `state` or `evaluate` is
//! asked for. The instance counts against the tenant's `max_instances`
//! and the process's instance slots like any other, and its memory against
//! `memory_bytes` and `memory_total_bytes`: a state that grows without
//! bound traps with *ran out of memory*. An instance that traps is
//! dropped, and with it the state: every later call of the run fails
//! (*lost its state*), so the query (or the pipeline's window, which is
//! rebuilt from its rows) runs again rather than using partial state.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::ArrayRef;

use super::error::{Failure, UdfError};
use super::instance::GuestInstance;
pub use super::instance::{Emit, Fold};
use super::module::UdfModule;
use crate::abi::{AbiType, AggregateDecl};
use crate::marshal::input::InputPlan;

/// The groups of one aggregate accumulator, in a guest instance of their own.
pub struct AggregateRun {
    module: Arc<UdfModule>,
    index: usize,
    /// Created at the first call (an empty partition costs no instance).
    instance: Option<GuestInstance>,
    /// Why the state was lost (a trap), if it was.
    lost: Option<String>,
    deadline: Option<Instant>,
    calls: u64,
}

impl std::fmt::Debug for AggregateRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateRun")
            .field("aggregate", &self.decl().name)
            .field("module", &self.module.label())
            .finish()
    }
}

impl UdfModule {
    /// A new, empty accumulator of aggregate `index` of the manifest.
    ///
    /// # Panics
    /// If `index` is not an aggregate of the manifest.
    pub fn aggregate_run(
        self: &Arc<Self>,
        index: usize,
        deadline: Option<Instant>,
    ) -> AggregateRun {
        assert!(index < self.manifest().aggregates.len());
        AggregateRun {
            module: self.clone(),
            index,
            instance: None,
            lost: None,
            deadline,
            calls: 0,
        }
    }

    /// Position of aggregate `name` in the manifest.
    pub fn aggregate_index(&self, name: &str) -> Option<usize> {
        self.manifest()
            .aggregates
            .iter()
            .position(|f| f.name == name)
    }
}

impl AggregateRun {
    pub fn decl(&self) -> &AggregateDecl {
        &self.module.manifest().aggregates[self.index]
    }

    pub fn module(&self) -> &Arc<UdfModule> {
        &self.module
    }

    /// Linear memory of its instance (its groups' state), in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.instance
            .as_ref()
            .map_or(0, GuestInstance::memory_bytes)
    }

    fn error(&self, rows: usize, failure: Failure) -> UdfError {
        UdfError {
            udf: self.decl().name.clone(),
            module: self.module.label().to_string(),
            digest: self.module.digest().to_string(),
            batch: self.calls,
            rows,
            failure,
            limits: self.module.call_limits().into_owned(),
            keys: self.module.call_keys(),
        }
    }

    /// Runs `f` on the run's instance under the call limits in force, with
    /// a guest slot of the tenant; a poisoning failure drops the instance.
    #[allow(clippy::result_large_err)]
    fn with_instance<T>(
        &mut self,
        rows: usize,
        f: impl FnOnce(&mut GuestInstance, &super::SandboxLimits) -> Result<T, Failure>,
    ) -> Result<T, UdfError> {
        self.calls += 1;
        if let Some(why) = &self.lost {
            let why = why.clone();
            return Err(self.error(
                rows,
                Failure::Other(format!(
                    "lost its groups' state when an earlier call failed ({why}); the query must run again"
                )),
            ));
        }
        let module = self.module.clone();
        let limits = module.call_limits();
        let _permit = module.tenant().map(|t| t.enter());
        // A request's deadline bounds the call too (after the wait for a
        // slot), as for scalars: a call in flight then is interrupted.
        let clamped = match super::module::clamp_to_deadline(&limits, self.deadline) {
            Ok(c) => c,
            Err(failure) => return Err(self.error(rows, failure)),
        };
        let limits = clamped.as_ref().unwrap_or(&limits);
        if self.instance.is_none() {
            match GuestInstance::new(&module) {
                Ok(i) => self.instance = Some(i),
                Err(failure) => return Err(self.error(rows, failure)),
            }
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err(self.error(rows, Failure::Other("no instance".into())));
        };
        let started = Instant::now();
        let result = super::module::cancelled_if_clamped(f(instance, limits), clamped.is_some());
        if let Some(stats) = module.aggregate_stats(self.index) {
            stats.record(started.elapsed());
        }
        result.map_err(|failure| {
            if failure.poisons_instance() {
                self.instance = None;
                self.lost = Some(failure.kind().to_string());
            }
            self.error(rows, failure)
        })
    }

    /// Folds `rows` rows into groups `group_ids` (one per row, each below
    /// `groups`, the number of groups so far). `columns` are the arguments
    /// (update, retract) or state columns (merge), already of the declared
    /// types. One guest call.
    #[allow(clippy::result_large_err)]
    pub fn fold(
        &mut self,
        fold: Fold,
        columns: &[ArrayRef],
        group_ids: ArrayRef,
        rows: usize,
        groups: usize,
    ) -> Result<(), UdfError> {
        if rows == 0 {
            return Ok(());
        }
        let decl = self.decl();
        let mut types = vec![AbiType::UInt32];
        types.extend(match fold {
            Fold::Merge => decl.state.iter(),
            Fold::Update | Fold::Retract => decl.args.iter(),
        });
        let mut all = Vec::with_capacity(columns.len() + 1);
        all.push(group_ids.clone());
        all.extend(columns.iter().cloned());
        if all.len() != types.len() {
            return Err(self.error(
                rows,
                Failure::InvalidInput(format!(
                    "{} columns given, {} declared",
                    all.len() - 1,
                    types.len() - 1
                )),
            ));
        }
        let plan = InputPlan::new(&all, &types, rows)
            .map_err(|e| self.error(rows, Failure::InvalidInput(e.to_string())))?;
        let index = self.index;
        let outcome = self.with_instance(rows, |instance, limits| {
            instance.invoke_fold(limits, index, fold, &plan, rows, groups)
        })?;
        match outcome {
            None => Ok(()),
            Some((row, message)) => {
                let group = group_ids
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::UInt32Array>()
                    .map(|g| g.value(row));
                let message = match group {
                    Some(g) => format!("{message} (group {g})"),
                    None => message,
                };
                Err(self.error(rows, Failure::RowError { row, message }))
            }
        }
    }

    /// The state columns (`Emit::State`) or the final values
    /// (`Emit::Evaluate`) of groups `0..groups`; with `consume` those groups
    /// are dropped and the rest renumbered from 0. One guest call.
    #[allow(clippy::result_large_err)]
    pub fn emit(
        &mut self,
        emit: Emit,
        groups: usize,
        consume: bool,
    ) -> Result<Vec<ArrayRef>, UdfError> {
        let types = match emit {
            Emit::State => self.decl().state.clone(),
            Emit::Evaluate => vec![self.decl().ret],
        };
        if groups == 0 {
            return Ok(types
                .iter()
                .map(|t| {
                    datafusion::arrow::array::new_empty_array(&crate::abi::ArrowType::data_type(*t))
                })
                .collect());
        }
        let index = self.index;
        self.with_instance(groups, |instance, limits| {
            instance
                .invoke_emit(limits, index, emit, &types, groups, consume)
                .map_err(|f| match f {
                    Failure::RowError { row, message } => Failure::RowError {
                        row,
                        message: format!("{message} (group {row})"),
                    },
                    other => other,
                })
        })
    }
}
