use super::*;
use crate::estimator::gradcheck::{check_gradients, max_abs_diff, random, values};
use candle_core::{DType, Device, Var};
use rand::{SeedableRng, rngs::StdRng};

/// Plain nested loops: PyTorch's definition of conv3d.
#[allow(clippy::too_many_arguments)]
fn naive_conv3d(
    x: &[f64],
    [b, cin, d, h, w]: [usize; 5],
    wt: &[f64],
    [cout, k]: [usize; 2],
    bias: &[f64],
    s: usize,
    p: usize,
) -> (Vec<f64>, [usize; 5]) {
    let (od, oh, ow) = (
        out_len(d, k, s, p).unwrap(),
        out_len(h, k, s, p).unwrap(),
        out_len(w, k, s, p).unwrap(),
    );
    let mut y = vec![0.0; b * cout * od * oh * ow];
    for n in 0..b {
        for co in 0..cout {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let mut acc = bias[co];
                        for ci in 0..cin {
                            for kz in 0..k {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let iz = (z * s + kz) as isize - p as isize;
                                        let iy = (yy * s + ky) as isize - p as isize;
                                        let ix = (xx * s + kx) as isize - p as isize;
                                        if iz < 0 || iy < 0 || ix < 0 {
                                            continue;
                                        }
                                        let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                        if iz >= d || iy >= h || ix >= w {
                                            continue;
                                        }
                                        acc += x[(((n * cin + ci) * d + iz) * h + iy) * w + ix]
                                            * wt[(((co * cin + ci) * k + kz) * k + ky) * k + kx];
                                    }
                                }
                            }
                        }
                        y[(((n * cout + co) * od + z) * oh + yy) * ow + xx] = acc;
                    }
                }
            }
        }
    }
    (y, [b, cout, od, oh, ow])
}

/// Plain nested loops: PyTorch's definition of max_pool3d (padding counts as -inf).
fn naive_max_pool3d(
    x: &[f64],
    dims: [usize; 5],
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f64>, [usize; 5]) {
    let (y, _, out) = naive_max_pool3d_argmax(x, dims, k, s, p);
    (y, out)
}

/// [`naive_max_pool3d`] with the flat input index of each window's first maximum (window order).
fn naive_max_pool3d_argmax(
    x: &[f64],
    [b, c, d, h, w]: [usize; 5],
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f64>, Vec<usize>, [usize; 5]) {
    let (od, oh, ow) = (
        out_len(d, k, s, p).unwrap(),
        out_len(h, k, s, p).unwrap(),
        out_len(w, k, s, p).unwrap(),
    );
    let mut y = vec![f64::NEG_INFINITY; b * c * od * oh * ow];
    let mut arg = vec![usize::MAX; y.len()];
    for n in 0..b * c {
        for z in 0..od {
            for yy in 0..oh {
                for xx in 0..ow {
                    let (mut m, mut at) = (f64::NEG_INFINITY, usize::MAX);
                    for kz in 0..k {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iz = (z * s + kz) as isize - p as isize;
                                let iy = (yy * s + ky) as isize - p as isize;
                                let ix = (xx * s + kx) as isize - p as isize;
                                if iz < 0 || iy < 0 || ix < 0 {
                                    continue;
                                }
                                let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                if iz >= d || iy >= h || ix >= w {
                                    continue;
                                }
                                let i = ((n * d + iz) * h + iy) * w + ix;
                                if at == usize::MAX || x[i] > m {
                                    (m, at) = (x[i], i);
                                }
                            }
                        }
                    }
                    let o = ((n * od + z) * oh + yy) * ow + xx;
                    (y[o], arg[o]) = (m, at);
                }
            }
        }
    }
    (y, arg, [b, c, od, oh, ow])
}

