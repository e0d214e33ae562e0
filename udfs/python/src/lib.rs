//! weir's Python runtime guest: monty, a pure-Rust interpreter of a Python
//! subset, behind weir's ABI (docs/abi.md), importing nothing.
//!
//! One module serves every Python program. A program arrives in the
//! `weir.init` section (written by `crates/weir-core/src/lang/python.rs`):
//! the declared signatures, the file name and the source. `weir_init` runs
//! the source once per instance (its `def`s, constants and helpers), then
//! defines one batch loop per declared function. Export `weir_py_fn_K`
//! serves function K: one interpreter call per batch runs the function on
//! every row whose arguments are not NULL, collecting each row's exception.
//! A failing row is called once more on its own, for the exception with
//! its line.
//!
//! The clock reads nothing: `datetime.now()`, `date.today()`, `time.time()`
//! and `time.sleep()` raise; `random` starts from a fixed seed.

use std::cell::RefCell;

use monty::MontyRepl;
use monty_types::{
    CompileOptions, DateTimeSource, MontyDate, MontyDateTime, MontyException, MontyObject,
    ObjectRef, OsPolicy, PrintWriter, ProcessTime, RandomSeed, RandomStart, ResourceTracker,
    SleepMode,
};
use monty_types::unstable::{MontyGraph, MontyNode, node, object_from_graph, object_from_node};
use weir_abi::{AbiType, RawArg, RawResult};
use weir_udf::__private::{Column, install_panic_hook, run};
use weir_udf::{Date32, FromArg, Timestamp};

/// Most functions one program may declare (exports `weir_py_fn_0..`).
const MAX_FUNCTIONS: usize = 32;

/// What a program declares for one function.
struct Function {
    name: String,
    args: Vec<AbiType>,
    ret: AbiType,
    deterministic: bool,
}

struct Program {
    repl: MontyRepl,
    file: String,
    /// The name the REPL gave the source (its tracebacks' file name).
    snippet: String,
    functions: Vec<Function>,
    /// Which functions are `@batch` (called with lists).
    batched: Vec<bool>,
    source: String,
    /// Interpreter calls since the session started.
    calls: u32,
    /// Sessions started so far (the seed of a `VOLATILE` program's `random`).
    generation: u32,
}

/// Calls after which the session is started again. monty's REPL keeps a
/// few hundred bytes per call (each call's synthetic source and its name),
/// so a long-lived instance would otherwise grow until it hit the memory
/// limit: ~0.3 MB per restart interval, and a restart (the source run
/// again) costs about one call of a small batch.
const RESTART_EVERY: u32 = 1024;

thread_local! {
    static PROGRAM: RefCell<Option<Program>> = const { RefCell::new(None) };
    /// The descriptor (and its message) of a refused program or a failed call.
    static FAILURE: RefCell<(RawResult, String)> = RefCell::new((RawResult::default(), String::new()));
}

/// A value of one row, read from an argument column or returned by Python.
enum Value {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
    Timestamp(i64),
    Date(i32),
}

/// `weir_init(ptr, len)`: reads the program and runs its source once.
#[unsafe(no_mangle)]
pub extern "C" fn weir_init(ptr: u32, len: u32) -> u32 {
    install_panic_hook();
    // SAFETY: the host wrote `len` bytes at `ptr` (from `weir_alloc`).
    let bytes = unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
    match parse_program(bytes).and_then(start) {
        Ok(program) => {
            PROGRAM.with(|p| *p.borrow_mut() = Some(program));
            FAILURE.with(|slot| {
                let mut slot = slot.borrow_mut();
                slot.0 = RawResult::default();
                &slot.0 as *const RawResult as u32
            })
        }
        Err(message) => fail(0, message),
    }
}

/// A result descriptor with status 1: `message` on `row`. For a refused
/// program, and for a batch that failed as a whole: the host then calls
/// the rows again around `row` (docs/abi.md §4.1), so no row is answered
/// with a NULL it did not compute.
fn fail(row: u32, message: String) -> u32 {
    FAILURE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let (result, text) = &mut *slot;
        *text = message;
        *result = RawResult {
            status: weir_abi::STATUS_ROW_ERROR,
            error_row: row,
            error_msg: text.as_ptr() as u32,
            error_len: text.len() as u32,
            ..RawResult::default()
        };
        result as *const RawResult as u32
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("the program is truncated".into());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "the program is not UTF-8".into())
    }

    fn ty(&mut self) -> Result<AbiType, String> {
        let code = self.take(1)?[0] as usize;
        AbiType::ALL
            .get(code)
            .copied()
            .ok_or_else(|| format!("unknown type code {code}"))
    }
}

