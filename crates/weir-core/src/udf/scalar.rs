//! [`WasmScalarUdf`]: a guest function as a DataFusion `ScalarUDFImpl`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::row_errors::{CollectedCall, RowErrorCollector};
use crate::abi::ArrowType;
use crate::abi::{AbiType, FunctionDecl};
use crate::sandbox::UdfModule;

/// Calls function `index` of a module once per batch.
///
/// Deterministic functions are `Immutable` (DataFusion may fold them over
/// literals at plan time: the same limits apply then), others `Volatile`.
/// Two instances are equal when they name the same function of the same
/// module bytes.
#[derive(Debug)]
pub struct WasmScalarUdf {
    module: Arc<UdfModule>,
    index: usize,
    signature: Signature,
    return_type: DataType,
    /// Where row errors go instead of failing the query, while active.
    row_errors: Option<Arc<RowErrorCollector>>,
    /// The deadline of the request the function serves: calls due after
    /// it are cancelled, a call in flight then is interrupted.
    deadline: Option<Instant>,
    /// Literal arguments whose call failed, and why. DataFusion folds a
    /// call over literals in every optimizer pass and, when it fails,
    /// keeps the call for execution: each attempt would get a fresh CPU
    /// budget. A failed literal call fails at once after the first.
    failed_literals: Arc<Mutex<Vec<FailedLiteral>>>,
}

/// Literal arguments of a failed call, and the error.
type FailedLiteral = (Vec<ScalarValue>, String);

/// Failed literal calls remembered per function (the oldest forgotten).
const FAILED_LITERALS: usize = 16;

impl WasmScalarUdf {
    pub fn new(module: Arc<UdfModule>, index: usize) -> Self {
        let decl = &module.manifest().functions[index];
        let signature = signature_of(decl.deterministic, decl.args.len());
        let return_type = decl.ret.data_type();
        WasmScalarUdf {
            module,
            index,
            signature,
            return_type,
            row_errors: None,
            deadline: None,
            failed_literals: Arc::default(),
        }
    }

    /// Calls stop at `deadline` (a request's), see [`UdfModule::call_until`].
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Row errors go to `collector` while it is active.
    pub fn with_row_errors(mut self, collector: Arc<RowErrorCollector>) -> Self {
        self.row_errors = Some(collector);
        self
    }

    pub fn decl(&self) -> &FunctionDecl {
        &self.module.manifest().functions[self.index]
    }

    pub fn module(&self) -> &Arc<UdfModule> {
        &self.module
    }
}

impl WasmScalarUdf {
    /// A call over literals only: refused at once when the same literals
    /// failed before (see `failed_literals`).
    fn call_literal(
        &self,
        args: &[ColumnarValue],
        arrays: &[datafusion::arrow::array::ArrayRef],
        rows: usize,
    ) -> Result<datafusion::arrow::array::ArrayRef> {
        let literals: Vec<ScalarValue> = args
            .iter()
            .filter_map(|a| match a {
                ColumnarValue::Scalar(s) => Some(s.clone()),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        let failed = |list: &Vec<FailedLiteral>| {
            list.iter()
                .find(|(l, _)| *l == literals)
                .map(|(_, why)| why.clone())
        };
        if let Some(why) = self.failed_literals.lock().ok().and_then(|l| failed(&l)) {
            return Err(DataFusionError::Execution(why));
        }
        self.module
            .call_until(self.index, arrays, rows, self.deadline)
            .map_err(|e| {
                let why = e.to_string();
                if let Ok(mut list) = self.failed_literals.lock() {
                    if list.len() == FAILED_LITERALS {
                        list.remove(0);
                    }
                    list.push((literals.clone(), why));
                }
                DataFusionError::External(Box::new(e))
            })
    }
}

impl PartialEq for WasmScalarUdf {
    fn eq(&self, other: &Self) -> bool {
        self.decl().name == other.decl().name && self.module.digest() == other.module.digest()
    }
}

impl Eq for WasmScalarUdf {}

impl Hash for WasmScalarUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.decl().name.hash(state);
        self.module.digest().hash(state);
    }
}

