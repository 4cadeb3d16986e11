"""Peer of examples/bench_analysis.rs: what Python Sapsan's Evaluate does with numpy, scipy and
matplotlib on the same data (ks_2samp, 100-bin density histograms, the pdf_cdf and slices
figures saved as PNG), timed the same way. Prints one JSON object.

Usage: analysis_peer.py TARGET.f32 PREDICTION.f32 C D H W REPEATS
(raw little-endian float32 cubes of shape (C, D, H, W), written by the Rust example).
"""
import io
import json
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402


def pdf_cdf_png(target, prediction, ks):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14.4, 7.2), dpi=100)
    lo, hi = min(target.min(), prediction.min()), max(target.max(), prediction.max())
    for data, name in ((target, "target"), (prediction, "prediction")):
        ax1.hist(data, bins=100, range=(lo, hi), density=True, histtype="step", lw=3, label=name)
    ax1.set_yscale("log")
    ax1.set_xlabel("Values")
    ax1.set_ylabel("PDF")
    ax1.legend()
    curves = []
    for data, name in ((target, "target"), (prediction, "prediction")):
        xs = np.sort(data)
        ys = np.arange(1, len(xs) + 1) / len(xs)
        ax2.plot(xs, ys, lw=3, label=name)
        curves.append(xs)
    pos = ks.statistic_location
    c1 = np.searchsorted(curves[0], pos, side="right") / len(curves[0])
    c2 = np.searchsorted(curves[1], pos, side="right") / len(curves[1])
    ax2.plot([pos, pos], [c1, c2], "r--", lw=3, label="largest gap")
    ax2.text(0.05, 0.95, f"KS stat: {ks.statistic:.4g}\np-value: {ks.pvalue:.4g}\nposition: {pos:.4g}",
             transform=ax2.transAxes, va="top", bbox=dict(facecolor="white"))
    ax2.set_xlabel("Values")
    ax2.set_ylabel("CDF")
    ax2.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def slices_png(t2, p2):
    fig, axes = plt.subplots(1, 2, figsize=(14.4, 7.2), dpi=100)
    vmin, vmax = min(t2.min(), p2.min()), max(t2.max(), p2.max())
    for ax, data, title in ((axes[0], t2, "Target"), (axes[1], p2, "Prediction")):
        im = ax.imshow(data, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(title)
    fig.colorbar(im, ax=axes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def main():
    tpath, ppath = sys.argv[1], sys.argv[2]
    c, d, h, w, repeats = (int(v) for v in sys.argv[3:8])
    target = np.fromfile(tpath, dtype="<f4").reshape(c, d, h, w)
    prediction = np.fromfile(ppath, dtype="<f4").reshape(c, d, h, w)
    best = None
    for _ in range(repeats):
        times = {}
        t0 = time.perf_counter()
        tf, pf = target.ravel(), prediction.ravel()
        ks = stats.ks_2samp(tf, pf)
        times["ks_2samp"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        lo, hi = min(tf.min(), pf.min()), max(tf.max(), pf.max())
        np.histogram(tf, bins=100, range=(lo, hi), density=True)
        np.histogram(pf, bins=100, range=(lo, hi), density=True)
        times["histograms"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        png1 = pdf_cdf_png(tf, pf, ks)
        times["pdf_cdf_png"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        png2 = slices_png(target[0, 0], prediction[0, 0])
        times["slices_png"] = time.perf_counter() - t3
        times["total"] = time.perf_counter() - t0
        if best is None or times["total"] < best["total"]:
            best = times
    print(json.dumps({
        "statistic": float(ks.statistic),
        "pvalue": float(ks.pvalue),
        "position": float(ks.statistic_location),
        "png_bytes": [len(png1), len(png2)],
        "times": best,
    }))


if __name__ == "__main__":
    main()
