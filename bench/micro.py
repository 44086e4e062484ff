"""Micro-benchmarks of the Label Studio adapter, side by side in one run against a real server.

- Poll: fetch 10 changed annotations from a 1,000- and a 10,000-task project, incrementally
  (`fetch_changed`) vs by a full JSON export.
- Write-back: replace the 1,000 predictions of an existing model version, by the adapter's bulk
  path vs one delete and one create call per prediction (the baseline).
- Training throughput (images/s) of every architecture in params.yaml.

Run: `make bench` or `.venv/bin/python -m bench.micro`. Writes bench/results.json and RESULTS.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.results import record
from bench.stack import throwaway_stack
from components.core.conversions import Prediction, format_cursor
from components.adapters.label_studio import LabelStudio, Project
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.tasks.classification import choice_result

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_project(ls: LabelStudio, title: str, size: int, folder: Path) -> Project:
    config = load_labeling_config(ROOT / "label_studio_config" / "classification.xml")
    project = ls.ensure_project(title, config)
    rng = np.random.default_rng(size)
    folder.mkdir(parents=True)
    paths = []
    for i in range(size):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    ls.import_images(project, paths, progress=lambda it: tqdm(it, desc=f"import {size} tasks", leave=False))
    return project


def measure_poll(ls: LabelStudio, project: Project, changes: int) -> tuple[float, float]:
    """(incremental seconds, full-export seconds) to see `changes` fresh annotations."""
    ids = sorted(ls.task_hashes(project.id).values())
    cursor = format_cursor(datetime.now(UTC))
    for i, task_id in enumerate(ids[:: len(ids) // changes][:changes]):
        ls.annotate(task_id, choice_result(str(i % 10), project.config))
    found = ls.fetch_changed(project.id, cursor)
    assert len(found.tasks) == changes, f"expected {changes} changed tasks, got {len(found.tasks)}"
    incremental = timed(lambda: ls.fetch_changed(project.id, cursor), REPEATS)
    full = timed(lambda: ls.export_all(project.id), 3)
    return incremental, full


def measure_writeback(ls: LabelStudio, project: Project) -> tuple[float, float, float]:
    """Predictions per second replacing the pre-annotations of 1,000 unlabeled tasks: (bulk, one call each)."""
    ids = sorted(ls.unlabeled_tasks(project.id))[:1000]
    predictions = [Prediction(t, tuple(choice_result(str(t % 10), project.config)), 0.9) for t in ids]
    versions = (f"bench-{i}" for i in range(1000))

    def replace(keep_earlier: bool) -> None:
        """A new version written, then the superseded one tidied away (keeping the one before it, if asked)."""
        shown = sorted(ls.model_versions(project.id), key=lambda v: int(v.split("-")[1]))
        new = next(versions)
        ls.write_predictions(project, predictions, new)
        ls.tidy_predictions(project, keep={new, *shown[-1:]} if keep_earlier else {new}, chunk=1000)

    replace(False)
    bulk_s = timed(lambda: replace(False), 3)
    # The same with one earlier version kept (predict.keep_versions: 2): a re-import more.
    keep_s = timed(lambda: replace(True), 3)
    replace(False)

    # Baseline: the same replacement, one DELETE and one POST per prediction.
    ls.write_predictions(project, predictions, "bench-single")
    ls.tidy_predictions(project, keep={"bench-single"}, chunk=1000)
    existing = {
        p.task: p.id
        for p in ls.sdk.predictions.list(project=project.id)
        if p.model_version == "bench-single"
    }
    start = time.perf_counter()
    for p in tqdm(predictions, desc="one call per prediction", leave=False):
        ls.sdk.predictions.delete(id=existing[p.task_id])
        ls.sdk.predictions.create(
            task=p.task_id, result=list(p.result), score=p.score, model_version="bench-single"
        )
    single_s = time.perf_counter() - start
    return len(ids) / bulk_s, len(ids) / single_s, len(ids) / keep_s


def measure_training(image_size: int, batch_size: int, images: int = 512, epochs: int = 2) -> dict[str, float]:
    """Training images per second of each classification architecture in params.yaml (CPU here; Lightning
    picks the device); the box and mask networks are measured by their own benchmarks."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from components.networks.architectures import build_network
    from components.tasks.classification import Classification, Classifier

    params = load_params(ROOT / "params.yaml")  # the architectures to compare
    data = TensorDataset(torch.rand(images, 3, image_size, image_size), torch.randint(0, 10, (images,)))
    rates = {}
    for name, options in params.architectures.items():
        if not Classification().builds(name):
            continue
        module = Classifier(build_network(name, 10, options), 10, lr=1e-3, augment=True, architecture=name)
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        start = time.perf_counter()
        trainer.fit(module, DataLoader(data, batch_size=batch_size, shuffle=True))
        rates[name] = images * epochs / (time.perf_counter() - start)
    return rates


