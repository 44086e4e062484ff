"""`flywheel bench simulate`: a simulated annotator labels a real dataset in a real Label Studio.

For each order it creates a fresh project (its own registered model and MLflow experiment), plays
the annotator with `components.studies.simulator`, and runs the real flywheel flow every K labels. Writes a
CSV per order, the learning and acceptance curves (PNG) beside bench/RESULTS.md, and the summary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.results import BENCH, CATALOG, record, seed_figures
from components.studies.datasets import (
    DETECTION, OBJECT_SETS, PACKAGED, PHOTO_DETECTION, PHOTO_SEGMENTATION, SEGMENTATION, LabeledImage, materialize,
)
from components.tasks.objects import parse_target
from components.loop import train as training
from components.loop.publish import label_next, write_back
from components.loop.workspace import Workspace, open_workspace
from components.core.labeling_config import load_labeling_config, with_labels
from components.core.params import load_params
from components.core.settings import Settings
from components.studies.simulator import HeldOut, Outcome, Retraining, Step, plot_curves, simulate, split_pool, write_csv

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
    seeds: int = 1  # boxes and masks: seeds seed, seed + 1, ... (each its own draw of pool and held-out set)
    images: str | None = None  # a COCO file's image folder (its file_names are relative to it)

    @property
    def dataset_name(self) -> str:
        """The dataset's short name (a folder's or file's base name), for file names and titles."""
        return self.dataset if self.dataset in (*PACKAGED, *OBJECT_SETS) else Path(self.dataset).stem


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


def dataset_labels(images: Sequence[LabeledImage], task: str) -> list[str]:
    """The label set a simulated project gets: the dataset's classes (of its images, or of its objects)."""
    if task == "classification":
        classes = {i.label for i in images}
    else:
        classes = {box["label"] for i in images for box in parse_target(i.label)["boxes"]}
    return sorted(classes, key=lambda x: (len(x), x))


def background_retraining(ws: Workspace) -> Retraining | None:
    """`flywheel serve`'s background retrain for the simulator (when `retrain.growth` is on): the same due check,
    training from scratch (with `retrain.threads`) and judge as `flows.retrain.background_retrain`, split so the
    simulator can hold the model back until the person has labeled for as long as it trained; a new champion's
    pre-annotations are then written as the iteration `flywheel serve` starts for them does."""
    if not ws.params.retrain.growth:
        return None

    def train() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(ws.params.retrain.threads)  # as `flywheel serve`'s child trains it
        try:
            return training.train(ws, training.retrain_snapshot(ws), ws.params.train.architecture, progress=False, background=True)
        finally:
            torch.set_num_threads(threads)

    def land(trained: Any) -> str:
        promotion = training.register(ws, trained)
        if promotion.promoted:
            write_back(ws, promotion.champion, ws.data.latest(), trained.model)
        against = f" vs {promotion.champion_score:.3f}" if promotion.champion_score is not None and not promotion.promoted else ""
        return (f"{promotion.candidate.model_version} ({trained.metrics['train_images']:.0f} images, {ws.task.metric_title} "
                f"{promotion.candidate_score:.3f}{against}) {'promoted' if promotion.promoted else 'not promoted'}")

    return Retraining(due=lambda: training.retrain_snapshot(ws) is not None, train=train, land=land)


