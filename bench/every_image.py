"""`flywheel bench every-image`: does learning from every image of the project pay, and by how much?

For each dataset (the demo's MNIST and Fashion-MNIST) and each of several seeds (a different draw of
the pool and held-out set, a different annotator order), and for each order (random, suggested), a
fresh project is created on a throwaway stack, its backbone pretrained self-supervised on the whole
pool (the `flywheel-pretrain` flow, as `flywheel serve` runs it in the background), and a simulated
person labels with the real loop (`components.studies.simulator`): the random order starts with 2 labels per
class (the few-shot point), the suggested order with the cold-start "Label next" tab. Figures are means
over seeds with their spread; learning curves are drawn with a band (mean +- one standard deviation).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import BENCH, ROOT, record, seed_figures
from bench.simulate import scratch_params
from components.studies.datasets import PACKAGED, materialize
from components.loop.publish import label_next
from components.loop.workspace import open_workspace
from components.core.params import load_params
from components.core.settings import Settings
from components.studies.simulator import HeldOut, Outcome, Step, balanced_tasks, simulate, split_pool, write_csv

OUT = BENCH / "every_image"
SUFFIX = {"mnist": "", "fashion-mnist": "_fashion"}
TARGETS = {  # figure -> (MNIST target, Fashion-MNIST target)
    "few_shot_accuracy_2pc": (0.8, 0.6), "acceptance_at_10pct": (0.9, 0.75), "final_accuracy": (0.95, 0.82),
    "active_label_savings": (0.3, 0.3),
}


@dataclass(frozen=True)
class Config:
    """What to run (defaults: the issue's figures, ~60 minutes on 2 cores)."""

    datasets: tuple[str, ...] = ("mnist", "fashion-mnist")
    seeds: tuple[int, ...] = (0, 1, 2)
    orders: tuple[str, ...] = ("random", "suggested")
    pool: int = 1000
    held_out: int = 500
    budget: int = 300
    every: int = 20
    per_class: int = 2


@dataclass(frozen=True)
class Run:
    """One simulated project."""

    dataset: str
    seed: int
    order: str
    outcome: Outcome
    pretrain_s: float
    pool_images: int


def run_one(settings: Settings, scratch: Path, config: Config, dataset: str, seed: int, order: str, echo=print) -> Run:
    """Pretrain on a fresh project's pool, then simulate `order` with the real loop."""
    from flows.flywheel import flywheel_iteration
    from flows.pretrain import pretrain

    images = materialize(dataset, scratch / "datasets", limit=config.pool + config.held_out, seed=seed)
    labels = sorted({i.label for i in images}, key=lambda x: (len(x), x))
    pool, held_out = split_pool(images, config.held_out, seed)
    name = f"every-{dataset}-{order}-s{seed}-{uuid.uuid4().hex[:6]}"
    params_path = scratch_params(name, scratch, labels, {"pretrain": {"flip": dataset == "fashion-mnist"}})
    ws = open_workspace(settings, load_params(params_path), create_project=True)
    ws.label_studio.import_images(ws.project, [i.path for i in pool])
    truth = {i.path.name: i.label for i in pool}
    pretrained = pretrain(str(params_path), progress=False)
    echo(f"[{dataset} seed {seed} {order}] pretrained on {pretrained['pool_images']} images in {pretrained['seconds']:.0f} s")
    first = balanced_tasks(ws.label_studio, ws.project, truth, config.per_class * len(labels), random.Random(seed)) if order == "random" else []

    def show(step: Step) -> None:
        score = "-" if step.score is None else f"{step.score:.3f}"
        extra = "" if step.preannotation_accuracy is None else f"  pre-annotations right {step.preannotation_accuracy:.3f}"
        echo(f"[{dataset} seed {seed} {order}] {step.labels:4d} labels  held-out accuracy {score}{extra}")

    outcome = simulate(
        ws.label_studio, ws.project, truth, HeldOut(held_out, ws.task, ws.project.config.labels, ws.params.train.image_size),
        ws.models, run_iteration=lambda: flywheel_iteration(str(params_path), progress=False), order=order,
        budget=config.budget, every=config.every, seed=seed, next_tasks=lambda: label_next(ws), on_step=show,
        first_block=first,
    )
    run = Run(dataset, seed, order, outcome, float(pretrained["seconds"]), int(pretrained["pool_images"]))
    save(run, OUT if config.budget > config.every else ROOT / ".flywheel" / "bench" / "every-image")
    return run


def save(run: Run, folder: Path = OUT) -> None:
    """The run's steps (CSV) and its pretraining (JSON), under bench/every_image/."""
    stem = folder / f"{run.dataset}_{run.order}_seed{run.seed}"
    write_csv(run.outcome, stem.with_suffix(".csv"))
    stem.with_suffix(".json").write_text(json.dumps({"pretrain_s": run.pretrain_s, "pool_images": run.pool_images}))


def mean_curve(outcomes: Sequence[Outcome]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, mean held-out accuracy, standard deviation) over outcomes stepped alike."""
    steps = min(len(o.steps) for o in outcomes)
    labels = np.array([outcomes[0].steps[i].labels for i in range(steps)])
    scores = np.array([[o.steps[i].score if o.steps[i].score is not None else np.nan for i in range(steps)] for o in outcomes])
    return labels, np.nanmean(scores, axis=0), np.nanstd(scores, axis=0)


def _labels_to_reach(labels: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    reached = np.flatnonzero(curve >= target - 1e-9)
    return int(labels[reached[0]]) if len(reached) else None


def _first_model(outcome: Outcome) -> Step | None:
    return next((s for s in outcome.steps if s.score is not None), None)


def per_seed_values(runs: Sequence[Run]) -> tuple[dict[str, list[float]], str]:
    """One dataset's figures as one value per seed (in seed order), and a note on the mean curves.

    Raises:
        ValueError: the orders ran on different seeds (their means would not compare like with like).
    """
    by_order = {o: sorted((r for r in runs if r.order == o), key=lambda r: r.seed) for o in ("random", "suggested")}
    seeds = {o: [r.seed for r in rs] for o, rs in by_order.items() if rs}
    if len({tuple(s) for s in seeds.values()}) > 1:
        raise ValueError(f"every order needs the same seeds for a fair mean: {seeds}")
    rand = [r.outcome for r in by_order["random"]]
    suggested = [r.outcome for r in by_order["suggested"]]
    values: dict[str, list[float]] = {
        "few_shot_accuracy_2pc": [o.steps[0].preannotation_accuracy for o in rand if o.steps[0].preannotation_accuracy is not None],
        "acceptance_at_10pct": [a for o in rand if (a := o.acceptance_between(0.10, 0.20)) is not None],
        "final_accuracy": [o.final_score for o in rand if o.final_score is not None],
        # the suggested order's cold start: its first model (once every class has validate.min_per_class labels)
        "first_model_labels_suggested": [float(first.labels) for o in suggested if (first := _first_model(o))],
        "first_model_accuracy_suggested": [first.score for o in suggested if (first := _first_model(o))],
        "first_model_labels_random": [float(first.labels) for o in rand if (first := _first_model(o))],
        "pretrain_s_per_1k": [r.pretrain_s * 1000 / r.pool_images for r in runs],
    }
    note = ""
    if rand and suggested:
        # per seed: 1 - labels the suggested order needs / labels the random order needs to reach the random
        # order's final accuracy (a run that never reaches it counts all its labels)
        values["active_label_savings"] = [
            1 - (s.labels_to_reach(r.final_score) or labels_done(s)) / (r.labels_to_reach(r.final_score) or labels_done(r))
            for r, s in zip(rand, suggested, strict=True) if r.final_score is not None
        ]
        labels, random_mean, _ = mean_curve(rand)
        s_labels, suggested_mean, _ = mean_curve(suggested)
        target = float(random_mean[-1])
        random_needs = _labels_to_reach(labels, random_mean, target)
        suggested_needs = _labels_to_reach(s_labels, suggested_mean, target)
        if random_needs and suggested_needs:  # a different figure from the mean of the per-seed savings: its own name
            values["active_label_savings_mean_curve"] = [1 - suggested_needs / random_needs]
        note = (f"on the mean curves, random reaches its final {target:.3f} at {random_needs} labels, suggested at "
                f"{suggested_needs if suggested_needs else 'more than the budget'}")
    return {k: v for k, v in values.items() if v}, note


def figures_of(name: str, values: Sequence[float]) -> dict[str, Any]:
    """`name` (the mean of the per-seed values), `name_sd` (their sample standard deviation) and `name_seeds`."""
    if name.startswith("active_label_savings_mean_curve"):  # one value from the mean curves: no spread of its own
        return {name: round(values[0], 4)}
    return seed_figures(name, values)


def labels_done(outcome: Outcome) -> int:
    """Labels done in a run (what "did not reach it" counts as)."""
    return outcome.steps[-1].labels


def plot(runs: Sequence[Run], dataset: str, out: Path) -> None:
    """Learning curves with a band per order (mean +- sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for order in ("random", "suggested"):
        outcomes = [r.outcome for r in runs if r.order == order]
        if not outcomes:
            continue
        labels, mean, sd = mean_curve(outcomes)
        ax.plot(labels, mean, marker="o", label=f"{order} ({len(outcomes)} seeds)")
        ax.fill_between(labels, mean - sd, mean + sd, alpha=0.25)
    ax.set_xlabel("labels done")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Learning curve with a pretrained backbone: {dataset} (band: +-1 sd over seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def summarize(config: Config, runs: Sequence[Run]) -> tuple[dict[str, Any], str]:
    """results.json figures (means of per-seed values, their sd and the per-seed list) and the RESULTS.md section."""
    figures: dict[str, Any] = {}
    rows, notes, plots = [], [], []
    for dataset in sorted({r.dataset for r in runs}, key=lambda d: (d != "mnist", d)):
        mine = [r for r in runs if r.dataset == dataset]
        values, note = per_seed_values(mine)
        suffix = SUFFIX.get(dataset, f"_{dataset}")
        for name, per_seed in values.items():
            key = f"{name}{suffix}"
            figures.update({k: v for k, v in figures_of(key, per_seed).items() if v is not None})
            sd = figures.get(f"{key}_sd")
            target = TARGETS.get(name, (None, None))[0 if dataset == "mnist" else 1]
            seeds = ", ".join(f"{v:.3f}" for v in per_seed)
            rows.append(f"| {dataset} | `{key}` | **{figures[key]:.3f}** | {'-' if sd is None else f'{sd:.3f}'} | {seeds} | "
                        f"{'>= ' + str(target) if target else '-'} |")
        notes.append(f"- {dataset}: {note}." if note else f"- {dataset}: one order only.")
        png = BENCH / f"every_image_{dataset}_learning.png"
        plot(mine, dataset, png)
        plots.append(f"![{dataset} learning curve]({png.name})")
    seeds = sorted({r.seed for r in runs})
    markdown = f"""## Learning from every image (`flywheel bench every-image`)

Per dataset and seed (seeds {', '.join(map(str, seeds))}: a different pool/held-out draw and annotator
order), per order ({', '.join(config.orders)}, each on the same seeds), a fresh project of {config.pool} tasks on a
throwaway embedded stack; its backbone (`conv4`) pretrained with SimCLR on the whole pool by the real
`flywheel-pretrain` flow (params.yaml's `pretrain`; `flip: true` for Fashion-MNIST); then a simulated person
labels {config.budget} tasks with a real flywheel iteration every {config.every} labels, scored on
{config.held_out} held-out images never imported. The random order starts with {config.per_class} labels per
class; `few_shot_accuracy_2pc` is then the share of the unlabeled tasks whose pre-annotation is right. The
suggested order starts from the cold-start "Label next" tab (TypiClust on the pretrained embeddings) and
trains a first model once every class has `validate.min_per_class` labels: `first_model_labels_suggested`
and `first_model_accuracy_suggested` (held-out) say when and how good, beside `first_model_labels_random`.

Every figure is the **mean of its per-seed values**; `<figure>_sd` is their sample standard deviation and
`<figure>_seeds` the values, in seed order. `active_label_savings` = 1 - labels the suggested order needs /
labels the random order needs to reach the random order's final accuracy, per seed (a run that never reaches
it counts all its labels), then averaged; `active_label_savings_mean_curve` is the same read off the mean
curves, a different figure. `pretrain_s_per_1k`: seconds of pretraining per 1,000 pool images, every run.

| dataset | figure | mean | sd over seeds | per seed | target |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(notes)}

{' '.join(plots)}
CSV per run: `bench/every_image/<dataset>_<order>_seed<seed>.csv`.
"""
    return figures, markdown


def main(config: Config = Config(), echo=print) -> None:
    """Run every dataset x seed x order on a throwaway stack, then record the figures of this run alone
    (only the full default protocol records; a shorter run writes its summary under .flywheel/bench/)."""
    from bench.stack import throwaway_stack

    for dataset in config.datasets:  # a dataset that is not installed stops the run now, not after an hour of the others
        if dataset in PACKAGED:
            PACKAGED[dataset]()
    runs = []
    with throwaway_stack() as (settings, scratch):
        for dataset in config.datasets:
            for seed in config.seeds:
                for order in config.orders:
                    runs.append(run_one(settings, scratch, config, dataset, seed, order, echo=echo))
    figures, markdown = summarize(config, runs)
    default = Config()
    if (config.budget, config.pool, config.every, config.orders, config.datasets) == (
            default.budget, default.pool, default.every, default.orders, default.datasets):
        record(figures, "every-image", markdown, seeds=config.seeds)
    else:
        out = ROOT / ".flywheel" / "bench" / "every-image"
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(markdown)
        echo(f"not the full protocol: not a figure of bench/results.json; written to {out}")
    echo(markdown)
