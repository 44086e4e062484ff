"""`flywheel bench simulate`: a simulated annotator labels a real dataset in a real Label Studio.

For each order it creates a fresh project (its own registered model and MLflow experiment), plays
the annotator with `components.studies.simulator`, and runs the real flywheel flow every K labels. Writes a
CSV per order, the learning and acceptance curves (PNG) beside bench/RESULTS.md, and the summary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bench.results import BENCH, CATALOG, record
from components.studies.datasets import DETECTION, PACKAGED, SEGMENTATION, materialize
from components.loop.publish import label_next
from components.loop.workspace import open_workspace
from components.core.labeling_config import load_labeling_config, with_labels
from components.core.params import load_params
from components.core.settings import Settings
from components.studies.simulator import HeldOut, Outcome, Step, plot_curves, simulate, split_pool, write_csv

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate (defaults sized for `make bench` on a 2-core CPU)."""

    dataset: str = "mnist"
    orders: tuple[str, ...] = ("random", "suggested")
    pool: int = 1000
    held_out: int = 500
    budget: int = 300
    every: int = 20
    seed: int = 0
    task: str = "classification"

    @property
    def dataset_name(self) -> str:
        """The dataset's short name (a folder's or file's base name), for file names and titles."""
        return self.dataset if self.dataset in (*PACKAGED, DETECTION, SEGMENTATION) else Path(self.dataset).stem


def scratch_params(run: str, scratch: Path, labels: Sequence[str] | None, overrides: dict[str, dict] | None = None) -> Path:
    """params.yaml (with `overrides`, e.g. the detection demo's) and a fresh project, model name and
    experiment; every block of K labels trains. `labels` replaces the config's label set."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in (overrides or {}).items():
        raw[section] = {**raw[section], **values}
    config = load_labeling_config(ROOT / raw["project"]["config"])
    config_path = scratch / f"{run}.xml"
    config_path.write_text((with_labels(config, list(labels)) if labels else config).xml)
    raw["project"] = {"title": run, "config": str(config_path)}
    raw["poll"]["min_new_annotations"] = 1
    raw["registry"] = {"model_name": run, "experiment": run}
    path = scratch / f"{run}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_simulation(
    settings: Settings, scratch: Path, config: SimulationConfig, out_dir: Path = BENCH, echo=print
) -> list[Outcome]:
    """Simulate each order on its own fresh project against the stack in `settings`; CSVs go to `out_dir`."""
    from flows.flywheel import flywheel_iteration

    images = materialize(config.dataset, scratch / "datasets", limit=config.pool + config.held_out, seed=config.seed,
                         masks=config.task == "segmentation")
    overrides = load_params(ROOT / "params.yaml").demo.of(config.task).params if config.task != "classification" else None
    # classification: the dataset's classes; detection, segmentation: the config's label set
    labels = sorted({i.label for i in images}, key=lambda x: (len(x), x)) if config.task == "classification" else None
    pool, held_out = split_pool(images, config.held_out, config.seed)
    outcomes = []
    for order in config.orders:
        run = f"sim-{config.dataset_name}-{order}-{uuid.uuid4().hex[:6]}"
        params_path = scratch_params(run, scratch, labels, overrides)
        ws = open_workspace(settings, load_params(params_path), create_project=True)
        ws.label_studio.import_images(ws.project, [i.path for i in pool])
        truth = {i.path.name: i.label for i in pool}
        evaluation = HeldOut(held_out, ws.task, ws.project.config.labels, ws.params.train.image_size)
        metric = ws.task.metric

        def show(step: Step) -> None:
            accuracy = "-" if step.score is None else f"{step.score:.3f}"
            acceptance = "-" if step.acceptance is None else f"{step.acceptance:.2f}"
            echo(f"[{order}] {step.labels:4d} labels  held-out {metric} {accuracy}  accepted {acceptance}  iteration {step.iteration_s:.1f}s")

        outcome = simulate(
            ws.label_studio, ws.project, truth, evaluation, ws.models,
            run_iteration=lambda: flywheel_iteration(str(params_path)),
            order=order, budget=config.budget, every=config.every, seed=config.seed,
            next_tasks=lambda: label_next(ws), on_step=show,
        )
        write_csv(outcome, out_dir / f"simulate_{config.dataset_name}_{order}.csv")
        outcomes.append(outcome)
    return outcomes


def summarize(
    config: SimulationConfig, outcomes: list[Outcome], out_dir: Path = BENCH
) -> tuple[dict[str, float], str]:
    """results.json figures (for the random order) and the RESULTS.md section; plots go to `out_dir`."""
    name = config.dataset_name
    learning, acceptance = out_dir / f"simulate_{name}_learning.png", out_dir / f"simulate_{name}_acceptance.png"
    plot_curves(outcomes, learning, acceptance, f"{name}, pool {config.pool}, every {config.every} labels")
    figures: dict[str, float] = {}
    lines = []
    for outcome in outcomes:
        final = outcome.final_score
        reach = outcome.labels_to_reach(0.9 * final) if final else None
        at_10 = outcome.acceptance_between(0.10, 0.20)
        shown = sum(s.shown for s in outcome.steps)
        accepted = sum(s.accepted for s in outcome.steps)
        median_iteration = sorted(s.iteration_s for s in outcome.steps)[len(outcome.steps) // 2]
        lines.append(
            f"| {outcome.order} | {outcome.steps[-1].labels} | {final:.3f} | "
            f"{(reach / outcome.pool) if reach else float('nan'):.3f} | "
            f"{at_10 if at_10 is not None else float('nan'):.3f} | {accepted}/{shown} | {median_iteration:.1f} s |"
        )
        if outcome.order == "random" and final is not None:
            figures.update(
                final_accuracy=round(final, 4),
                labels_to_90pct_of_final_acc=round(reach / outcome.pool, 4) if reach else None,
                acceptance_at_10pct=round(at_10, 4) if at_10 is not None else None,
            )
    by_order = {o.order: o for o in outcomes}
    savings_line = ""
    if {"random", "suggested"} <= by_order.keys() and by_order["random"].final_score is not None:
        target = by_order["random"].final_score
        random_needs = by_order["random"].labels_to_reach(target)
        suggested_needs = by_order["suggested"].labels_to_reach(target)
        if random_needs and suggested_needs:
            figures["active_label_savings"] = round(1 - suggested_needs / random_needs, 4)
        savings_line = (
            f"\n`active_label_savings` = 1 - labels the suggested order needed / labels the random order needed to "
            f"reach the random order's final held-out accuracy ({target:.3f}): suggested "
            f"{suggested_needs if suggested_needs else 'did not reach it within the budget'}, random {random_needs}"
            + (f" -> **{figures['active_label_savings']:.2f}** (target >= 0.3).\n" if "active_label_savings" in figures else ".\n")
            + "One seed: read it with the learning curve (`flywheel bench every-image` measures it over several).\n"
        )
    markdown = f"""## Simulated annotator (`flywheel bench simulate`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), one run against a fresh
