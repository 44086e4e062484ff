"""A simulated annotator against a real Label Studio: does flywheel turn labeling into correcting?

The simulator knows the ground truth; Label Studio and the loop do not. It takes the next task in
the chosen order, reads the pre-annotation shown on it (if any), accepts it when the task type says
it agrees with the truth (the same class; every box matched at IoU >= 0.5 with the same class,
nothing missing, nothing extra) and otherwise draws the truth, and every K labels runs a real
flywheel iteration. After each iteration it scores the champion on a fixed held-out set that is
never imported, let alone labeled.

For boxes and masks it also counts, object by object, what the person does with each suggestion
(`TaskType.edits`: kept, adjusted, deleted, drawn) and what that costs in seconds against drawing
every object (`components.core.effort`): the work saved, which a whole-image acceptance hides.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.studies.datasets import LabeledImage
from components.adapters.label_studio import LabelStudio, Project
from components.adapters.registry import ModelRegistry, RegisteredModel
from components.core.effort import EffortCosts, Edits
from components.tasks import Scores, TaskType, task_type_of

ORDERS = ("random", "suggested")


@dataclass(frozen=True)
class Step:
    """The state after one block of K labels and the iteration that followed."""

    labels: int
    fraction_labeled: float
    score: float | None  # the task type's score on the held-out set (accuracy, box mAP@0.5)
    secondary_score: float | None  # macro-F1, box mAP@0.5:0.95
    shown: int
    accepted: int
    acceptance: float | None
    iteration_s: float
    champion: str | None
    preannotation_accuracy: float | None = None  # after the first block: the shown pre-annotations that equal the truth
    objects: int = 0  # true objects in the block's images (boxes and masks)
    kept: int = 0  # ... whose suggested object the person kept as it is
    adjusted: int = 0  # ... whose suggestion was near and fixed
    deleted: int = 0  # suggested objects that matched nothing
    drawn: int = 0  # true objects drawn from nothing
    seconds: float = 0.0  # annotation seconds of the block, with its suggestions
    seconds_without: float = 0.0  # the same objects drawn from nothing
    retrain: str = ""  # a background retrain started or landed in this block (`Retraining`)


@dataclass(frozen=True)
class Outcome:
    """A whole simulation: its steps and the figures derived from them."""

    steps: tuple[Step, ...]
    pool: int
    order: str

    def _between(self, low: float, high: float) -> list[Step]:
        """The blocks labeled while the labeled fraction was in [low, high) (when each block began)."""
        starts = [0.0, *(s.fraction_labeled for s in self.steps)][: len(self.steps)]
        return [step for step, start in zip(self.steps, starts, strict=True) if low <= start < high]

    def acceptance_between(self, low: float, high: float) -> float | None:
        """Suggestions accepted unchanged / suggestions shown, over labels made while the labeled
        fraction was in [low, high)."""
        steps = self._between(low, high)
        shown = sum(s.shown for s in steps)
        return sum(s.accepted for s in steps) / shown if shown else None

    def objects_kept_between(self, low: float, high: float) -> float | None:
        """True objects whose suggestion was kept as it is / true objects, over those labels."""
        steps = self._between(low, high)
        objects = sum(s.objects for s in steps)
        return sum(s.kept for s in steps) / objects if objects else None

    def effort_saved_between(self, low: float, high: float) -> float | None:
        """1 - annotation seconds with the suggestions / seconds drawing every object, over those labels."""
        steps = self._between(low, high)
        without = sum(s.seconds_without for s in steps)
        return 1.0 - sum(s.seconds for s in steps) / without if without else None

    @property
    def final_score(self) -> float | None:
        scored = [s.score for s in self.steps if s.score is not None]
        return scored[-1] if scored else None

    def labels_to_reach(self, score: float) -> int | None:
        """Labels done when the held-out score first reached `score`."""
        return next((s.labels for s in self.steps if s.score is not None and s.score >= score), None)


def split_pool(images: Sequence[LabeledImage], held_out: int, seed: int) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """(pool to import and label, fixed held-out set), drawn once with `seed`."""
    shuffled = list(images)
    random.Random(seed).shuffle(shuffled)
    return shuffled[held_out:], shuffled[:held_out]


class HeldOut:
    """The held-out images, scored against each champion once (by the task type, as validation is)."""

    def __init__(self, images: Sequence[LabeledImage], task_type: TaskType, labels: Sequence[str], image_size: int):
        manifest = pd.DataFrame({"image": [str(i.path.resolve()) for i in images], "label": [i.label for i in images], "split": "val"})
        data = task_type.datamodule(Path("/"), manifest, labels, image_size, 1, augment=False)  # val only: nothing to train
        data.setup()
        self.val_set = data.val_set
        self.task_type = task_type
        self.labels = list(labels)
        self._scores: dict[str, Scores] = {}

    def score(self, registry: ModelRegistry, champion: RegisteredModel) -> Scores:
        if champion.model_version not in self._scores:
            self._scores[champion.model_version] = self.task_type.evaluate(registry.load(champion), self.val_set, self.labels)
        return self._scores[champion.model_version]


def balanced_tasks(ls: LabelStudio, project: Project, truth: dict[str, str], count: int, rng: random.Random) -> list[int]:
    """`count` unlabeled task ids cycling over the true targets (so every class gets labels early)."""
    tasks = list(ls.unlabeled_tasks(project.id).items())
    rng.shuffle(tasks)
    by_class: dict[str, list[int]] = {}
    for task_id, data in tasks:
        by_class.setdefault(truth[data["filename"]], []).append(task_id)
    depth = max(map(len, by_class.values()), default=0)
    return [ids[i] for i in range(depth) for ids in by_class.values() if i < len(ids)][:count]


def label_balanced(
    ls: LabelStudio, project: Project, truth: dict[str, str], count: int, rng: random.Random
) -> list[int]:
    """A person labels `count` unlabeled tasks correctly, cycling over the true targets (so every
    class gets labels early). Used to set up benchmarks and tests. Returns the task ids labeled."""
    order = balanced_tasks(ls, project, truth, count, rng)
    task_type = task_type_of(project.config)
    for task_id in order:
        ls.annotate(task_id, task_type.result_of(truth[ls.task(task_id)["data"]["filename"]], project.config))
    return order


def shown_prediction(task: dict[str, Any], model_version: str) -> dict[str, Any] | None:
    """The pre-annotation a person sees on a task: the prediction of the project's model version."""
    return next((p for p in task.get("predictions") or [] if p.get("model_version") == model_version), None)


