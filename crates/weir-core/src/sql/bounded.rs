//! Every query weir plans runs in a context whose memory is bounded: a
//! memory pool for execution, and size checks on the built-in functions
//! whose output can grow far beyond their input (`repeat`, `lpad`, `rpad`,
//! `replace`; weir builds DataFusion without regular expressions) — those
//! also run at plan time, when
//! DataFusion folds constants, outside any pool (`repeat('x',
//! 1000000000000)` would ask for a terabyte and abort the process).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::make_array;
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::{SessionConfig, SessionContext};

/// How a function's output size follows from its arguments (an upper
/// bound per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: |s| × n bytes.
    Repeat,
    /// `lpad(s, n, …)` / `rpad`: n characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: |s| + (|s| / max(|from|, 1) + 1) × |to|.
    Replace,
}

/// A built-in function with its output size checked first.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_bytes: u64,
    /// What to raise, named in the error.
    key: String,
    /// Bytes all bounded calls over literals of the session built so far:
    /// constants folded at plan time live in the plan, outside the pool,
    /// so together they are held to `max_bytes` too (twelve calls each
    /// just under the bound used to make twelve times it).
    folded: Folded,
    /// The query's memory pool: a call over columns reserves its output
    /// there for as long as the output lives (arguments of one call, or
    /// columns of one batch, are alive together).
    pool: Pool,
}

/// The session's memory pool (not part of the functions' identity).
#[derive(Debug, Clone)]
struct Pool(Arc<dyn MemoryPool>);

