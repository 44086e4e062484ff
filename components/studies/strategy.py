"""Boxes or masks? The annotation strategies compared on the same images, in annotation hours.

Three strategies: boxes, masks drawn by hand, and masks made with the mask assistant (the person draws
the box and corrects the mask that comes back with clicks: `production.assist.corrected`; the masks it
ends with are the person's, so it trains the same model as masks, on more images per hour). The same
images, labeled as boxes and as instance masks (a mask's box is its tight box, so one set of masks
gives both), are used to train each strategy's model with the loop's own training
(`training.fit_steps`, the task type's architecture) at a few annotation budgets in *hours*: images
are taken in one fixed random order until the budget is spent, each image costing what its objects
cost in that strategy. Each model is scored on the same held-out images by box mAP@0.5 and mask
mAP@0.5 (a box model's mask is its box, filled). A learning curve `ceiling - scale * hours^-exponent`
(`report.fit_curve`) is fitted per strategy, and refitted on parametric bootstrap resamples for the
uncertainty of the hours each needs to reach the target; `verdict` says in one sentence which gets
there sooner and by how many hours, or that it is too early to tell.

Costs per object come from params.yaml (`strategy`), defaulting to published figures; with real
Label Studio annotations, the strategy the project was labeled with is timed by each annotation's
`lead_time` instead. An image's cost with the assistant is what a simulated person spends on its masks
(measured by the caller, which owns the assistant: `from_dataset`'s `assisted`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from components.studies.report.curve import CurveFit, fit_curve

STRATEGIES = ("boxes", "masks", "assisted")
TASK_OF = {"boxes": "detection", "masks": "segmentation", "assisted": "segmentation"}
LABELED_AS = {"boxes": "boxes", "masks": "masks", "assisted": "masks"}  # what each strategy's person ends with
NAMES = {"boxes": "boxes", "masks": "masks drawn by hand", "assisted": "masks with the assistant"}
METRICS = {"box_map50": "box mAP@0.5", "mask_map50": "mask mAP@0.5"}
BOOTSTRAPS = 400
NOISE_FLOOR = 0.02  # the least scatter assumed around a curve: champion-to-champion noise at these sizes
SURE = 0.9  # share of bootstrap refits that must agree on the sooner strategy before it is called
MIN_IMAGES = 4  # a budget buying fewer images than this is not trained


@dataclass(frozen=True)
class Labeled:
    """One image labeled with masks (its boxes follow), and what labeling it costs per strategy.

    Attributes:
        path: The image file.
        target: Its segmentation target (`tasks.objects.make_target` with masks).
        seconds: Strategy -> seconds a person spends labeling it that way (no "assisted" when the
            assistant was not measured on it: that strategy is then left out).
    """

    path: Path
    target: str
    seconds: dict[str, float]


@dataclass(frozen=True)
class StrategyPoint:
    """One strategy's model trained on what `hours` of annotation buy."""

    strategy: str
    hours: float
    images: int
    scores: dict[str, float]


class Measured(NamedTuple):
    """One strategy's points, their hours and scores on one metric, and the curve fitted through them
    (None when it was measured at too few budgets)."""

    strategy: str
    points: list[StrategyPoint]
    hours: np.ndarray
    scores: np.ndarray
    fit: CurveFit | None


def measured(points: Sequence[StrategyPoint], metric: str) -> Iterator[Measured]:
    """Each strategy that has points, in `STRATEGIES` order, on `metric`."""
    for strategy in STRATEGIES:
        mine = [p for p in points if p.strategy == strategy]
        if mine:
            x = np.array([p.hours for p in mine])
            y = np.array([p.scores[metric] for p in mine])
            yield Measured(strategy, mine, x, y, fit_curve(list(x), list(y)))


@dataclass(frozen=True)
class Verdict:
    """Which strategy reaches `target` on `metric` sooner; `hours` per strategy: (median, low, high)
    of the 80% bootstrap interval, None where it does not reach it within the extrapolation;
    `hours_saved`: against the next soonest strategy."""

    metric: str
    target: float
    sentence: str
    sooner: str | None
    hours: dict[str, tuple[float, float, float] | None]
    hours_saved: tuple[float, float, float] | None


