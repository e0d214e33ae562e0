//! Aggregate functions: the groups of one accumulator live in the module's
//! memory between calls (one instance serves one accumulator), one guest
//! call per batch folds every row into its group.

use crate::input::Column;
use crate::output::OutputValue;
use crate::runtime::{Global, OUT, ROW, install_panic_hook, run};

/// A group's state, as bytes: what `__state` exports and `__merge` reads
/// back (one `binary` state column). Implemented for numbers, `bool`,
/// `String`, `Vec<T>`, `Option<T>` and pairs; [`state!`](crate::state)
/// implements it for a struct field by field.
pub trait State: Sized {
    fn save(&self, out: &mut Vec<u8>);
    /// Reads one value from the front of `bytes`, advancing it; `None` if
    /// the bytes are not a value (the host passed state it did not get).
    fn load(bytes: &mut &[u8]) -> Option<Self>;
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Some(head)
}

macro_rules! number_state {
    ($($t:ty),*) => {$(
        impl State for $t {
            fn save(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn load(bytes: &mut &[u8]) -> Option<Self> {
                let b = take(bytes, core::mem::size_of::<$t>())?;
                Some(<$t>::from_le_bytes(b.try_into().ok()?))
            }
        }
    )*};
}

number_state!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64, usize);

impl State for bool {
    fn save(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn load(bytes: &mut &[u8]) -> Option<Self> {
        Some(take(bytes, 1)?[0] != 0)
    }
}

impl<T: State> State for Option<T> {
    fn save(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.save(out);
            }
        }
    }
    fn load(bytes: &mut &[u8]) -> Option<Self> {
        match take(bytes, 1)?[0] {
            0 => Some(None),
            1 => Some(Some(T::load(bytes)?)),
            _ => None,
        }
    }
}

impl<T: State> State for Vec<T> {
    fn save(&self, out: &mut Vec<u8>) {
        (self.len() as u32).save(out);
        for v in self {
            v.save(out);
        }
    }
    fn load(bytes: &mut &[u8]) -> Option<Self> {
        let n = u32::load(bytes)? as usize;
        // Never trust a length: each element takes at least one byte.
        let mut v = Vec::with_capacity(n.min(bytes.len()));
        for _ in 0..n {
            v.push(T::load(bytes)?);
        }
        Some(v)
    }
}

impl State for String {
    fn save(&self, out: &mut Vec<u8>) {
        (self.len() as u32).save(out);
        out.extend_from_slice(self.as_bytes());
    }
    fn load(bytes: &mut &[u8]) -> Option<Self> {
        let n = u32::load(bytes)? as usize;
        String::from_utf8(take(bytes, n)?.to_vec()).ok()
    }
}

impl<A: State, B: State> State for (A, B) {
    fn save(&self, out: &mut Vec<u8>) {
        self.0.save(out);
        self.1.save(out);
    }
    fn load(bytes: &mut &[u8]) -> Option<Self> {
        Some((A::load(bytes)?, B::load(bytes)?))
    }
}

/// Implements [`State`] for a struct from its fields (each a `State`):
/// `weir_udf::state!(Mean { sum, count });`
#[macro_export]
macro_rules! state {
    ($t:ident { $($field:ident),* $(,)? }) => {
        impl $crate::State for $t {
            fn save(&self, out: &mut ::std::vec::Vec<u8>) {
                $( $crate::State::save(&self.$field, out); )*
            }
            fn load(bytes: &mut &[u8]) -> ::core::option::Option<Self> {
                ::core::option::Option::Some($t { $( $field: $crate::State::load(bytes)? ),* })
            }
        }
    };
}

/// The groups of the accumulator this instance serves.
pub struct Groups<T>(Global<Vec<T>>);

impl<T> Groups<T> {
    pub const fn new() -> Self {
        Groups(Global::new())
    }
}

impl<T> Default for Groups<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Groups<T> {
    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> &mut Vec<T> {
        self.0.get()
    }
}

/// One fold (`__update`, `__retract`, `__merge`): grows the groups to
/// `total`, then calls `body(group, row)` for every row whose `strict`
/// columns are all valid. Returns the result descriptor (status only).
///
/// # Safety
/// Called from a generated export with the host's arguments.
pub unsafe fn fold<T: Default, F>(
    groups: &Groups<T>,
    rows: u32,
    total: u32,
    ids: &Column,
    strict: &[Column],
    mut body: F,
) -> u32
where
    F: FnMut(&mut T, usize) -> Result<(), String>,
{
    install_panic_hook();
    let all = groups.get();
    let total = total as usize;
    if all.len() < total {
        all.resize_with(total, T::default);
    }
    let out = OUT.get();
    let row_slot = ROW.get();
    for row in 0..rows as usize {
        if strict.iter().any(|c| !c.is_valid(row)) {
            continue;
        }
        *row_slot = row;
        // SAFETY: the group-id column holds `rows` u32 values.
        let id = unsafe { <u32 as crate::FromArg>::read(ids, row) } as usize;
        let Some(group) = all.get_mut(id) else {
            return out.fail(row, format!("group id {id} is not below the {total} groups"));
        };
        if let Err(message) = body(group, row) {
            return out.fail(row, message);
        }
    }
    out.ok()
}

/// `__evaluate` / `__state`: one value per group `0..n` from `value`;
/// with `consume`, the groups are dropped afterwards (the rest move down).
///
/// # Safety
/// Called from a generated export.
pub unsafe fn emit<T, R, F>(groups: &Groups<T>, n: u32, consume: u32, mut value: F) -> u32
where
    R: OutputValue,
    F: FnMut(&T) -> Result<Option<R>, String>,
{
    install_panic_hook();
    let all = groups.get();
    let n = n as usize;
    // Groups the host counts that never saw a row are NULL.
    let result = unsafe {
        run::<R, _>(n as u32, &[], |row| match all.get(row) {
            Some(group) => value(group),
            None => Ok(None),
        })
    };
    if consume != 0 {
        all.drain(..n.min(all.len()));
    }
    result
}

/// `__state` of a [`State`] type: one binary column.
///
/// # Safety
/// Called from a generated export.
pub unsafe fn emit_state<T: State>(groups: &Groups<T>, n: u32, consume: u32) -> u32 {
    let mut buf = Vec::new();
    unsafe {
        emit::<T, Vec<u8>, _>(groups, n, consume, |group| {
            buf.clear();
            group.save(&mut buf);
            Ok(Some(buf.clone()))
        })
    }
}

/// Reads a group's state written by [`emit_state`].
pub fn load_state<T: State>(mut bytes: &[u8]) -> Result<T, String> {
    let value = T::load(&mut bytes).ok_or("the state bytes are not a state of this aggregate")?;
    if !bytes.is_empty() {
        return Err("the state bytes are longer than a state of this aggregate".to_string());
    }
    Ok(value)
}
