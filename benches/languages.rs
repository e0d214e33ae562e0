//! The same functions written in Rust, AssemblyScript, JavaScript and
//! Python, all run as weir modules, next to native Rust: `gcd` (integer
//! loop) and `upper` (Unicode strings) at 8192 rows, the fixed cost of a
//! 1-row call, and an instance's start-up (instantiation, plus for
//! JavaScript the QuickJS context and the script's bytecode, for Python
//! monty's session and the source run once: the first call on a freshly
//! loaded module). Python also alone: `x * 2` and a dict lookup, and
//! `@batch` functions (lists in, a list out).
//! Results: BENCHMARKS.md ("Guest languages").
//!
//! Run: `cargo bench --bench languages` (needs `asc`: `npm install -g
//! assemblyscript@0.28`)

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray, StringBuilder};
use weir::{Sandbox, SandboxLimits, SandboxOptions, UdfModule};

const ROWS: usize = 8192;

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a as i64
}

fn native_gcd(args: &[ArrayRef]) -> ArrayRef {
    let a = args[0].as_any().downcast_ref::<Int64Array>().unwrap();
    let b = args[1].as_any().downcast_ref::<Int64Array>().unwrap();
    Arc::new(
        datafusion::arrow::compute::binary::<_, _, _, datafusion::arrow::datatypes::Int64Type>(
            a, b, gcd,
        )
        .unwrap(),
    )
}

fn native_upper(args: &[ArrayRef]) -> ArrayRef {
    let s = args[0].as_any().downcast_ref::<StringArray>().unwrap();
    let mut out = StringBuilder::with_capacity(s.len(), s.value_data().len());
    for v in s.iter() {
        out.append_option(v.map(str::to_uppercase));
    }
    Arc::new(out.finish())
}

/// Deterministic pseudo-random data (xorshift), the same as benches/udf.rs.
fn data(rows: usize, seed: u64) -> (Vec<i64>, Vec<String>) {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
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
    (ints, strings)
}

/// The Python functions: the same logic as benches/js/bench_js.js.
const PYTHON: &str = "
def py_gcd(a, b):
    a, b = abs(a), abs(b)
    while b:
        a, b = b, a % b
    return a

def py_upper(s):
    return s.upper()

def py_twice(x):
    return x * 2

@batch
def py_twice_batch(xs):
    return [x * 2 for x in xs]

@batch
def py_upper_batch(ss):
    return [s.upper() for s in ss]

ZONES = {'weir': 1, 'Dam': 2, 'river': 3, 'flow': 4, 'Kafka': 5, 'arrow': 6}

def py_zone(s):
    return ZONES.get(s.split(' ')[0], 0)
";

const PYTHON_SIGNATURES: [&str; 6] = [
    "py_gcd(a BIGINT, b BIGINT) RETURNS BIGINT",
    "py_upper(s VARCHAR) RETURNS VARCHAR",
    "py_twice(x BIGINT) RETURNS BIGINT",
    "py_zone(s VARCHAR) RETURNS BIGINT",
    "py_twice_batch(x BIGINT) RETURNS BIGINT",
    "py_upper_batch(s VARCHAR) RETURNS VARCHAR",
];

fn python_module(source: &str, signatures: &[&str]) -> Vec<u8> {
    let signatures: Vec<_> = signatures
        .iter()
        .map(|s| weir::lang::parse_signature(s).unwrap())
        .collect();
    weir::lang::python::module("bench_py.py", source, &signatures).unwrap()
}

struct Modules {
    sandbox: Sandbox,
    /// (language, module path, gcd function, upper function)
    languages: Vec<(&'static str, PathBuf, &'static str, &'static str)>,
}

fn modules() -> Modules {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("languages");
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: None,
    })
    .unwrap();
    let rust = weir::toolchain::build_rust(&repo.join("udfs"), &target).expect("build Rust guests");
    let find = |built: &[PathBuf], stem: &str| {
        built
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s == stem))
            .unwrap_or_else(|| panic!("no module {stem}"))
            .clone()
    };
    let as_built =
        weir::toolchain::build_assemblyscript(&sandbox, &repo.join("udfs/as/examples"), &target)
            .expect("build AssemblyScript guests (is asc installed?)");
    let js_built = weir::toolchain::build_js(&sandbox, &repo.join("benches/js"), &target)
        .expect("build JavaScript guests");
    let python = target.join("bench_py.wasm");
    std::fs::write(&python, python_module(PYTHON, &PYTHON_SIGNATURES)).unwrap();
    let languages = vec![
        ("rust_wasm", find(&rust, "geo"), "gcd", ""),
        ("rust_wasm", find(&rust, "text"), "", "shout"),
        (
            "assemblyscript",
            find(&as_built, "text_as"),
            "as_gcd",
            "as_upper",
        ),
        (
            "javascript",
            find(&js_built, "bench_js"),
            "js_gcd",
            "js_upper",
        ),
        ("python", python, "py_gcd", "py_upper"),
    ];
    Modules { sandbox, languages }
}

