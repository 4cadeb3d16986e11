//! [`retain_freed_memory`]: keeps the large blocks a training step frees in the process's heap.
//!
//! Every training step allocates tensors of the same sizes again: activations, the gradients
//! candle's backward pass sums (a zero tensor plus the gradient, per parameter) and the packed
//! gradients of the custom layers. CNN3d's last Linear alone holds `8C x Ct*D*H*W` weights, 25 MB
//! at 64^3. glibc serves such blocks with `mmap` and gives them back to the kernel on `free`, so
//! each step page-faults (and the kernel zeroes) all of them anew: a quarter of the step time in
//! the profile. With the thresholds raised the freed blocks stay in the heap and the next step
//! reuses them. The price: memory freed after a step is kept for the next one, not returned.

/// Sizes up to this many bytes come from the heap and stay there when freed (1 GiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THRESHOLD: libc::c_int = 1 << 30;

/// Raises glibc's `mmap` and trim thresholds once per process (see the module docs). Called by
/// the training loop; safe to call any number of times. Elsewhere than Linux/glibc
/// it does nothing.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; it has no memory-safety
            // preconditions and returns 0 when a value is refused.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD) == 1
            };
            if !ok {
                log::debug!("glibc refused the malloc thresholds; large blocks stay mmap-ed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn can_be_called_repeatedly() {
        super::retain_freed_memory();
        super::retain_freed_memory();
        // Large blocks still allocate, free and allocate again.
        for _ in 0..3 {
            let v = vec![1u8; 64 << 20];
            assert_eq!(v[v.len() - 1], 1);
        }
    }
}