def main() -> None:
    with throwaway_stack(label_studio_only=True) as (settings, scratch):
        ls = LabelStudio.from_settings(settings)
        small = make_project(ls, "bench 1k", 1_000, scratch / "img1k")
        large = make_project(ls, "bench 10k", 10_000, scratch / "img10k")
        inc_1k, full_1k = measure_poll(ls, small, 10)
        inc_10k, full_10k = measure_poll(ls, large, 10)
        bulk_per_s, single_per_s, keep_per_s = measure_writeback(ls, small)
    params = load_params(ROOT / "params.yaml")
    training = measure_training(params.train.image_size, params.train.batch_size)

    figures = {
        "poll_incremental_s_1k": round(inc_1k, 4),
        "poll_incremental_s_10k": round(inc_10k, 4),
        "poll_full_export_s_1k": round(full_1k, 4),
        "poll_full_export_s_10k": round(full_10k, 4),
        "poll_speedup_10k": round(full_10k / inc_10k, 1),
        "poll_growth_1k_to_10k": round(inc_10k / inc_1k, 2),
        "writeback_bulk_per_s": round(bulk_per_s, 1),
        "writeback_single_per_s": round(single_per_s, 1),
        "writeback_keep2_per_s": round(keep_per_s, 1),
        "writeback_speedup": round(bulk_per_s / single_per_s, 1),
        **{f"train_images_per_s_{name}": round(rate, 1) for name, rate in training.items()},
    }
    training_rows = "\n".join(f"| {name} | {rate:.0f} |" for name, rate in training.items())
    markdown = f"""## Label Studio adapter: polling and write-back (`bench/micro.py`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), one run, against a fresh
Label Studio 1.23.2 (SQLite) started by `flywheel stack up`'s code in a temporary workspace.

**Poll** — 10 tasks annotated through the API after a cursor, then the time to see them
(median of {REPEATS} incremental fetches, 3 full exports):

| project | incremental `fetch_changed` | full JSON export | ratio |
|---|---|---|---|
| 1,000 tasks | {inc_1k:.3f} s | {full_1k:.3f} s | {full_1k / inc_1k:.1f}x |
| 10,000 tasks | {inc_10k:.3f} s | {full_10k:.3f} s | **{full_10k / inc_10k:.1f}x** (`poll_speedup_10k`, target >= 40) |

Growth of the incremental fetch from 1k to 10k tasks: **{inc_10k / inc_1k:.2f}x**
(`poll_growth_1k_to_10k`, target <= 1.5): it costs what changed, not the project size.

**Write-back** — replacing the 1,000 predictions of an existing model version:

| path | predictions/s |
|---|---|
| adapter bulk (`write_predictions`: a bulk import of the new version; `tidy_predictions`: one delete action over the tasks, the kept ones re-imported) | {bulk_per_s:.0f} |
| the same, keeping one earlier version (`predict.keep_versions: 2`) | {keep_per_s:.0f} |
| one `DELETE` + one `POST` per prediction | {single_per_s:.1f} |

Ratio **{bulk_per_s / single_per_s:.0f}x** (`writeback_speedup`, target >= 20).

**Training throughput** — images/s through a full training step (forward, backward, AdamW,
augmentation), {params.train.image_size}x{params.train.image_size} RGB, batch {params.train.batch_size},
on this CPU (`train_images_per_s_<architecture>`):

| architecture | images/s |
|---|---|
{training_rows}
"""
    record(figures, "micro", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