fn parse_program(bytes: &[u8]) -> Result<(String, Vec<Function>, String), String> {
    let mut r = Reader { bytes };
    if r.take(4)? != b"WPY1" {
        return Err("not a weir Python program (expected `WPY1`)".into());
    }
    let count = r.u32()?;
    if count == 0 || count > MAX_FUNCTIONS {
        return Err(format!("a program declares 1 to {MAX_FUNCTIONS} functions, not {count}"));
    }
    let mut functions = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.str()?;
        if name.is_empty() || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
            return Err(format!("`{name}` is not a Python function name"));
        }
        let nargs = r.u32()?;
        let args = (0..nargs).map(|_| r.ty()).collect::<Result<Vec<_>, _>>()?;
        let ret = r.ty()?;
        let deterministic = r.take(1)?[0] != 0;
        functions.push(Function {
            name,
            args,
            ret,
            deterministic,
        });
    }
    let file = r.str()?;
    let source = String::from_utf8(r.bytes.to_vec()).map_err(|_| "the source is not UTF-8")?;
    Ok((file, functions, source))
}

/// What the interpreter may ask of the world: nothing. Every OS call is
/// answered by the host, and no host answers inside a call, so reading the
/// clock, sleeping, files and entropy raise (see `describe`). A program
/// with a `VOLATILE` function gets a `random` that starts from a fixed
/// seed; otherwise an unseeded draw raises.
fn policy(volatile: bool, generation: u32) -> OsPolicy {
    OsPolicy {
        datetime: DateTimeSource::CallHost,
        sleep: SleepMode::CallHost,
        process_time: ProcessTime::Zero,
        random_start: if volatile {
            RandomStart::Seed(RandomSeed::Int(generation.into()))
        } else {
            RandomStart::CallHost
        },
        ..OsPolicy::default()
    }
}

fn start((file, functions, source): (String, Vec<Function>, String)) -> Result<Program, String> {
    let (repl, snippet, batched) = session(&file, &functions, &source, 0)?;
    Ok(Program {
        repl,
        file,
        snippet,
        functions,
        batched,
        source,
        calls: 0,
        generation: 0,
    })
}

/// Defined before the source: the decorator `@batch` marks a function that
/// takes one list per argument (the batch's rows without NULLs) and returns
/// a list of results, one interpreter call per batch instead of one per row.
const PRELUDE: &str = "__weir_batched = []\n\ndef batch(f):\n    __weir_batched.append(f)\n    return f\n";

/// A session that ran `source` and defined the batch loops: the session,
/// the name it gave the source, and which functions are `@batch`.
fn session(
    file: &str,
    functions: &[Function],
    source: &str,
    generation: u32,
) -> Result<(MontyRepl, String, Vec<bool>), String> {
    let volatile = functions.iter().any(|f| !f.deterministic);
    let mut repl = MontyRepl::new(file, ResourceTracker::default(), CompileOptions::default())
        .with_os_policy(policy(volatile, generation));
    repl.feed_run(PRELUDE, vec![], PrintWriter::Disabled)
        .map_err(|e| format!("the prelude: {e}"))?;
    let snippet = repl.next_script_name();
    repl.feed_run(source, vec![], PrintWriter::Disabled)
        .map_err(|e| describe(&e, &snippet, file))?;
    let mut batched = Vec::with_capacity(functions.len());
    for f in functions {
        if !repl.has_function(&f.name) {
            return Err(format!(
                "{file} defines no function `{}`: add `def {}({}):` (the SQL function calls the Python function of its name)",
                f.name,
                f.name,
                (0..f.args.len()).map(|i| format!("a{i}")).collect::<Vec<_>>().join(", ")
            ));
        }
        let is_batch = !f.args.is_empty()
            && repl
                .feed_run(&format!("{} in __weir_batched", f.name), vec![], PrintWriter::Disabled)
                .is_ok_and(|b| b.is_truthy());
        batched.push(is_batch);
        let wrapper = if is_batch {
            batch_loop(&f.name, f.args.len())
        } else {
            row_loop(&f.name, f.args.len())
        };
        repl.feed_run(&wrapper, vec![], PrintWriter::Disabled)
            .map_err(|e| format!("{file}: the batch loop of `{}`: {e}", f.name))?;
    }
    Ok((repl, snippet, batched))
}

