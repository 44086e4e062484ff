"""The scheduled full retrain on two CPU processes (Lightning DDP, gloo) learns as well as on one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.datasets import load_digits

from components.tasks.classification import Classification
from components.learning.training import fit

pytestmark = pytest.mark.model
LABELS = [str(d) for d in range(10)]


def digits_snapshot(folder, count=600):
    (folder / "images").mkdir(parents=True)
    digits = load_digits()
    rows = []
    for i in range(count):
        image = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        rows.append({"task_id": i, "image": f"images/{i}.png", "label": str(digits.target[i]), "split": "val" if i % 5 == 0 else "train"})
    return pd.DataFrame(rows)


def train(folder, manifest, tracking_uri, devices):
    return fit(
        Classification(), folder, manifest, LABELS, "small_cnn", {"width": 8}, image_size=16, batch_size=32,
        max_epochs=12, min_steps=0, patience=3, lr=3e-3, augment=False, seed=0, tracking_uri=tracking_uri,
        experiment="ddp", run_tags={"devices": str(devices)}, progress=False, devices=devices, strategy="ddp_fork",
    )


def test_ddp_on_two_cpu_processes_learns_as_well_as_one(tmp_path):
    manifest = digits_snapshot(tmp_path / "snapshot")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one = train(tmp_path / "snapshot", manifest, tracking_uri, 1)
    two = train(tmp_path / "snapshot", manifest, tracking_uri, 2)
    assert one.metrics["best_val_accuracy"] > 0.8
    # Two runs' accuracies on n validation images differ by noise alone with sd ~ sqrt(2 p (1 - p) / n): at
    # n = 120 and p ~ 0.9 that is 0.039, so 0.08 is two sd (10 images). Measured over seeds 0-5, one process
    # vs two: differences -0.050 to +0.042 (sd 0.035; seed 0, this test's, lands on 0.050: six images, so
    # 0.05 failed on noise). A larger validation set would not tighten it: validated on all 1,317 digits it
    # does not train on, one process still scored 0.87 to 0.94 over seeds 0-2 (training on 480 images varies
    # as much). bench/RESULTS.md, "DDP": 0.9730 vs 0.9750 on 1,000 validation images.
    assert abs(two.metrics["best_val_accuracy"] - one.metrics["best_val_accuracy"]) <= 0.08, (one.metrics, two.metrics)
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert sorted(r.data.tags["devices"] for r in runs) == ["1", "2"]  # DDP's processes logged into its one run
    assert "best_val_accuracy" in client.get_run(two.run_id).data.metrics
