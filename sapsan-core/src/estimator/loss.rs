//! Training losses: PyTorch's `SmoothL1Loss()` (CNN3d, as in Sapsan) with a fused forward and
//! backward, and the mean squared error; [`Loss`] names the one a training run minimises.
use candle_core::backend::BackendStorage;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::layers::Elem;

/// The loss a training run minimises (and reports as `train - loss` / `valid - loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// [`smooth_l1_loss`] (`beta = 1`), Sapsan's CNN3d loss.
    SmoothL1,
    /// The mean squared error, [`mse_loss`].
    Mse,
}

impl Loss {
    /// The mean loss of `prediction` against `target` (same shape), as a scalar tensor.
    pub fn compute(self, prediction: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Loss::SmoothL1 => smooth_l1_loss(prediction, target),
            Loss::Mse => mse_loss(prediction, target),
        }
    }

    /// PyTorch's name of the loss, for the model details.
    pub fn describe(self) -> &'static str {
        match self {
            Loss::SmoothL1 => "SmoothL1Loss(beta=1.0, reduction='mean')",
            Loss::Mse => "MSELoss(reduction='mean')",
        }
    }
}

/// For one element with `d = prediction - target`: its term of SmoothL1's sum (`beta = 1`:
/// `0.5 d^2` where `|d| < 1`, `|d| - 0.5` elsewhere) and the term's derivative `clamp(d, -1, 1)`.
fn smooth_l1_term(d: f64) -> (f64, f64) {
    let a = d.abs();
    let value = if a < 1.0 { 0.5 * d * d } else { a - 0.5 };
    (value, d.clamp(-1.0, 1.0))
}

/// For one element with `d = prediction - target`: its term of the squared error's sum, `d^2`,
/// and the term's derivative `2 d`.
fn mse_term(d: f64) -> (f64, f64) {
    (d * d, 2.0 * d)
}

/// Elements per chunk of [`pass`]: fixed, so the sum does not depend on the thread count.
const CHUNK: usize = 1 << 15;

/// The mean `loss` of prediction `p` against target `t` (same length) and its gradient with
/// respect to `p`, in one pass (see [`pass`]).
pub(crate) fn value_and_grad<T: Elem>(loss: Loss, p: &[T], t: &[T]) -> (f64, Vec<T>) {
    match loss {
        Loss::SmoothL1 => pass(smooth_l1_term, p, t, true),
        Loss::Mse => pass(mse_term, p, t, true),
    }
}

/// The mean of `term(p - t).0` over `p` and `t` (same length), summed in `f64` in chunks that
/// run in parallel on rayon's pool, and, when `grad`, the gradient `term(p - t).1 / n` (empty
/// otherwise).
fn pass<T: Elem>(
    term: impl Fn(f64) -> (f64, f64) + Copy + Sync,
    p: &[T],
    t: &[T],
    grad: bool,
) -> (f64, Vec<T>) {
    assert_eq!(
        p.len(),
        t.len(),
        "loss: prediction and target lengths differ"
    );
    let n = p.len().max(1) as f64;
    let scale = 1.0 / n;
    let mut g = Vec::with_capacity(if grad { p.len() } else { 0 });
    let pairs = p.par_chunks(CHUNK).zip(t.par_chunks(CHUNK));
    let sums: Vec<f64> = if grad {
        g.spare_capacity_mut()[..p.len()]
            .par_chunks_mut(CHUNK)
            .zip(pairs)
            .map(|(g, (p, t))| chunk(term, p, t, Some((g, scale))))
            .collect()
    } else {
        pairs.map(|(p, t)| chunk(term, p, t, None)).collect()
    };
    if grad {
        // SAFETY: the chunks cover `g`'s first `p.len()` entries and `chunk` writes each one.
        unsafe { g.set_len(p.len()) };
    }
    (sums.iter().sum::<f64>() / n, g)
}