#[test]
fn conv3d_forward_matches_naive_loops() {
    let mut rng = StdRng::seed_from_u64(1);
    let dev = Device::Cpu;
    // (input dims, cout, k, stride, padding): includes stride 2 / padding 1 and uneven sizes.
    let cases = [
        ([2, 3, 5, 6, 4], 4, 2, 1, 0),
        ([1, 2, 7, 5, 6], 3, 3, 1, 1),
        ([2, 3, 16, 16, 16], 6, 2, 2, 1),
        ([1, 2, 9, 8, 7], 2, 3, 2, 1),
        ([1, 1, 5, 5, 5], 2, 2, 3, 1),
        ([1, 2, 7, 8, 9], 3, 3, 3, 1),
        ([2, 2, 6, 6, 6], 2, 2, 2, 0),
    ];
    for (dims, cout, k, s, p) in cases {
        let n: usize = dims.iter().product();
        let x = random(&mut rng, n);
        let wt = random(&mut rng, cout * dims[1] * k * k * k);
        let bias = random(&mut rng, cout);
        let (want, want_dims) = naive_conv3d(&x, dims, &wt, [cout, k], &bias, s, p);
        for dtype in [DType::F32, DType::F64] {
            let xt = Tensor::from_vec(x.clone(), dims.to_vec(), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let wtt = Tensor::from_vec(wt.clone(), (cout, dims[1], k, k, k), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let bt = Tensor::from_vec(bias.clone(), cout, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let y = conv3d(&xt, &wtt, Some(&bt), s, p).unwrap();
            assert_eq!(y.dims(), &want_dims[..], "case {dims:?} k{k} s{s} p{p}");
            let err = max_abs_diff(&values(&y), &want);
            assert!(
                err < 1e-4,
                "case {dims:?} k{k} s{s} p{p} {dtype:?}: max err {err}"
            );
        }
    }
}

#[test]
fn max_pool3d_forward_matches_naive_loops() {
    let mut rng = StdRng::seed_from_u64(2);
    let dev = Device::Cpu;
    let cases = [
        ([2, 3, 9, 9, 9], 2, 2, 1),
        ([1, 2, 5, 6, 7], 2, 2, 1),
        ([2, 2, 2, 2, 2], 2, 2, 0),
        ([1, 3, 8, 7, 6], 3, 2, 1),
        ([1, 1, 6, 5, 4], 3, 1, 0),
        ([1, 2, 7, 7, 7], 2, 2, 0),
    ];
    for (dims, k, s, p) in cases {
        let n: usize = dims.iter().product();
        let x = random(&mut rng, n);
        let (want, want_dims) = naive_max_pool3d(&x, dims, k, s, p);
        let xt = Tensor::from_vec(x, dims.to_vec(), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let y = max_pool3d(&xt, k, s, p).unwrap();
        assert_eq!(y.dims(), &want_dims[..], "case {dims:?} k{k} s{s} p{p}");
        let err = max_abs_diff(&values(&y), &want);
        assert!(err < 1e-6, "case {dims:?} k{k} s{s} p{p}: max err {err}");
    }
}

#[test]
fn conv3d_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(3);
    // k == s (matrix-product path, uneven crop), general path with and without stride.
    for (dims, cout, k, s, p) in [
        ([2, 2, 5, 4, 5], 3, 2, 2, 1),
        ([1, 2, 7, 5, 6], 2, 3, 3, 1),
        ([1, 2, 4, 5, 3], 2, 3, 1, 1),
        ([1, 2, 5, 4, 6], 2, 2, 3, 1),
        ([1, 1, 6, 5, 4], 2, 3, 2, 1),
    ] {
        let n: usize = dims.iter().product();
        let inputs = vec![
            (random(&mut rng, n), dims.to_vec()),
            (
                random(&mut rng, cout * dims[1] * k * k * k),
                vec![cout, dims[1], k, k, k],
            ),
            (random(&mut rng, cout), vec![cout]),
        ];
        let worst = check_gradients(&inputs, &|t| {
            conv3d(&t[0], &t[1], Some(&t[2]), s, p).unwrap()
        });
        assert!(worst < 1e-5);
    }
}

/// Values and gradients of `conv3d` for `(x, w, b)`, run on a rayon pool of `threads`.
fn conv3d_in_pool(threads: usize, inputs: &[(Vec<f64>, Vec<usize>)]) -> Vec<Vec<f64>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(v, s)| {
                let t = Tensor::from_vec(v.clone(), s.clone(), &Device::Cpu).unwrap();
                Var::from_tensor(&t).unwrap()
            })
            .collect();
        let y = conv3d(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            Some(vars[2].as_tensor()),
            2,
            1,
        )
        .unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![values(&y)];
        for v in &vars {
            out.push(values(grads.get(v.as_tensor()).unwrap()));
        }
        out
    })
}