def preannotation_accuracy(ls: LabelStudio, project: Project, truth: dict[str, str]) -> float | None:
    """The share of unlabeled tasks whose shown pre-annotation equals the truth (None before the first model):
    what a person who accepted every suggestion would get right."""
    version = ls.shown_model_version(project.id)
    if not version:
        return None
    task_type = task_type_of(project.config)
    right = total = 0
    for data, predictions in ls.untouched_predictions(project.id).values():
        shown = next((p for p in predictions if p["model_version"] == version), None)
        total += 1
        if shown is not None and task_type.agree(shown["result"], task_type.result_of(truth[data["filename"]], project.config), project.config):
            right += 1
    return right / total if total else None


@dataclass(frozen=True)
class Retraining:
    """The background retrain (`retrain.growth`), played in the person's time: `flywheel serve` trains it beside
    the labeling, so its model arrives only after the person has labeled for as long as it trained.

    After each iteration `due()` says whether one starts; `train()` then trains it at once and its result is
    held back; `land(trained)` registers it, lets the judge decide and writes a new champion's pre-annotations
    (returns a few words on the outcome), once the annotation seconds since (`costs`) cover its training
    seconds plus those of the iterations meanwhile (the retrain waits while one runs). The person sees the new
    pre-annotations once the annotation seconds since cover the seconds `land` took too. One at a time.
    """

    due: Callable[[], bool]
    train: Callable[[], Any]
    land: Callable[[Any], str]


