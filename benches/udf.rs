//! WASM UDFs next to a native Rust `ScalarUDF` and DataFusion's built-in
//! for the same logic, at 1024, 8192 and 65536 rows, plus the fixed cost of
//! one guest call, the CPU meter (epoch vs fuel) and the host side of an
//! Arrow IPC ABI for comparison. Results: BENCHMARKS.md.
//!
//! Run: `cargo bench --bench udf`

use std::hint::black_box;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::compute::binary;
use datafusion::arrow::compute::kernels::numeric::{add, mul};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::config::ConfigOptions;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use weir::{CpuMeter, Sandbox, SandboxLimits, SandboxOptions, UdfModule};

const SIZES: [usize; 3] = [1024, 8192, 65536];

/// The same logic as the example guests, natively.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Native {
    ScaleAdd,
    Gcd,
    Upper,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct NativeUdf {
    kind: Native,
    signature: Signature,
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a as i64
}

impl ScalarUDFImpl for NativeUdf {
    fn name(&self) -> &str {
        "native"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Native::ScaleAdd => DataType::Float64,
            Native::Gcd => DataType::Int64,
            Native::Upper => DataType::Utf8,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out: ArrayRef = match self.kind {
            // Idiomatic native UDFs: arrow's vectorized `binary` kernel
            // (NULL bitmaps combined, values in a tight loop).
            Native::ScaleAdd => {
                let a = arrays[0].as_primitive::<Float64Type>();
                let b = arrays[1].as_primitive::<Float64Type>();
                Arc::new(binary::<_, _, _, Float64Type>(a, b, |a, b| a * 1.5 + b)?)
            }
            Native::Gcd => {
                let a = arrays[0].as_primitive::<Int64Type>();
                let b = arrays[1].as_primitive::<Int64Type>();
                Arc::new(binary::<_, _, _, Int64Type>(a, b, gcd)?)
            }
            Native::Upper => {
                let s = arrays[0].as_any().downcast_ref::<StringArray>().unwrap();
                let mut out = StringBuilder::with_capacity(s.len(), s.value_data().len());
                for v in s.iter() {
                    out.append_option(v.map(str::to_uppercase));
                }
                Arc::new(out.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

fn native(kind: Native) -> ScalarUDF {
    ScalarUDF::new_from_impl(NativeUdf {
        kind,
        signature: Signature::any(1, Volatility::Immutable),
    })
}

fn invoke(udf: &ScalarUDF, args: &[ArrayRef], config: &Arc<ConfigOptions>) -> ArrayRef {
    let rows = args[0].len();
    let arg_fields = args
        .iter()
        .enumerate()
        .map(|(i, a)| Arc::new(Field::new(format!("a{i}"), a.data_type().clone(), true)))
        .collect();
    let types: Vec<DataType> = args.iter().map(|a| a.data_type().clone()).collect();
    let ret = udf.return_type(&types).unwrap();
    let out = udf
        .invoke_with_args(ScalarFunctionArgs {
            args: args
                .iter()
                .map(|a| ColumnarValue::Array(a.clone()))
                .collect(),
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("out", ret, true)),
            config_options: config.clone(),
        })
        .unwrap();
    match out {
        ColumnarValue::Array(a) => a,
        ColumnarValue::Scalar(s) => s.to_array().unwrap(),
    }
}

struct Guests {
    passthrough: Arc<UdfModule>,
    geo: Arc<UdfModule>,
    text: Arc<UdfModule>,
    geo_fuel: Arc<UdfModule>,
}

fn guests() -> Guests {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("udfs");
    let built = weir::toolchain::build_rust(&repo.join("udfs"), &target).expect("build guest UDFs");
    let find = |stem: &str| {
        built
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s == stem))
            .unwrap()
            .clone()
    };
    let options = |cpu_meter| SandboxOptions {
        limits: SandboxLimits {
            cpu_meter,
            ..SandboxLimits::default()
        },
        cache_dir: None,
    };
    let epoch = Sandbox::with_options(options(CpuMeter::Epoch)).unwrap();
    let fuel = Sandbox::with_options(options(CpuMeter::Fuel)).unwrap();
    Guests {
        passthrough: epoch
            .load_file(repo.join("benches/passthrough.wat"))
            .unwrap(),
        geo: epoch.load_file(find("geo")).unwrap(),
        text: epoch.load_file(find("text")).unwrap(),
        geo_fuel: fuel.load_file(find("geo")).unwrap(),
    }
}

fn wasm_udf(module: &Arc<UdfModule>, name: &str) -> ScalarUDF {
    weir::scalar_udfs(module)
        .into_iter()
        .find(|u| u.name() == name)
        .unwrap()
}

/// Deterministic pseudo-random data (xorshift), so runs compare.
fn data(rows: usize, seed: u64) -> (Vec<f64>, Vec<i64>, Vec<String>) {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let floats = (0..rows).map(|_| (next() % 10_000) as f64 / 7.0).collect();
    let ints = (0..rows).map(|_| (next() % 1_000_000_000) as i64).collect();
    let words = ["weir", "Dam", "river", "straße", "flow", "Kafka", "arrow"];
    let strings = (0..rows)
        .map(|_| {
            let n = next();
            format!(
                "{} {} {}",
                words[n as usize % 7],
                words[(n >> 8) as usize % 7],
                n % 1000
            )
        })
        .collect();
    (floats, ints, strings)
}

fn benches(c: &mut Criterion) {
    let g = guests();
    let config = Arc::new(ConfigOptions::default());
    let wasm_scale = wasm_udf(&g.geo, "scale_add");
    let wasm_floor = wasm_udf(&g.passthrough, "first");
    let wasm_gcd = wasm_udf(&g.geo, "gcd");
    let wasm_gcd_fuel = wasm_udf(&g.geo_fuel, "gcd");
    let wasm_upper = wasm_udf(&g.text, "shout");
    let native_scale = native(Native::ScaleAdd);
    let native_gcd = native(Native::Gcd);
    let native_upper = native(Native::Upper);
    let builtin_gcd = datafusion::functions::math::gcd();
    let builtin_upper = datafusion::functions::string::upper();

    let mut group = c.benchmark_group("f64_scale_add");
    for rows in SIZES {
        let (f1, ..) = data(rows, 1);
        let (f2, ..) = data(rows, 2);
        let args: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(f1)),
            Arc::new(Float64Array::from(f2)),
        ];
        group.bench_with_input(BenchmarkId::new("wasm", rows), &args, |b, args| {
            b.iter(|| invoke(&wasm_scale, black_box(args), &config))
        });
        group.bench_with_input(
            BenchmarkId::new("wasm_copy_floor", rows),
            &args,
            |b, args| b.iter(|| invoke(&wasm_floor, black_box(args), &config)),
        );
        group.bench_with_input(BenchmarkId::new("native", rows), &args, |b, args| {
            b.iter(|| invoke(&native_scale, black_box(args), &config))
        });
        let k = ScalarValue::Float64(Some(1.5)).to_scalar().unwrap();
        group.bench_with_input(BenchmarkId::new("builtin", rows), &args, |b, args| {
            b.iter(|| add(&mul(black_box(&args[0]), &k).unwrap(), &args[1]).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("i64_gcd");
    for rows in SIZES {
        let (_, i1, _) = data(rows, 3);
        let (_, i2, _) = data(rows, 4);
        let args: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(i1)),
            Arc::new(Int64Array::from(i2)),
        ];
        group.bench_with_input(BenchmarkId::new("wasm", rows), &args, |b, args| {
            b.iter(|| invoke(&wasm_gcd, black_box(args), &config))
        });
        group.bench_with_input(BenchmarkId::new("wasm_fuel", rows), &args, |b, args| {
            b.iter(|| invoke(&wasm_gcd_fuel, black_box(args), &config))
        });
        group.bench_with_input(BenchmarkId::new("native", rows), &args, |b, args| {
            b.iter(|| invoke(&native_gcd, black_box(args), &config))
        });
        group.bench_with_input(BenchmarkId::new("builtin", rows), &args, |b, args| {
            b.iter(|| invoke(&builtin_gcd, black_box(args), &config))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("utf8_upper");
    for rows in SIZES {
        let (.., s) = data(rows, 5);
        let args: Vec<ArrayRef> = vec![Arc::new(StringArray::from(s))];
        group.bench_with_input(BenchmarkId::new("wasm", rows), &args, |b, args| {
            b.iter(|| invoke(&wasm_upper, black_box(args), &config))
        });
        group.bench_with_input(BenchmarkId::new("native", rows), &args, |b, args| {
            b.iter(|| invoke(&native_upper, black_box(args), &config))
        });
        group.bench_with_input(BenchmarkId::new("builtin", rows), &args, |b, args| {
            b.iter(|| invoke(&builtin_upper, black_box(args), &config))
        });
    }
    group.finish();

    // The fixed cost of one call: a 1-row batch.
    let mut group = c.benchmark_group("call_1_row");
    let one: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![84])),
        Arc::new(Int64Array::from(vec![36])),
    ];
    group.bench_function("wasm_gcd", |b| {
        b.iter(|| invoke(&wasm_gcd, black_box(&one), &config))
    });
    group.bench_function("wasm_gcd_module_call", |b| {
        b.iter(|| g.geo.call(0, black_box(&one), 1).unwrap())
    });
    group.bench_function("native_gcd", |b| {
        b.iter(|| invoke(&native_gcd, black_box(&one), &config))
    });
    group.finish();

    // What an Arrow IPC ABI costs on the host side alone: encoding the
    // arguments and decoding a result, before any guest work.
    let mut group = c.benchmark_group("ipc_host_side");
    for rows in [1, 8192] {
        let (f1, ..) = data(rows, 1);
        let (f2, ..) = data(rows, 2);
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float64, true),
            Field::new("b", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Float64Array::from(f1)),
                Arc::new(Float64Array::from(f2)),
            ],
        )
        .unwrap();
        group.bench_with_input(
            BenchmarkId::new("encode_decode", rows),
            &batch,
            |b, batch| {
                b.iter(|| {
                    let mut buf = Vec::new();
                    let mut w = StreamWriter::try_new(&mut buf, &schema).unwrap();
                    w.write(black_box(batch)).unwrap();
                    w.finish().unwrap();
                    drop(w);
                    let r = StreamReader::try_new(Cursor::new(buf), None).unwrap();
                    r.map(|b| b.unwrap().num_rows()).sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = udf;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(udf);
