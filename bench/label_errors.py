"""`flywheel bench errors`: does the error finder find the labels a person got wrong?

For each noise rate, a fresh project on the default dataset (params.yaml `demo`): a simulated
person labels every image, getting a random `rate` of them wrong on purpose (a uniformly drawn
other class). One real flywheel iteration versions the snapshot; the label error flow then ranks
every label. Precision and recall count the top-ranked as many labels as were flipped.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from bench.results import record
from bench.simulate import scratch_params
from components.tasks.classification import choice_result
from components.studies.datasets import materialize
from components.adapters.label_studio import SUSPECTS_VIEW
from components.loop.workspace import LABEL_ERRORS_FILE, open_workspace, reports_dir
from components.core.params import load_params
from components.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class NoiseResult:
    rate: float
    labeled: int
    flipped: int
    precision: float
    recall: float
    flagged: int
    flagged_precision: float
    flagged_recall: float
    view_top_precision: float
    seconds: float


def measure(settings: Settings, scratch: Path, dataset: str, size: int, rate: float, seed: int, echo=print) -> NoiseResult:
    """One noise rate on its own fresh project."""
    from flows.flywheel import flywheel_iteration
    from flows.label_errors import find_label_errors

    images = materialize(dataset, scratch / "datasets", limit=size, seed=seed)
    labels = sorted({i.label for i in images}, key=lambda x: (len(x), x))
    run = f"errors-{dataset}-{int(rate * 100)}pct-{uuid.uuid4().hex[:6]}"
    params_path = scratch_params(run, scratch, labels)
    ws = open_workspace(settings, load_params(params_path), create_project=True)
    ws.label_studio.import_images(ws.project, [i.path for i in images])
    truth = {i.path.name: i.label for i in images}
    rng = random.Random(seed)
    tasks = sorted(ws.label_studio.unlabeled_tasks(ws.project.id).items())
    flip = set(rng.sample([t for t, _ in tasks], round(rate * len(tasks))))
    for task_id, data in tqdm(tasks, desc=f"label ({rate:.0%} wrong)", leave=False):
        label = truth[data["filename"]]
        if task_id in flip:
            label = rng.choice([other for other in labels if other != label])
        ws.label_studio.annotate(task_id, choice_result(label, ws.project.config))
    flywheel_iteration(str(params_path))
    start = time.perf_counter()
    find_label_errors(str(params_path))
    seconds = time.perf_counter() - start
    table = pd.read_parquet(reports_dir(ws) / LABEL_ERRORS_FILE)
    top = set(table.sort_values("rank")["task_id"].head(len(flip)))
    flagged = set(table[table["suspected"]]["task_id"])
    view = ws.label_studio.view_tasks(ws.project.id, ws.label_studio.view_id(ws.project.id, SUSPECTS_VIEW))
    view_top = [int(t["id"]) for t in view][: len(flip)]
    result = NoiseResult(
        rate=rate, labeled=len(table), flipped=len(flip),
        precision=len(top & flip) / len(top), recall=len(top & flip) / len(flip),
        flagged=len(flagged),
        flagged_precision=len(flagged & flip) / len(flagged) if flagged else 0.0,
        flagged_recall=len(flagged & flip) / len(flip),
        view_top_precision=len(set(view_top) & flip) / len(view_top) if view_top else 0.0,
        seconds=round(seconds, 1),
    )
    echo(f"{rate:.0%} noise: precision {result.precision:.3f} recall {result.recall:.3f} "
         f"(cleanlab flagged {result.flagged}, check {seconds:.0f}s)")
    return result


def summarize(results: Sequence[NoiseResult], dataset: str, size: int, folds: int, steps: int) -> tuple[dict[str, float], str]:
    figures: dict[str, float] = {}
    rows = []
    for r in results:
        pct = round(r.rate * 100)
        figures[f"errors_precision_{pct}pct"] = round(r.precision, 4)
        figures[f"errors_recall_{pct}pct"] = round(r.recall, 4)
        rows.append(
            f"| {pct}% | {r.labeled} | {r.flipped} | {r.precision:.3f} | {r.recall:.3f} | {r.flagged} | "
            f"{r.flagged_precision:.3f} | {r.flagged_recall:.3f} | {r.view_top_precision:.3f} | {r.seconds:.0f} s |"
        )
    markdown = f"""## Label error finder (`flywheel bench errors`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU) against a fresh embedded
stack. Dataset `{dataset}`, {size} images, every one labeled through Label Studio by a simulated
person who gets a random share wrong on purpose (another class drawn uniformly). One flywheel
iteration versions the snapshot; the label error flow then trains {folds} folds x {steps} steps
(params.yaml `errors`) for out-of-fold probabilities and ranks every label with cleanlab's label
quality score. Precision and recall take the top-ranked as many labels as were flipped (so they
are equal); "flagged" are the suspects, the lowest-quality labels, as many as cleanlab's
`num_label_issues` estimates are wrong, which is what the "Suspected label errors" tab holds; "tab top" is the share of flipped tasks among the first
as-many-as-flipped tasks of that tab, read back from Label Studio.

| noise | labeled | flipped | precision | recall | flagged | flagged precision | flagged recall | tab top precision | check |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Targets: `errors_precision_10pct` >= 0.8 and `errors_recall_10pct` >= 0.8.
"""
    return figures, markdown


def main(rates: Sequence[float] = (0.05, 0.10, 0.20), seed: int = 0, echo=print) -> None:
    """Run every noise rate on a throwaway stack and record the figures."""
    from bench.stack import throwaway_stack

    params = load_params(ROOT / "params.yaml")
    dataset, size = params.demo.dataset, params.demo.limit
    with throwaway_stack() as (settings, scratch):
        results = [measure(settings, scratch, dataset, size, rate, seed, echo) for rate in rates]
    figures, markdown = summarize(results, dataset, size, params.errors.folds, params.errors.steps)
    record(figures, "label-errors", markdown)
    echo(markdown)
