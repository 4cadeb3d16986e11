//! CNN3d's training step as one fused pass: forward, loss and backward over the layers' own
//! kernels, each gradient written once, straight into the [`GradStore`] the optimizer reads.
//!
//! Through candle's autograd the same step pays, per edge of the graph, a zero-filled gradient
//! and an addition onto it (candle's `GradStore` starts every gradient at zero), on candle's own
//! thread pool, whose worker then spins beside rayon's. For the last layer's weights and the
//! output cube those passes cost more than their arithmetic, and they kept a second thread from
//! paying (BENCHMARKS.md). Here every gradient is one buffer, written once.
//!
//! The graph [`Cnn3dNet::forward`] builds stays the reference: the tests check that both give
//! the same loss and gradients, and these gradients against finite differences.
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::Cnn3dNet;
use crate::error::{Error, Result};
use crate::estimator::layers::conv::{self, Geom};
use crate::estimator::layers::linear::{self, Dims};
use crate::estimator::layers::pool;
use crate::estimator::layers::{Conv3d, Elem, Linear, MaxPool3d, cpu_data};
use crate::estimator::loss::{self, Loss};

/// One conv -> max-pool (-> ReLU) stage's forward results, as its backward pass needs them.
struct Stage<T> {
    geom: Geom,
    /// The convolution's columns, kept for its backward pass.
    cols: Vec<T>,
    /// The flat convolution output index of each pooled value's window maximum.
    argmax: Vec<usize>,
    /// The stage's output (after the ReLU when there is one).
    out: Vec<T>,
    /// Shape of `out`.
    out_dims: [usize; 5],
    relu: bool,
}

impl<T: Elem> Stage<T> {
    fn forward(
        conv: &Conv3d,
        pooling: &MaxPool3d,
        relu: bool,
        x: &[T],
        dims: [usize; 5],
        [w, b]: [&[T]; 2],
    ) -> Result<Self> {
        let geom = conv.geom(dims)?;
        let (c, cols) = conv::forward(&geom, x, w, b, true);
        let pool_geom = pooling.geom();
        let (in_dims, out) = pool_geom.dims(geom.output())?;
        let (mut y, argmax) = pool_geom.pool(&c, in_dims, out);
        if relu {
            relu_in_place(&mut y);
        }
        Ok(Stage {
            geom,
            cols,
            argmax,
            out: y,
            out_dims: [in_dims[0], in_dims[1], out[0], out[1], out[2]],
            relu,
        })
    }

    /// `[dW, db, dx]` (`dx` only when `need_dx`) from the gradient `g` of the stage's output;
    /// `x` is the stage's input.
    fn backward(self, x: &[T], w: &[T], mut g: Vec<T>, need_dx: bool) -> Vec<T> {
        if self.relu {
            relu_backward(&mut g, &self.out);
        }
        let mut dc = vec![T::ZERO; self.geom.output().iter().product()];
        pool::scatter(&self.argmax, &g, &mut dc);
        conv::backward(&self.geom, x, w, &dc, need_dx, Some(&self.cols))
    }
}

/// `max(v, 0)` for every `v` (0 for NaN, as candle's `relu`).
fn relu_in_place<T: Elem>(v: &mut [T]) {
    for v in v {
        *v = if *v > T::ZERO { *v } else { T::ZERO };
    }
}

/// PyTorch's ReLU backward: the gradient `g` passes where the output `y` is positive.
fn relu_backward<T: Elem>(g: &mut [T], y: &[T]) {
    for (g, &y) in g.iter_mut().zip(y) {
        *g = if y > T::ZERO { *g } else { T::ZERO };
    }
}

/// Inserts the weight and bias gradients, `packed[..]` as `[dW, db, dx]`, into `grads`; returns
/// `dx` (empty when absent).
fn insert<T: Elem>(
    grads: &mut GradStore,
    [w, b]: [&Tensor; 2],
    mut packed: Vec<T>,
) -> Result<Vec<T>> {
    let (nw, nb) = (w.elem_count(), b.elem_count());
    let dx = packed.split_off(nw + nb);
    let all = Tensor::from_vec(packed, nw + nb, w.device())?;
    grads.insert(w, all.narrow(0, 0, nw)?.reshape(w.shape())?);
    grads.insert(b, all.narrow(0, nw, nb)?);
    Ok(dx)
}

