//! Shared fixtures: the guest modules (built once per run), sandboxes, and
//! a session with every example registered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::prelude::SessionContext;
use weir::sql::{TableSpec, register_table};
use weir::{Sandbox, SandboxLimits, SandboxOptions, UdfModule};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `name -> path` of every guest module: the Rust crates under `udfs/`
/// (built to wasm on first use) and the hand-written `.wat` examples.
pub fn modules() -> &'static BTreeMap<String, PathBuf> {
    static MODULES: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    MODULES.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("udfs");
        let built = weir::toolchain::build_rust(&repo().join("udfs"), &target)
            .unwrap_or_else(|e| panic!("building the guest UDFs failed: {e}"));
        let mut map = BTreeMap::new();
        for path in built {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            map.insert(stem, path);
        }
        let js = weir::toolchain::build_js(sandbox(), &repo().join("udfs/js/examples"), &target)
            .unwrap_or_else(|e| panic!("building the JavaScript UDFs failed: {e}"));
        for path in js {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            map.insert(stem, path);
        }
        // AssemblyScript needs its compiler, `asc` (npm): without it the
        // modules are missing and `assemblyscript.slt` is skipped.
        if has_asc() {
            for dir in ["udfs/as/examples", "tests/as"] {
                let built =
                    weir::toolchain::build_assemblyscript(sandbox(), &repo().join(dir), &target)
                        .unwrap_or_else(|e| {
                            panic!("building the AssemblyScript UDFs of {dir} failed: {e}")
                        });
                for path in built {
                    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                    map.insert(stem, path);
                }
            }
        }
        for entry in std::fs::read_dir(repo().join("udfs/examples/wat")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            map.insert(stem, path);
        }
        map
    })
}

/// Whether AssemblyScript's compiler is installed.
pub fn has_asc() -> bool {
    weir::toolchain::asc(&repo().join("udfs/as/examples")).is_some()
}

/// Whether a test that needs AssemblyScript's compiler may go on (see
/// [`require_or_skip`]).
pub fn require_asc() -> bool {
    require_or_skip(
        "AssemblyScript's compiler asc (npm install -g assemblyscript@0.28)",
        has_asc(),
    )
}

pub fn module_path(name: &str) -> &'static Path {
    modules()
        .get(name)
        .unwrap_or_else(|| panic!("no guest module `{name}`"))
}

/// A private compiled-code cache for this test run.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("code-cache")
}

/// The default-limits sandbox most tests share.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::with_options(SandboxOptions {
            limits: SandboxLimits::default(),
            cache_dir: Some(cache_dir()),
        })
        .unwrap()
    })
}

pub fn load(name: &str) -> Arc<UdfModule> {
    sandbox()
        .load_file(module_path(name))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A session with every example module and the example tables.
pub async fn session() -> SessionContext {
    let ctx = SessionContext::new_with_config(weir::sql::session_config());
    for name in modules().keys() {
        weir::register_module(&ctx, &load(name));
    }
    for (table, file) in [
        ("trips", "trips.csv"),
        ("numbers", "numbers.csv"),
        ("payments", "payments.ndjson"),
    ] {
        let spec = TableSpec {
            name: table.to_string(),
            path: repo().join("examples/data").join(file),
        };
        register_table(&ctx, &spec).await.unwrap();
    }
    ctx
}

/// Runs `sql` and renders every row as strings (NULL as `NULL`).
pub async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let batches = ctx
        .sql(sql)
        .await
        .map_err(|e| weir::cli::user_message(&e))?
        .collect()
        .await
        .map_err(|e| weir::cli::user_message(&e))?;
    Ok(render(&batches))
}

pub fn render(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<Vec<String>> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    out
}

/// The JSON objects of an NDJSON file (none when it does not exist).
pub fn ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether a test may go on: `available` says whether the external tool it
/// needs (`what`, with how to install it) is there. A missing tool skips the
/// test (false, with a note on stderr), unless `WEIR_REQUIRE_BROKER` is set
/// to anything but "" or "0": then a missing tool is a failure. Every test
/// that needs a broker, Prometheus, clang or Python's Kafka client asks here.
pub fn require_or_skip(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    let required = std::env::var_os("WEIR_REQUIRE_BROKER")
        .is_some_and(|v| !v.is_empty() && v.as_os_str() != std::ffi::OsStr::new("0"));
    if required {
        panic!("{what} is required: WEIR_REQUIRE_BROKER is set, so a missing tool fails the test");
    }
    eprintln!("skipped: {what} is not available (WEIR_REQUIRE_BROKER=1 makes this a failure)");
    false
}

/// The guest log lines (`weir.log`, tracing target `weir_core::guest`)
/// written on threads while they run inside [`GuestLog::capture`], in the
/// order they were written. Clones share the lines.
#[derive(Clone)]
pub struct GuestLog {
    lines: Arc<Mutex<Vec<String>>>,
    dispatch: tracing::Dispatch,
}

impl GuestLog {
    pub fn new() -> Self {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(CollectGuestLines(lines.clone()));
        GuestLog {
            lines,
            dispatch: tracing::Dispatch::new(subscriber),
        }
    }

    /// Runs `f` on this thread with its guest log lines collected.
    pub fn capture<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(&self.dispatch, f)
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for GuestLog {
    fn default() -> Self {
        Self::new()
    }
}

struct CollectGuestLines(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CollectGuestLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "weir_core::guest" {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        // Pushed under the lock: the order of the lines is the order the
        // guests wrote them in.
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.0);
    }
}

/// The `message` field of an event.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