embedded stack. Dataset `{name}`: a pool of {config.pool} images imported as tasks and a fixed
held-out set of {config.held_out} that is never imported; budget {config.budget} labels, a real
flywheel iteration (the Prefect flow, training included) every {config.every} labels. The simulated
person accepts a pre-annotation when it equals the ground truth and corrects it otherwise.

| order | labels | final held-out accuracy | fraction labeled at 90% of final | acceptance, 10-20% labeled | accepted / shown, all | median iteration |
|---|---|---|---|---|---|---|
{chr(10).join(lines)}

`acceptance_at_10pct` (target >= 0.8; Hasty reports 70%) is the share of pre-annotations accepted
unchanged among those shown while 10-20% of the pool was labeled. The suggested order labels the
tasks of flywheel's "Label next" tab (margin uncertainty x k-center greedy diversity on the
champion's embeddings) first, exactly as a person working from that tab would.
{savings_line}
Plots:
![learning curve]({learning.name}) ![acceptance curve]({acceptance.name})
CSV per order: `bench/simulate_{name}_<order>.csv` (one row per block of K labels).
"""
    return {k: v for k, v in figures.items() if v is not None}, markdown


OBJECT_FIGURES = {  # task -> (figure prefix, name of the score at 200 labels, score title, secondary title)
    "detection": ("det", "det_map50_200", "box mAP@0.5", "box mAP@0.5:0.95"),
    "segmentation": ("seg", "seg_mask_map50_200", "mask mAP@0.5", "mask mAP@0.5:0.95"),
}


def summarize_objects(config: SimulationConfig, outcomes: list[Outcome], out_dir: Path = BENCH) -> tuple[dict[str, float], str]:
    """The det_* / seg_* figures (random order) and their RESULTS.md section; plots go to `out_dir`."""
    prefix, score_figure, score_name, secondary_name = OBJECT_FIGURES[config.task]
    name = config.dataset_name
    learning, acceptance = out_dir / f"simulate_{name}_learning.png", out_dir / f"simulate_{name}_acceptance.png"
    plot_curves(outcomes, learning, acceptance, f"{name}, pool {config.pool}, every {config.every} labels",
                score_name=score_name, secondary_name=secondary_name)
    figures: dict[str, float] = {}
    lines = []
    for outcome in outcomes:
        at_200 = next((s for s in outcome.steps if s.labels >= 200), outcome.steps[-1])
        at_10 = outcome.acceptance_between(0.10, 0.20)
        shown = sum(s.shown for s in outcome.steps)
        accepted = sum(s.accepted for s in outcome.steps)
        lines.append(
            f"| {outcome.order} | {at_200.labels} | {at_200.score or float('nan'):.3f} | {at_200.secondary_score or float('nan'):.3f} | "
            f"{at_10 if at_10 is not None else float('nan'):.3f} | {accepted}/{shown} | {at_200.iteration_s:.1f} s |"
        )
        if outcome.order == "random":
            figures.update({
                score_figure: round(at_200.score, 4) if at_200.score is not None else None,
                f"{prefix}_acceptance_at_10pct": round(at_10, 4) if at_10 is not None else None,
                f"{prefix}_iteration_s_200": at_200.iteration_s,
            })
    if config.task == "detection":
        title = "object detection (`flywheel bench simulate --task detection`)"
        what = "training the CenterNet detector"
        kept = "only when every box matches (IoU >= 0.5, same class, nothing missing, nothing extra) and otherwise draws the right boxes"
        targets = (f"`{score_figure}`: box mAP@0.5 of the champion on the held-out images after 200 labeled images (target\n>= 0.7). "
                   f"`{prefix}_acceptance_at_10pct`: images whose pre-annotation was accepted unchanged among those\nshown while "
                   "10-20% of the pool was labeled (target >= 0.6).")
    else:
        title = "instance segmentation (`flywheel bench simulate --task segmentation`)"
        what = "training the mask CenterNet"
        kept = ("only when every mask matches a true one (mask IoU >= 0.8, same class, nothing missing, nothing extra) "
                "and otherwise paints the true masks (brush RLE)")
        targets = (f"`{score_figure}`: mask mAP@0.5 of the champion on the held-out images after 200 labeled images (target\n>= 0.6). "
                   f"`{prefix}_acceptance_at_10pct`: images whose pre-annotation was accepted unchanged among those\nshown while "
                   "10-20% of the pool was labeled (target >= 0.5).")
    markdown = f"""## Simulated annotator, {title}

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), one run against a fresh
embedded stack. Dataset `{name}`: MNIST digits composited onto 128x128 backgrounds (1-4 objects per
image, varied scale, some overlap, unlabeled distractor strokes; `components/data/composites.py`), a pool
of {config.pool} images imported as tasks and a fixed held-out set of {config.held_out} never imported;
budget {config.budget} labels, a real flywheel iteration (the Prefect flow: snapshot, DVC, {what},
registry, write-back of every unlabeled task) every {config.every} labels. The simulated person accepts
a pre-annotated image {kept}.