#[test]
fn conv3d_agrees_across_thread_counts() {
    // One thread: samples in turn; several: samples in parallel with per-worker partial sums.
    let mut rng = StdRng::seed_from_u64(7);
    let dims = [5, 3, 7, 6, 5];
    let inputs = vec![
        (random(&mut rng, dims.iter().product()), dims.to_vec()),
        (random(&mut rng, 4 * 3 * 8), vec![4, 3, 2, 2, 2]),
        (random(&mut rng, 4), vec![4]),
    ];
    let one = conv3d_in_pool(1, &inputs);
    for threads in [2, 3] {
        let many = conv3d_in_pool(threads, &inputs);
        for (a, b) in one.iter().zip(&many) {
            assert!(max_abs_diff(a, b) < 1e-12, "{threads} threads");
        }
    }
}

#[test]
fn conv3d_input_gradient_only_when_needed() {
    // The network's input is a plain tensor: no gradient for it, and the weight's is unchanged.
    let mut rng = StdRng::seed_from_u64(8);
    let dev = Device::Cpu;
    let x = Tensor::from_vec(random(&mut rng, 2 * 2 * 4 * 4 * 4), (2, 2, 4, 4, 4), &dev).unwrap();
    let w = Var::from_tensor(
        &Tensor::from_vec(random(&mut rng, 3 * 2 * 8), (3, 2, 2, 2, 2), &dev).unwrap(),
    )
    .unwrap();
    let grads = conv3d(&x, w.as_tensor(), None, 2, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    let xv = Var::from_tensor(&x).unwrap();
    let both = conv3d(xv.as_tensor(), w.as_tensor(), None, 2, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (a, b) = (
        values(grads.get(w.as_tensor()).unwrap()),
        values(both.get(w.as_tensor()).unwrap()),
    );
    assert!(max_abs_diff(&a, &b) < 1e-12);
    assert!(both.get(xv.as_tensor()).is_some());
}

#[test]
fn conv3d_second_backward_rebuilds_the_columns() {
    // The first backward pass takes the columns the forward pass kept; a second one through the
    // same graph rebuilds them and gets the same gradients.
    let mut rng = StdRng::seed_from_u64(9);
    let dev = Device::Cpu;
    let var = |n: usize, s: &[usize], rng: &mut StdRng| {
        Var::from_tensor(&Tensor::from_vec(random(rng, n), s, &dev).unwrap()).unwrap()
    };
    let x = var(2 * 2 * 5 * 4 * 5, &[2, 2, 5, 4, 5], &mut rng);
    let w = var(3 * 2 * 8, &[3, 2, 2, 2, 2], &mut rng);
    let b = var(3, &[3], &mut rng);
    let y = conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 2, 1).unwrap();
    let loss = y.sqr().unwrap().sum_all().unwrap();
    let (first, second) = (loss.backward().unwrap(), loss.backward().unwrap());
    for v in [&x, &w, &b] {
        let (a, c) = (
            values(first.get(v.as_tensor()).unwrap()),
            values(second.get(v.as_tensor()).unwrap()),
        );
        assert!(max_abs_diff(&a, &c) < 1e-12);
    }
}

#[test]
fn linear_matches_candle_nn_and_finite_differences() {
    let mut rng = StdRng::seed_from_u64(6);
    let (b, i, o) = (3, 4, 5);
    let inputs = vec![
        (random(&mut rng, b * i), vec![b, i]),
        (random(&mut rng, o * i), vec![o, i]),
        (random(&mut rng, o), vec![o]),
    ];
    let worst = check_gradients(&inputs, &|t| linear(&t[0], &t[1], &t[2]).unwrap());
    assert!(worst < 1e-5);
    let t: Vec<Tensor> = inputs
        .iter()
        .map(|(v, s)| Tensor::from_vec(v.clone(), s.clone(), &Device::Cpu).unwrap())
        .collect();
    let want = candle_nn::Linear::new(t[1].clone(), Some(t[2].clone()))
        .forward(&t[0])
        .unwrap();
    let got = linear(&t[0], &t[1], &t[2]).unwrap();
    assert_eq!(got.dims(), &[b, o]);
    assert!(max_abs_diff(&values(&got), &values(&want)) < 1e-12);
    assert!(linear(&t[0], &t[0], &t[2]).is_err());
}

#[test]
fn max_pool3d_gradients_match_finite_differences() {
    // Kernel 2 with padding 1 (as in CNN3d), kernel 2 without padding, and overlapping windows
    // (kernel 3, stride 2) where one input can be the max of two windows.
    let mut rng = StdRng::seed_from_u64(4);
    for (dims, k, s, p) in [
        ([2, 2, 5, 4, 3], 2, 2, 1),
        ([1, 2, 4, 4, 4], 2, 2, 0),
        ([1, 1, 5, 5, 5], 3, 2, 1),
    ] {
        let n: usize = dims.iter().product();
        let inputs = vec![(random(&mut rng, n), dims.to_vec())];
        let worst = check_gradients(&inputs, &|t| max_pool3d(&t[0], k, s, p).unwrap());
        assert!(worst < 1e-5);
    }
}

#[test]
fn max_pool3d_second_backward_and_nan_windows() {
    // The first backward pass scatters at the positions the forward pass kept, a second one
    // through the same graph finds them again; a window holding NaN passes NaN on (as PyTorch)
    // and its gradient goes to the NaN.
    let dev = Device::Cpu;
    let mut v: Vec<f64> = (0..64).map(|i| ((i * 37) % 64) as f64).collect();
    v[5] = f64::NAN;
    let x = Var::from_tensor(&Tensor::from_vec(v, (1, 1, 4, 4, 4), &dev).unwrap()).unwrap();
    let y = max_pool3d(x.as_tensor(), 2, 2, 1).unwrap();
    assert!(values(&y)[4].is_nan(), "window (0, 1, 1) holds element 5");
    let loss = y.affine(2.0, 0.0).unwrap().sum_all().unwrap();
    let (first, second) = (loss.backward().unwrap(), loss.backward().unwrap());
    let (a, b) = (
        values(first.get(x.as_tensor()).unwrap()),
        values(second.get(x.as_tensor()).unwrap()),
    );
    assert_eq!(a, b);
    assert_eq!(a[5], 2.0);
    assert_eq!(a.iter().sum::<f64>(), 2.0 * 27.0);
}

#[test]
fn max_pool3d_ties_send_the_gradient_to_the_first_maximum_on_any_thread_count() {
    // Small integers make most windows hold equal maxima; PyTorch sends each window's gradient
    // to the first of them in (depth, height, width) order.
    let dev = Device::Cpu;
    for (dims, k, s, p) in [
        ([2, 3, 9, 9, 9], 2, 2, 1),
        ([1, 2, 7, 6, 5], 3, 2, 1),
        ([1, 1, 6, 5, 4], 3, 1, 0),
        ([3, 2, 8, 8, 8], 2, 2, 0),
        // Large enough for the planes to run in parallel.
        ([2, 3, 17, 17, 17], 2, 2, 1),
    ] {
        let n: usize = dims.iter().product();
        let x: Vec<f64> = (0..n).map(|i| ((i * 7 + i / 5) % 3) as f64).collect();
        let (_, arg, out) = naive_max_pool3d_argmax(&x, dims, k, s, p);
        // Gradient 1, 2, 3, ... per window, so a misplaced one changes the sums.
        let g: Vec<f64> = (1..=arg.len()).map(|v| v as f64).collect();
        let mut want = vec![0.0; n];
        for (&i, &v) in arg.iter().zip(&g) {
            want[i] += v;
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| {
                let xv =
                    Var::from_tensor(&Tensor::from_vec(x.clone(), dims.to_vec(), &dev).unwrap())
                        .unwrap();
                let y = max_pool3d(xv.as_tensor(), k, s, p).unwrap();
                assert_eq!(y.dims(), &out[..]);
                let gt = Tensor::from_vec(g.clone(), out.to_vec(), &dev).unwrap();
                let grads = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
                values(grads.get(xv.as_tensor()).unwrap())
            });
            assert_eq!(got, want, "case {dims:?} k{k} s{s} p{p}, {threads} threads");
        }
    }
}