def costs_of(target: Mapping[str, Any], seconds_per_object: Mapping[str, float]) -> dict[str, float]:
    """Seconds to label an image's objects as boxes and as masks drawn by hand (a parsed target)."""
    return {strategy: len(target["boxes"]) * float(seconds_per_object[strategy]) for strategy in ("boxes", "masks")}


def target_for(strategy: str, target: str) -> str:
    """A segmentation target as the strategy labels it: boxes drop the masks."""
    if LABELED_AS[strategy] == "masks":
        return target
    parsed = json.loads(target)
    parsed["boxes"] = [{k: v for k, v in box.items() if k != "mask"} for box in parsed["boxes"]]
    return json.dumps(parsed, separators=(",", ":"))


def bought(items: Sequence[Labeled], strategy: str, hours: float) -> list[Labeled]:
    """The images, in order, that `hours` of annotation buy in `strategy`."""
    spent, out = 0.0, []
    for item in items:
        spent += item.seconds[strategy]
        if spent > hours * 3600:
            break
        out.append(item)
    return out


def from_dataset(
    name: str, dest: Path, count: int, seconds_per_object: Mapping[str, float], seed: int = 0, images_dir: Path | None = None,
    assisted: Callable[[Path, Mapping[str, Any]], float] | None = None, progress: Callable[[str], None] = lambda line: None,
) -> list[Labeled]:
    """A dataset with instance masks (the demo's `digit-masks`, or a COCO file with `segmentation`,
    its images in `images_dir` when given), each image costed with the published per-object figures,
    and with `assisted` ((image, parsed target) -> seconds with the mask assistant) when given."""
    from components.studies.datasets import materialize

    from components.core.errors import SettingsError

    items = materialize(name, dest, limit=count, seed=seed, masks=True, images_dir=images_dir)
    out = []
    for item in items:
        try:
            target = json.loads(item.label)
            has_masks = all("mask" in box for box in target["boxes"])
        except (ValueError, TypeError, KeyError):
            has_masks = False
        if not has_masks:
            raise SettingsError(
                f"Dataset {name!r} has no instance masks ({item.path.name}); use digit-masks or a COCO file whose "
                "annotations have `segmentation`."
            )
        seconds = costs_of(target, seconds_per_object)
        if assisted is not None:
            seconds["assisted"] = assisted(item.path, target)
            if len(out) % 200 == 199:
                progress(f"masks with the assistant: {len(out) + 1} of {len(items)} images simulated")
        out.append(Labeled(item.path, item.label, seconds))
    return out


