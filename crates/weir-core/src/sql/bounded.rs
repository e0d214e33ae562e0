//! Every query weir plans runs in a context whose memory is bounded: a
//! memory pool for execution, and size checks on the built-in functions
//! whose output grows with an argument (`repeat`, `lpad`, `rpad`) — those
//! also run at plan time, when DataFusion folds constants, outside any
//! pool (`repeat('x', 1000000000000)` would ask for a terabyte and abort
//! the process).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::{SessionConfig, SessionContext};

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: |s| × n bytes per row.
    Repeat,
    /// `lpad(s, n, …)` / `rpad`: at least n bytes per row.
    Pad,
}

/// A built-in function with its output size checked first.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_bytes: u64,
    /// What to raise, named in the error.
    key: String,
}

fn row_values(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    arg.to_array(rows)
}

/// Per row: the number argument as i64 (NULL → 0).
fn counts(arg: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let array = cast(&row_values(arg, rows)?, &DataType::Int64)?;
    let ints = array.as_primitive::<Int64Type>();
    Ok((0..ints.len())
        .map(|i| if ints.is_null(i) { 0 } else { ints.value(i) })
        .collect())
}

/// Per row: the byte length of the string argument (NULL → 0).
fn byte_lengths(arg: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let array = row_values(arg, rows)?;
    let lengths = cast(&length(&array)?, &DataType::Int64)?;
    let ints = lengths.as_primitive::<Int64Type>();
    Ok((0..ints.len())
        .map(|i| if ints.is_null(i) { 0 } else { ints.value(i) })
        .collect())
}

impl Bounded {
    fn predicted_bytes(&self, args: &ScalarFunctionArgs) -> Result<u64> {
        let rows = args.number_rows.max(1);
        let (Some(text), Some(n)) = (args.args.first(), args.args.get(1)) else {
            return Ok(0);
        };
        let n = counts(n, rows)?;
        let total = match self.growth {
            Growth::Repeat => {
                let lengths = byte_lengths(text, rows)?;
                lengths
                    .iter()
                    .zip(&n)
                    .map(|(l, n)| (*l.max(&0) as u64).saturating_mul(*n.max(&0) as u64))
                    .fold(0u64, u64::saturating_add)
            }
            Growth::Pad => n
                .iter()
                .map(|n| *n.max(&0) as u64)
                .fold(0u64, u64::saturating_add),
        };
        Ok(total)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.predicted_bytes(&args)?;
        if bytes > self.max_bytes {
            return exec_err!(
                "{}() would produce {bytes} bytes, above the {} bytes a query may hold; raise `{}` or ask for less",
                self.inner.name(),
                self.max_bytes,
                self.key
            );
        }
        self.inner.invoke_with_args(args)
    }
}

/// A session for one query or pipeline whose memory is bounded by
/// `max_bytes` (named by `key` in errors): execution draws from a pool of
/// that size, and `repeat`/`lpad`/`rpad` refuse to produce more.
pub fn bounded_context(config: SessionConfig, max_bytes: u64, key: &str) -> SessionContext {
    let pool = GreedyMemoryPool::new(usize::try_from(max_bytes).unwrap_or(usize::MAX));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .build_arc();
    let ctx = match runtime {
        Ok(runtime) => SessionContext::new_with_config_rt(config, runtime),
        Err(_) => SessionContext::new_with_config(config),
    };
    let bounded = [
        (datafusion::functions::string::repeat(), Growth::Repeat),
        (datafusion::functions::unicode::lpad(), Growth::Pad),
        (datafusion::functions::unicode::rpad(), Growth::Pad),
    ];
    for (inner, growth) in bounded {
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth,
            max_bytes,
            key: key.to_string(),
        }));
    }
    ctx
}