/// The batch loop of a function called per row, one interpreter call per
/// batch, over one list per argument: first as one comprehension (no
/// per-row `try`); if a row raises, again row by row, a row that raises
/// becoming None with its index kept. (Functions are deterministic or draw
/// from their own seeded `random`: running rows again changes nothing
/// else.)
fn row_loop(name: &str, arity: usize) -> String {
    let cols: Vec<String> = (0..arity).map(|i| format!("__c{i}")).collect();
    let vars: Vec<String> = (0..arity).map(|i| format!("__a{i}")).collect();
    let (params, each, call) = match arity {
        0 => ("__n".to_string(), "__i in range(__n)".to_string(), format!("{name}()")),
        1 => (cols[0].clone(), format!("__a0 in {}", cols[0]), format!("{name}(__a0)")),
        _ => (
            cols.join(", "),
            format!("{} in zip({})", vars.join(", "), cols.join(", ")),
            format!("{name}({})", vars.join(", ")),
        ),
    };
    format!(
        "def __weir_batch_{name}({params}):\n    try:\n        return ([{call} for {each}], [])\n    except BaseException:\n        pass\n    __out = []\n    __bad = []\n    __i = 0\n    for {each}:\n        try:\n            __out.append({call})\n        except BaseException:\n            __out.append(None)\n            __bad.append(__i)\n        __i += 1\n    return (__out, __bad)\n"
    )
}

/// The batch loop of a `@batch` function: one call with the lists; if it
/// raises or returns another number of values, row by row with lists of
/// one, a row that fails becoming None with its index kept.
fn batch_loop(name: &str, arity: usize) -> String {
    let cols: Vec<String> = (0..arity).map(|i| format!("__c{i}")).collect();
    let ones: Vec<String> = cols.iter().map(|c| format!("[{c}[__i]]")).collect();
    let (params, first) = (cols.join(", "), &cols[0]);
    format!(
        "def __weir_batch_{name}({params}):\n    try:\n        __out = list({name}({params}))\n        if len(__out) == len({first}):\n            return (__out, [])\n    except BaseException:\n        pass\n    __out = []\n    __bad = []\n    for __i in range(len({first})):\n        try:\n            __r = list({name}({ones}))\n            if len(__r) != 1:\n                raise ValueError('')\n            __out.append(__r[0])\n        except BaseException:\n            __out.append(None)\n            __bad.append(__i)\n    return (__out, __bad)\n",
        ones = ones.join(", ")
    )
}

impl Program {
    /// Counts a call, starting the session again every [`RESTART_EVERY`].
    fn count_call(&mut self) -> Result<(), String> {
        self.calls += 1;
        if self.calls < RESTART_EVERY {
            return Ok(());
        }
        self.generation = self.generation.wrapping_add(1);
        let (repl, snippet, batched) =
            session(&self.file, &self.functions, &self.source, self.generation)?;
        self.repl = repl;
        self.snippet = snippet;
        self.batched = batched;
        self.calls = 0;
        Ok(())
    }
}

/// `ExcType: message (line N of f.py)`, the line being the innermost frame
/// in the user's source (`snippet`, named `file` for the user).
fn describe(e: &MontyException, snippet: &str, file: &str) -> String {
    let line = e
        .traceback()
        .iter()
        .rev()
        .find(|f| f.filename == snippet || f.filename == file)
        .map(|f| f.start.line);
    let summary = match e.message().and_then(os_call) {
        Some(call) if call.contains("urandom") => "random numbers in a deterministic function: declare it VOLATILE (its `random` then starts from a fixed seed) or call `random.seed(…)` first".to_string(),
        Some(call) => format!("`{call}` is not available: a weir UDF has no clock, files, network or environment"),
        None => e.summary(),
    };
    match line {
        Some(line) => format!("{summary} (line {line} of {file})"),
        None => summary,
    }
}

/// The OS function a refused OS call named (monty: "OS function 'X'
/// cannot suspend in this synchronous context").
fn os_call(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("OS function '")?;
    rest.split_once('\'').map(|(call, _)| call)
}

/// The allocator, reporting a failed allocation (a Python value larger than
/// the instance's memory) as a panic with its size instead of a bare trap.
struct Allocator;

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

