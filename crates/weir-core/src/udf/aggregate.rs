//! [`WasmAggregateUdf`]: a guest aggregate as a DataFusion `AggregateUDFImpl`
//! with a vectorized `GroupsAccumulator`: one guest call per input batch,
//! whatever the number of groups it touches.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::filter;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature,
};
use parking_lot::Mutex;

use super::scalar::{coerce_args, signature_of};
use crate::abi::{AggregateDecl, ArrowType};
use crate::sandbox::UdfModule;
use crate::sandbox::aggregate::{AggregateRun, Emit, Fold};

/// Aggregate `index` of a module. Two instances are equal when they name
/// the same aggregate of the same module bytes.
#[derive(Debug)]
pub struct WasmAggregateUdf {
    module: Arc<UdfModule>,
    index: usize,
    signature: Signature,
    return_type: DataType,
    deadline: Option<Instant>,
}

impl WasmAggregateUdf {
    pub fn new(module: Arc<UdfModule>, index: usize) -> Self {
        let decl = &module.manifest().aggregates[index];
        let signature = signature_of(decl.deterministic, decl.args.len());
        WasmAggregateUdf {
            return_type: decl.ret.data_type(),
            module,
            index,
            signature,
            deadline: None,
        }
    }

    /// Calls stop at `deadline` (a request's).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn decl(&self) -> &AggregateDecl {
        &self.module.manifest().aggregates[self.index]
    }

    fn run(&self) -> AggregateRun {
        self.module.aggregate_run(self.index, self.deadline)
    }
}

impl PartialEq for WasmAggregateUdf {
    fn eq(&self, other: &Self) -> bool {
        self.decl().name == other.decl().name && self.module.digest() == other.module.digest()
    }
}

impl Eq for WasmAggregateUdf {}

impl Hash for WasmAggregateUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.decl().name.hash(state);
        self.module.digest().hash(state);
    }
}

fn external(e: crate::sandbox::UdfError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl AggregateUDFImpl for WasmAggregateUdf {
    fn name(&self) -> &str {
        &self.decl().name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.return_type.clone())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let decl = self.decl();
        let shown: Vec<&str> = decl.args.iter().map(|t| t.name()).collect();
        coerce_args(
            "aggregate",
            &decl.name,
            &decl.args,
            &shown.join(", "),
            arg_types,
        )
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(self
            .decl()
            .state
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Arc::new(Field::new(
                    format_state_name(args.name, &format!("state{i}")),
                    t.data_type(),
                    true,
                ))
            })
            .collect())
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if acc_args.is_distinct {
            return plan_err!(
                "aggregate `{}` is a WebAssembly aggregate: DISTINCT is not supported; deduplicate in a subquery",
                self.decl().name
            );
        }
        Ok(Box::new(WasmAccumulator {
            run: Mutex::new(self.run()),
            retract: self.decl().retract,
        }))
    }

    fn groups_accumulator_supported(&self, acc_args: AccumulatorArgs) -> bool {
        !acc_args.is_distinct
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(WasmGroupsAccumulator {
            run: self.run(),
            groups: 0,
        }))
    }
}

/// Group ids as the uint32 column the guest reads.
fn group_column(group_indices: &[usize]) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(
        group_indices.iter().map(|&g| g as u32),
    ))
}

/// The rows `opt_filter` keeps (all of them without a filter).
fn filtered(
    values: &[ArrayRef],
    group_ids: ArrayRef,
    opt_filter: Option<&BooleanArray>,
) -> Result<(Vec<ArrayRef>, ArrayRef)> {
    let Some(keep) = opt_filter else {
        return Ok((values.to_vec(), group_ids));
    };
    let values = values
        .iter()
        .map(|v| filter(v, keep))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((values, filter(&group_ids, keep)?))
}

/// Every group of a query's partition, in one guest instance.
#[derive(Debug)]
pub struct WasmGroupsAccumulator {
    run: AggregateRun,
    /// Groups the guest holds (the largest `total_num_groups` seen, less
    /// those emitted).
    groups: usize,
}

impl WasmGroupsAccumulator {
    fn fold(
        &mut self,
        fold: Fold,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups = self.groups.max(total_num_groups);
        let (values, ids) = filtered(values, group_column(group_indices), opt_filter)?;
        let rows = ids.len();
        self.run
            .fold(fold, &values, ids, rows, self.groups)
            .map_err(external)
    }

    fn take(&mut self, emit_to: EmitTo) -> usize {
        let n = match emit_to {
            EmitTo::All => self.groups,
            EmitTo::First(n) => n.min(self.groups),
        };
        self.groups -= n;
        n
    }
}

impl GroupsAccumulator for WasmGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold(
            Fold::Update,
            values,
            group_indices,
            opt_filter,
            total_num_groups,
        )
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = self.take(emit_to);
        let mut columns = self.run.emit(Emit::Evaluate, n, true).map_err(external)?;
        columns
            .pop()
            .ok_or_else(|| DataFusionError::Internal("no result column".into()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = self.take(emit_to);
        self.run.emit(Emit::State, n, true).map_err(external)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold(Fold::Merge, values, group_indices, None, total_num_groups)
    }

    /// Never called: `supports_convert_to_state` is false (a state is the
    /// guest's to make).
    fn convert_to_state(
        &self,
        _values: &[ArrayRef],
        _opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        datafusion::common::not_impl_err!("convert_to_state of a WebAssembly aggregate")
    }

    fn size(&self) -> usize {
        self.run.memory_bytes() + std::mem::size_of::<Self>()
    }
}

/// One group (an aggregate without `GROUP BY`, or a window frame), in one
/// guest instance: group 0 of the ABI.
#[derive(Debug)]
pub struct WasmAccumulator {
    run: Mutex<AggregateRun>,
    retract: bool,
}

impl WasmAccumulator {
    fn fold(&mut self, fold: Fold, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |v| v.len());
        let ids: ArrayRef = Arc::new(UInt32Array::from(vec![0u32; rows]));
        self.run
            .get_mut()
            .fold(fold, values, ids, rows, 1)
            .map_err(external)
    }

    fn emit(&mut self, emit: Emit) -> Result<Vec<ScalarValue>> {
        let columns = self.run.get_mut().emit(emit, 1, false).map_err(external)?;
        columns
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0))
            .collect()
    }
}

impl Accumulator for WasmAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.fold(Fold::Update, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.emit(Emit::Evaluate)?
            .pop()
            .ok_or_else(|| DataFusionError::Internal("no result".into()))
    }

    fn size(&self) -> usize {
        self.run.lock().memory_bytes() + std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.emit(Emit::State)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.fold(Fold::Merge, states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.fold(Fold::Retract, values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.retract
    }
}
