//! [`WasmScalarUdf`]: a guest function as a DataFusion `ScalarUDFImpl`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::abi::FunctionDecl;
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
}

impl WasmScalarUdf {
    pub fn new(module: Arc<UdfModule>, index: usize) -> Self {
        let decl = &module.manifest().functions[index];
        let volatility = if decl.deterministic {
            Volatility::Immutable
        } else {
            Volatility::Volatile
        };
        let types = decl.args.iter().map(|t| t.data_type()).collect();
        let signature = if decl.args.is_empty() {
            Signature::nullary(volatility)
        } else {
            Signature::exact(types, volatility)
        };
        let return_type = decl.ret.data_type();
        WasmScalarUdf {
            module,
            index,
            signature,
            return_type,
        }
    }

    pub fn decl(&self) -> &FunctionDecl {
        &self.module.manifest().functions[self.index]
    }

    pub fn module(&self) -> &Arc<UdfModule> {
        &self.module
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
        let out = self
            .module
            .call(self.index, &arrays, rows)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if all_scalar && !args.args.is_empty() && out.len() == 1 {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
        }
        Ok(ColumnarValue::Array(out))
    }
}
