//! PICAE's fixed physics layer: periodic padding, then central differences that combine into the
//! curl of the decoded vector potential, and the divergence with the same differences.
//!
//! Conventions: component `i` of a vector field `(B, 3, D, H, W)` points along spatial axis `i`
//! (`D`, `H`, `W`), and derivatives are in grid units: `d_i f = (f[j + 1] - f[j - 1]) / 2` along
//! axis `i`, periodic. (Sapsan's kernel takes the first derivative along `H` and the second along
//! `D`; any consistent assignment is divergence-free, this one matches the data's components.)
//!
//! Because the difference operators along different axes commute, the divergence of the curl,
//! `d0 (d1 A2 - d2 A1) + d1 (d2 A0 - d0 A2) + d2 (d0 A1 - d1 A0)`, cancels term by term: it is
//! zero up to rounding, whatever `A` is. Everything here is built from `narrow`, `cat` and
//! arithmetic, so gradients are candle's; the layer has no weights.
use candle_core::{DType, Device, Result, Tensor};
use ndarray::Array5;

/// `x` `(B, C, D, H, W)` padded by `width` cells on both sides of every spatial axis with the
/// periodic continuation (the cells from the opposite face): `(B, C, D + 2w, H + 2w, W + 2w)`.
pub fn periodic_pad(x: &Tensor, width: usize) -> Result<Tensor> {
    let mut out = x.clone();
    for dim in 2..5 {
        let n = out.dim(dim)?;
        if width > n {
            candle_core::bail!(
                "periodic_pad: width {width} exceeds the size {n} of axis {dim} of {:?}",
                x.dims()
            )
        }
        if width > 0 {
            let (last, first) = (
                out.narrow(dim, n - width, width)?,
                out.narrow(dim, 0, width)?,
            );
            out = Tensor::cat(&[&last, &out, &first], dim)?;
        }
    }
    Ok(out)
}

/// The central difference along spatial `axis` (0, 1, 2) of a field padded by one cell
/// ([`periodic_pad`] with width 1), on the interior cells: `(B, C, D, H, W)`.
pub fn central_difference(padded: &Tensor, axis: usize) -> Result<Tensor> {
    if axis > 2 {
        candle_core::bail!("central_difference: spatial axis {axis} is not 0, 1 or 2")
    }
    let mut t = padded.clone();
    for other in (0..3).filter(|&a| a != axis) {
        let n = t.dim(2 + other)?;
        t = t.narrow(2 + other, 1, n.saturating_sub(2))?;
    }
    let dim = 2 + axis;
    let n = t.dim(dim)?.saturating_sub(2);
    (t.narrow(dim, 2, n)? - t.narrow(dim, 0, n)?)? * 0.5
}

fn check_vector(x: &Tensor, what: &str) -> Result<()> {
    match x.dims() {
        [_, 3, _, _, _] => Ok(()),
        dims => {
            candle_core::bail!("{what} needs a vector field (B, 3, D, H, W), got shape {dims:?}")
        }
    }
}

/// The curl of the vector potential `a` `(B, 3, D, H, W)` on the periodic grid:
/// `(d1 A2 - d2 A1, d2 A0 - d0 A2, d0 A1 - d1 A0)`, same shape.
pub fn curl(a: &Tensor) -> Result<Tensor> {
    check_vector(a, "curl")?;
    let p = periodic_pad(a, 1)?;
    let c = |i: usize| p.narrow(1, i, 1);
    let d = |i: usize, axis: usize| central_difference(&c(i)?, axis);
    Tensor::cat(
        &[
            (d(2, 1)? - d(1, 2)?)?,
            (d(0, 2)? - d(2, 0)?)?,
            (d(1, 0)? - d(0, 1)?)?,
        ],
        1,
    )
}

/// The divergence `d0 u0 + d1 u1 + d2 u2` of `u` `(B, 3, D, H, W)` on the periodic grid, with the
/// differences of [`curl`]: `(B, 1, D, H, W)`.
pub fn divergence(u: &Tensor) -> Result<Tensor> {
    check_vector(u, "divergence")?;
    let p = periodic_pad(u, 1)?;
    let d = |i: usize| central_difference(&p.narrow(1, i, 1)?, i);
    (d(0)? + d(1)?)? + d(2)?
}

