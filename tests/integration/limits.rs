//! One limits model: `[sandbox]` values are ceilings, a tenant's policy
//! sets its budgets and capabilities up to them, and every limit error
//! names the key that was actually in force.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use weir::tenant::{Policy, Tenants};
use weir::{Sandbox, SandboxLimits, SandboxOptions};

use crate::support;

fn sandbox(limits: SandboxLimits) -> Sandbox {
    Sandbox::with_options(SandboxOptions {
        limits,
        cache_dir: None,
    })
    .unwrap()
}

fn tenants(policy: &str) -> Tenants {
    Tenants::new(Policy::from_toml(policy).unwrap())
}

/// The error of one call of the endless loop for `tenant`.
fn cpu_error(sandbox: &Sandbox, tenants: &Tenants, tenant: &str) -> String {
    let path = support::repo().join("tests/hostile/infinite_loop.wat");
    let module = sandbox.load_file_for(&path, &tenants.get(tenant)).unwrap();
    let args: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![1, 2]))];
    module.call(0, &args, 2).unwrap_err().to_string()
}

#[test]
fn a_cpu_error_names_the_key_that_bound() {
    let engine = sandbox(SandboxLimits {
        cpu_ms_per_batch: 300,
        ..SandboxLimits::default()
    });
    let t = tenants(
        "[defaults]\ncpu_ms_per_batch = 60\n[tenants.acme]\ncpu_ms_per_batch = 40\n[tenants.big]\ncpu_ms_per_batch = 5000\n",
    );
    let acme = cpu_error(&engine, &t, "acme");
    assert!(
        acme.contains("after 40 ms") && acme.contains("raise `tenants.acme.cpu_ms_per_batch`"),
        "{acme}"
    );
    let other = cpu_error(&engine, &t, "globex");
    assert!(
        other.contains("after 60 ms") && other.contains("raise `defaults.cpu_ms_per_batch`"),
        "{other}"
    );
    // Above the ceiling: the sandbox's value binds, and the error says so.
    let big = cpu_error(&engine, &t, "big");
    assert!(
        big.contains("after 300 ms") && big.contains("raise `sandbox.cpu_ms_per_batch`"),
        "{big}"
    );
}

#[test]
fn sandbox_capabilities_bind_tenants_and_errors_name_the_key() {
    let overlap = support::repo().join("tests/tenant/overlap.wat");
    // The tenant grants `log`, the sandbox does not: refused, naming the sandbox.
    let closed = sandbox(SandboxLimits {
        capabilities: vec![],
        ..SandboxLimits::default()
    });
    let t = tenants("[defaults]\ncapabilities = [\"log\"]\n[tenants.quiet]\ncapabilities = []\n");
    let err = closed
        .load_file_for(&overlap, &t.get("acme"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("imports `weir::log`, which is not granted (granted: nothing)")
            && err.contains("grant it with `log` in `sandbox.capabilities`"),
        "{err}"
    );
    // The sandbox grants it, the tenant's section does not: naming the tenant's key.
    let open = sandbox(SandboxLimits::default());
    let err = open
        .load_file_for(&overlap, &t.get("quiet"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("grant it with `log` in `tenants.quiet.capabilities`"),
        "{err}"
    );
    // Both grant it: loads.
    open.load_file_for(&overlap, &t.get("acme")).unwrap();
}

#[test]
fn a_memory_error_names_the_tenants_key_below_the_ceiling() {
    let engine = sandbox(SandboxLimits::default());
    let t = tenants("[tenants.small]\nmemory_bytes = 65536\nmemory_total_bytes = 1048576\n");
    let path = support::repo().join("tests/hostile/huge_initial_memory.wat");
    let err = engine
        .load_file_for(&path, &t.get("small"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the 65536-byte limit; raise `tenants.small.memory_bytes`"),
        "{err}"
    );
}

/// A compile bomb (issue 12 #0): a module far below the size cap that
/// defines more functions than the sandbox compiles is refused before
/// compiling, naming the key; so is one without the exports the ABI needs.
#[test]
fn modules_are_refused_before_compiling_when_too_big_to_compile() {
    let engine = sandbox(SandboxLimits::default());
    let manifest = r#"(@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")"#;
    let mut text = format!("(module {manifest}\n");
    for _ in 0..10_001 {
        text.push_str("(func)\n");
    }
    text.push(')');
    let err = engine
        .load("bomb", text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "defines 10001 functions, above the limit of 10000; raise `sandbox.max_functions`"
        ),
        "{err}"
    );
    let mut text = format!("(module {manifest} (memory (export \"memory\") 1)\n");
    for _ in 0..5_000 {
        text.push_str("(func)\n");
    }
    text.push(')');
    let err = engine
        .load("no-exports", text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not export `weir_alloc`"), "{err}");
}

/// Issue 12 #3: a tenant's modules hold at most its `max_instances` of the
/// process's instance slots, so one tenant cannot take them all; a slot
/// comes back when a module goes.
#[test]
fn a_tenant_holds_at_most_its_share_of_instance_slots() {
    let engine = sandbox(SandboxLimits::default());
    let t = tenants("[tenants.small]\nmax_instances = 2\n");
    let small = t.get("small");
    let guest = support::repo().join("tests/tenant/guest.wat");
    let a = engine.load_file_for(&guest, &small).unwrap();
    let b = engine.load_file_for(&guest, &small).unwrap();
    assert_eq!(small.instances(), 2);
    let err = engine
        .load_file_for(&guest, &small)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds its `tenants.small.max_instances` (2) instances"),
        "{err}"
    );
    // Another tenant is not affected.
    engine.load_file_for(&guest, &t.get("other")).unwrap();
    drop(a);
    assert_eq!(small.instances(), 1);
    let c = engine.load_file_for(&guest, &small).unwrap();
    drop((b, c));
    assert_eq!(small.instances(), 0);
}
