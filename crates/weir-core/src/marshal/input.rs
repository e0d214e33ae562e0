//! Argument columns → guest memory.

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer};
use datafusion::arrow::compute::cast;

use crate::abi::ArrowType;
use crate::abi::{ARG_SIZE, AbiType, BUFFER_ALIGN, types::Layout};

/// One argument's buffers, ready to copy.
struct ArgBuffers {
    validity: Option<Buffer>,
    values: Buffer,
    offsets: Option<Buffer>,
}

/// Where each buffer of a batch goes, relative to the region's base.
pub struct InputPlan {
    args: Vec<ArgBuffers>,
    /// Byte offset of each buffer (validity, values, offsets) per argument.
    placement: Vec<[Option<usize>; 3]>,
    total: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("argument {index} has type {found}, the function expects {expected}: {reason}")]
    Type {
        index: usize,
        found: String,
        expected: AbiType,
        reason: String,
    },
    #[error("argument {index} has {found} rows, the batch has {rows}")]
    Rows {
        index: usize,
        found: usize,
        rows: usize,
    },
    #[error(
        "the batch needs {0} bytes of guest memory, more than a 32-bit guest can address; use smaller batches"
    )]
    TooLarge(usize),
}

fn align(n: usize) -> usize {
    n.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN
}

fn buffers_of(array: &dyn Array, ty: AbiType) -> ArgBuffers {
    let data = array.to_data();
    let (offset, len) = (data.offset(), data.len());
    let validity = data
        .nulls()
        .filter(|n| n.null_count() > 0)
        .map(|n| n.inner().sliced());
    match ty.layout() {
        Layout::Bits => ArgBuffers {
            validity,
            values: BooleanBuffer::new(data.buffers()[0].clone(), offset, len).sliced(),
            offsets: None,
        },
        Layout::Fixed(width) => ArgBuffers {
            validity,
            values: data.buffers()[0].slice_with_length(offset * width, len * width),
            offsets: None,
        },
        Layout::Variable => {
            let offsets = data.buffers()[0].slice_with_length(offset * 4, (len + 1) * 4);
            let typed: &[i32] = offsets.typed_data();
            let (first, last) = (typed[0], typed[len]);
            let values =
                data.buffers()[1].slice_with_length(first as usize, (last - first) as usize);
            let offsets = if first == 0 {
                offsets
            } else {
                Buffer::from_iter(typed.iter().map(|o| o - first))
            };
            ArgBuffers {
                validity,
                values,
                offsets: Some(offsets),
            }
        }
    }
}

impl InputPlan {
    /// Prepares `args` (one array per declared argument, `rows` long each).
    /// Arrays of another type are cast to the declared type first.
    pub fn new(args: &[ArrayRef], types: &[AbiType], rows: usize) -> Result<Self, InputError> {
        let mut buffers = Vec::with_capacity(args.len());
        for (index, (array, ty)) in args.iter().zip(types).enumerate() {
            if array.len() != rows {
                return Err(InputError::Rows {
                    index,
                    found: array.len(),
                    rows,
                });
            }
            let wanted = ty.data_type();
            if array.data_type() == &wanted {
                buffers.push(buffers_of(array.as_ref(), *ty));
            } else {
                let cast = cast(array, &wanted).map_err(|e| InputError::Type {
                    index,
                    found: array.data_type().to_string(),
                    expected: *ty,
                    reason: e.to_string(),
                })?;
                buffers.push(buffers_of(cast.as_ref(), *ty));
            }
        }
        let mut total = align(ARG_SIZE * buffers.len());
        let mut placement = Vec::with_capacity(buffers.len());
        for arg in &buffers {
            let mut place = |b: Option<&Buffer>| {
                b.map(|b| {
                    let at = total;
                    total += align(b.len());
                    at
                })
            };
            placement.push([
                place(arg.validity.as_ref()),
                place(Some(&arg.values)),
                place(arg.offsets.as_ref()),
            ]);
        }
        if total > u32::MAX as usize / 2 {
            return Err(InputError::TooLarge(total));
        }
        Ok(InputPlan {
            args: buffers,
            placement,
            total,
        })
    }

    /// Bytes the guest must provide (the `weir_alloc` request).
    pub fn total_bytes(&self) -> usize {
        self.total
    }

    /// Copies descriptors and buffers into `region`, which starts at guest
    /// address `base` and is exactly [`Self::total_bytes`] long.
    pub fn write(&self, region: &mut [u8], base: u32) {
        debug_assert_eq!(region.len(), self.total);
        let addr = |at: Option<usize>| at.map_or(0, |at| base + at as u32);
        for (i, (arg, place)) in self.args.iter().zip(&self.placement).enumerate() {
            let desc = [
                addr(place[0]),
                addr(place[1]),
                arg.values.len() as u32,
                addr(place[2]),
            ];
            for (k, field) in desc.iter().enumerate() {
                let at = i * ARG_SIZE + k * 4;
                region[at..at + 4].copy_from_slice(&field.to_le_bytes());
            }
            let bufs = [
                arg.validity.as_ref(),
                Some(&arg.values),
                arg.offsets.as_ref(),
            ];
            for (buf, at) in bufs.into_iter().zip(place) {
                if let (Some(buf), Some(at)) = (buf, at) {
                    region[*at..*at + buf.len()].copy_from_slice(buf.as_slice());
                }
            }
        }
    }
}