/// `max |div u| / max |u|` of velocity cubes `u` `(N, 3, D, H, W)`, computed in f64: about 1e-7
/// for a field that is a curl in f32 (rounding), of order 1 for a generic field; 0 for `u = 0`.
pub fn relative_divergence(u: &Array5<f32>) -> crate::Result<f64> {
    let values: Vec<f64> = u.iter().map(|&v| f64::from(v)).collect();
    let t = Tensor::from_vec(values, u.shape(), &Device::Cpu)?;
    let div = divergence(&t)?.to_dtype(DType::F64)?;
    let max_div = div.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let max_u = u.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    Ok(if max_u > 0.0 { max_div / max_u } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::closure::net::periodic_central_difference;
    use crate::estimator::gradcheck::{check_gradients, max_abs_diff, random, values};
    use rand::{SeedableRng, rngs::StdRng};

    fn tensor(v: Vec<f64>, dims: [usize; 5]) -> Tensor {
        Tensor::from_vec(v, dims.to_vec(), &Device::Cpu).unwrap()
    }

    #[test]
    fn periodic_pad_continues_the_opposite_face() {
        // One axis at a time: x = [0, 1, 2, 3] along W, padded by 1 -> [3, 0, 1, 2, 3, 0].
        let x = tensor((0..4).map(f64::from).collect(), [1, 1, 1, 1, 4]);
        let p = periodic_pad(&x, 1).unwrap();
        assert_eq!(p.dims(), &[1, 1, 3, 3, 6]);
        assert_eq!(values(&p)[..6], [3.0, 0.0, 1.0, 2.0, 3.0, 0.0]);
        // Every padded cell equals the cell at its index modulo the size.
        let (d, h, w) = (3, 4, 5);
        let x = tensor((0..d * h * w).map(|v| v as f64).collect(), [1, 1, d, h, w]);
        let p = values(&periodic_pad(&x, 2).unwrap());
        let wrap = |i: usize, n: usize| (i + n - 2) % n;
        for i in 0..d + 4 {
            for j in 0..h + 4 {
                for l in 0..w + 4 {
                    let want = ((wrap(i, d) * h + wrap(j, h)) * w + wrap(l, w)) as f64;
                    assert_eq!(p[(i * (h + 4) + j) * (w + 4) + l], want);
                }
            }
        }
        assert!(periodic_pad(&x, 4).is_err());
    }

    #[test]
    fn curl_of_a_sine_potential_is_the_known_discrete_answer() {
        // A = (0, 0, sin(t i)) with i the index along D, t = 2 pi m / n: the only nonzero
        // component is curl_1 = -d0 A2 = -cos(t i) sin(t), the central difference of a sine.
        let (n, m) = (8, 2);
        let t = 2.0 * std::f64::consts::PI * m as f64 / n as f64;
        let dims = [1, 3, n, 4, 5];
        let mut a = vec![0.0; dims.iter().product()];
        let plane = 4 * 5;
        for i in 0..n {
            for k in 0..plane {
                a[(2 * n + i) * plane + k] = (t * i as f64).sin();
            }
        }
        let c = values(&curl(&tensor(a, dims)).unwrap());
        for comp in 0..3 {
            for i in 0..n {
                for k in 0..plane {
                    let want = if comp == 1 {
                        -(t * i as f64).cos() * t.sin()
                    } else {
                        0.0
                    };
                    let got = c[(comp * n + i) * plane + k];
                    assert!((got - want).abs() < 1e-12, "component {comp} at {i}: {got}");
                }
            }
        }
    }

    #[test]
    fn curl_matches_the_closures_periodic_differences() {
        // An independent implementation of the same difference (rolls instead of one padding).
        let mut rng = StdRng::seed_from_u64(5);
        let dims = [2, 3, 5, 4, 6];
        let a = tensor(random(&mut rng, dims.iter().product()), dims);
        let comp = |i: usize| a.narrow(1, i, 1).unwrap();
        let d = |i: usize, axis: usize| periodic_central_difference(&comp(i), 2 + axis).unwrap();
        let want = Tensor::cat(
            &[
                (d(2, 1) - d(1, 2)).unwrap(),
                (d(0, 2) - d(2, 0)).unwrap(),
                (d(1, 0) - d(0, 1)).unwrap(),
            ],
            1,
        )
        .unwrap();
        let got = curl(&a).unwrap();
        assert_eq!(got.dims(), a.dims());
        assert!(max_abs_diff(&values(&got), &values(&want)) < 1e-12);
        let div_want = ((d(0, 0) + d(1, 1)).unwrap() + d(2, 2)).unwrap();
        let div = divergence(&a).unwrap();
        assert_eq!(div.dims(), &[2, 1, 5, 4, 6]);
        assert!(max_abs_diff(&values(&div), &values(&div_want)) < 1e-12);
    }

    #[test]
    fn the_curl_of_a_random_potential_is_divergence_free_in_f32() {
        let mut rng = StdRng::seed_from_u64(6);
        for dims in [[2, 3, 16, 16, 16], [1, 3, 8, 6, 10]] {
            let a = tensor(random(&mut rng, dims.iter().product()), dims)
                .to_dtype(DType::F32)
                .unwrap();
            let u = curl(&a).unwrap();
            let flat: Vec<f32> = u.flatten_all().unwrap().to_vec1().unwrap();
            let u = Array5::from_shape_vec(dims, flat).unwrap();
            let rel = relative_divergence(&u).unwrap();
            assert!(rel < 1e-5, "{dims:?}: max |div u| / max |u| = {rel}");
            // The measure is not blind: the potential itself is far from divergence-free.
            let flat: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let a = Array5::from_shape_vec(dims, flat).unwrap();
            assert!(relative_divergence(&a).unwrap() > 0.1);
        }
        assert_eq!(
            relative_divergence(&Array5::zeros((1, 3, 4, 4, 4))).unwrap(),
            0.0
        );
    }

    #[test]
    fn curl_gradient_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(7);
        let dims = vec![1, 3, 3, 4, 3];
        let inputs = vec![(random(&mut rng, dims.iter().product()), dims)];
        let worst = check_gradients(&inputs, &|t| curl(&t[0]).unwrap());
        assert!(worst < 1e-5);
        let e = curl(&tensor(vec![0.0; 8], [1, 1, 2, 2, 2])).unwrap_err();
        assert!(e.to_string().contains("(B, 3, D, H, W)"), "{e}");
    }
}
