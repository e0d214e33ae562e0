//! The Python runtime guest over the life of an instance (its SQL
//! behaviour is tests/sql/python.slt).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use weir::{Sandbox, SandboxLimits, SandboxOptions};

/// An instance serves many calls without growing: monty's session keeps a
/// little per call, so the runtime starts it again every so often. Before
/// that, ~300 bytes a call filled 64 MiB after ~227 000 one-row calls and
/// the call that crossed the limit failed. Here the limit is 8 MiB, which
/// the old runtime crossed after 24 807 calls.
#[test]
fn an_instance_serves_many_calls_without_growing() {
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits {
            memory_bytes: 8 << 20,
            instances_per_module: 1,
            ..SandboxLimits::default()
        },
        cache_dir: Some(crate::support::cache_dir()),
    })
    .unwrap();
    let signatures =
        [weir::lang::parse_signature("py_twice(x BIGINT) RETURNS BIGINT VOLATILE").unwrap()];
    let wasm = weir::lang::python::module(
        "twice.py",
        "import random\ndef py_twice(x):\n    return x * 2 + random.randint(0, 0)\n",
        &signatures,
    )
    .unwrap();
    let module = sandbox.load("twice.py", &wasm).unwrap();
    for i in 0..60_000i64 {
        let args: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![i]))];
        let out = module
            .call(0, &args, 1)
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(out.value(0), 2 * i);
    }
}
