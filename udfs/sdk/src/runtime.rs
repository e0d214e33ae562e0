//! The exports every module needs, and the per-batch loop.

use core::cell::UnsafeCell;

use crate::abi::RawPanicInfo;
use crate::input::Column;
use crate::output::{OutBufs, OutputValue, Shape};

/// Module-global state. Wasm guests are single-threaded and the host never
/// re-enters a call, so one mutable slot per global is sound.
pub struct Global<T>(UnsafeCell<Option<T>>);

unsafe impl<T> Sync for Global<T> {}

impl<T: Default> Global<T> {
    pub const fn new() -> Self {
        Global(UnsafeCell::new(None))
    }

    #[allow(clippy::mut_from_ref)]
    pub fn get(&self) -> &mut T {
        // SAFETY: single-threaded, never re-entered (see above).
        unsafe { (*self.0.get()).get_or_insert_with(T::default) }
    }
}

static SCRATCH: Global<Vec<u64>> = Global::new();
pub(crate) static OUT: Global<OutBufs> = Global::new();
pub(crate) static ROW: Global<usize> = Global::new();
static PANIC: Global<(String, Option<RawPanicInfo>)> = Global::new();

/// `weir_alloc(size) -> ptr`: an 8-aligned region of `size` bytes, valid
/// until the next call. The host writes each batch's arguments there.
#[unsafe(no_mangle)]
pub extern "C" fn weir_alloc(size: u32) -> u32 {
    let scratch = SCRATCH.get();
    let words = (size as usize).div_ceil(8);
    if scratch.capacity() < words {
        scratch.reserve_exact(words - scratch.len());
    }
    scratch.as_mut_ptr() as u32
}

/// `weir_panic_info() -> ptr`: why the last call trapped, if it panicked.
#[unsafe(no_mangle)]
pub extern "C" fn weir_panic_info() -> u32 {
    match &PANIC.get().1 {
        Some(info) => info as *const RawPanicInfo as u32,
        None => 0,
    }
}

pub fn install_panic_hook() {
    static INSTALLED: Global<bool> = Global::new();
    let installed = INSTALLED.get();
    if *installed {
        return;
    }
    *installed = true;
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        let msg = match info.location() {
            Some(loc) => format!("{msg} (at {}:{})", loc.file(), loc.line()),
            None => msg,
        };
        let slot = PANIC.get();
        slot.0 = msg;
        slot.1 = Some(RawPanicInfo {
            row: *ROW.get() as u32,
            msg: slot.0.as_ptr() as u32,
            msg_len: slot.0.len() as u32,
        });
    }));
}

/// Runs `body` for every row of a batch and returns the result descriptor.
/// `strict` are the columns whose NULLs make the row NULL without a call.
///
/// # Safety
/// Called from a generated export with the host's arguments.
#[inline(always)]
pub unsafe fn run<T, F>(rows: u32, strict: &[Column], mut body: F) -> u32
where
    T: OutputValue,
    F: FnMut(usize) -> Result<Option<T>, String>,
{
    install_panic_hook();
    let rows = rows as usize;
    let out = OUT.get();
    let row_slot = ROW.get();
    out.begin(T::SHAPE, rows);
    let masked = out.apply_mask(strict, rows);
    if let (Shape::Fixed(_), false) = (T::SHAPE, masked) {
        // Fast path (no NULL input, fixed-width result): the destination is
        // hoisted so the compiler can keep the loop tight and vectorize it.
        let dst = out.values_ptr();
        for row in 0..rows {
            *row_slot = row;
            match body(row) {
                // SAFETY: `begin` reserved rows * width bytes at `dst`.
                Ok(Some(value)) => unsafe { value.write_raw(dst, row) },
                Ok(None) => out.null(T::SHAPE, rows, row),
                Err(message) => out.row_error(T::SHAPE, rows, row, message),
            }
        }
        return out.finish(T::SHAPE, rows);
    }
    for row in 0..rows {
        *row_slot = row;
        if masked && out.is_masked_out(row) {
            out.null(T::SHAPE, rows, row);
            continue;
        }
        match body(row) {
            Ok(Some(value)) => value.write(out, row),
            Ok(None) => out.null(T::SHAPE, rows, row),
            Err(message) => out.row_error(T::SHAPE, rows, row, message),
        }
    }
    out.finish(T::SHAPE, rows)
}

#[link(wasm_import_module = "weir")]
unsafe extern "C" {
    #[link_name = "log"]
    fn host_log(ptr: u32, len: u32);
}

/// Writes one line to the host's log (capability `log`; rate limited per
/// batch). Modules that never call it do not import it.
pub fn log(message: &str) {
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory.
    unsafe { host_log(message.as_ptr() as u32, message.len() as u32) }
}
