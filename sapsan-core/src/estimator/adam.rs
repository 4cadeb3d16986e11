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
//! Moments are kept in `f64`; parameters may be `f32` or `f64` tensors on the CPU.
//!
//! [`Adam::with_l2_penalty`] adds PyTorch `Adam`'s own `weight_decay` (an L2 penalty: `g += l2 p`
//! before the moments), which differs from the decoupled decay above; Sapsan's PICAE uses it.
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Var};
use candle_nn::{Optimizer, ParamsAdamW};

/// One parameter with its first and second moments.
struct AdamVar {
    var: Var,
    m: Vec<f64>,
    v: Vec<f64>,
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

/// The fused update of one parameter, applied through candle's in-place op interface.
struct Update<'a> {
    m: Mutex<&'a mut [f64]>,
    v: Mutex<&'a mut [f64]>,
    beta1: f64,
    beta2: f64,
    /// `lr / (1 - b1^t)`.
    step_size: f64,
    /// `1 / sqrt(1 - b2^t)`.
    inv_sqrt_bc2: f64,
    eps: f64,
    /// `1 - lr * weight_decay`.
    decay: f64,
    /// The L2 penalty added to the gradient (`g + l2 p`).
    l2: f64,
}

impl Update<'_> {
    fn apply<T: Copy>(
        &self,
        p: &mut [T],
        g: &[T],
        to_f64: impl Fn(T) -> f64,
        from_f64: impl Fn(f64) -> T,
    ) -> Result<()> {
        let mut m = self
            .m
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam: moment lock poisoned".into()))?;
        let mut v = self
            .v
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam: moment lock poisoned".into()))?;
        if p.len() != g.len() || p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!(
                "adam: parameter ({}), gradient ({}) and moments ({}) differ in size",
                p.len(),
                g.len(),
                m.len()
            )
        }
        let (b1, b2) = (self.beta1, self.beta2);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = to_f64(g) + self.l2 * to_f64(*p);
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let denom = v.sqrt() * self.inv_sqrt_bc2 + self.eps;
            *p = from_f64(to_f64(*p) * self.decay - self.step_size * *m / denom);
        }
        Ok(())
    }
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
        match (s1, s2) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                self.apply(&mut p[p0..p1], &g[g0..g1], f64::from, |x| x as f32)
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                self.apply(&mut p[p0..p1], &g[g0..g1], |x| x, |x| x)
            }
            (p, g) => candle_core::bail!(
                "adam: supports f32 and f64 parameters with gradients of the same type, got {:?} and {:?}",
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
                AdamVar {
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
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
        for AdamVar { var, m, v } in self.vars.iter_mut() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.contiguous()?;
            let update = Update {
                m: Mutex::new(m.as_mut_slice()),
                v: Mutex::new(v.as_mut_slice()),
                beta1: p.beta1,
                beta2: p.beta2,
                step_size,
                inv_sqrt_bc2,
                eps: p.eps,
                decay: 1.0 - p.lr * p.weight_decay,
                l2: self.l2,
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