fn out_of_memory(bytes: usize) -> ! {
    panic!("Python ran out of memory: an allocation of {bytes} bytes failed (past the instance's memory limit)")
}

unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            out_of_memory(new_size);
        }
        p
    }
}

/// Reads row `row` of `col` as `ty`.
///
/// # Safety
/// `col` is an argument of this batch, of type `ty`, valid at `row`.
unsafe fn read(col: &Column, ty: AbiType, row: usize) -> Value {
    unsafe {
        match ty {
            AbiType::Boolean => Value::Bool(<bool as FromArg>::read(col, row)),
            AbiType::Int8 => Value::Int(<i8 as FromArg>::read(col, row).into()),
            AbiType::Int16 => Value::Int(<i16 as FromArg>::read(col, row).into()),
            AbiType::Int32 => Value::Int(<i32 as FromArg>::read(col, row).into()),
            AbiType::Int64 => Value::Int(<i64 as FromArg>::read(col, row)),
            AbiType::UInt8 => Value::UInt(<u8 as FromArg>::read(col, row).into()),
            AbiType::UInt16 => Value::UInt(<u16 as FromArg>::read(col, row).into()),
            AbiType::UInt32 => Value::UInt(<u32 as FromArg>::read(col, row).into()),
            AbiType::UInt64 => Value::UInt(<u64 as FromArg>::read(col, row)),
            AbiType::Float32 => Value::Float(<f32 as FromArg>::read(col, row).into()),
            AbiType::Float64 => Value::Float(<f64 as FromArg>::read(col, row)),
            AbiType::Utf8 => Value::Str(<&str as FromArg>::read(col, row).to_string()),
            AbiType::Binary => Value::Bytes(<&[u8] as FromArg>::read(col, row).to_vec()),
            AbiType::TimestampMicros => Value::Timestamp(<Timestamp as FromArg>::read(col, row).0),
            AbiType::Date32 => Value::Date(<Date32 as FromArg>::read(col, row).0),
        }
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of 0001-01-01 and 9999-12-31, the range of
/// Python's `date` and `datetime`.
const FIRST_PYTHON_DAY: i64 = -719_162;
const LAST_PYTHON_DAY: i64 = 2_932_896;

/// Why a DATE or TIMESTAMP argument has no Python value, if it has none.
fn outside_python_dates(v: &Value) -> Option<String> {
    let (days, what) = match v {
        Value::Date(d) => (i64::from(*d), "DATE"),
        Value::Timestamp(us) => (us.div_euclid(MICROS_PER_DAY), "TIMESTAMP"),
        _ => return None,
    };
    (!(FIRST_PYTHON_DAY..=LAST_PYTHON_DAY).contains(&days)).then(|| {
        format!("a {what} argument is outside the years 1 to 9999, which Python's dates cover")
    })
}

/// The interpreter's node for a value.
fn to_node(v: Value) -> MontyNode {
    match v {
        Value::Int(i) => MontyNode::Int(i),
        Value::UInt(u) => match i64::try_from(u) {
            Ok(i) => MontyNode::Int(i),
            Err(_) => MontyNode::BigInt(u.into()),
        },
        Value::Float(f) => MontyNode::Float(f),
        Value::Bool(b) => MontyNode::Bool(b),
        Value::Str(s) => MontyNode::String(s),
        Value::Bytes(b) => MontyNode::Bytes(b),
        Value::Timestamp(us) => {
            let days = us.div_euclid(MICROS_PER_DAY);
            let rest = us.rem_euclid(MICROS_PER_DAY);
            let (year, month, day) = civil_from_days(days);
            let secs = rest / 1_000_000;
            MontyNode::DateTime(MontyDateTime {
                year,
                month,
                day,
                hour: (secs / 3600) as u8,
                minute: (secs / 60 % 60) as u8,
                second: (secs % 60) as u8,
                microsecond: (rest % 1_000_000) as u32,
                offset_seconds: None,
                timezone_name: None,
            })
        }
        Value::Date(d) => {
            let (year, month, day) = civil_from_days(d.into());
            MontyNode::Date(MontyDate { year, month, day })
        }
    }
}

fn to_python(v: Value) -> MontyObject {
    object_from_node(to_node(v))
}

/// A Python list of `values`, built in one arena (no object per value).
fn python_list(values: impl Iterator<Item = Value>) -> Result<MontyObject, String> {
    let mut graph = MontyGraph::new();
    let ids: Vec<_> = values.map(|v| graph.push(to_node(v))).collect();
    let root = graph.push(MontyNode::List(ids));
    object_from_graph(graph, root).map_err(|e| format!("internal: {e:?}"))
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

/// Days since 1970-01-01 of a civil date (`days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Python's value for a row as `ty`; `None` is NULL.
fn from_python(v: &ObjectRef<'_>, ty: AbiType) -> Result<Option<Value>, String> {
    let n = node(*v);
    if matches!(n, MontyNode::None) {
        return Ok(None);
    }
    let wrong = || {
        format!(
            "returned a Python {} where the declared type is {}",
            v.type_name(),
            ty.name()
        )
    };
    let int = || match n {
        MontyNode::Bool(_) => None,
        _ => v.as_int(),
    };
    let ranged = |i: i64, lo: i64, hi: i64| {
        if (lo..=hi).contains(&i) {
            Ok(Some(Value::Int(i)))
        } else {
            Err(format!("returned {i}, outside the range of {}", ty.name()))
        }
    };
    match ty {
        AbiType::Boolean => v.as_bool().map(|b| Some(Value::Bool(b))).ok_or_else(wrong),
        AbiType::Int8 => ranged(int().ok_or_else(wrong)?, i8::MIN.into(), i8::MAX.into()),
        AbiType::Int16 => ranged(int().ok_or_else(wrong)?, i16::MIN.into(), i16::MAX.into()),
        AbiType::Int32 => ranged(int().ok_or_else(wrong)?, i32::MIN.into(), i32::MAX.into()),
        AbiType::Int64 => match n {
            MontyNode::BigInt(_) => Err(format!("returned {}, outside the range of int64", v.py_repr())),
            _ => int().map(|i| Some(Value::Int(i))).ok_or_else(wrong),
        },
        AbiType::UInt8 | AbiType::UInt16 | AbiType::UInt32 | AbiType::UInt64 => {
            let max = match ty {
                AbiType::UInt8 => u64::from(u8::MAX),
                AbiType::UInt16 => u64::from(u16::MAX),
                AbiType::UInt32 => u64::from(u32::MAX),
                _ => u64::MAX,
            };
            let u = match n {
                MontyNode::Int(i) => u64::try_from(*i).ok(),
                MontyNode::BigInt(b) => u64::try_from(b).ok(),
                _ => return Err(wrong()),
            };
            match u.filter(|u| *u <= max) {
                Some(u) => Ok(Some(Value::UInt(u))),
                None => Err(format!("returned {}, outside the range of {}", v.py_repr(), ty.name())),
            }
        }
        AbiType::Float32 | AbiType::Float64 => match n {
            MontyNode::Bool(_) => Err(wrong()),
            _ => v.as_float().map(|f| Some(Value::Float(f))).ok_or_else(wrong),
        },
        AbiType::Utf8 => v
            .as_str()
            .map(|s| Some(Value::Str(s.to_string())))
            .ok_or_else(wrong),
        AbiType::Binary => match n {
            MontyNode::Bytes(b) => Ok(Some(Value::Bytes(b.to_vec()))),
            _ => Err(wrong()),
        },
        AbiType::TimestampMicros => match n {
            MontyNode::DateTime(dt) => {
                let days = days_from_civil(dt.year.into(), dt.month.into(), dt.day.into());
                let local = days * MICROS_PER_DAY
                    + (i64::from(dt.hour) * 3600 + i64::from(dt.minute) * 60 + i64::from(dt.second))
                        * 1_000_000
                    + i64::from(dt.microsecond);
                let offset = i64::from(dt.offset_seconds.unwrap_or(0)) * 1_000_000;
                Ok(Some(Value::Timestamp(local - offset)))
            }
            _ => Err(wrong()),
        },
        AbiType::Date32 => match n {
            MontyNode::Date(d) => {
                let days = days_from_civil(d.year.into(), d.month.into(), d.day.into());
                Ok(Some(Value::Date(days as i32)))
            }
            _ => Err(wrong()),
        },
    }
}

/// Function `k` over a batch: the body of export `weir_py_fn_K`.
fn call(k: usize, args: u32, rows: u32) -> u32 {
    install_panic_hook();
    let n = rows as usize;
    let outcome = PROGRAM.with(|p| {
        let mut p = p.borrow_mut();
        let Some(program) = p.as_mut() else {
            return Err("the Python program was not initialised".to_string());
        };
        Ok(batch(program, k, args, n))
    });
    let results = match outcome {
        Ok(Ok(results)) => results,
        Ok(Err(message)) | Err(message) => return fail(0, message),
    };
    let ret = PROGRAM.with(|p| {
        p.borrow()
            .as_ref()
            .and_then(|p| p.functions.get(k))
            .map(|f| f.ret)
            .unwrap_or(AbiType::Int64)
    });
    emit(ret, rows, results)
}

fn batch(
    program: &mut Program,
    k: usize,
    args: u32,
    n: usize,
) -> Result<Vec<Result<Option<Value>, String>>, String> {
    let (name, types, ret) = program
        .functions
        .get(k)
        .map(|f| (f.name.clone(), f.args.clone(), f.ret))
        .ok_or_else(|| format!("no function {k}"))?;
    let cols: Vec<Column> = (0..types.len())
        .map(|i| {
            // SAFETY: the host wrote one descriptor per declared argument.
            unsafe { Column::new(&*((args as usize + 16 * i) as *const RawArg)) }
        })
        .collect();
    let mut results: Vec<Result<Option<Value>, String>> = (0..n).map(|_| Ok(None)).collect();
    // Rows with a NULL argument are NULL without a call; a row with a date
    // Python cannot hold fails without a call.
    let called: Vec<usize> = (0..n)
        .filter(|row| cols.iter().all(|c| c.is_valid(*row)))
        .filter(|row| {
            let outside = cols
                .iter()
                .zip(&types)
                .filter(|(_, t)| matches!(t, AbiType::Date32 | AbiType::TimestampMicros))
                .find_map(|(c, t)| {
                    // SAFETY: `row` is in the batch and valid in every column.
                    let value = unsafe { read(c, *t, *row) };
                    outside_python_dates(&value)
                });
            match outside {
                Some(message) => {
                    results[*row] = Err(message);
                    false
                }
                None => true,
            }
        })
        .collect();
    let is_batch = program.batched.get(k).copied().unwrap_or(false);
    // A row's arguments for a call of its own (lists of one for `@batch`).
    let row_values = |row: usize| -> Vec<MontyObject> {
        cols.iter()
            .zip(&types)
            // SAFETY: `row` is in the batch and valid in every column.
            .map(|(c, t)| to_python(unsafe { read(c, *t, row) }))
            .map(|v| if is_batch { MontyObject::list([v]) } else { v })
            .collect()
    };
    // One list per argument (the row count for a function of none).
    let input: Vec<MontyObject> = if cols.is_empty() {
        vec![MontyObject::int(called.len() as i64)]
    } else {
        cols.iter()
            .zip(&types)
            .map(|(c, t)| {
                python_list(
                    called
                        .iter()
                        // SAFETY: `row` is in the batch and valid in every column.
                        .map(|row| unsafe { read(c, *t, *row) }),
                )
            })
            .collect::<Result<_, _>>()?
    };
    if called.is_empty() {
        return Ok(results);
    }
    program.count_call()?;
    let out = program
        .repl
        .call_function(
            &format!("__weir_batch_{name}"),
            input,
            PrintWriter::Disabled,
        )
        .map_err(|e| describe(&e, &program.snippet, &program.file))?;
    let root = out.as_ref();
    let parts = root.items().unwrap_or_default();
    let (Some(values), Some(bad)) = (
        parts.first().and_then(|v| v.items()),
        parts.get(1).and_then(|b| b.items()),
    ) else {
        return Err("the batch loop returned no result".into());
    };
    if values.len() != called.len() {
        return Err("the batch loop returned a result per row".into());
    }
    for (value, row) in values.iter().zip(&called) {
        results[*row] = from_python(value, ret);
    }
    for b in bad {
        let Some(i) = b.as_int().and_then(|i| usize::try_from(i).ok()) else {
            continue;
        };
        let Some(row) = called.get(i).copied() else {
            continue;
        };
        // The row again on its own: its exception, with the line.
        program.count_call()?;
        let message = match program
            .repl
            .call_function(&name, row_values(row), PrintWriter::Disabled)
        {
            Err(e) => describe(&e, &program.snippet, &program.file),
            Ok(out) if is_batch && out.as_ref().items().is_none_or(|v| v.len() != 1) => {
                let got = match out.as_ref().items() {
                    Some(values) => format!("{} values", values.len()),
                    None => format!("a {}", out.as_ref().type_name()),
                };
                format!(
                    "a @batch function returns a list with one value per row; called with one row it returned {got}"
                )
            }
            Ok(_) => "raised an exception (not raised again when called alone)".to_string(),
        };
        results[row] = Err(message);
    }
    Ok(results)
}

fn emit(ret: AbiType, rows: u32, results: Vec<Result<Option<Value>, String>>) -> u32 {
    macro_rules! go {
        ($t:ty, $pat:pat => $e:expr) => {{
            let mut results = results;
            // SAFETY: called from an export with the host's batch.
            unsafe {
                run::<$t, _>(rows, &[], |row| match core::mem::replace(&mut results[row], Ok(None)) {
                    Ok(Some($pat)) => Ok(Some($e)),
                    Ok(Some(_)) => Err("internal: a value of another type".to_string()),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                })
            }
        }};
    }
    match ret {
        AbiType::Boolean => go!(bool, Value::Bool(b) => b),
        AbiType::Int8 => go!(i8, Value::Int(i) => i as i8),
        AbiType::Int16 => go!(i16, Value::Int(i) => i as i16),
        AbiType::Int32 => go!(i32, Value::Int(i) => i as i32),
        AbiType::Int64 => go!(i64, Value::Int(i) => i),
        AbiType::UInt8 => go!(u8, Value::UInt(u) => u as u8),
        AbiType::UInt16 => go!(u16, Value::UInt(u) => u as u16),
        AbiType::UInt32 => go!(u32, Value::UInt(u) => u as u32),
        AbiType::UInt64 => go!(u64, Value::UInt(u) => u),
        AbiType::Float32 => go!(f32, Value::Float(f) => f as f32),
        AbiType::Float64 => go!(f64, Value::Float(f) => f),
        AbiType::Utf8 => go!(String, Value::Str(s) => s),
        AbiType::Binary => go!(Vec<u8>, Value::Bytes(b) => b),
        AbiType::TimestampMicros => go!(Timestamp, Value::Timestamp(t) => Timestamp(t)),
        AbiType::Date32 => go!(Date32, Value::Date(d) => Date32(d)),
    }
}

macro_rules! exports {
    ($($k:literal => $name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(args: u32, rows: u32) -> u32 {
            call($k, args, rows)
        }
    )*};
}

exports!(
    0 => weir_py_fn_0, 1 => weir_py_fn_1, 2 => weir_py_fn_2, 3 => weir_py_fn_3,
    4 => weir_py_fn_4, 5 => weir_py_fn_5, 6 => weir_py_fn_6, 7 => weir_py_fn_7,
    8 => weir_py_fn_8, 9 => weir_py_fn_9, 10 => weir_py_fn_10, 11 => weir_py_fn_11,
    12 => weir_py_fn_12, 13 => weir_py_fn_13, 14 => weir_py_fn_14, 15 => weir_py_fn_15,
    16 => weir_py_fn_16, 17 => weir_py_fn_17, 18 => weir_py_fn_18, 19 => weir_py_fn_19,
    20 => weir_py_fn_20, 21 => weir_py_fn_21, 22 => weir_py_fn_22, 23 => weir_py_fn_23,
    24 => weir_py_fn_24, 25 => weir_py_fn_25, 26 => weir_py_fn_26, 27 => weir_py_fn_27,
    28 => weir_py_fn_28, 29 => weir_py_fn_29, 30 => weir_py_fn_30, 31 => weir_py_fn_31,
);

/// getrandom 0.3's custom backend (`--cfg getrandom_backend="custom"`):
/// monty draws object ids from it; a fixed sequence keeps runs
/// reproducible (`random` itself is seeded, see `policy`).
///
/// # Safety
/// `dest` points at `len` writable bytes (getrandom's contract).
#[unsafe(no_mangle)]
unsafe extern "Rust" fn __getrandom_v03_custom(dest: *mut u8, len: usize) -> Result<(), getrandom::Error> {
    thread_local! {
        static STATE: core::cell::Cell<u64> = const { core::cell::Cell::new(0x9E37_79B9_7F4A_7C15) };
    }
    for i in 0..len {
        let byte = STATE.with(|s| {
            // splitmix64
            let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        });
        // SAFETY: `i < len`.
        unsafe { dest.add(i).write(byte) };
    }
    Ok(())
}