#[test]
fn max_pool3d_gradient_is_not_scaled() {
    // A direct check of the 1/(k*k) bug: every window max gets gradient exactly 1.
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::arange(0f32, 64.0, &dev)
            .unwrap()
            .reshape((1, 1, 4, 4, 4))
            .unwrap(),
    )
    .unwrap();
    let y = max_pool3d(x.as_tensor(), 2, 2, 0).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let g = values(g.get(x.as_tensor()).unwrap());
    assert_eq!(g.iter().sum::<f64>(), 8.0);
    assert!(g.iter().all(|&v| v == 0.0 || v == 1.0));
}

#[test]
fn modules_init_like_pytorch_and_describe_themselves() {
    let varmap = candle_nn::VarMap::new();
    let vb = crate::estimator::init::seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
    let conv = Conv3d::new(vb.pp("c"), 3, 6, 2, 2, 1).unwrap();
    let bound = 1.0 / (24f64).sqrt();
    for t in [conv.weight(), conv.bias()] {
        assert!(values(t).iter().all(|v| v.abs() <= bound));
    }
    assert_eq!(conv.num_params(), 6 * 3 * 8 + 6);
    assert_eq!(conv.out_dims([16, 16, 16]), Some([9, 9, 9]));
    assert_eq!(
        conv.to_string(),
        "Conv3d(3, 6, kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(1, 1, 1))"
    );
    let pool = MaxPool3d::new(2, 1);
    assert_eq!(pool.out_dims([9, 9, 9]), Some([5, 5, 5]));
    let x = Tensor::zeros((1, 3, 16, 16, 16), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        pool.forward(&conv.forward(&x).unwrap()).unwrap().dims(),
        &[1, 6, 5, 5, 5]
    );
    assert!(max_pool3d(&x, 2, 2, 2).is_err());
}

