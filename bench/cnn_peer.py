"""Peer of examples/bench_cnn.rs: Sapsan's CNN3d in PyTorch (the same layers as
sapsan-core/src/estimator/cnn3d.rs), SmoothL1 loss, Adam, trained on the same data with the same
batch size and thread count, one epoch at a time when the Rust side asks, so that both sides'
epochs alternate and see the same machine.

Usage: cnn_peer.py X.f32 N,C,D,H,W Y.f32 N,Ct,Dt,Ht,Wt BATCH THREADS LR SEED
(raw little-endian float32 arrays written by the Rust example).

Protocol (lines on stdin and stdout): after one warm-up epoch that is not timed the peer prints a
JSON object describing itself ({"torch", "threads", "num_params"}); then every `epoch` line on
stdin runs one timed epoch and prints {"train_s", "valid_s", "loss"}; `quit` (or the end of
stdin) ends it. `train_s` is the training pass only (forward + loss + backward + Adam step per
batch, plus reading the loss value as the Rust side does); `valid_s` is one no-grad forward pass
over the same samples, as the validation the Rust training loop runs every epoch. No DataLoader:
batches are slices of tensors in memory on both sides.
"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn


class CNN3d(nn.Module):
    """Sapsan's CNN3dModel: C input channels, a target of D_out values per sample."""

    def __init__(self, c, target_shape):
        super().__init__()
        d_out = int(np.prod(target_shape))
        self.target_shape = tuple(target_shape)
        self.conv3d = nn.Conv3d(c, 2 * c, kernel_size=2, stride=2, padding=1)
        self.conv3d2 = nn.Conv3d(2 * c, 2 * c, kernel_size=2, stride=2, padding=1)
        self.conv3d3 = nn.Conv3d(2 * c, 4 * c, kernel_size=2, stride=2, padding=1)
        self.pooling = nn.MaxPool3d(kernel_size=2, padding=1)
        self.pooling2 = nn.MaxPool3d(kernel_size=2, padding=1)
        self.pooling3 = nn.MaxPool3d(kernel_size=2)
        self.relu = nn.ReLU()
        self.linear = nn.Linear(4 * c, 8 * c)
        self.linear2 = nn.Linear(8 * c, d_out)

    def forward(self, x):
        x = self.relu(self.pooling(self.conv3d(x)))
        x = self.relu(self.pooling2(self.conv3d2(x)))
        x = self.pooling3(self.conv3d3(x))
        x = torch.flatten(x, 1)
        x = self.relu(self.linear(x))
        x = self.linear2(x)
        return x.reshape((x.shape[0],) + self.target_shape)


def load(path, shape):
    dims = tuple(int(s) for s in shape.split(","))
    data = np.fromfile(path, dtype="<f4")
    if data.size != int(np.prod(dims)):
        sys.exit(f"{path}: {data.size} values, expected shape {dims}")
    return torch.from_numpy(data.reshape(dims).copy())


def main():
    if len(sys.argv) != 9:
        sys.exit(__doc__)
    x_path, x_shape, y_path, y_shape, batch, threads, lr, seed = sys.argv[1:9]
    x, y = load(x_path, x_shape), load(y_path, y_shape)
    batch, threads, lr, seed = int(batch), int(threads), float(lr), int(seed)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = CNN3d(x.shape[1], y.shape[1:])
    loss_fn = nn.SmoothL1Loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]

    def train_epoch():
        model.train()
        total = 0.0
        for start in range(0, n, batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * xb.shape[0]
        return total / n

    def valid_epoch():
        model.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, n, batch):
                xb, yb = x[start:start + batch], y[start:start + batch]
                total += loss_fn(model(xb), yb).item() * xb.shape[0]
        return total / n

    train_epoch()  # warm-up, not timed
    valid_epoch()
    say({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "num_params": sum(p.numel() for p in model.parameters()),
    })
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        t0 = time.perf_counter()
        loss = train_epoch()
        t1 = time.perf_counter()
        valid_epoch()
        t2 = time.perf_counter()
        say({"train_s": t1 - t0, "valid_s": t2 - t1, "loss": loss})


def say(obj):
    print(json.dumps(obj), flush=True)


if __name__ == "__main__":
    main()