| order | labels | held-out {score_name} | {secondary_name} | acceptance, 10-20% labeled | accepted / shown, all | that iteration |
|---|---|---|---|---|---|---|
{chr(10).join(lines)}

{targets} `{prefix}_iteration_s_200`: the whole flywheel iteration after the 200th label, training on
those images included.

The suggested order works from the "Label next" tab (the images with the most borderline object,
diverse by k-center greedy on the model's embeddings): it gets fewer suggestions accepted by
design (those are the images the model is least sure of) and should reach a better model with the
same labels. One seed: consecutive champions move by several points of mAP at these sizes.

Plots:
![learning curve]({learning.name}) ![acceptance curve]({acceptance.name})
CSV per order: `bench/simulate_{name}_<order>.csv`.
"""
    return {k: v for k, v in figures.items() if v is not None}, markdown


def main(config: SimulationConfig, echo=print) -> None:
    """Run the simulation on a throwaway stack; record its figures when it is one of the catalog's benchmarks
    (the demo sets' default runs), else write its CSVs, plots and summary under .flywheel/bench/."""
    from bench.stack import throwaway_stack

    name = f"simulate-{config.dataset_name}"
    benchmark = any(b.name == name for b in CATALOG) and config.task != "classification"
    out_dir = BENCH if benchmark else ROOT / ".flywheel" / "bench" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    with throwaway_stack() as (settings, scratch):
        outcomes = run_simulation(settings, scratch, config, out_dir=out_dir, echo=echo)
    summary = summarize if config.task == "classification" else summarize_objects
    figures, markdown = summary(config, outcomes, out_dir=out_dir)
    if benchmark:
        record(figures, name, markdown, seeds=[config.seed])
    else:  # classification's figures come from `flywheel bench every-image` (pretrained, several seeds)
        (out_dir / "summary.md").write_text(markdown)
        echo(f"not a figure of bench/results.json; written to {out_dir}")
    echo(markdown)