#[test]
fn linear_agrees_with_candle_autograd_on_one_and_two_threads() {
    // (batch, in, out): a small layer, a skinny last layer (gemm on rayon's threads when there
    // are two), one with so many outputs that its input gradient is summed in blocks, and a
    // wide batch.
    for (b, i, o) in [(3, 4, 5), (2, 24, 1500), (2, 3, 20000), (80, 60, 7)] {
        let mut rng = StdRng::seed_from_u64(8);
        let t = |n: usize, dims: &[usize], rng: &mut StdRng| {
            Var::from_tensor(&Tensor::from_vec(random(rng, n), dims, &Device::Cpu).unwrap())
                .unwrap()
        };
        let (x, w, bias) = (
            t(b * i, &[b, i], &mut rng),
            t(o * i, &[o, i], &mut rng),
            t(o, &[o], &mut rng),
        );
        let r = Tensor::from_vec(random(&mut rng, b * o), (b, o), &Device::Cpu).unwrap();
        let reference =
            candle_nn::Linear::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()));
        let want = reference.forward(x.as_tensor()).unwrap();
        let want_grads = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let got = linear(x.as_tensor(), w.as_tensor(), bias.as_tensor()).unwrap();
                assert!(
                    max_abs_diff(&values(&got), &values(&want)) < 1e-12,
                    "{b}x{i}->{o}"
                );
                let grads = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, v) in [("x", &x), ("w", &w), ("b", &bias)] {
                    let (g, wg) = (
                        grads.get(v.as_tensor()).unwrap(),
                        want_grads.get(v.as_tensor()).unwrap(),
                    );
                    let d = max_abs_diff(&values(g), &values(wg));
                    assert!(
                        d < 1e-12,
                        "{b}x{i}->{o} on {threads} threads: d{name} differs by {d}"
                    );
                }
            });
        }
    }
}
