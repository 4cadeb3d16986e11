use ndarray::Array5;

use super::*;

/// Points `(x0, x1)` as a 2D slice `(1, 2, 1, 1, n)` of two feature channels.
fn slice(points: &[[f64; 2]]) -> Array5<f32> {
    Array5::from_shape_fn((1, 2, 1, 1, points.len()), |(_, c, _, _, i)| {
        points[i][c] as f32
    })
}

fn quiet(_: &EpochRecord) -> Result<()> {
    Ok(())
}

#[test]
fn two_points_match_the_closed_form() {
    // x = 0 and 1, y = 1 and 3: c = (K + alpha I)^-1 y with the 2x2 inverse written out.
    let (gamma, alpha) = (0.5, 0.1);
    let x = Array5::from_shape_vec((1, 1, 1, 1, 2), vec![0.0f32, 1.0]).unwrap();
    let y = Array5::from_shape_vec((1, 1, 1, 1, 2), vec![1.0f32, 3.0]).unwrap();
    let mut m = Krr::new(
        KrrConfig::default().with_alpha(alpha).with_gamma(gamma),
        1,
        1,
    )
    .unwrap();
    m.fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut quiet)
        .unwrap();
    let e = (-gamma).exp();
    let det = (1.0 + alpha) * (1.0 + alpha) - e * e;
    let c = [
        ((1.0 + alpha) * 1.0 - e * 3.0) / det,
        (-e * 1.0 + (1.0 + alpha) * 3.0) / det,
    ];
    let at = |x: f64| c[0] * (-gamma * x * x).exp() + c[1] * (-gamma * (x - 1.0) * (x - 1.0)).exp();
    let xs = Array5::from_shape_vec((1, 1, 1, 1, 3), vec![0.25f32, 1.0, -2.0]).unwrap();
    let got = m.predict(&xs).unwrap();
    for (g, x) in got.iter().zip([0.25, 1.0, -2.0]) {
        assert!(
            (f64::from(*g) - at(x)).abs() < 1e-6,
            "at {x}: {g} vs {}",
            at(x)
        );
    }
}

#[test]
fn matches_scikit_learns_kernel_ridge() {
    // KernelRidge(kernel='rbf', alpha=0.1, gamma=0.7).fit(X, Y).predict(Xs), scikit-learn 1.9.1,
    // with X = [[0, 1], [1, 0.5], [-0.5, 2]], Y = [[1, -1], [3, 0.5], [2, 2]],
    // Xs = [[0.25, 1], [2, -1]].
    let x = slice(&[[0.0, 1.0], [1.0, 0.5], [-0.5, 2.0]]);
    let y = Array5::from_shape_fn((1, 2, 1, 1, 3), |(_, c, _, _, i)| {
        [[1.0f32, -1.0], [3.0, 0.5], [2.0, 2.0]][i][c]
    });
    let mut m = Krr::new(KrrConfig::default().with_alpha(0.1).with_gamma(0.7), 2, 2).unwrap();
    m.fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut quiet)
        .unwrap();
    let dual = &m.fitted.as_ref().unwrap().dual;
    let want_dual = [
        -1.0350361570043514,
        -2.402190537379968,
        3.038015841748971,
        1.2605118021609336,
        2.092074384158555,
        2.6794239885465565,
    ];
    for (g, w) in dual.iter().zip(want_dual) {
        assert!((g - w).abs() < 1e-12, "{dual:?}");
    }
    let got = m.predict(&slice(&[[0.25, 1.0], [2.0, -1.0]])).unwrap();
    let want = [
        [1.4302517218961586, -0.6881227828450696],
        [0.3085195733511384, 0.12075567974935741],
    ];
    for i in 0..2 {
        for c in 0..2 {
            let g = f64::from(got[[0, c, 0, 0, i]]);
            assert!((g - want[i][c]).abs() < 1e-6, "point {i} output {c}: {g}");
        }
    }
}