impl ScalarUDFImpl for WasmScalarUdf {
    fn name(&self) -> &str {
        &self.decl().name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.return_type.clone())
    }

    /// Accepts what a SQL user means: any integer or float literal for a
    /// numeric argument, any string encoding for utf8, any timestamp unit or
    /// zone for timestamp_us, dictionaries of those. DataFusion inserts the
    /// casts; an unconvertible value is a plan-time error naming the argument.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let decl = self.decl();
        coerce_args("udf", &decl.name, &decl.args, &decl.signature(), arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        // Literal-only calls run once, on one row.
        let rows = if all_scalar && !args.args.is_empty() {
            1
        } else {
            args.number_rows
        };
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let out = match &self.row_errors {
            Some(collector) if collector.is_active() => {
                let (out, errors) = self
                    .module
                    .call_collecting(self.index, &arrays, rows)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                if !errors.is_empty() {
                    collector.push(CollectedCall { rows, errors });
                }
                out
            }
            _ if all_scalar => self.call_literal(&args.args, &arrays, rows)?,
            _ => self
                .module
                .call_until(self.index, &arrays, rows, self.deadline)
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
        };
        if all_scalar && !args.args.is_empty() && out.len() == 1 {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
        }
        Ok(ColumnarValue::Array(out))
    }
}

/// A guest function's DataFusion signature: `Immutable` when deterministic
/// (foldable, cacheable), else `Volatile`; argument types checked by
/// [`coerce_args`].
pub(super) fn signature_of(deterministic: bool, args: usize) -> Signature {
    let volatility = if deterministic {
        Volatility::Immutable
    } else {
        Volatility::Volatile
    };
    if args == 0 {
        Signature::nullary(volatility)
    } else {
        Signature::user_defined(volatility)
    }
}

/// The declared types `args` for the `given` argument types of `kind`
/// (`udf`, `aggregate`) `name`, or a plan error naming the argument.
pub(super) fn coerce_args(
    kind: &str,
    name: &str,
    args: &[AbiType],
    shown: &str,
    given: &[DataType],
) -> Result<Vec<DataType>> {
    if given.len() != args.len() {
        return plan_err!(
            "{kind} `{name}` takes {} arguments ({shown}), {} given",
            args.len(),
            given.len()
        );
    }
    given
        .iter()
        .zip(args)
        .enumerate()
        .map(|(i, (given, wanted))| {
            if coercible(given, *wanted) {
                Ok(wanted.data_type())
            } else {
                plan_err!(
                    "{kind} `{name}` argument {} must be {wanted}, got {given}; add a CAST",
                    i + 1
                )
            }
        })
        .collect()
}

/// Whether a value of `given` may be implicitly converted to `wanted`.
fn coercible(given: &DataType, wanted: AbiType) -> bool {
    use DataType as D;
    if let D::Dictionary(_, value) = given {
        return coercible(value, wanted);
    }
    if matches!(given, D::Null) || *given == wanted.data_type() {
        return true;
    }
    match wanted {
        AbiType::Boolean => false,
        AbiType::Int8
        | AbiType::Int16
        | AbiType::Int32
        | AbiType::Int64
        | AbiType::UInt8
        | AbiType::UInt16
        | AbiType::UInt32
        | AbiType::UInt64 => given.is_integer(),
        AbiType::Float32 | AbiType::Float64 => given.is_numeric(),
        AbiType::Utf8 => matches!(given, D::Utf8 | D::LargeUtf8 | D::Utf8View),
        AbiType::Binary => matches!(
            given,
            D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_)
        ),
        AbiType::TimestampMicros => matches!(given, D::Timestamp(_, _)),
        AbiType::Date32 => matches!(given, D::Date32 | D::Date64),
    }
}
