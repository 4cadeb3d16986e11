//! Reading one dataset of one file: [`read_cube`], and the direct route for contiguous data.
//!
//! A contiguous dataset (no chunks, hence no filters) is one run of bytes at a known offset in
//! the file. Reading that run with one positioned read and converting the byte order ourselves
//! skips HDF5's type-conversion path (and its global lock, which the hdf5 crate holds around
//! every HDF5 call), so several files can be read at once. Chunked or compressed datasets, other
//! byte orders and anything unexpected take HDF5's own `read_raw`.
use std::path::Path;

use hdf5::types::{FloatSize, TypeDescriptor};
use ndarray::Array4;

use crate::{Error, Result};

/// Reads one dataset of one file as a (C, D, H, W) float32 cube: the dataset named `label`, or
/// else the last one in name order (as h5py's `list(file.keys())[-1]`). A (D, H, W) dataset is
/// read as C = 1; float64 is converted to float32. Every value must be finite.
pub fn read_cube(path: &Path, label: Option<&str>) -> Result<Array4<f32>> {
    read_named(path, label).map(|(cube, _)| cube)
}

/// [`read_cube`], also returning the name of the dataset read.
pub(super) fn read_named(path: &Path, label: Option<&str>) -> Result<(Array4<f32>, String)> {
    let err = |dataset: Option<&str>, reason: String| Error::Data {
        path: path.to_path_buf(),
        dataset: dataset.map(str::to_string),
        reason,
    };
    if !path.is_file() {
        return Err(err(label, "file not found; check the path".into()));
    }
    let file = hdf5::File::open(path).map_err(|e| {
        err(
            label,
            format!(
                "cannot open it as HDF5 ({e}); the file is truncated, corrupt or not HDF5: \
                 re-create or re-download it"
            ),
        )
    })?;
    let mut names = file.member_names().map_err(|e| {
        err(
            label,
            format!("cannot list the datasets ({e}); the file may be corrupt: re-create it"),
        )
    })?;
    names.sort();
    let name = match label {
        Some(l) => {
            if !names.iter().any(|n| n == l) {
                return Err(err(
                    Some(l),
                    format!(
                        "no dataset with this label; the file has {names:?}: fix the label \
                         (data - features_label / data - target_label) or leave it unset to take \
                         the last dataset"
                    ),
                ));
            }
            l.to_string()
        }
        None => names
            .last()
            .cloned()
            .ok_or_else(|| err(None, "the file holds no datasets; re-create it".into()))?,
    };
    let ds = file.dataset(&name).map_err(|e| {
        err(
            Some(&name),
            format!("{name:?} is not a readable dataset ({e}); name a dataset with a label"),
        )
    })?;
    let dtype = ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| {
        err(
            Some(&name),
            format!("cannot read the data type ({e}); the file may be corrupt"),
        )
    })?;
    if !matches!(dtype, hdf5::types::TypeDescriptor::Float(_)) {
        return Err(err(
            Some(&name),
            format!(
                "holds {dtype} data; sapsan reads float32 or float64 only: convert the dataset"
            ),
        ));
    }
    let shape = ds.shape();
    let shape4 = match shape.as_slice() {
        &[d, h, w] => [1, d, h, w],
        &[c, d, h, w] => [c, d, h, w],
        other => {
            return Err(err(
                Some(&name),
                format!(
                    "has shape {other:?} (rank {}); expected (C, D, H, W) or (D, H, W): write one \
                     cube per file",
                    other.len()
                ),
            ));
        }
    };
    if shape4.contains(&0) {
        return Err(err(
            Some(&name),
            format!("has an empty shape {shape:?}; re-create the file"),
        ));
    }
    let n: usize = shape4.iter().product();
    let failed = |e: String| {
        err(
            Some(&name),
            format!("reading failed ({e}); the file is truncated or corrupt: re-create it"),
        )
    };
    // Contiguous datasets straight from the file's bytes; the rest through HDF5.
    let raw: Vec<f32> = match read_contiguous(path, &ds, &dtype, n) {
        Some(read) => read.map_err(|e| failed(e.to_string()))?,
        None => ds.read_raw::<f32>().map_err(|e| failed(e.to_string()))?,
    };
    // A branch-free pass over blocks first (vectorised); the position only for the message.
    let all_finite = raw
        .chunks(4096)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()));
    if let Some(first) = (!all_finite)
        .then(|| raw.iter().position(|v| !v.is_finite()))
        .flatten()
    {
        let count = raw.iter().filter(|v| !v.is_finite()).count();
        let [_, d, h, w] = shape4;
        let (c, rest) = (first / (d * h * w), first % (d * h * w));
        let (z, y, x) = (rest / (h * w), (rest / w) % h, rest % w);
        return Err(err(
            Some(&name),
            format!(
                "value at [channel {c}, {z}, {y}, {x}] is {}{}; {count} non-finite value(s) in \
                 total: clean the data (NaN/inf cannot be trained on)",
                raw[first],
                if matches!(
                    dtype,
                    hdf5::types::TypeDescriptor::Float(hdf5::types::FloatSize::U8)
                ) {
                    " after conversion to float32"
                } else {
                    ""
                }
            ),
        ));
    }
    let cube = Array4::from_shape_vec(shape4, raw).map_err(|e| {
        err(
            Some(&name),
            format!("data does not match its shape {shape:?} ({e})"),
        )
    })?;
    Ok((cube, name))
}

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
