//! Arrow arrays ⇄ guest buffers: the only code that touches the byte layout
//! described in `docs/abi.md`.
//!
//! [`input::InputPlan`] lays a batch's argument columns out in one region of
//! guest memory (one copy per buffer, no intermediate copies), and
//! [`output::read_result`] validates the buffers a guest hands back before a
//! single byte becomes an Arrow array (one copy out).

pub mod input;
pub mod output;

/// Reads a little-endian u32 at `at`; `None` when out of bounds.
pub(crate) fn read_u32(mem: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let bytes: [u8; 4] = mem.get(at..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}
