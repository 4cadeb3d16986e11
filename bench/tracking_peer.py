"""Peer measurement for examples/bench_tracking.rs: the official Python MLflow client logging metrics.

usage: tracking_peer.py <tracking_uri> <experiment> <n_fluent> <n_batch>
Prints one JSON line: {"fluent_per_s": ..., "batch_per_s": ..., "fluent_n": ..., "batch_n": ...}
"""
import json
import sys
import time

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

# Same metrics as the Rust side: metric i is key m{i % 10} at step i // 10.
KEYS = 10
uri, experiment, n_fluent, n_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mlflow.set_tracking_uri(uri)
mlflow.set_experiment(experiment)
client = MlflowClient(uri)
out = {"fluent_n": n_fluent, "batch_n": n_batch}

# Fluent API, one call per metric: what Python Sapsan (and most user code) does.
with mlflow.start_run(run_name="peer-fluent"):
    t = time.perf_counter()
    for i in range(n_fluent):
        mlflow.log_metric(f"m{i % KEYS}", float(i), step=i // KEYS)
    out["fluent_per_s"] = n_fluent / (time.perf_counter() - t)

# The fastest the Python client offers: log_batch in chunks of 1000 (Metric objects built inside the
# timed loop, as a caller would).
run = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id, run_name="peer-batch")
now = int(time.time() * 1000)
t = time.perf_counter()
for start in range(0, n_batch, 1000):
    ms = [Metric(f"m{i % KEYS}", float(i), now, i // KEYS) for i in range(start, min(start + 1000, n_batch))]
    client.log_batch(run.info.run_id, metrics=ms)
out["batch_per_s"] = n_batch / (time.perf_counter() - t)
client.set_terminated(run.info.run_id)
print(json.dumps(out))