/// The sum of `term(p - t).0` over one chunk; with `g`, writes every element's
/// `term(p - t).1` times the scale into it (all of it).
#[inline(always)]
fn chunk<T: Elem>(
    term: impl Fn(f64) -> (f64, f64),
    p: &[T],
    t: &[T],
    g: Option<(&mut [MaybeUninit<T>], f64)>,
) -> f64 {
    // Eight running sums, not one: one sum is a chain of dependent additions; eight vectorise.
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let full = p.len() / LANES * LANES;
    let d = |i: usize| p[i].to_f64() - t[i].to_f64();
    let (pc, tc) = (p.chunks_exact(LANES), t.chunks_exact(LANES));
    let mut rest = 0.0;
    match g {
        Some((g, scale)) => {
            for (i, g) in g.iter_mut().enumerate().skip(full) {
                let (value, grad) = term(d(i));
                rest += value;
                g.write(T::from_f64(grad * scale));
            }
            for ((p, t), g) in pc.zip(tc).zip(g.chunks_exact_mut(LANES)) {
                for j in 0..LANES {
                    let (value, grad) = term(p[j].to_f64() - t[j].to_f64());
                    acc[j] += value;
                    g[j].write(T::from_f64(grad * scale));
                }
            }
        }
        None => {
            rest = (full..p.len()).map(|i| term(d(i)).0).sum();
            for (p, t) in pc.zip(tc) {
                for j in 0..LANES {
                    acc[j] += term(p[j].to_f64() - t[j].to_f64()).0;
                }
            }
        }
    }
    acc.iter().sum::<f64>() + rest
}

/// Mean squared error of `prediction` against `target` (same shape), PyTorch's `nn.MSELoss()`.
pub fn mse_loss(prediction: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    if prediction.dims() != target.dims() {
        candle_core::bail!(
            "mse_loss: prediction shape {:?} differs from target shape {:?}",
            prediction.dims(),
            target.dims()
        )
    }
    (prediction - target)?.sqr()?.mean_all()
}

/// Mean SmoothL1 (Huber) loss with `beta = 1`, PyTorch's `nn.SmoothL1Loss()`:
/// `0.5 d^2` where `|d| < 1`, `|d| - 0.5` elsewhere, averaged over all elements.
///
/// `prediction` and `target` must have the same shape and an `f32` or `f64` dtype. One fused pass
/// computes the value (accumulated in `f64`) and one the gradient `clamp(d, -1, 1) / n`: the
/// equivalent chain of candle ops spent most of a CNN3d training step in its backward pass.
pub fn smooth_l1_loss(prediction: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    if prediction.dims() != target.dims() {
        candle_core::bail!(
            "smooth_l1_loss: prediction shape {:?} differs from target shape {:?}",
            prediction.dims(),
            target.dims()
        )
    }
    prediction
        .contiguous()?
        .apply_op2(&target.contiguous()?, SmoothL1Mean)
}

/// The two contiguous slices of a binary op, as `f64` values through `f`.
fn with_pair<R>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    name: &str,
    f: impl FnOnce(PairSlices) -> R,
) -> candle_core::Result<R> {
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{name}: inputs must be contiguous")
    };
    match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok(f(PairSlices::F32(&a[a0..a1], &b[b0..b1]))),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => Ok(f(PairSlices::F64(&a[a0..a1], &b[b0..b1]))),
        (a, b) => candle_core::bail!(
            "{name}: supports f32 or f64 inputs of the same dtype, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        ),
    }
}

/// Prediction and target data of one dtype.
enum PairSlices<'a> {
    F32(&'a [f32], &'a [f32]),
    F64(&'a [f64], &'a [f64]),
}

/// Forward of [`smooth_l1_loss`]: the mean loss as a scalar of the inputs' dtype.
struct SmoothL1Mean;

