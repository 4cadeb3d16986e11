"""Peer of examples/bench_data.rs: reads the same HDF5 checkpoint files with h5py, as Python
Sapsan's loader does (`h5py.File(path)[name][()]`, the last dataset in name order unless one is
named), into float32 numpy arrays. Prints one JSON object with the seconds per round.

Usage: data_peer.py ROUNDS FILE...

One untimed warm-up round (so both sides read from the page cache), then ROUNDS timed rounds of
reading every file in turn; reported: the median and the minimum round. A second figure stacks
the cubes into one (N, C, D, H, W) array (`np.stack`), as the loader then does: the counterpart
of the Rust side's `load_all`.
"""
import json
import sys
import time

import h5py
import numpy as np


def read(path):
    with h5py.File(path, "r") as f:
        name = sorted(f.keys())[-1]
        return np.asarray(f[name][()], dtype=np.float32)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds, paths = int(sys.argv[1]), sys.argv[2:]
    values = sum(read(p).size for p in paths)  # warm-up
    times, stacked = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        cubes = [read(p) for p in paths]
        times.append(time.perf_counter() - t0)
        assert sum(c.size for c in cubes) == values
    for _ in range(rounds):
        t0 = time.perf_counter()
        cubes = np.stack([read(p) for p in paths])
        stacked.append(time.perf_counter() - t0)
        assert cubes.size == values
    print(json.dumps({
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "files": len(paths),
        "values": values,
        "round_s": float(np.median(times)),
        "round_s_min": float(np.min(times)),
        "stacked_s": float(np.median(stacked)),
        "stacked_s_min": float(np.min(stacked)),
    }))


if __name__ == "__main__":
    main()
