//! Reading a float dataset straight from the file's bytes when HDF5 stores it contiguously.
//!
//! A contiguous dataset (no chunks, hence no filters) is one run of bytes at a known offset in
//! the file. Reading that run with one positioned read and converting the byte order ourselves
//! skips HDF5's type-conversion path (and its global lock, which the hdf5 crate holds around
//! every HDF5 call), so several files can be read at once. Chunked or compressed datasets, other
//! byte orders and anything unexpected take HDF5's own `read_raw`.
use std::path::Path;

use hdf5::types::{FloatSize, TypeDescriptor};

/// The `n` values of `ds` (a float32 or float64 dataset) as f32, read directly from `path` when
/// the dataset is stored contiguously in little- or big-endian order; `None` when it is not (the
/// caller then reads through HDF5). An I/O error of the direct read is returned as such.
pub(super) fn read_contiguous(
    path: &Path,
    ds: &hdf5::Dataset,
    dtype: &TypeDescriptor,
    n: usize,
) -> Option<std::io::Result<Vec<f32>>> {
    let size = match dtype {
        TypeDescriptor::Float(FloatSize::U4) => 4,
        TypeDescriptor::Float(FloatSize::U8) => 8,
        _ => return None,
    };
    let order = ds.dtype().ok()?.byte_order();
    let little = match order {
        hdf5::datatype::ByteOrder::LittleEndian => true,
        hdf5::datatype::ByteOrder::BigEndian => false,
        _ => return None,
    };
    let offset = ds.offset()?;
    if ds.is_chunked() || ds.storage_size() != (n * size) as u64 {
        return None;
    }
    Some(read_at(path, offset, n, size, little))
}

/// Reads `n` values of `size` bytes (4: f32, else f64) at `offset` of `path`, in the file's byte
/// order (`little` or big endian), as f32. The bytes land in the result's own buffer (f32) or in
/// one f64 buffer; byte swapping happens only where the file's order is not the machine's.
fn read_at(
    path: &Path,
    offset: u64,
    n: usize,
    size: usize,
    little: bool,
) -> std::io::Result<Vec<f32>> {
    let swap = little != cfg!(target_endian = "little");
    if size == 4 {
        let mut values = vec![0f32; n];
        read_bytes(path, offset, as_bytes(&mut values))?;
        if swap {
            for v in &mut values {
                *v = f32::from_bits(v.to_bits().swap_bytes());
            }
        }
        Ok(values)
    } else {
        let mut wide = vec![0f64; n];
        read_bytes(path, offset, as_bytes(&mut wide))?;
        Ok(wide
            .iter()
            .map(|&v| {
                if swap {
                    f64::from_bits(v.to_bits().swap_bytes()) as f32
                } else {
                    v as f32
                }
            })
            .collect())
    }
}

/// Float types whose every bit pattern is a value: f32 and f64.
trait Float: Copy {}
impl Float for f32 {}
impl Float for f64 {}

/// The bytes of a float slice, to read into.
fn as_bytes<T: Float>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: T is f32 or f64 (the sealed `Float`): no padding, every bit pattern a valid value;
    // u8 has alignment 1 and the length covers exactly the same memory.
    unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(values),
        )
    }
}

#[cfg(unix)]
fn read_bytes(path: &Path, offset: u64, bytes: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    std::fs::File::open(path)?.read_exact_at(bytes, offset)
}

#[cfg(not(unix))]
fn read_bytes(path: &Path, offset: u64, bytes: &mut [u8]) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(bytes)
}