def simulate(
    ls: LabelStudio,
    project: Project,
    truth: dict[str, str],
    held_out: HeldOut,
    registry: ModelRegistry,
    run_iteration: Callable[[], Any],
    order: str,
    budget: int,
    every: int,
    seed: int = 0,
    next_tasks: Callable[[], list[int]] | None = None,
    on_step: Callable[[Step], None] = lambda step: None,
    first_block: Sequence[int] = (),
    costs: EffortCosts | None = None,
    retraining: Retraining | None = None,
) -> Outcome:
    """Play the annotator for `budget` labels, running an iteration every `every` labels.

    Args:
        ls: Label Studio.
        project: A fresh project whose tasks carry `filename` (the key into `truth`).
        truth: File name -> the true target (a class, or boxes as JSON); known only here.
        held_out: The never-labeled evaluation set.
        registry: Where the champion lives.
        run_iteration: Runs one real flywheel iteration.
        order: "random", or "suggested": the tasks of flywheel's "Label next" tab first, in its
            order (`next_tasks`), then random ones when it holds fewer than a block (before the
            first model, or when the tab is short).
        budget: How many labels to make.
        every: Labels between iterations (K).
        seed: For the random order.
        next_tasks: Task ids in flywheel's recommended order (for "suggested").
        on_step: Called after each step (progress display).
        first_block: Task ids labeled first, in place of the order's first block (e.g. 2 per class);
            after that block, the pre-annotation accuracy on every unlabeled task is measured.
        costs: Seconds per action on one object (boxes and masks): the blocks' annotation seconds.
        retraining: The background retrain, timed by the annotation seconds (needs `costs`).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if retraining is not None and costs is None:
        raise ValueError("a background retrain is timed by the annotation seconds: pass `costs`")
    pending: list[Any] | None = None  # a retrain trained and held back: [its result, the annotation seconds it still needs]
    showing = 0.0  # the annotation seconds until a landed retrain's pre-annotations are written
    task_type = task_type_of(project.config)
    unlabeled = ls.unlabeled_tasks(project.id)
    pool = len(unlabeled)
    random_order = sorted(unlabeled)
    random.Random(seed).shuffle(random_order)
    done: set[int] = set()
    steps: list[Step] = []
    labels = 0
    while labels < budget and len(done) < pool:
        recommended = (next_tasks() if order == "suggested" and next_tasks else []) + random_order
        queue = list(dict.fromkeys(t for t in recommended if t not in done))[: min(every, budget - labels)]
        if not steps and first_block:
            queue = list(first_block)
        shown = accepted = 0
        edits = Edits()
        events = []
        model_version = ls.shown_model_version(project.id)
        for position, task_id in enumerate(queue, 1):
            task = ls.task(task_id)
            result = task_type.result_of(truth[task["data"]["filename"]], project.config)
            suggestion = shown_prediction(task, model_version) if model_version else None
            image = task_type.edits(suggestion["result"] if suggestion else [], result, project.config) or Edits()
            edits += image
            if suggestion is not None:
                shown += 1
                if task_type.agree(suggestion["result"], result, project.config):
                    accepted += 1
                    result = suggestion["result"]  # accepted unchanged
            ls.annotate(task_id, result, parent_prediction=suggestion["id"] if suggestion else None)
            done.add(task_id)
            if retraining is not None and costs is not None:
                seconds = image.seconds(costs)
                if showing > 0 and (showing := showing - seconds) <= 0:  # its pre-annotations written: the next images see them
                    model_version = ls.shown_model_version(project.id)
                if pending is not None:
                    pending[1] -= seconds
                if pending is not None and pending[1] <= 0:  # trained meanwhile in the background
                    began = time.perf_counter()
                    events.append(f"retrain landed after {labels + position} labels: {retraining.land(pending[0])}")
                    showing, pending = time.perf_counter() - began, None
        labels += len(queue)
        start = time.perf_counter()
        run_iteration()
        elapsed = time.perf_counter() - start
        if pending is not None:
            pending[1] += elapsed  # the background retrain waits while an iteration runs
        elif retraining is not None and retraining.due():
            began = time.perf_counter()
            pending = [retraining.train(), time.perf_counter() - began]
            events.append(f"retrain started after {labels} labels ({pending[1]:.0f} s of training)")
        champion = registry.champion()
        scores = held_out.score(registry, champion) if champion else None
        step = Step(
            labels=labels,
            fraction_labeled=labels / pool,
            score=scores.score if scores else None,
            secondary_score=scores.metrics[task_type.secondary_metric] if scores else None,
            shown=shown,
            accepted=accepted,
            acceptance=accepted / shown if shown else None,
            iteration_s=round(elapsed, 2),
            champion=champion.model_version if champion else None,
            preannotation_accuracy=preannotation_accuracy(ls, project, truth) if not steps else None,
            objects=edits.objects, kept=edits.kept, adjusted=edits.adjusted, deleted=edits.deleted, drawn=edits.drawn,
            seconds=round(edits.seconds(costs), 1) if costs else 0.0,
            seconds_without=round(edits.seconds_without(costs), 1) if costs else 0.0,
            retrain="; ".join(events),
        )
        steps.append(step)
        on_step(step)
    return Outcome(steps=tuple(steps), pool=pool, order=order)


def write_csv(outcome: Outcome, path: Path) -> None:
    """One row per step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Step.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(s) for s in outcome.steps)