def run_simulation(
    settings: Settings, scratch: Path, config: SimulationConfig, out_dir: Path = BENCH, echo=print
) -> list[Outcome]:
    """Simulate each order on its own fresh project against the stack in `settings`; CSVs go to `out_dir`."""
    from flows.flywheel import flywheel_iteration
    from flows.pretrain import pretrain

    images = materialize(config.dataset, scratch / "datasets", limit=config.pool + config.held_out, seed=config.seed,
                         masks=config.task == "segmentation", images_dir=Path(config.images) if config.images else None)
    photos = config.dataset in (PHOTO_DETECTION, PHOTO_SEGMENTATION)
    overrides = load_params(ROOT / "params.yaml").demo.of(config.task, photos).params if config.task != "classification" else None
    labels = dataset_labels(images, config.task)
    pool, held_out = split_pool(images, config.held_out, config.seed)
    strategy = {"detection": "boxes", "segmentation": "masks"}.get(config.task)
    costs = load_params(ROOT / "params.yaml").strategy.effort_costs(strategy) if strategy else None
    outcomes = []
    for order in config.orders:
        run = f"sim-{config.dataset_name}-{order}-{uuid.uuid4().hex[:6]}"
        params_path = scratch_params(run, scratch, labels, overrides)
        ws = open_workspace(settings, load_params(params_path), create_project=True)
        ws.label_studio.import_images(ws.project, [i.path for i in pool])
        truth = {i.path.name: i.label for i in pool}
        if strategy and ws.params.pretrain.enabled:  # as `flywheel serve` does in the background before the first labels
            # (classification's pretrained runs are `bench every-image`'s)
            pretrained = pretrain(str(params_path), progress=False)
            if pretrained.get("pretrained"):
                echo(f"[{order} seed {config.seed}] pretrained on {pretrained['pool_images']} images in {pretrained['seconds']:.0f} s")
        evaluation = HeldOut(held_out, ws.task, ws.project.config.labels, ws.params.train.image_size)
        metric = ws.task.metric

        def show(step: Step) -> None:
            accuracy = "-" if step.score is None else f"{step.score:.3f}"
            acceptance = "-" if step.acceptance is None else f"{step.acceptance:.2f}"
            kept = f"  objects kept {step.kept}/{step.objects}" if step.objects else ""
            echo(f"[{order} seed {config.seed}] {step.labels:4d} labels  held-out {metric} {accuracy}  accepted {acceptance}{kept}  "
                 f"iteration {step.iteration_s:.1f}s" + (f"  [{step.retrain}]" if step.retrain else ""))

        outcome = simulate(
            ws.label_studio, ws.project, truth, evaluation, ws.models,
            run_iteration=lambda: flywheel_iteration(str(params_path)),
            order=order, budget=config.budget, every=config.every, seed=config.seed,
            next_tasks=lambda: label_next(ws), on_step=show, costs=costs,
            retraining=background_retraining(ws) if costs else None,
        )
        write_csv(outcome, out_dir / f"simulate_{config.dataset_name}_{order}{f'_seed{config.seed}' if strategy else ''}.csv")
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


OBJECT_FIGURES = {  # dataset -> the prefix of its figures
    DETECTION: "det", SEGMENTATION: "seg", PHOTO_DETECTION: "photo_det", PHOTO_SEGMENTATION: "photo_seg",
}
OBJECT_SCORES = {  # task -> (the score's figure after the prefix, its title, the secondary score's title)
    "detection": ("map50_200", "box mAP@0.5", "box mAP@0.5:0.95"),
    "segmentation": ("mask_map50_200", "mask mAP@0.5", "mask mAP@0.5:0.95"),
}


def _at_200(outcome: Outcome) -> Step:
    return next((s for s in outcome.steps if s.labels >= 200), outcome.steps[-1])


def per_seed_objects(runs: dict[int, Outcome], task: str) -> dict[str, list[float]]:
    """The random order's figures (after the prefix), one value per seed in seed order; a seed that has
    no value for a figure (e.g. no suggestion shown in the window) leaves that figure out."""
    score = OBJECT_SCORES[task][0]
    wanted = {
        score: lambda o: _at_200(o).score,
        "acceptance_at_10pct": lambda o: o.acceptance_between(0.10, 0.20),
        "objects_kept_at_10pct": lambda o: o.objects_kept_between(0.10, 0.20),
        "effort_saved_at_10pct": lambda o: o.effort_saved_between(0.10, 0.20),
        "iteration_s_200": lambda o: _at_200(o).iteration_s,
    }
    values = {name: [read(runs[seed]) for seed in sorted(runs)] for name, read in wanted.items()}
    return {name: [float(v) for v in vs] for name, vs in values.items() if all(v is not None for v in vs)}