#[test]
fn learns_a_smooth_function_and_reports_its_losses() {
    // y = sin(2 x0) + x1^2 on a 16 x 16 slice; validated on a shifted grid.
    let grid = |shift: f64| {
        Array5::from_shape_fn((1, 2, 1, 16, 16), |(_, c, _, i, j)| {
            let v = (if c == 0 { i } else { j }) as f64 / 8.0 - 1.0 + shift;
            v as f32
        })
    };
    let target = |x: &Array5<f32>| {
        Array5::from_shape_fn((1, 1, 1, 16, 16), |(_, _, _, i, j)| {
            let (a, b) = (f64::from(x[[0, 0, 0, i, j]]), f64::from(x[[0, 1, 0, i, j]]));
            ((2.0 * a).sin() + b * b) as f32
        })
    };
    let (x, vx) = (grid(0.0), grid(0.03));
    let (y, vy) = (target(&x), target(&vx));
    let mut m = Krr::new(KrrConfig::default().with_alpha(1e-4).with_gamma(2.0), 2, 1).unwrap();
    let mut seen = Vec::new();
    let report = m
        .fit(Samples::new(&x, &y), Samples::new(&vx, &vy), &mut |r| {
            seen.push(r.clone());
            Ok(())
        })
        .unwrap();
    assert_eq!((report.final_epoch, seen.len()), (1, 1));
    let mse = |a: &Array5<f32>, b: &Array5<f32>| {
        a.iter()
            .zip(b)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum::<f64>()
            / a.len() as f64
    };
    let r = &seen[0];
    assert!((r.train_loss - mse(&m.predict(&x).unwrap(), &y)).abs() < 1e-9);
    assert!((r.valid_loss - mse(&m.predict(&vx).unwrap(), &vy)).abs() < 1e-9);
    let var = vy.var(0.0) as f64;
    assert!(
        r.valid_loss < 1e-3 * var,
        "held-out MSE {} of variance {var}",
        r.valid_loss
    );
    assert_eq!(
        m.metrics(),
        vec![
            ("gamma".to_string(), 2.0),
            ("training points".to_string(), 256.0)
        ]
    );
}

#[test]
fn weights_round_trip_and_mismatches_are_errors() {
    let x = slice(&[[0.0, 1.0], [1.0, 0.5], [-0.5, 2.0]]);
    let y = Array5::from_shape_fn((1, 1, 1, 1, 3), |(.., i)| i as f32);
    let mut m = Krr::new(KrrConfig::default(), 2, 1).unwrap();
    let err = m.predict(&x).unwrap_err().to_string();
    assert!(err.contains("not been fitted"), "{err}");
    assert!(m.save_weights().is_err());
    m.fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut quiet)
        .unwrap();
    // gamma None: 1 / feature channels.
    assert_eq!(m.gamma(), 0.5);
    let bytes = m.save_weights().unwrap();
    let mut other = Krr::new(KrrConfig::default(), 2, 1).unwrap();
    other.load_weights(&bytes).unwrap();
    assert_eq!(other.predict(&x).unwrap(), m.predict(&x).unwrap());
    let mut wrong = Krr::new(KrrConfig::default(), 2, 2).unwrap();
    let err = wrong.load_weights(&bytes).unwrap_err().to_string();
    assert!(err.contains("channels"), "{err}");
    assert!(other.load_weights(b"not safetensors").is_err());
    // Features of the wrong width, targets on another grid.
    assert!(m.predict(&Array5::<f32>::zeros((1, 3, 1, 1, 3))).is_err());
    let y_other = Array5::<f32>::zeros((1, 1, 1, 1, 2));
    let err = m
        .fit(Samples::new(&x, &y_other), Samples::new(&x, &y), &mut quiet)
        .unwrap_err();
    assert!(err.to_string().contains("same"), "{err}");
}

#[test]
fn details_and_forward_describe_the_model() {
    let m = Krr::new(
        KrrConfig::default().with_alpha(1e-3).with_gamma(1.778),
        3,
        1,
    )
    .unwrap();
    let d = m.model_details();
    assert!(
        d.starts_with("KernelRidge(alpha=0.001, kernel='rbf', gamma=1.778)"),
        "{d}"
    );
    let src = m.model_forward();
    assert!(src.contains("fn predict_points"), "{src}");
    assert!(!src.contains("forward-source"));
    assert!(Krr::new(KrrConfig::default(), 0, 1).is_err());
}