impl CustomOp2 for SmoothL1Mean {
    fn name(&self) -> &'static str {
        "smooth-l1-mean"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = with_pair(s1, l1, s2, l2, self.name(), |pair| match pair {
            PairSlices::F32(p, t) => {
                CpuStorage::F32(vec![pass(smooth_l1_term, p, t, false).0 as f32])
            }
            PairSlices::F64(p, t) => CpuStorage::F64(vec![pass(smooth_l1_term, p, t, false).0]),
        })?;
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        prediction: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = prediction.elem_count().max(1) as f64;
        let scale = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()? / n;
        let grad = prediction.apply_op2_no_bwd(target, &SmoothL1Grad { scale })?;
        // The target is usually data; build its gradient only when something depends on it.
        let target_grad = if target.track_op() {
            Some(grad.neg()?)
        } else {
            None
        };
        Ok((Some(grad), target_grad))
    }
}

/// Gradient of [`smooth_l1_loss`] with respect to the prediction: `clamp(p - t, -1, 1) * scale`.
struct SmoothL1Grad {
    scale: f64,
}

impl CustomOp2 for SmoothL1Grad {
    fn name(&self) -> &'static str {
        "smooth-l1-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = self.scale;
        let grad = |d: f64| smooth_l1_term(d).1 * s;
        let storage = with_pair(s1, l1, s2, l2, self.name(), |pair| match pair {
            PairSlices::F32(p, t) => CpuStorage::F32(
                p.iter()
                    .zip(t)
                    .map(|(&p, &t)| grad(f64::from(p) - f64::from(t)) as f32)
                    .collect(),
            ),
            PairSlices::F64(p, t) => {
                CpuStorage::F64(p.iter().zip(t).map(|(&p, &t)| grad(p - t)).collect())
            }
        })?;
        Ok((storage, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_chunked_pass_sums_like_plain_loops_and_alike_on_any_thread_count() {
        // Three full chunks and a ragged one; differences inside and outside SmoothL1's |d| < 1.
        let n = 3 * CHUNK + 13;
        let p: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let t: Vec<f32> = (0..n)
            .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
            .collect();
        for (loss, term) in [
            (Loss::SmoothL1, smooth_l1_term as fn(f64) -> (f64, f64)),
            (Loss::Mse, mse_term),
        ] {
            let d = |i: usize| f64::from(p[i]) - f64::from(t[i]);
            let want: f64 = (0..n).map(|i| term(d(i)).0).sum::<f64>() / n as f64;
            let runs: Vec<(f64, Vec<f32>)> = [1, 2]
                .into_iter()
                .map(|threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| value_and_grad(loss, &p, &t))
                })
                .collect();
            let (value, grad) = &runs[0];
            assert!(
                (value - want).abs() < 1e-12 * want,
                "{loss:?}: {value} vs {want}"
            );
            for i in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5, n - 1] {
                assert_eq!(
                    grad[i],
                    (term(d(i)).1 * (1.0 / n as f64)) as f32,
                    "{loss:?} at {i}"
                );
            }
            assert_eq!(runs[0], runs[1], "{loss:?}: one thread and two differ");
            let mean = pass(term, &p, &t, false);
            assert_eq!((mean.0, mean.1.len()), (*value, 0));
        }
    }

    #[test]
    fn mse_matches_known_values_and_gradient() {
        let dev = Device::Cpu;
        let v = Var::new(&[1.0f64, -2.0, 0.5, 3.0], &dev).unwrap();
        let t = Tensor::new(&[0.0f64, 0.0, 0.5, 1.0], &dev).unwrap();
        let l = Loss::Mse.compute(v.as_tensor(), &t).unwrap();
        // (1 + 4 + 0 + 4) / 4
        assert!((l.to_scalar::<f64>().unwrap() - 2.25).abs() < 1e-12);
        let g: Vec<f64> = l
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        // d/dp = 2 (p - t) / n
        assert_eq!(g, vec![0.5, -1.0, 0.0, 1.0]);
        assert!(mse_loss(&t, &t.reshape((2, 2)).unwrap()).is_err());
        let s = Loss::SmoothL1.compute(v.as_tensor(), &t).unwrap();
        // 0.5, 1.5, 0, 1.5 -> 0.875
        assert!((s.to_scalar::<f64>().unwrap() - 0.875).abs() < 1e-12);
    }

    #[test]
    fn smooth_l1_matches_pytorch_values() {
        let dev = Device::Cpu;
        let p = Tensor::new(&[0.0f32, 0.5, 2.0, -3.0], &dev).unwrap();
        let t = Tensor::new(&[0.0f32, 0.0, 0.0, 0.0], &dev).unwrap();
        // torch.nn.SmoothL1Loss()(p, t) = mean(0, 0.125, 1.5, 2.5) = 1.03125
        let l = smooth_l1_loss(&p, &t).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - 1.03125).abs() < 1e-6, "{l}");
        // Gradient: d/dp = clamp(p - t, -1, 1) / n.
        let v = Var::new(&[0.5f64, 2.0, -3.0, -0.25], &dev).unwrap();
        let t = Tensor::zeros(4, DType::F64, &dev).unwrap();
        let g = smooth_l1_loss(v.as_tensor(), &t)
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = g.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![0.125, 0.25, -0.25, -0.0625]);
    }

    #[test]
    fn smooth_l1_gradients_match_finite_differences_for_both_arguments() {
        let dev = Device::Cpu;
        // Values on both branches (|d| < 1 and > 1), a 2x3 shape, through a further op.
        let p0 = [0.3f64, -1.7, 2.2, 0.05, -0.4, 1.3];
        let t0 = [0.1f64, 0.2, -0.3, 0.9, -0.45, 4.0];
        let p = Var::new(&p0, &dev).unwrap();
        let t = Var::new(&t0, &dev).unwrap();
        let f = |p: &Tensor, t: &Tensor| -> Tensor {
            (smooth_l1_loss(&p.reshape((2, 3)).unwrap(), &t.reshape((2, 3)).unwrap()).unwrap()
                * 3.0)
                .unwrap()
        };
        let grads = f(p.as_tensor(), t.as_tensor()).backward().unwrap();
        let gp: Vec<f64> = grads.get(p.as_tensor()).unwrap().to_vec1().unwrap();
        let gt: Vec<f64> = grads.get(t.as_tensor()).unwrap().to_vec1().unwrap();
        let value = |p: &[f64], t: &[f64]| -> f64 {
            let p = Tensor::new(p, &dev).unwrap();
            let t = Tensor::new(t, &dev).unwrap();
            f(&p, &t).to_scalar::<f64>().unwrap()
        };
        let h = 1e-6;
        for i in 0..6 {
            let (mut pp, mut pm) = (p0, p0);
            pp[i] += h;
            pm[i] -= h;
            let fd = (value(&pp, &t0) - value(&pm, &t0)) / (2.0 * h);
            assert!((fd - gp[i]).abs() < 1e-6, "d/dp[{i}]: {fd} vs {}", gp[i]);
            let (mut tp, mut tm) = (t0, t0);
            tp[i] += h;
            tm[i] -= h;
            let fd = (value(&p0, &tp) - value(&p0, &tm)) / (2.0 * h);
            assert!((fd - gt[i]).abs() < 1e-6, "d/dt[{i}]: {fd} vs {}", gt[i]);
        }
        // f32 value agrees with the f64 one; mismatched shapes are an error.
        let p32 = Tensor::new(&p0, &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let t32 = Tensor::new(&t0, &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let l32 = smooth_l1_loss(&p32, &t32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((l32 as f64 - value(&p0, &t0) / 3.0).abs() < 1e-6);
        assert!(smooth_l1_loss(&p32, &t32.reshape((2, 3)).unwrap()).is_err());
        // A data target gets no gradient.
        let grads = smooth_l1_loss(p.as_tensor(), &Tensor::new(&t0, &dev).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(grads.get(p.as_tensor()).unwrap().dims(), &[6]);
    }
}