impl Cnn3dNet {
    /// The mean `loss` of the network's prediction for `x` `(B, C, D, H, W)` against `y`
    /// `(B, Ct, Dt, Ht, Wt)` and the gradient of every parameter (not of `x`), by one fused pass
    /// (see the module documentation). The same numbers as `loss.compute(&net.forward(x)?, y)?`
    /// and its `backward()`, except that, as in PyTorch, no gradient passes a ReLU whose input is
    /// exactly zero.
    ///
    /// One training step by hand (what `fit` does per batch):
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{Optimizer, ParamsAdamW, VarMap};
    /// use sapsan_core::estimator::adam::Adam;
    /// use sapsan_core::estimator::init::seeded_var_builder;
    /// use sapsan_core::estimator::{Cnn3dNet, Loss};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (varmap, cpu) = (VarMap::new(), Device::Cpu);
    /// let net = Cnn3dNet::new(seeded_var_builder(&varmap, 0, DType::F32, &cpu), 3, [1, 8, 8, 8])?;
    /// let params = ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() };
    /// let mut adam = Adam::new(varmap.all_vars(), params)?;
    /// let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8, 8), &cpu)?;
    /// let y = Tensor::ones((2, 1, 8, 8, 8), DType::F32, &cpu)?;
    /// let (before, grads) = net.loss_and_grads(&x, &y, Loss::SmoothL1)?;
    /// adam.step(&grads)?;
    /// let (after, _) = net.loss_and_grads(&x, &y, Loss::SmoothL1)?;
    /// assert!(after < before);
    /// # Ok(()) }
    /// ```
    pub fn loss_and_grads(&self, x: &Tensor, y: &Tensor, loss: Loss) -> Result<(f64, GradStore)> {
        self.check_input(x.dims())?;
        let [ct, d, h, w] = self.target_shape;
        let expected = [x.dim(0)?, ct, d, h, w];
        if y.dims() != expected {
            return Err(Error::Estimator(format!(
                "CNN3d's targets for {} samples must have shape {expected:?}, got {:?}",
                expected[0],
                y.dims()
            )));
        }
        if y.dtype() != x.dtype() {
            return Err(Error::Estimator(format!(
                "CNN3d's inputs are {:?} but the targets are {:?}; convert one to the other",
                x.dtype(),
                y.dtype()
            )));
        }
        match x.dtype() {
            DType::F32 => self.fused::<f32>(x, y, loss),
            DType::F64 => self.fused::<f64>(x, y, loss),
            other => Err(Error::Estimator(format!(
                "CNN3d trains in f32 or f64, got {other:?} input"
            ))),
        }
    }

    /// The parameters in `forward` order, weight before bias.
    fn params(&self) -> [[&Tensor; 2]; 5] {
        fn conv(c: &Conv3d) -> [&Tensor; 2] {
            [c.weight(), c.bias()]
        }
        fn lin(l: &Linear) -> [&Tensor; 2] {
            [l.weight(), l.bias()]
        }
        [
            conv(&self.conv3d),
            conv(&self.conv3d2),
            conv(&self.conv3d3),
            lin(&self.linear),
            lin(&self.linear2),
        ]
    }