def split(items: Sequence[Labeled], held_out: int, seed: int = 0) -> tuple[list[Labeled], list[Labeled]]:
    """(images to label, in their given order; held-out images drawn at random), at most a third held out."""
    aside = set(np.random.default_rng(seed).choice(len(items), size=min(held_out, len(items) // 3), replace=False).tolist())
    return [item for i, item in enumerate(items) if i not in aside], [item for i, item in enumerate(items) if i in aside]


def compare(
    items: Sequence[Labeled], held_out: Sequence[Labeled], labels: Sequence[str], params: Any, architectures: Mapping[str, dict[str, Any]],
    progress: Callable[[str], None] = lambda line: None,
) -> tuple[list[StrategyPoint], dict[str, Verdict]]:
    """Train and score every strategy at every budget of `params.hours` (params.yaml `strategy`),
    and judge each metric at `params.target` (the team's `params.metric` first)."""
    from components.tasks.detection import Detection
    from components.tasks.segmentation import Segmentation
    from components.learning.training import fit_steps

    tasks = {"boxes": Detection(), "masks": Segmentation()}
    train = params.train

    def fit(strategy: str, rows: pd.DataFrame) -> torch.nn.Module:
        architecture = params.architectures[LABELED_AS[strategy]]
        return fit_steps(
            tasks[LABELED_AS[strategy]], Path("/"), rows, labels, architecture, architectures.get(architecture, {}),
            image_size=train.image_size, steps=train.steps, batch_size=train.batch_size, lr=train.lr, augment=True, seed=0,
        )

    points = measure(items, held_out, labels, params.hours, fit, train.image_size, progress)
    return points, judge(points, params)


def judge(points: Sequence[StrategyPoint], params: Any) -> dict[str, Verdict]:
    """The verdict on every metric at `params.target`, the team's `params.metric` first."""
    ordered = [params.metric, *(m for m in METRICS if m != params.metric)]
    return {metric: verdict(points, metric, params.target) for metric in ordered}


def held_out_scores(model: torch.nn.Module, val_set: Any) -> dict[str, float]:
    """Box and mask mAP@0.5 of a detection or segmentation model on a segmentation validation set
    (a detection model's masks are its boxes, filled)."""
    from torchmetrics.detection import MeanAveragePrecision

    from components.tasks.objects import detections_of
    from components.tasks.segmentation import paste

    size = model.image_size
    metric = MeanAveragePrecision(iou_type=("bbox", "segm"), iou_thresholds=[0.5])
    model.eval()
    with torch.no_grad():
        for start in range(0, len(val_set), 64):
            images = val_set.images[start : start + 64]
            out = model(images)
            rows, masks = out if isinstance(out, tuple) else (out, None)
            for i, image_rows in enumerate(rows):
                visible = ((image_rows[:, 2] - image_rows[:, 0]) >= 1) & ((image_rows[:, 3] - image_rows[:, 1]) >= 1)
                found = detections_of(image_rows[visible], 0.0)
                if masks is not None:
                    found["masks"] = torch.from_numpy(paste(masks[i][visible], found["boxes"], size, size, size))
                else:
                    filled = torch.zeros(len(found["boxes"]), size, size, dtype=torch.bool)
                    for k, (x1, y1, x2, y2) in enumerate(found["boxes"].round().long().tolist()):
                        filled[k, y1:y2, x1:x2] = True
                    found["masks"] = filled
                metric.update([found], [val_set.targets[start + i]])
    result = metric.compute()
    return {"box_map50": max(float(result["bbox_map_50"]), 0.0), "mask_map50": max(float(result["segm_map_50"]), 0.0)}


def measure(
    items: Sequence[Labeled],
    held_out: Sequence[Labeled],
    labels: Sequence[str],
    hours: Sequence[float],
    train: Callable[[str, pd.DataFrame], torch.nn.Module],
    image_size: int,
    progress: Callable[[str], None] = lambda line: None,
) -> list[StrategyPoint]:
    """Train and score every strategy at every budget of `hours`.

    Args:
        items: The labeled images, in the order a person labels them (a budget buys a prefix).
        held_out: Never trained on; every model is scored on them.
        labels: The label set.
        hours: Annotation budgets.
        train: (strategy, manifest with image/label/split/task_id) -> an inference model.
        image_size: The models' input side.
        progress: Told one line per model.
    """
    from components.tasks.segmentation import Segmentation

    manifest = pd.DataFrame({"image": [str(i.path.resolve()) for i in held_out], "label": [i.target for i in held_out], "split": "val"})
    data = Segmentation().datamodule(Path("/"), manifest, labels, image_size, 1, augment=False)
    data.setup()
    points = []
    for strategy in (s for s in STRATEGIES if items and all(s in i.seconds for i in items)):
        for budget in hours:
            chosen = bought(items, strategy, budget)
            if len(chosen) < MIN_IMAGES:
                progress(f"{strategy}: {budget:g} h buy {len(chosen)} images, fewer than {MIN_IMAGES}: not trained")
                continue
            rows = pd.DataFrame({
                "image": [str(i.path.resolve()) for i in chosen],
                "label": [target_for(strategy, i.target) for i in chosen],
                "split": "train",
                "task_id": range(len(chosen)),
            })
            scores = held_out_scores(train(strategy, rows), data.val_set)
            spent = sum(i.seconds[strategy] for i in chosen) / 3600
            points.append(StrategyPoint(strategy, round(spent, 4), len(chosen), scores))
            progress(f"{strategy}: {spent:.2f} h, {len(chosen)} images -> " + ", ".join(f"{METRICS[k]} {v:.3f}" for k, v in scores.items()))
            if len(chosen) == len(items):
                break  # every image is labeled: more hours buy nothing
    return points


def _hours(value: float) -> str:
    """Hours as a person reads them: two decimals under an hour, one above."""
    return f"{value:.2f}" if abs(value) < 1 else f"{value:.1f}"


def _hours_needed(fit: CurveFit | None, target: float, limit: float) -> float:
    hours = fit.labels_for(target) if fit else None
    return hours if hours is not None and hours <= limit else math.inf


def verdict(points: Sequence[StrategyPoint], metric: str, target: float, extrapolate: float = 3.0, seed: int = 0) -> Verdict:
    """Which strategy reaches `target` on `metric` sooner, with 80% intervals from bootstrap refits.

    A strategy "reaches" the target when its fitted curve does within `extrapolate` times the most
    hours measured for it. The sooner one is named only when it comes out first (before every other
    strategy) in at least `SURE` of the refits; the hours it saves are against the next soonest.
    """
    rng = np.random.default_rng(seed)
    name = METRICS[metric]
    draws: dict[str, np.ndarray] = {}
    best: dict[str, tuple[float, float]] = {}
    few: dict[str, int] = {}  # strategies measured at too few budgets for a curve
    for strategy, mine, x, y, fit in measured(points, metric):
        best[strategy] = (float(y.max()), float(x[y.argmax()]))
        limit = extrapolate * float(x.max())
        if fit is None:
            few[strategy] = len(mine)
            continue
        spread = max(float(np.std(y - np.array([fit.accuracy_at(h) for h in x]), ddof=0)), NOISE_FLOOR)
        fitted = np.array([fit.accuracy_at(h) for h in x])
        draws[strategy] = np.array([
            _hours_needed(fit_curve(list(x), list(np.clip(fitted + rng.normal(0, spread, len(x)), 0, 1))), target, limit)
            for _ in range(BOOTSTRAPS)
        ])

    def interval(values: np.ndarray) -> tuple[float, float, float] | None:
        if np.mean(np.isfinite(values)) <= 0.5:  # the median itself is "not reached"
            return None
        with np.errstate(invalid="ignore"):  # inf (not reached) among the refits: the upper end is then inf
            low, median, high = np.percentile(values, [10, 50, 90])
        return float(median), float(low), float(high) if np.isfinite(high) else math.inf

    hours = {s: interval(v) for s, v in draws.items()}

    def said(strategy: str) -> str:
        h = hours.get(strategy)
        if h is None:
            reached_best, at = best.get(strategy, (0.0, 0.0))
            return f"{NAMES[strategy]} do not reach it within {extrapolate:g}x the hours measured (best {reached_best:.2f} at {_hours(at)} h)"
        upper = f"{_hours(h[2])} h" if math.isfinite(h[2]) else f"beyond {extrapolate:g}x the hours measured"
        return f"{NAMES[strategy]} after {_hours(h[0])} h (80% interval {_hours(h[1])} h to {upper})"

    if few:
        sentence = ("Too early to tell: " + ", ".join(f"{NAMES[s]} were trained at {n} budget(s)" for s, n in few.items())
                    + "; a learning curve needs 3. Label more, or add budgets to strategy.hours.")
        return Verdict(metric, target, sentence, None, hours, None)
    present = [s for s in STRATEGIES if s in draws]
    if len(present) < 2:
        return Verdict(metric, target, f"Too early to tell: only {', '.join(NAMES[s] for s in present) or 'no strategy'} "
                       "could be trained.", None, hours, None)
    if all(hours[s] is None for s in present):
        sentence = (f"Too early to tell: {'neither strategy' if len(present) == 2 else 'no strategy'} reaches {name} {target:g} "
                    f"within {extrapolate:g}x the hours measured ({'; '.join(said(s) for s in present)}). Label more, or set "
                    "strategy.target lower.")
        return Verdict(metric, target, sentence, None, hours, None)
    # in each refit, the strategy that reaches the target first (strictly: a tie, or none reaching it, names nobody)
    first = {s: np.mean(np.all([draws[s] < draws[o] for o in present if o != s], axis=0)) for s in present}
    winner = max(present, key=lambda s: first[s])
    share = first[winner]
    runner = min((s for s in present if s != winner), key=lambda s: (np.median(draws[s]), STRATEGIES.index(s)))
    both = np.isfinite(draws[winner]) & np.isfinite(draws[runner])
    saved = None
    if both.mean() >= 0.5:
        low, median, high = np.percentile(draws[runner][both] - draws[winner][both], [10, 50, 90])
        saved = (float(median), float(low), float(high))
    others = ", ".join(said(s) for s in present if s != winner)
    if share < SURE:
        sentence = (f"Too early to tell which reaches {name} {target:g} sooner: {said(winner)}, {others}; "
                    f"{NAMES[winner]} come out first in only {share:.0%} of bootstrap refits (needs {SURE:.0%}). Label more.")
        return Verdict(metric, target, sentence, None, hours, saved)
    by = (f": {_hours(saved[0])} h sooner than {NAMES[runner]} (80% interval {_hours(saved[1])} to {_hours(saved[2])} h)" if saved
          else f": {NAMES[winner]} first in {share:.0%} of bootstrap refits")
    sentence = f"{NAMES[winner].capitalize()} reach {name} {target:g} sooner: {said(winner)}, {others}{by}."
    return Verdict(metric, target, sentence, winner, hours, saved)


def plot(points: Sequence[StrategyPoint], verdicts: Mapping[str, Verdict], path: Path, title: str) -> Path:
    """Each metric against annotation hours (log scale), a curve and the target per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"boxes": "tab:blue", "masks": "tab:orange", "assisted": "tab:green"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], METRICS, strict=True):
        for strategy, mine, x, y, fit in measured(points, metric):
            ax.plot(x, y, "o", color=colours[strategy], label=f"{NAMES[strategy]} ({mine[-1].images} images at {x[-1]:.1f} h)")
            if fit is not None:
                grid = np.geomspace(x.min(), 3 * x.max(), 100)
                ax.plot(grid, [fit.accuracy_at(h) for h in grid], "-", color=colours[strategy], alpha=0.6)
        if metric in verdicts:
            ax.axhline(verdicts[metric].target, color="grey", ls="--", lw=1, label=f"target {verdicts[metric].target:g}")
        ax.set_xscale("log")
        ax.set_xlabel("annotation hours")
        ax.set_ylabel(f"held-out {METRICS[metric]}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def suggestions_line(strategy: str, objects_kept: float | None, effort_saved: float | None) -> str | None:
    """What the project's own suggestions change in the comparison above (which labels from nothing):
    the share of suggested objects people kept and the annotation time that saved."""
    if objects_kept is None or effort_saved is None:
        return None
    speedup = f", so each hour of {strategy} above buys about {1 / (1 - effort_saved):.1f}x the images" if 0 < effort_saved < 1 else ""
    time = (f"{effort_saved:.0%} less time than drawing every object{speedup}" if effort_saved >= 0 else
            f"{-effort_saved:.0%} more time than drawing every object: fixing and deleting wrong suggestions costs more "
            "than they save so far")
    return (f"**With flywheel's suggestions** (measured in this project): people kept {objects_kept:.0%} of the suggested "
            f"{strategy} as they were, and labeling took {time}.")


def write(
    points: Sequence[StrategyPoint], verdicts: Mapping[str, Verdict], folder: Path, title: str, costs: Mapping[str, Any],
    suggestions: str | None = None,
) -> Path:
    """strategy.json, strategy.png and strategy.md into `folder` (with `suggestions`, a line on what the
    project's suggestions save: `suggestions_line`); returns the markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    image = plot(points, verdicts, folder / "strategy.png", title)
    def finite(value: Any) -> Any:  # JSON has no infinity: "not within the measured range" is null
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [finite(v) for v in value]
        return None if isinstance(value, float) and not math.isfinite(value) else value

    (folder / "strategy.json").write_text(json.dumps(finite(
        {"title": title, "costs": dict(costs), "points": [asdict(p) for p in points],
         "verdicts": {k: asdict(v) for k, v in verdicts.items()}}), indent=2))
    rows = "\n".join(
        f"| {NAMES[p.strategy]} | {p.hours:.2f} | {p.images} | {p.scores['box_map50']:.3f} | {p.scores['mask_map50']:.3f} |" for p in points
    )
    text = (f"{chr(10).join(f'**{METRICS[m]}**: {v.sentence}' + chr(10) for m, v in verdicts.items())}\n"
            f"| strategy | annotation hours | images | held-out box mAP@0.5 | held-out mask mAP@0.5 |\n|---|---|---|---|---|\n{rows}\n\n"
            f"![strategy]({image.name})\n" + (f"\n{suggestions}\n" if suggestions else ""))
    path = folder / "strategy.md"
    path.write_text(text)
    return path
