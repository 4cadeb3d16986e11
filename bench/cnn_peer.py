"""Peer of examples/bench_cnn.rs: Sapsan's CNN3d in PyTorch (the same layers as
sapsan-core/src/estimator/cnn3d.rs), SmoothL1 loss, Adam, trained on the same data with the same
batch size and thread count. Prints one JSON object with the seconds per epoch.

Usage: cnn_peer.py X.f32 N,C,D,H,W Y.f32 N,Ct,Dt,Ht,Wt BATCH EPOCHS THREADS LR SEED
(raw little-endian float32 arrays written by the Rust example).

Timing matches the Rust side: one warm-up epoch that is not timed, then EPOCHS timed epochs.
`train_s` is the training pass only (forward + loss + backward + Adam step per batch, plus reading
the loss value as the Rust side does); `valid_s` is one no-grad forward pass over the same samples,
as the validation the Rust training loop runs every epoch. No DataLoader: batches are slices of
tensors in memory on both sides. Reported: the median and the minimum over the timed epochs.
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
    if len(sys.argv) != 10:
        sys.exit(__doc__)
    x_path, x_shape, y_path, y_shape, batch, epochs, threads, lr = sys.argv[1:9]
    x, y = load(x_path, x_shape), load(y_path, y_shape)
    batch, epochs, threads, lr = int(batch), int(epochs), int(threads), float(lr)
    seed = int(sys.argv[9])
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
    train_s, valid_s, losses = [], [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        loss = train_epoch()
        t1 = time.perf_counter()
        valid_epoch()
        t2 = time.perf_counter()
        train_s.append(t1 - t0)
        valid_s.append(t2 - t1)
        losses.append(loss)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": epochs,
        "num_params": sum(p.numel() for p in model.parameters()),
        "train_s_per_epoch": float(np.median(train_s)),
        "train_s_min": float(np.min(train_s)),
        "valid_s_per_epoch": float(np.median(valid_s)),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }))


if __name__ == "__main__":
    main()