    fn fused<T: Elem>(&self, x: &Tensor, y: &Tensor, loss: Loss) -> Result<(f64, GradStore)> {
        let (x, y) = (x.contiguous()?, y.contiguous()?);
        let tensors: Vec<&Tensor> = [&x, &y]
            .into_iter()
            .chain(self.params().into_iter().flatten())
            .collect();
        // Read locks on every tensor for the pass; dropped before the optimizer writes.
        let locked: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
        let data = locked
            .iter()
            .map(|(s, l)| cpu_data::<T>(s, l))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let &[xs, ys, w1, b1, w2, b2, w3, b3, lw1, lb1, lw2, lb2] = &data[..] else {
            unreachable!("two data tensors and ten parameters")
        };
        let x_dims: [usize; 5] = x.dims5()?.into();
        let batch = x_dims[0];

        // forward
        let s1 = Stage::forward(&self.conv3d, &self.pooling, true, xs, x_dims, [w1, b1])?;
        let s2 = Stage::forward(
            &self.conv3d2,
            &self.pooling2,
            true,
            &s1.out,
            s1.out_dims,
            [w2, b2],
        )?;
        let s3 = Stage::forward(
            &self.conv3d3,
            &self.pooling3,
            false,
            &s2.out,
            s2.out_dims,
            [w3, b3],
        )?;
        let d1 = Dims {
            batch,
            inputs: s3.out.len() / batch.max(1),
            outputs: lb1.len(),
        };
        let mut l1 = linear::forward(&d1, &s3.out, lw1, lb1);
        relu_in_place(&mut l1);
        let d2 = Dims {
            batch,
            inputs: d1.outputs,
            outputs: lb2.len(),
        };
        let pred = linear::forward(&d2, &l1, lw2, lb2);
        let (value, dpred) = loss::value_and_grad(loss, &pred, ys);

        // backward
        let [p1, p2, p3, q1, q2] = self.params();
        let mut grads = GradStore::default();
        let mut dl1 = insert(
            &mut grads,
            q2,
            linear::backward(&d2, &l1, lw2, &dpred, true),
        )?;
        relu_backward(&mut dl1, &l1);
        let dv = insert(
            &mut grads,
            q1,
            linear::backward(&d1, &s3.out, lw1, &dl1, true),
        )?;
        let dx3 = insert(&mut grads, p3, s3.backward(&s2.out, w3, dv, true))?;
        let dx2 = insert(&mut grads, p2, s2.backward(&s1.out, w2, dx3, true))?;
        insert(&mut grads, p1, s1.backward(xs, w1, dx2, false))?;
        Ok((value, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::gradcheck::{max_abs_diff, random, values};
    use crate::estimator::init::seeded_var_builder;
    use candle_core::Device;
    use candle_nn::VarMap;
    use rand::{SeedableRng, rngs::StdRng};

    const TARGET: [usize; 4] = [1, 4, 4, 4];

    /// A two-channel net on 8^3 inputs, its variables, and a batch of three samples.
    fn setup(dtype: DType) -> (Cnn3dNet, VarMap, Tensor, Tensor) {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 7, dtype, &Device::Cpu);
        let net = Cnn3dNet::new(vb, 2, TARGET).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let tensor = |dims: &[usize], rng: &mut StdRng| {
            let n = dims.iter().product();
            Tensor::from_vec(random(rng, n), dims, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let x = tensor(&[3, 2, 8, 8, 8], &mut rng);
        let y = tensor(&[3, 1, 4, 4, 4], &mut rng);
        (net, varmap, x, y)
    }

    /// Loss and gradients (by variable name) through candle's autograd on `forward`.
    fn autograd(
        net: &Cnn3dNet,
        vars: &VarMap,
        x: &Tensor,
        y: &Tensor,
        loss: Loss,
    ) -> (f64, Vec<(String, Vec<f64>)>) {
        let value = loss.compute(&net.forward(x).unwrap(), y).unwrap();
        let grads = value.backward().unwrap();
        let v = values(&value)[0];
        (v, named(vars, &grads))
    }

    fn named(vars: &VarMap, grads: &GradStore) -> Vec<(String, Vec<f64>)> {
        let data = vars.data().lock().unwrap();
        let mut out: Vec<_> = data
            .iter()
            .map(|(name, var)| {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                assert_eq!(g.dims(), var.dims(), "{name}");
                (name.clone(), values(g))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn fused_step_gives_the_loss_and_gradients_of_candles_autograd() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-6)] {
            let (net, vars, x, y) = setup(dtype);
            for loss in [Loss::SmoothL1, Loss::Mse] {
                let (value, grads) = net.loss_and_grads(&x, &y, loss).unwrap();
                let (want, want_grads) = autograd(&net, &vars, &x, &y, loss);
                assert!(
                    (value - want).abs() <= tol * want.abs(),
                    "{dtype:?} {loss:?}: {value} vs {want}"
                );
                let got = named(&vars, &grads);
                assert_eq!(got.len(), 10);
                for ((name, g), (_, w)) in got.iter().zip(&want_grads) {
                    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
                    assert!(scale > 0.0, "{name}: zero gradient");
                    let diff = max_abs_diff(g, w);
                    assert!(
                        diff <= tol * scale,
                        "{dtype:?} {loss:?} {name}: differs by {diff} (scale {scale})"
                    );
                }
            }
        }
    }

    #[test]
    fn fused_gradients_match_finite_differences() {
        let (net, vars, x, y) = setup(DType::F64);
        let (_, grads) = net.loss_and_grads(&x, &y, Loss::SmoothL1).unwrap();
        let loss_at = || {
            let l = Loss::SmoothL1
                .compute(&net.forward(&x).unwrap(), &y)
                .unwrap();
            l.to_scalar::<f64>().unwrap()
        };
        let data = vars.data().lock().unwrap();
        let eps = 1e-6;
        for (name, var) in data.iter() {
            let analytic = values(grads.get(var.as_tensor()).unwrap());
            let v0 = values(var.as_tensor());
            // Every fifth entry of each parameter, the first and the last.
            let picks = (0..v0.len()).step_by(5).chain([v0.len() - 1]);
            for j in picks {
                let at = |delta: f64| {
                    let mut v = v0.clone();
                    v[j] += delta;
                    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss_at()
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(v0.clone(), var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let rel =
                    (numeric - analytic[j]).abs() / (1e-6 + numeric.abs().max(analytic[j].abs()));
                assert!(
                    rel < 1e-5,
                    "{name}[{j}]: fused {} vs numeric {numeric}",
                    analytic[j]
                );
            }
        }
    }

    #[test]
    fn targets_of_the_wrong_shape_or_dtype_are_refused_with_the_shape_expected() {
        let (net, _vars, x, y) = setup(DType::F32);
        let short = y.narrow(2, 0, 2).unwrap();
        let err = net
            .loss_and_grads(&x, &short, Loss::SmoothL1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[3, 1, 4, 4, 4]"), "{err}");
        let err = net
            .loss_and_grads(&x, &y.to_dtype(DType::F64).unwrap(), Loss::SmoothL1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("F32") && err.contains("F64"), "{err}");
    }
}