def summarize_objects(
    config: SimulationConfig, runs: dict[int, list[Outcome]], out_dir: Path = BENCH
) -> tuple[dict[str, Any], str]:
    """The dataset's figures (random order: the mean of the per-seed values, their sd and the values)
    and its RESULTS.md section; plots go to `out_dir`.

    Args:
        config: What was simulated.
        runs: Seed -> that seed's outcomes, one per order.
    """
    from components.studies.simulator import plot_objects

    prefix = OBJECT_FIGURES.get(config.dataset, config.dataset_name)
    score_figure, score_name, secondary_name = OBJECT_SCORES[config.task]
    name = config.dataset_name
    learning, acceptance = out_dir / f"simulate_{name}_learning.png", out_dir / f"simulate_{name}_acceptance.png"
    objects_png = out_dir / f"simulate_{name}_objects.png"
    every = [replace(o, order=f"{o.order}, seed {seed}") for seed, outcomes in sorted(runs.items()) for o in outcomes]
    plot_curves(every, learning, acceptance, f"{name}, pool {config.pool}, every {config.every} labels",
                score_name=score_name, secondary_name=secondary_name)
    plot_objects(every, objects_png, f"{name}, pool {config.pool}, every {config.every} labels")
    random_runs = {seed: o for seed, outcomes in runs.items() for o in outcomes if o.order == "random"}
    figures: dict[str, Any] = {}
    for figure, values in per_seed_objects(random_runs, config.task).items():
        figures.update(seed_figures(f"{prefix}_{figure}", values))
    lines = []
    for label, outcome in ((o.order, o) for o in every):
        at_200 = _at_200(outcome)
        cells = [at_200.score, at_200.secondary_score, outcome.acceptance_between(0.10, 0.20),
                 outcome.objects_kept_between(0.10, 0.20), outcome.effort_saved_between(0.10, 0.20)]
        shown = sum(s.shown for s in outcome.steps)
        accepted = sum(s.accepted for s in outcome.steps)
        lines.append(f"| {label} | {at_200.labels} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
                     + f" | {accepted}/{shown} | {at_200.iteration_s:.1f} s |")

    def mean(key: str) -> str:
        return (f"**{figures[key]:.3f}** (sd {figures[key + '_sd']:.3f} over {len(figures[key + '_seeds'])} seeds)"
                if figures.get(key + "_sd") is not None else (f"**{figures[key]:.3f}** (one seed)" if key in figures else "not measured"))

    params = load_params(ROOT / "params.yaml")
    costs = params.strategy.effort_costs("boxes" if config.task == "detection" else "masks")
    photos = config.dataset in (PHOTO_DETECTION, PHOTO_SEGMENTATION)
    demo = params.demo.of(config.task, photos).params
    train, pretrain = {**params.train.model_dump(), **demo.get("train", {})}, {**params.pretrain.model_dump(), **demo.get("pretrain", {})}
    recipe = (f"The recipe (params.yaml `demo.{config.task}{'.photo' if photos else ''}`): `{train['architecture']}` at "
              f"{train['image_size']} px, the first model {train['max_steps']} steps from scratch at lr {train['lr']:g}, each later "
              f"iteration {train['finetune_steps']} steps fine-tuning the champion at {train['finetune_lr']:g}; copy-paste "
              f"{train['copy_paste']:g}; self-supervised pretraining {'on' if pretrain['enabled'] else 'off'}. How it was chosen: "
              f"`docs/studies/{'photo-choice' if photos else config.task.replace('detection', 'detector').replace('segmentation', 'segmenter') + '-choice'}.md`.")
    retrain = {**params.retrain.model_dump(), **demo.get("retrain", {})}
    if retrain["growth"]:
        events = "; ".join(f"{o.order}: {s.retrain}" for o in every for s in o.steps if s.retrain) or "none started"
        recipe += (f" A background retrain from scratch ({retrain['steps'] or train['max_steps']} steps) each time the labeled"
                   f" set grew {retrain['growth']:g}x, played in the person's time (trained at once, shown once the annotation"
                   f" seconds since covered its training seconds): {events}.")
    if config.task == "detection":
        title, what = "object detection (`flywheel bench simulate --task detection`)", "training the CenterNet detector"
        kept = "when every box matches (IoU >= 0.5, same class, nothing missing, nothing extra)"
        match = "IoU >= 0.5 and the same class; a box at IoU >= 0.3, or of the wrong class, is adjusted"
    else:
        title, what = "instance segmentation (`flywheel bench simulate --task segmentation`)", "training the mask CenterNet"
        kept = "when every mask matches a true one (mask IoU >= 0.8, same class, nothing missing, nothing extra)"
        match = "mask IoU >= 0.8 and the same class; a mask at IoU >= 0.5, or of the wrong class, is corrected"
    markdown = f"""## Simulated annotator, {title}

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), against a fresh embedded stack,
over {len(runs)} seed(s) (each seed its own draw of the pool and the held-out set, and its own random
order). Dataset `{name}`: a pool of {config.pool} images imported as tasks and a fixed held-out set of
{config.held_out} never imported; budget {config.budget} labels, a real flywheel iteration (the Prefect
flow: snapshot, DVC, {what}, registry, write-back of every unlabeled task) every {config.every} labels.
The simulated person keeps a pre-annotated image unchanged {kept}, and otherwise draws the truth.
{recipe}

Object by object, each block also counts what the person does with each suggestion: a true object
whose suggestion is kept as it is ({match}), suggestions deleted, objects drawn from nothing.
**Effort saved** = 1 - annotation seconds with the suggestions / seconds drawing every object, with
params.yaml's per-action times: draw {costs.draw:g} s, verify (keep) {costs.verify:g} s, adjust {costs.adjust:g} s
after verifying, delete {costs.delete:g} s (`strategy.seconds_per_object`, `strategy.seconds_per_action`,
cited there). Counting every adjustment as a redraw makes it a lower bound.

| order, seed | labels | held-out {score_name} | {secondary_name} | images accepted, 10-20% labeled | objects kept, 10-20% | effort saved, 10-20% | accepted / shown, all | that iteration |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Random order, mean of the per-seed values: `{prefix}_{score_figure}` {mean(f"{prefix}_{score_figure}")};
`{prefix}_objects_kept_at_10pct` (true objects whose suggestion was kept, while 10-20% of the pool was
labeled) {mean(f"{prefix}_objects_kept_at_10pct")}; `{prefix}_effort_saved_at_10pct` {mean(f"{prefix}_effort_saved_at_10pct")};
`{prefix}_acceptance_at_10pct` (whole images accepted unchanged) {mean(f"{prefix}_acceptance_at_10pct")};
`{prefix}_iteration_s_200` (the whole iteration after the 200th label, training included) {mean(f"{prefix}_iteration_s_200")}.

Plots (one line per order and seed):
![learning curve]({learning.name}) ![acceptance curve]({acceptance.name})
![objects kept and effort saved per block]({objects_png.name})
CSV per order and seed: `bench/simulate_{name}_<order>_seed<n>.csv` (one row per block of K labels,
with its object counts and seconds).
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
    seeds = list(range(config.seed, config.seed + config.seeds)) if config.task != "classification" else [config.seed]
    if config.dataset not in (*PACKAGED, *OBJECT_SETS):  # a user's own: a missing image is said before any server starts
        materialize(config.dataset, out_dir, masks=config.task == "segmentation", images_dir=Path(config.images) if config.images else None)
    runs: dict[int, list[Outcome]] = {}
    with throwaway_stack() as (settings, scratch):
        for seed in seeds:
            runs[seed] = run_simulation(settings, scratch, replace(config, seed=seed), out_dir=out_dir, echo=echo)
    if config.task == "classification":
        figures, markdown = summarize(config, runs[config.seed], out_dir=out_dir)
    else:
        figures, markdown = summarize_objects(config, runs, out_dir=out_dir)
    if benchmark:
        record(figures, name, markdown, seeds=seeds)
    else:  # classification's figures come from `flywheel bench every-image` (pretrained, several seeds)
        (out_dir / "summary.md").write_text(markdown)
        echo(f"not a figure of bench/results.json; written to {out_dir}")
    echo(markdown)
