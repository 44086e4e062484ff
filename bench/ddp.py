"""The scheduled full retrain on one process vs two (Lightning DDP, gloo on CPU), side by side.

Same snapshot (MNIST's 5,000 packaged images, 80/20 split), same seed, same effective batch: the
validation accuracy of each, and the seconds each took. On this 2-core machine two processes share
the cores one process already uses, so the time says what DDP costs here, not what it saves on a
machine with a core (or GPU) per process.

Run: `flywheel bench ddp`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from PIL import Image

from bench.results import record
from components.tasks.classification import Classification
from components.learning.training import fit


def mnist_snapshot(folder: Path, count: int = 5000) -> tuple[pd.DataFrame, list[str]]:
    from components.studies.datasets import _mnist

    images, labels = _mnist()
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(min(count, len(images))):
        Image.fromarray(images[i]).save(folder / "images" / f"{i}.png")
        rows.append({"task_id": i, "image": f"images/{i}.png", "label": str(labels[i]), "split": "val" if i % 5 == 0 else "train"})
    return pd.DataFrame(rows), [str(d) for d in range(10)]


def main(echo: Callable[[str], None] = print) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="flywheel-ddp-") as tmp:
        folder = Path(tmp)
        manifest, labels = mnist_snapshot(folder / "snapshot")
        results = {}
        for devices in (1, 2):
            started = time.monotonic()
            trained = fit(
                Classification(), folder / "snapshot", manifest, labels, "conv4", {}, image_size=28,
                batch_size=64, max_epochs=6, min_steps=0, patience=3, lr=3e-3, augment=False, seed=0,
                tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="ddp", run_tags={}, progress=False,
                devices=devices, strategy="ddp_fork",
            )
            results[devices] = (trained.metrics["best_val_accuracy"], time.monotonic() - started)
            echo(f"{devices} process(es): validation accuracy {results[devices][0]:.4f} in {results[devices][1]:.0f} s")
    (acc1, s1), (acc2, s2) = results[1], results[2]
    figures = {"ddp_val_accuracy_1": round(acc1, 4), "ddp_val_accuracy_2": round(acc2, 4),
               "ddp_seconds_1": round(s1, 1), "ddp_seconds_2": round(s2, 1)}
    record(figures, "ddp", f"""## DDP: the full retrain on one process vs two (`flywheel bench ddp`)

conv4 on MNIST's 5,000 packaged images (1,000 for validation), 28 px, 6 epochs, batch 64 (32 per
process with two), seed 0, CPU:

| processes | validation accuracy | seconds |
|---|---|---|
| 1 | {acc1:.4f} | {s1:.0f} |
| 2 (DDP, gloo, `ddp_fork`) | {acc2:.4f} | {s2:.0f} |

Quality: difference {acc2 - acc1:+.4f}. On this 2-core machine two processes share the cores one
process already uses (torch's intra-op threads), so the seconds say what DDP costs or saves here, not on a
machine with a core group or a GPU per process.
""")
    return figures


if __name__ == "__main__":
    main()
