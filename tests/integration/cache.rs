//! The on-disk compiled-code cache: a restart does not recompile, and a
//! tampered artifact is never deserialized.

use weir::{Sandbox, SandboxLimits, SandboxOptions};

use crate::support;

fn fresh_sandbox(dir: &std::path::Path) -> Sandbox {
    Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: Some(dir.to_path_buf()),
    })
    .unwrap()
}

#[test]
fn second_load_comes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = support::module_path("geo");
    let first = fresh_sandbox(dir.path()).load_file(path).unwrap();
    assert!(!first.loaded_from_cache());
    let second = fresh_sandbox(dir.path()).load_file(path).unwrap();
    assert!(second.loaded_from_cache());
    assert_eq!(first.digest(), second.digest());
}

#[test]
fn tampered_artifacts_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = support::module_path("text");
    fresh_sandbox(dir.path()).load_file(path).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let again = fresh_sandbox(dir.path()).load_file(path).unwrap();
    assert!(
        !again.loaded_from_cache(),
        "a modified artifact must be recompiled"
    );
    let third = fresh_sandbox(dir.path()).load_file(path).unwrap();
    assert!(
        third.loaded_from_cache(),
        "the rebuilt artifact is cached again"
    );
}

#[test]
fn precompiled_artifacts_are_not_accepted_as_modules() {
    let dir = tempfile::tempdir().unwrap();
    fresh_sandbox(dir.path())
        .load_file(support::module_path("geo"))
        .unwrap();
    let artifact = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let err = support::sandbox()
        .load_file(&artifact)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a WebAssembly module"), "{err}");
}

#[test]
fn oversized_modules_are_refused_before_parsing() {
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits {
            max_module_bytes: 4096,
            ..SandboxLimits::default()
        },
        cache_dir: None,
    })
    .unwrap();
    let err = sandbox
        .load_file(support::module_path("geo"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("above the 4096-byte limit; raise `sandbox.max_module_bytes`"),
        "{err}"
    );
}