fn call(module: &UdfModule, function: &str, args: &[ArrayRef]) -> ArrayRef {
    let index = module
        .manifest()
        .functions
        .iter()
        .position(|f| f.name == function)
        .unwrap();
    module.call(index, args, args[0].len()).unwrap()
}

fn benches(c: &mut Criterion) {
    let m = modules();
    let loaded: Vec<(&str, Arc<UdfModule>, &str, &str)> = m
        .languages
        .iter()
        .map(|(lang, path, g, u)| (*lang, m.sandbox.load_file(path).unwrap(), *g, *u))
        .collect();
    let (a, _) = data(ROWS, 3);
    let (b, _) = data(ROWS, 4);
    let ints: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(a)), Arc::new(Int64Array::from(b))];
    let (_, s) = data(ROWS, 5);
    let strings: Vec<ArrayRef> = vec![Arc::new(StringArray::from(s))];
    // The languages agree before they are timed.
    let want_gcd = native_gcd(&ints);
    let want_upper = native_upper(&strings);
    for (lang, module, g, u) in &loaded {
        if !g.is_empty() {
            assert_eq!(&call(module, g, &ints), &want_gcd, "{lang} gcd");
        }
        if !u.is_empty() {
            assert_eq!(&call(module, u, &strings), &want_upper, "{lang} upper");
        }
    }

    let mut group = c.benchmark_group("lang_i64_gcd");
    group.bench_with_input(BenchmarkId::new("native", ROWS), &ints, |bench, args| {
        bench.iter(|| native_gcd(black_box(args)))
    });
    for (lang, module, g, _) in loaded.iter().filter(|l| !l.2.is_empty()) {
        group.bench_with_input(BenchmarkId::new(*lang, ROWS), &ints, |bench, args| {
            bench.iter(|| call(module, g, black_box(args)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("lang_utf8_upper");
    group.bench_with_input(BenchmarkId::new("native", ROWS), &strings, |bench, args| {
        bench.iter(|| native_upper(black_box(args)))
    });
    for (lang, module, _, u) in loaded.iter().filter(|l| !l.3.is_empty()) {
        group.bench_with_input(BenchmarkId::new(*lang, ROWS), &strings, |bench, args| {
            bench.iter(|| call(module, u, black_box(args)))
        });
    }
    group.finish();

    // Python alone: the cheapest call (`x * 2`) and a dict lookup, next to
    // native.
    let python = &loaded.iter().find(|l| l.0 == "python").unwrap().1;
    let twice: Vec<ArrayRef> = vec![ints[0].clone()];
    let mut group = c.benchmark_group("lang_python_twice");
    group.bench_with_input(BenchmarkId::new("native", ROWS), &twice, |bench, args| {
        bench.iter(|| {
            let a = args[0].as_any().downcast_ref::<Int64Array>().unwrap();
            let out: Int64Array = a.unary(|x| x * 2);
            Arc::new(out) as ArrayRef
        })
    });
    group.bench_with_input(BenchmarkId::new("python", ROWS), &twice, |bench, args| {
        bench.iter(|| call(python, "py_twice", black_box(args)))
    });
    group.bench_with_input(
        BenchmarkId::new("python_batch", ROWS),
        &twice,
        |bench, args| bench.iter(|| call(python, "py_twice_batch", black_box(args))),
    );
    group.finish();
    let mut group = c.benchmark_group("lang_python_upper_batch");
    assert_eq!(&call(python, "py_upper_batch", &strings), &want_upper);
    group.bench_with_input(
        BenchmarkId::new("python_batch", ROWS),
        &strings,
        |bench, args| bench.iter(|| call(python, "py_upper_batch", black_box(args))),
    );
    group.finish();
    let mut group = c.benchmark_group("lang_python_dict");
    group.bench_with_input(BenchmarkId::new("python", ROWS), &strings, |bench, args| {
        bench.iter(|| call(python, "py_zone", black_box(args)))
    });
    group.finish();

    // The fixed cost of one call on a warm instance.
    let one: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![84])),
        Arc::new(Int64Array::from(vec![36])),
    ];
    let mut group = c.benchmark_group("lang_call_1_row");
    for (lang, module, g, _) in loaded.iter().filter(|l| !l.2.is_empty()) {
        group.bench_function(*lang, |bench| {
            bench.iter(|| call(module, g, black_box(&one)))
        });
    }
    group.finish();

    // An instance's start-up: a module loaded again (its code compiled
    // already, so this is validation, a fresh instance — for JavaScript the
    // QuickJS context and the script's bytecode — and a 1-row call).
    let mut group = c.benchmark_group("lang_instance_start");
    for (lang, path, g, _) in m.languages.iter().filter(|l| !l.2.is_empty()) {
        let bytes = std::fs::read(path).unwrap();
        group.bench_function(*lang, |bench| {
            bench.iter(|| {
                let module = m.sandbox.load("bench", black_box(&bytes)).unwrap();
                call(&module, g, black_box(&one))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = languages;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(languages);
