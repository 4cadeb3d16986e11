//! Test helpers shared by the estimators' layer tests: random inputs, tensor values, and the
//! check of analytic gradients against central finite differences.
//!
//! Every layer with a hand-written backward pass (conv3d, pooling, the fused Linear, PICAE's
//! transposed convolution and curl) is held to this one check.
use candle_core::{DType, Device, Tensor, Var};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// `n` values uniform in `[-1, 1)`.
pub(crate) fn random(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

/// The values of `x`, flattened, as `f64`.
pub(crate) fn values(x: &Tensor) -> Vec<f64> {
    x.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The largest absolute difference between `a` and `b` (equal lengths).
pub(crate) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Checks the gradient of `sum(f(inputs) * r)` (`r` random) with respect to every input against
/// central finite differences on f64 tensors; panics on a relative error above 1e-5 and returns
/// the largest relative error seen.
pub(crate) fn check_gradients(
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> f64 {
    let dev = Device::Cpu;
    let vars: Vec<Var> = inputs
        .iter()
        .map(|(v, s)| {
            Var::from_tensor(&Tensor::from_vec(v.clone(), s.clone(), &dev).unwrap()).unwrap()
        })
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors);
    let mut rng = StdRng::seed_from_u64(99);
    let r = Tensor::from_vec(random(&mut rng, y.elem_count()), y.dims(), &dev).unwrap();
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let scalar = |ts: &[Tensor]| -> f64 {
        (&f(ts) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for (i, (v, s)) in inputs.iter().enumerate() {
        let analytic = values(grads.get(vars[i].as_tensor()).expect("gradient present"));
        assert_eq!(analytic.len(), v.len());
        for j in 0..v.len() {
            let mut ts = tensors.clone();
            let mut plus = v.clone();
            plus[j] += eps;
            ts[i] = Tensor::from_vec(plus, s.clone(), &dev).unwrap();
            let fp = scalar(&ts);
            let mut minus = v.clone();
            minus[j] -= eps;
            ts[i] = Tensor::from_vec(minus, s.clone(), &dev).unwrap();
            let fm = scalar(&ts);
            let numeric = (fp - fm) / (2.0 * eps);
            let rel = (numeric - analytic[j]).abs() / (1e-3 + numeric.abs().max(analytic[j].abs()));
            worst = worst.max(rel);
            assert!(
                rel < 1e-5,
                "input {i} element {j}: analytic {} vs numeric {numeric}",
                analytic[j]
            );
        }
    }
    worst
}
