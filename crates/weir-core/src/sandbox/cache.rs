//! On-disk cache of compiled modules, keyed by content.
//!
//! A restart does not recompile: the artifact for a module is stored under
//! `sha256(module bytes ‖ engine fingerprint)`. Only artifacts this process
//! family wrote are ever deserialized: each artifact has a sidecar holding the
//! sha256 of the artifact bytes, written after the artifact; an artifact whose
//! bytes do not match its sidecar is ignored and rebuilt. The directory is
//! created private to the user (0700).

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// A directory of compiled artifacts.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
}

impl CodeCache {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(CodeCache { dir })
    }

    /// The default location: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/compiled`,
    /// else `$HOME/.cache/weir/compiled`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("weir").join("compiled"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(engine: &Engine, digest: &str) -> String {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let mut sha = Sha256::new();
        sha.update(digest.as_bytes());
        sha.update(h.finish().to_le_bytes());
        sha.update(env!("CARGO_PKG_VERSION").as_bytes());
        hex::encode(sha.finalize())
    }

    /// Returns the cached module for `digest`, compiling (and storing) it
    /// with `compile` on a miss. The flag says whether it was a hit.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        compile: impl FnOnce() -> wasmtime::Result<Module>,
    ) -> wasmtime::Result<(Module, bool)> {
        let key = Self::key(engine, digest);
        let artifact = self.dir.join(format!("{key}.cwasm"));
        let sidecar = self.dir.join(format!("{key}.sha256"));
        if let Some(module) = Self::load(engine, &artifact, &sidecar) {
            return Ok((module, true));
        }
        let module = compile()?;
        if let Err(e) = Self::store(&module, &artifact, &sidecar) {
            tracing::warn!(dir = %self.dir.display(), "could not cache compiled module: {e}");
        }
        Ok((module, false))
    }

    fn load(engine: &Engine, artifact: &Path, sidecar: &Path) -> Option<Module> {
        let expected = fs::read_to_string(sidecar).ok()?;
        let bytes = fs::read(artifact).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(path = %artifact.display(), "ignoring a cached artifact whose digest does not match");
            return None;
        }
        // SAFETY: these bytes were produced by `Module::serialize` in `store`
        // (their digest matches the sidecar written right after them), and
        // wasmtime checks that they match this engine's configuration.
        match unsafe { Module::deserialize(engine, &bytes) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::debug!("cached artifact unusable, recompiling: {e}");
                None
            }
        }
    }

    fn store(module: &Module, artifact: &Path, sidecar: &Path) -> std::io::Result<()> {
        let bytes = module
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        write_atomic(artifact, &bytes)?;
        write_atomic(sidecar, digest.as_bytes())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