def plot_curves(
    outcomes: Sequence[Outcome], learning_png: Path, acceptance_png: Path, title: str,
    score_name: str = "accuracy", secondary_name: str = "macro-F1",
) -> None:
    """Learning curve (held-out score and the secondary score vs labels) and acceptance curve, per order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for outcome in outcomes:
        scored = [s for s in outcome.steps if s.score is not None]
        ax.plot([s.labels for s in scored], [s.score for s in scored], marker="o", label=f"{score_name} ({outcome.order})")
        ax.plot([s.labels for s in scored], [s.secondary_score for s in scored], linestyle="--",
                label=f"{secondary_name} ({outcome.order})")
    _save_chart(fig, ax, "held-out score", 1, f"Learning curve: {title}", learning_png)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for outcome in outcomes:
        rated = [s for s in outcome.steps if s.acceptance is not None]
        ax.plot([s.labels for s in rated], [s.acceptance for s in rated], marker="o", label=outcome.order)
    _save_chart(fig, ax, "pre-annotations accepted unchanged", 1.02, f"Acceptance of pre-annotations: {title}", acceptance_png)


def plot_objects(outcomes: Sequence[Outcome], path: Path, title: str) -> None:
    """Per block of K labels: the share of true objects whose suggestion was kept, and the effort saved
    (1 - seconds with suggestions / seconds drawing everything), one line per outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (kept_ax, saved_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for outcome in outcomes:
        blocks = [s for s in outcome.steps if s.objects]
        labels = [s.labels for s in blocks]
        kept_ax.plot(labels, [s.kept / s.objects for s in blocks], marker="o", label=outcome.order)
        saved_ax.plot(labels, [1 - s.seconds / s.seconds_without if s.seconds_without else 0.0 for s in blocks],
                      marker="o", label=outcome.order)
    for ax, ylabel, low in ((kept_ax, "true objects whose suggestion was kept", 0), (saved_ax, "effort saved", -0.5)):
        ax.set_xlabel("labels done (the block ending there)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(low, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Objects kept and effort saved per block: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save_chart(fig: Any, ax: Any, ylabel: str, top: float, title: str, path: Path) -> None:
    """Finish a chart of curves against the labels done (y from 0 to `top`) and write it to `path`."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("labels done")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
