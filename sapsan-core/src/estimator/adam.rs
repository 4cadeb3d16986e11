//! [`Adam`]: the Adam optimizer updating every parameter in place in one pass.
//!
//! candle's `AdamW` computes each step with about a dozen tensor operations per parameter, each
//! allocating a fresh tensor the size of the parameter, then copies three results back. For
//! CNN3d the last Linear layer holds almost all weights (`8C * D_out`, 786,432 for a 32^3 target),
//! so that allocation traffic dominated the optimizer step. This version keeps the moments as plain
//! vectors and updates moments and parameter element by element, with the same arithmetic as
//! candle's `AdamW` and PyTorch's `torch.optim.Adam`/`AdamW`:
//!
//! ```text
//! m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
//! p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```
//! Moments are kept in the parameter's own precision (`f32` or `f64`), as PyTorch keeps them, so
//! an `f32` step moves 28 bytes per parameter, not 44; parameters live on the CPU. Large
//! parameters are updated in chunks on rayon's pool (the update is memory-bound, and each thread
//! brings its own share of memory bandwidth).
//!
//! [`Adam::with_l2_penalty`] adds PyTorch `Adam`'s own `weight_decay` (an L2 penalty: `g += l2 p`
//! before the moments), which differs from the decoupled decay above; Sapsan's PICAE uses it.
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rayon::prelude::*;

/// First and second moments of one parameter, in the parameter's precision.
enum Moments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64> },
}

/// One parameter with its moments.
struct AdamVar {
    var: Var,
    moments: Moments,
}

/// Adam with decoupled weight decay (`weight_decay = 0` gives plain Adam), configured by candle's
/// [`ParamsAdamW`], updating parameters in place. Drop-in for `candle_nn::AdamW` on the CPU.
pub struct Adam {
    vars: Vec<AdamVar>,
    params: ParamsAdamW,
    /// PyTorch `Adam`'s `weight_decay`: added to each gradient as `l2 * p`.
    l2: f64,
    step_t: i32,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("params", &self.params)
            .field("l2", &self.l2)
            .field("step", &self.step_t)
            .field("num_vars", &self.vars.len())
            .finish()
    }
}

/// The coefficients of one step, in the parameter's precision.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    beta1: T,
    beta2: T,
    /// `lr / (1 - b1^t)`.
    step_size: T,
    /// `1 / sqrt(1 - b2^t)`.
    inv_sqrt_bc2: T,
    eps: T,
    /// `1 - lr * weight_decay`.
    decay: T,
    /// The L2 penalty added to the gradient (`g + l2 p`).
    l2: T,
}

/// Elements per rayon task: below this a parameter is updated on the calling thread.
const CHUNK: usize = 1 << 16;

macro_rules! update_fn {
    ($name:ident, $t:ty) => {
        /// Updates moments and parameter element by element, in chunks on rayon's pool.
        fn $name(p: &mut [$t], g: &[$t], m: &mut [$t], v: &mut [$t], c: Coeffs<$t>) {
            let run = |p: &mut [$t], g: &[$t], m: &mut [$t], v: &mut [$t]| {
                let (one, b1, b2) = (1.0 as $t, c.beta1, c.beta2);
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = g + c.l2 * *p;
                    *m = b1 * *m + (one - b1) * g;
                    *v = b2 * *v + (one - b2) * g * g;
                    let denom = v.sqrt() * c.inv_sqrt_bc2 + c.eps;
                    *p = *p * c.decay - c.step_size * *m / denom;
                }
            };
            if p.len() <= CHUNK || rayon::current_num_threads() < 2 {
                run(p, g, m, v);
                return;
            }
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| run(p, g, m, v));
        }
    };
}
update_fn!(update_f32, f32);
update_fn!(update_f64, f64);

/// The fused update of one parameter, applied through candle's in-place op interface.
struct Update<'a> {
    moments: Mutex<&'a mut Moments>,
    c: Coeffs<f64>,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adam: parameter and gradient must be contiguous")
        };
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam: moment lock poisoned".into()))?;
        let check = |p: usize, g: usize, m: usize| {
            if p != g || p != m {
                candle_core::bail!(
                    "adam: parameter ({p}), gradient ({g}) and moments ({m}) differ in size"
                )
            }
            Ok(())
        };
        let c = self.c;
        match (s1, s2, &mut **moments) {
            (CpuStorage::F32(p), CpuStorage::F32(g), Moments::F32 { m, v }) => {
                let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
                check(p.len(), g.len(), m.len())?;
                let c = Coeffs {
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    step_size: c.step_size as f32,
                    inv_sqrt_bc2: c.inv_sqrt_bc2 as f32,
                    eps: c.eps as f32,
                    decay: c.decay as f32,
                    l2: c.l2 as f32,
                };
                update_f32(p, g, m, v, c);
                Ok(())
            }
            (CpuStorage::F64(p), CpuStorage::F64(g), Moments::F64 { m, v }) => {
                let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
                check(p.len(), g.len(), m.len())?;
                update_f64(p, g, m, v, c);
                Ok(())
            }
            (p, g, _) => candle_core::bail!(
                "adam: supports f32 and f64 parameters with gradients (and moments) of the same type, got {:?} and {:?}",
                p.dtype(),
                g.dtype()
            ),
        }
    }
}