impl PartialEq for Pool {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Pool {}

impl std::hash::Hash for Pool {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// What keeps a bounded call's output buffer alive, with the pool
/// reservation that accounts for it: both go when the buffer goes.
struct Held {
    _buffer: Buffer,
    _reservation: std::panic::AssertUnwindSafe<MemoryReservation>,
}

/// `output` with `reservation` tied to the life of its largest buffer.
fn hold(output: ColumnarValue, reservation: MemoryReservation) -> ColumnarValue {
    let ColumnarValue::Array(array) = output else {
        return output;
    };
    let data = array.to_data();
    let mut buffers = data.buffers().to_vec();
    let Some((largest, _)) = buffers.iter().enumerate().max_by_key(|(_, b)| b.len()) else {
        return ColumnarValue::Array(array);
    };
    let buffer = buffers[largest].clone();
    let Some(ptr) = std::ptr::NonNull::new(buffer.as_ptr().cast_mut()) else {
        return ColumnarValue::Array(array);
    };
    let len = buffer.len();
    let owner = Arc::new(Held {
        _buffer: buffer,
        _reservation: std::panic::AssertUnwindSafe(reservation),
    });
    // SAFETY: `ptr` and `len` describe the bytes of `buffer`, which the
    // owner keeps alive (and never mutates) for as long as the new buffer
    // exists.
    buffers[largest] = unsafe { Buffer::from_custom_allocation(ptr, len, owner) };
    match data.into_builder().buffers(buffers).build() {
        Ok(data) => ColumnarValue::Array(make_array(data)),
        Err(_) => ColumnarValue::Array(array),
    }
}

/// A total shared by the bounded functions of one session (not part of
/// their identity).
#[derive(Debug, Default, Clone)]
struct Folded(Arc<AtomicU64>);

impl PartialEq for Folded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Folded {}

impl std::hash::Hash for Folded {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

fn row_values(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    arg.to_array(rows)
}

/// Per row (a scalar once, for every row): the values of an `Int64` array.
fn per_row(array: &ArrayRef, rows: usize, scalar: bool) -> Vec<i64> {
    let ints = array.as_primitive::<Int64Type>();
    let value = |i: usize| if ints.is_null(i) { 0 } else { ints.value(i) };
    if scalar {
        vec![if ints.is_empty() { 0 } else { value(0) }; rows]
    } else {
        (0..ints.len()).map(value).collect()
    }
}

/// Per row: the number argument as i64 (NULL → 0).
fn counts(arg: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let scalar = matches!(arg, ColumnarValue::Scalar(_));
    let array = cast(
        &row_values(arg, if scalar { 1 } else { rows })?,
        &DataType::Int64,
    )?;
    Ok(per_row(&array, rows, scalar))
}

/// Per row: the byte length of the string argument (NULL → 0). A scalar
/// is measured once, not copied per row.
fn byte_lengths(arg: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let scalar = matches!(arg, ColumnarValue::Scalar(_));
    let array = row_values(arg, if scalar { 1 } else { rows })?;
    let lengths = cast(&length(&array)?, &DataType::Int64)?;
    Ok(per_row(&lengths, rows, scalar))
}

impl Bounded {
    fn predicted_bytes(&self, args: &ScalarFunctionArgs) -> Result<u64> {
        let rows = args.number_rows.max(1);
        let u = |v: i64| v.max(0) as u64;
        let sum = |values: Vec<u64>| values.into_iter().fold(0u64, u64::saturating_add);
        let arg = |i: usize| args.args.get(i);
        let total = match (self.growth, arg(0), arg(1), arg(2)) {
            (Growth::Repeat, Some(text), Some(n), _) => {
                let (len, n) = (byte_lengths(text, rows)?, counts(n, rows)?);
                sum(len
                    .iter()
                    .zip(&n)
                    .map(|(l, n)| u(*l).saturating_mul(u(*n)))
                    .collect())
            }
            (Growth::Pad, Some(_), Some(n), _) => sum(counts(n, rows)?
                .iter()
                .map(|n| u(*n).saturating_mul(4))
                .collect()),
            (Growth::Replace, Some(text), Some(from), Some(to)) => {
                let (len, from, to) = (
                    byte_lengths(text, rows)?,
                    byte_lengths(from, rows)?,
                    byte_lengths(to, rows)?,
                );
                sum(len
                    .iter()
                    .zip(&from)
                    .zip(&to)
                    .map(|((len, from), to)| {
                        let matches = u(*len) / u(*from).max(1) + 1;
                        u(*len).saturating_add(matches.saturating_mul(u(*to)))
                    })
                    .collect())
            }
            _ => 0,
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
        let literal = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if literal {
            let total = self
                .folded
                .0
                .fetch_add(bytes, Ordering::Relaxed)
                .saturating_add(bytes);
            if total > self.max_bytes {
                return exec_err!(
                    "{}() over constants would bring the query's constant strings to {total} bytes, above the {} bytes a query may hold; raise `{}` or ask for less",
                    self.inner.name(),
                    self.max_bytes,
                    self.key
                );
            }
            return self.inner.invoke_with_args(args);
        }
        let reservation =
            MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool.0);
        if reservation
            .try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))
            .is_err()
        {
            return exec_err!(
                "{}() would produce {bytes} bytes while the query already holds {} of the {} bytes it may; raise `{}` or ask for less",
                self.inner.name(),
                self.pool.0.reserved(),
                self.max_bytes,
                self.key
            );
        }
        Ok(hold(self.inner.invoke_with_args(args)?, reservation))
    }
}

/// A session for one query or pipeline whose memory is bounded by
/// `max_bytes` (named by `key` in errors): execution draws from a pool of
/// that size, and `repeat`/`lpad`/`rpad` refuse to produce more.
pub fn bounded_context(config: SessionConfig, max_bytes: u64, key: &str) -> SessionContext {
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(
        usize::try_from(max_bytes).unwrap_or(usize::MAX),
    ));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool.clone())
        .build_arc();
    let ctx = match runtime {
        Ok(runtime) => SessionContext::new_with_config_rt(config, runtime),
        Err(_) => SessionContext::new_with_config(config),
    };
    let bounded = [
        (datafusion::functions::string::repeat(), Growth::Repeat),
        (datafusion::functions::unicode::lpad(), Growth::Pad),
        (datafusion::functions::unicode::rpad(), Growth::Pad),
        (datafusion::functions::string::replace(), Growth::Replace),
    ];
    let folded = Folded::default();
    for (inner, growth) in bounded {
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth,
            max_bytes,
            key: key.to_string(),
            folded: folded.clone(),
            pool: Pool(pool.clone()),
        }));
    }
    ctx
}