impl Adam {
    /// Adds PyTorch `Adam`'s `weight_decay`: every gradient gets `l2 * p` added before the
    /// moments are updated (an L2 penalty `l2 / 2 * |p|^2` on the loss; 0, the default, adds
    /// nothing). Independent of [`ParamsAdamW::weight_decay`], the decoupled decay.
    pub fn with_l2_penalty(mut self, l2: f64) -> Self {
        self.l2 = l2;
        self
    }
}

impl Optimizer for Adam {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|var| var.dtype().is_float())
            .map(|var| {
                let n = var.elem_count();
                let moments = match var.dtype() {
                    DType::F64 => Moments::F64 {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    },
                    // f16/bf16 parameters are refused by the update with a typed error.
                    _ => Moments::F32 {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    },
                };
                AdamVar { var, moments }
            })
            .collect();
        Ok(Self {
            vars,
            params,
            l2: 0.0,
            step_t: 0,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let step_size = p.lr / (1.0 - p.beta1.powi(self.step_t));
        let inv_sqrt_bc2 = 1.0 / (1.0 - p.beta2.powi(self.step_t)).sqrt();
        for AdamVar { var, moments } in self.vars.iter_mut() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.contiguous()?;
            let update = Update {
                moments: Mutex::new(moments),
                c: Coeffs {
                    beta1: p.beta1,
                    beta2: p.beta2,
                    step_size,
                    inv_sqrt_bc2,
                    eps: p.eps,
                    decay: 1.0 - p.lr * p.weight_decay,
                    l2: self.l2,
                },
            };
            var.as_tensor().inplace_op2(&g, &update)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::AdamW;

    fn params(lr: f64, weight_decay: f64) -> ParamsAdamW {
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// A loss whose gradient differs per element: sum(w^3 * c).
    fn loss(w: &Var, c: &Tensor) -> Tensor {
        (w.as_tensor().powf(3.0).unwrap() * c)
            .unwrap()
            .sum_all()
            .unwrap()
    }

    #[test]
    fn first_step_moves_every_weight_by_lr_against_the_gradient_sign() {
        // With zero moments, m_hat / sqrt(v_hat) = g / |g|: the first step is lr * sign(g)
        // (up to eps), PyTorch's and the paper's known answer.
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f64, -2.0, 0.5, 3.0], &dev).unwrap();
        let c = Tensor::new(&[1.0f64, 1.0, -1.0, -2.0], &dev).unwrap();
        let mut opt = Adam::new(vec![w.clone()], params(0.01, 0.0)).unwrap();
        opt.backward_step(&loss(&w, &c)).unwrap();
        let got: Vec<f64> = w.to_vec1().unwrap();
        // gradients 3 w^2 c: 3, 12, -0.75, -54
        let want = [1.0 - 0.01, -2.0 - 0.01, 0.5 + 0.01, 3.0 + 0.01];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?}");
        }
    }

    #[test]
    fn matches_candle_adamw_over_many_steps_in_f32_and_f64() {
        for dtype in [DType::F64, DType::F32] {
            for weight_decay in [0.0, 0.1] {
                let dev = Device::Cpu;
                let init = Tensor::new(&[[0.3f64, -1.2, 0.8], [2.0, -0.1, 0.05]], &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let c = Tensor::new(&[[1.0f64, -0.5, 2.0], [0.25, 3.0, -1.0]], &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let ours = Var::from_tensor(&init).unwrap();
                let theirs = Var::from_tensor(&init).unwrap();
                let mut a = Adam::new(vec![ours.clone()], params(0.05, weight_decay)).unwrap();
                let mut b = AdamW::new(vec![theirs.clone()], params(0.05, weight_decay)).unwrap();
                for step in 0..30 {
                    if step == 15 {
                        a.set_learning_rate(0.005);
                        b.set_learning_rate(0.005);
                    }
                    a.backward_step(&loss(&ours, &c)).unwrap();
                    b.backward_step(&loss(&theirs, &c)).unwrap();
                }
                let x: Vec<f64> = ours
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let y: Vec<f64> = theirs
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                for (p, q) in x.iter().zip(&y) {
                    assert!(
                        (p - q).abs() < tol,
                        "{dtype:?} wd {weight_decay}: {x:?} vs {y:?}"
                    );
                }
                assert!(
                    x.iter()
                        .zip(
                            init.flatten_all()
                                .unwrap()
                                .to_dtype(DType::F64)
                                .unwrap()
                                .to_vec1::<f64>()
                                .unwrap()
                        )
                        .any(|(p, q)| (p - q).abs() > 0.1)
                );
            }
        }
    }

    #[test]
    fn a_parameter_split_across_threads_steps_like_one_updated_whole() {
        // More than two chunks on a two-thread pool, against the same update on one thread.
        let dev = Device::Cpu;
        let n = 2 * CHUNK + 17;
        let init: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
        let c: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 3.0).collect();
        let c = Tensor::from_vec(c, n, &dev).unwrap();
        let run = |threads: usize| {
            let w = Var::from_tensor(&Tensor::from_vec(init.clone(), n, &dev).unwrap()).unwrap();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut opt = Adam::new(vec![w.clone()], params(0.01, 0.05)).unwrap();
                for _ in 0..5 {
                    opt.backward_step(&loss(&w, &c)).unwrap();
                }
            });
            w.to_vec1::<f32>().unwrap()
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one, two);
        assert!(one.iter().zip(&init).all(|(p, q)| p != q || *q == 0.0));
    }

    #[test]
    fn l2_penalty_is_adam_on_the_penalised_loss() {
        // PyTorch's Adam(weight_decay=l2) equals plain Adam on loss + l2/2 |w|^2.
        let dev = Device::Cpu;
        let c = Tensor::new(&[1.0f64, -0.5, 2.0], &dev).unwrap();
        let l2 = 0.3;
        let a = Var::new(&[0.3f64, -1.2, 0.8], &dev).unwrap();
        let b = Var::new(&[0.3f64, -1.2, 0.8], &dev).unwrap();
        let mut pa = Adam::new(vec![a.clone()], params(0.05, 0.0))
            .unwrap()
            .with_l2_penalty(l2);
        let mut pb = Adam::new(vec![b.clone()], params(0.05, 0.0)).unwrap();
        for _ in 0..20 {
            pa.backward_step(&loss(&a, &c)).unwrap();
            let penalty = (b.as_tensor().sqr().unwrap().sum_all().unwrap() * (l2 / 2.0)).unwrap();
            pb.backward_step(&(loss(&b, &c) + penalty).unwrap())
                .unwrap();
        }
        let (x, y): (Vec<f64>, Vec<f64>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-12, "{x:?} vs {y:?}");
        }
        let plain = Var::new(&[0.3f64, -1.2, 0.8], &dev).unwrap();
        let mut pp = Adam::new(vec![plain.clone()], params(0.05, 0.0)).unwrap();
        for _ in 0..20 {
            pp.backward_step(&loss(&plain, &c)).unwrap();
        }
        assert_ne!(plain.to_vec1::<f64>().unwrap(), x);
    }

    #[test]
    fn transposed_gradient_and_untouched_parameters() {
        // The gradient of a matmul weight comes back strided; a parameter outside the loss keeps
        // its value.
        let dev = Device::Cpu;
        let w = Var::new(&[[1.0f64, 2.0], [3.0, 4.0]], &dev).unwrap();
        let unused = Var::new(&[5.0f64], &dev).unwrap();
        let x = Tensor::new(&[[1.0f64, 0.0], [0.0, -1.0]], &dev).unwrap();
        let mut opt = Adam::new(vec![w.clone(), unused.clone()], params(0.1, 0.0)).unwrap();
        let l = x
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.backward_step(&l).unwrap();
        // d/dw sum(x w^T) = column sums of x broadcast to rows: [[1, -1], [1, -1]].
        let got: Vec<f64> = w.flatten_all().unwrap().to_vec1().unwrap();
        for (g, want) in got.iter().zip([0.9, 2.1, 2.9, 4.1]) {
            assert!((g - want).abs() < 1e-8, "{got:?}");
        }
        assert_eq!(unused.to_vec1::<f64>().unwrap(), vec![5.0]);
    }
}
