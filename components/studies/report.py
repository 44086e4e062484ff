"""Is the annotation strategy working? The learning curve, the classes that need labels, the confused
pairs, and how often people accept the model's suggestions, measured in Label Studio itself.

`build_report` computes it from plain inputs; `write_report` renders it as HTML with PNG plots and a
JSON summary (what `flywheel report` prints).

Per-class figures are only as honest as the examples behind them: each class carries its support (the
examples of it the figure was computed on) and a 95% Wilson interval, the figures come from the label
check's out-of-fold predictions over every label when they are at hand (`read_out_of_fold`) and from
the champion's validation split otherwise, and "Classes that most need labels" names only a class whose
interval lies below the other classes', saying "too early to tell" while the support cannot tell them apart.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from components.data.conversions import current_annotation, task_from_json
from components.core.labeling_config import LabelingConfig
from components.tasks.base import TaskType


@dataclass(frozen=True)
class LearningPoint:
    """One trained model: how many labels it saw and how it scored on its validation split."""

    labels: int
    accuracy: float  # the task type's promotion score (accuracy, box mAP@0.5)
    snapshot: str


@dataclass(frozen=True)
class CurveFit:
    """accuracy(n) = ceiling - scale * n ** -exponent, fitted by least squares."""

    ceiling: float
    scale: float
    exponent: float

    def accuracy_at(self, labels: float) -> float:
        return self.ceiling - self.scale * labels ** -self.exponent

    def labels_for(self, accuracy: float) -> float | None:
        """Labels at which the fitted curve reaches `accuracy`; None if it levels off below it."""
        if accuracy >= self.ceiling or self.scale <= 0:
            return None
        return (self.scale / (self.ceiling - accuracy)) ** (1 / self.exponent)


MIN_SUPPORT = 5  # examples of a class below which its per-class figure tells it apart from no other
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: `successes` of `n` (95% by default).

    Chosen over the plain normal interval and the percentile bootstrap because it stays honest at the
    supports an early report sees: 0 of 1 gives (0.00, 0.79), not (0, 0). `successes` may be fractional
    (an AP times its number of boxes, as an approximation).

    Args:
        successes: Examples counted right (0 <= successes <= n).
        n: Examples (the support).
        z: The normal quantile of the interval's confidence.

    Returns:
        (low, high) within [0, 1]; (0, 1) when `n` is 0: nothing is known.
    """
    if n <= 0:
        return 0.0, 1.0
    share = min(max(successes / n, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ClassRow:
    """One class: how many labels it has, the task type's per-class scores, and what backs them.

    Attributes:
        label: The class.
        labeled: Its labels (images, boxes) in the latest snapshot, both splits.
        precision, recall: From the confusion matrix (classification); None without one.
        f1: The task type's per-class score: F1 for classification, AP@0.5 for detection and masks.
        support: Examples of the class the figures were computed on (validation or out-of-fold images,
            validation boxes); None when unknown.
        low, high: The 95% Wilson interval of `ranked` over `support` examples. For recall it is the
            interval of a proportion; for an AP it treats the AP as a share of the class's boxes, an
            approximation (an AP is no plain proportion, and varies at least that much).
    """

    label: str
    labeled: int
    precision: float | None
    recall: float | None
    f1: float
    support: int | None = None
    low: float | None = None
    high: float | None = None

    @property
    def ranked(self) -> float:
        """The figure the classes are ranked by: recall where there is a confusion matrix (a share of
        the class's examples, so its interval is exact), else the per-class score (AP)."""
        return self.recall if self.recall is not None else self.f1


@dataclass(frozen=True)
class OutOfFold:
    """The label check's out-of-fold predictions as a confusion matrix over every checked label.

    Attributes:
        confusion: Rows = the given label, columns = the out-of-fold model's class, in `labels` order.
        snapshot_rev: The snapshot the label check ran on ("" when the table does not say).
    """

    confusion: np.ndarray
    snapshot_rev: str = ""


def out_of_fold_confusion(table: pd.DataFrame, labels: Sequence[str]) -> np.ndarray | None:
    """The confusion matrix of the label check's table (`label_errors.TABLE_COLUMNS`): each label
    against the out-of-fold model's suggestion.

    Args:
        table: The label error table; its `label` and `suggested` are class names for single-label
            classification.
        labels: The label set (the matrix's row and column order).

    Returns:
        The matrix, or None when the table is empty or its targets are not classes of `labels` (boxes,
        masks, or a label set that changed since the check).
    """
    if table.empty or not {"label", "suggested"} <= set(table.columns):
        return None
    index = {label: i for i, label in enumerate(labels)}
    given, suggested = table["label"].astype(str).tolist(), table["suggested"].astype(str).tolist()
    if not all(g in index and s in index for g, s in zip(given, suggested, strict=True)):
        return None
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(confusion, ([index[g] for g in given], [index[s] for s in suggested]), 1)
    return confusion


def read_out_of_fold(path: Path, labels: Sequence[str], snapshot_rev: str | None = None) -> OutOfFold | None:
    """The label check's out-of-fold predictions (its `label_errors.parquet`) for `build_report`.

    Args:
        path: The label error table the label check kept in the workspace.
        labels: The label set.
        snapshot_rev: When given, only a check of this snapshot counts (an older one saw other labels).

    Returns:
        None when there is no table, it is of another snapshot, or its targets are not classes.
    """
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    revs = table["snapshot_rev"].astype(str).unique().tolist() if "snapshot_rev" in table.columns else []
    rev = revs[0] if len(revs) == 1 else ""
    if snapshot_rev is not None and rev != snapshot_rev:
        return None
    confusion = out_of_fold_confusion(table, labels)
    return None if confusion is None else OutOfFold(confusion, rev)


def clearly_worse(rows: Sequence[ClassRow], min_support: int = MIN_SUPPORT) -> list[ClassRow]:
    """The classes whose figure is told apart from the rest: worst first.

    A class counts when it has at least `min_support` examples and the top of its 95% interval lies
    below the bottom of the interval of all other classes together (their support-weighted mean
    `ranked`, over their pooled support: for recall, the other classes' pooled recall).

    Args:
        rows: Every class.
        min_support: Fewer examples of a class than this tell nothing.

    Returns:
        The classes clearly worse than the others, lowest `ranked` first (more support breaks ties).
    """
    worse = []
    for row in rows:
        if row.support is None or row.support < min_support or row.high is None:
            continue
        others = [r for r in rows if r.label != row.label and r.support]
        pooled = sum(r.support or 0 for r in others)
        if not pooled:
            continue
        rest = sum(r.ranked * (r.support or 0) for r in others) / pooled
        if row.high < wilson_interval(rest * pooled, pooled)[0]:
            worse.append(row)
    return sorted(worse, key=lambda r: (r.ranked, -(r.support or 0)))


@dataclass(frozen=True)
class Acceptance:
    """Annotations made from a suggestion, and how many kept the suggested label."""

    shown: int
    accepted: int
    by_model_version: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None


BINS = 20  # confidence histograms: bins of 0.05


@dataclass(frozen=True)
class ProductionView:
    """How the endpoint's answers compare with the champion's on its validation split (drift).

    Attributes:
        model_version: The model the endpoint answered with last.
        requests: Answers given.
        routed: Images sent back to Label Studio (low confidence or flagged).
        production_median, validation_median: Median confidence of the answers.
        below_route_production, below_route_validation: Share of answers under `production.route_below`.
        ks_statistic, ks_pvalue: Two-sample Kolmogorov-Smirnov test of the two confidence samples.
        production_hist, validation_hist: Share of answers per confidence bin (`BINS` over [0, 1]).
    """

    model_version: str
    requests: int
    routed: int
    production_median: float
    validation_median: float
    below_route_production: float
    below_route_validation: float
    ks_statistic: float
    ks_pvalue: float
    production_hist: list[float]
    validation_hist: list[float]

    @property
    def share_routed(self) -> float:
        return self.routed / self.requests if self.requests else 0.0

    @property
    def drifted(self) -> bool:
        """Production answers clearly less sure than validation ones: the images differ from those labeled."""
        return self.ks_pvalue < 0.01 and self.production_median < self.validation_median


def production_view(stats: Mapping[str, Any], validation: Sequence[float], route_below: float) -> ProductionView | None:
    """The endpoint's counts (`serving.read_stats`) against the champion's confidences on its
    validation split; None when the endpoint has not answered or there is no validation split."""
    from scipy.stats import ks_2samp

    production = np.asarray(stats.get("confidences") or [], dtype=float)
    validation = np.asarray(validation, dtype=float)
    if not len(production) or not len(validation):
        return None
    test = ks_2samp(production, validation)

    def hist(values: np.ndarray) -> list[float]:
        counts, _ = np.histogram(values, bins=BINS, range=(0.0, 1.0))
        return [round(float(c) / len(values), 4) for c in counts]

    return ProductionView(
        model_version=str(stats.get("model_version", "")),
        requests=int(stats.get("requests", 0)),
        routed=int(stats.get("routed", 0)),
        production_median=round(float(np.median(production)), 4),
        validation_median=round(float(np.median(validation)), 4),
        below_route_production=round(float((production < route_below).mean()), 4),
        below_route_validation=round(float((validation < route_below).mean()), 4),
        ks_statistic=round(float(test.statistic), 4),
        ks_pvalue=float(test.pvalue),
        production_hist=hist(production),
        validation_hist=hist(validation),
    )


@dataclass(frozen=True)
class Report:
    """The strategy report.

    Attributes:
        labeled: Labeled images.
        target_accuracy: The target of the task's score.
        points: The learning curve, fewest labels first.
        fit: The fitted learning curve; None with too few points.
        classes: Every class with its figures, support and interval.
        confused_pairs: The most confused pairs of classes, with how often.
        acceptance: How often people kept the model's suggestion.
        confusion: The confusion matrix the per-class figures came from; None without one.
        metric_title: What the learning curve's score is called.
        per_class_title: What the task type's per-class score is called (F1, AP).
        production: The endpoint's answers against validation; None when it has not answered.
        source: Where the per-class figures came from, with their number of examples.
        count_noun: What a class's support counts ("images", "boxes").
        min_support: Examples of a class below which it is never named as needing labels.
        out_of_fold: The per-class figures (and `confusion`) are the label check's out-of-fold ones.
    """

    labeled: int
    target_accuracy: float
    points: tuple[LearningPoint, ...]
    fit: CurveFit | None
    classes: tuple[ClassRow, ...]
    confused_pairs: tuple[tuple[str, str, int], ...]
    acceptance: Acceptance
    confusion: list[list[int]] | None
    metric_title: str = "validation accuracy"
    per_class_title: str = "F1"
    production: ProductionView | None = None
    source: str = "the champion's validation split"
    count_noun: str = "images"
    min_support: int = MIN_SUPPORT
    out_of_fold: bool = False

    @property
    def labels_to_target(self) -> int | None:
        """Labels still needed to reach the target accuracy by the fitted curve (0 if reached)."""
        if self.points and self.points[-1].accuracy >= self.target_accuracy:
            return 0
        needed = self.fit.labels_for(self.target_accuracy) if self.fit else None
        return None if needed is None else max(0, math.ceil(needed) - self.labeled)

    @property
    def ranked_title(self) -> str:
        """What the classes are ranked by: recall with a confusion matrix, else the per-class score."""
        return "recall" if self.confusion is not None else self.per_class_title

    @property
    def classes_needing_labels(self) -> list[str]:
        """Every class, lowest `ClassRow.ranked` first (fewest labels breaking ties): an ordering by the
        point figures, not a verdict (`classes_clearly_needing_labels` is)."""
        return [c.label for c in sorted(self.classes, key=lambda c: (c.ranked, c.labeled))]

    @property
    def classes_clearly_needing_labels(self) -> list[str]:
        """The classes whose interval lies below the others' (`clearly_worse`), worst first; empty while
        it is too early to tell."""
        return [c.label for c in clearly_worse(self.classes, self.min_support)]


def fit_learning_curve(points: Sequence[LearningPoint]) -> CurveFit | None:
    """Fit an inverse power law through the points; None with fewer than 3 distinct label counts."""
    return fit_curve([p.labels for p in points], [p.accuracy for p in points])


def fit_curve(effort: Sequence[float], score: Sequence[float]) -> CurveFit | None:
    """score(effort) = ceiling - scale * effort ** -exponent by least squares (effort: labels, hours);
    None with fewer than 3 distinct efforts or when the fit fails."""
    if len(set(effort)) < 3:
        return None
    n = np.asarray(effort, dtype=float)
    y = np.asarray(score, dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # no covariance from 3 points: not used
            (ceiling, scale, exponent), _ = curve_fit(
                lambda x, a, b, c: a - b * x ** -c, n, y, p0=(min(1.0, y.max() + 0.02), 1.0, 0.5),
                bounds=([0.0, 0.0, 0.05], [1.0, 1e4, 3.0]), maxfev=20000,
            )
    except (RuntimeError, ValueError):
        return None
    return CurveFit(float(ceiling), float(scale), float(exponent))


def measure_acceptance(tasks: Iterable[Mapping[str, Any]], config: LabelingConfig, task_type: TaskType) -> Acceptance:
    """Compare each task's current annotation with the prediction it was started from.

    Args:
        tasks: Label Studio task JSON with annotations and predictions.
        config: The labeling config.
        task_type: Says whether an annotation kept a suggestion unchanged.
    """
    by_version: dict[str, list[int]] = {}
    for raw in tasks:
        predictions = {p.get("id"): p for p in raw.get("predictions") or ()}
        task = task_from_json(raw)
        annotation = current_annotation(task)
        if annotation is None or annotation.parent_prediction not in predictions:
            continue
        prediction = predictions[annotation.parent_prediction]
        kept = task_type.agree(prediction.get("result") or [], annotation.result, config)
        if kept is None:
            continue
        counts = by_version.setdefault(str(prediction.get("model_version") or ""), [0, 0])
        counts[0] += 1
        counts[1] += int(kept)
    return Acceptance(
        shown=sum(c[0] for c in by_version.values()),
        accepted=sum(c[1] for c in by_version.values()),
        by_model_version={v: (c[0], c[1]) for v, c in by_version.items()},
    )


def build_report(
    points: Sequence[LearningPoint],
    labels: Sequence[str],
    class_counts: Mapping[str, int],
    confusion: np.ndarray | None,
    acceptance: Acceptance,
    target_accuracy: float,
    per_class: Mapping[str, float] | None = None,
    metric_title: str = "validation accuracy",
    per_class_title: str = "F1",
    labeled: int | None = None,
    *,
    out_of_fold: OutOfFold | None = None,
    support: Mapping[str, int] | None = None,
    count_noun: str = "images",
    min_support: int = MIN_SUPPORT,
) -> Report:
    """Assemble the report.

    The per-class figures come from the label check's out-of-fold predictions over every label when
    `out_of_fold` is given (every label is then an example, not only the validation split's), else
    from `confusion`, else from `per_class` with `support`; `Report.source` says which. Each class
    carries its support and the 95% Wilson interval (`wilson_interval`) of the figure it is ranked by.

    Args:
        points: One per trained snapshot, any order.
        labels: Class names (the order of `confusion`'s rows and columns).
        class_counts: Labels (images, boxes) per class in the latest snapshot.
        confusion: The champion's confusion matrix on the latest validation split (rows = labeled),
            for classification; None for task types without one (then `per_class` gives the scores).
        acceptance: From `measure_acceptance`.
        target_accuracy: params.yaml report.target_accuracy (the target of the task's score).
        per_class: Class -> the champion's per-class score, when there is no confusion matrix.
        metric_title: What the learning curve's score is called.
        per_class_title: What the per-class score is called.
        labeled: Labeled images (default: the sum of `class_counts`, right when each image has one class).
        out_of_fold: The label check's out-of-fold predictions (`read_out_of_fold`); preferred over
            `confusion` when given.
        support: Class -> examples the `per_class` scores were computed on (validation boxes, masks);
            without it (and without a confusion matrix) no class is told apart.
        count_noun: What the support counts ("images", "boxes", "masks").
        min_support: Examples of a class below which it is never named as needing labels.
    """
    labeled = int(sum(class_counts.values())) if labeled is None else labeled
    points = tuple(sorted(points, key=lambda p: p.labels))
    matrix = out_of_fold.confusion if out_of_fold is not None else confusion
    common = {
        "labeled": labeled, "target_accuracy": target_accuracy, "points": points, "fit": fit_learning_curve(points),
        "acceptance": acceptance, "metric_title": metric_title, "per_class_title": per_class_title,
        "count_noun": count_noun, "min_support": min_support,
    }
    if matrix is None:
        rows = []
        for label in labels:
            score = round(float((per_class or {}).get(label, 0.0)), 4)
            n = None if support is None else int(support.get(label, 0))
            low, high = (None, None) if n is None else wilson_interval(score * n, n)
            rows.append(ClassRow(label, int(class_counts.get(label, 0)), None, None, score, n, _round(low), _round(high)))
        examples = f", {sum(support.values())} {count_noun}" if support is not None else ""
        return Report(**common, classes=tuple(rows), confused_pairs=(), confusion=None,
                      source=f"the champion's validation split{examples}")
    matrix = np.asarray(matrix)
    rows = []
    for i, label in enumerate(labels):
        tp = float(matrix[i, i])
        n = int(matrix[i, :].sum())
        precision = tp / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
        recall = tp / n if n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        low, high = wilson_interval(tp, n)
        rows.append(ClassRow(label, int(class_counts.get(label, 0)), round(precision, 4), round(recall, 4), round(f1, 4),
                             n, _round(low), _round(high)))
    off_diagonal = [
        (labels[i], labels[j], int(matrix[i, j]) + int(matrix[j, i]))
        for i in range(len(labels)) for j in range(i + 1, len(labels))
        if matrix[i, j] + matrix[j, i] > 0
    ]
    pairs = tuple(sorted(off_diagonal, key=lambda p: -p[2])[:5])
    total = int(matrix.sum())
    if out_of_fold is not None:
        of = f" of snapshot {out_of_fold.snapshot_rev}" if out_of_fold.snapshot_rev else ""
        source = f"the label check's out-of-fold predictions over every label, {total} {count_noun}{of}"
    else:
        source = f"the champion's validation split, {total} {count_noun}"
    return Report(**common, classes=tuple(rows), confused_pairs=pairs, confusion=matrix.astype(int).tolist(), source=source,
                  out_of_fold=out_of_fold is not None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _figure(row: ClassRow, report: Report) -> str:
    """One class as the summary names it: its figure, interval, support and labels."""
    f1 = f"; {report.per_class_title} {row.f1:.2f}" if row.recall is not None else ""
    return (f"{row.label} ({report.ranked_title} {row.ranked:.2f}, 95% interval {row.low:.2f}-{row.high:.2f}, "
            f"{row.support} {report.count_noun}{f1}; {row.labeled} labeled)")


def needing_labels_line(report: Report) -> str:
    """"Classes that most need labels": only those clearly below the others (`clearly_worse`), else
    "too early to tell" with the support per class."""
    worse = clearly_worse(report.classes, report.min_support)
    if worse:
        return (f"Classes that most need labels ({report.ranked_title} on {report.source}, with its 95% interval): "
                + ", ".join(_figure(c, report) for c in worse[:3]))
    supports = [c.support for c in report.classes if c.support is not None]
    if not supports:
        return (f"Classes that most need labels: too early to tell: the number of {report.count_noun} behind each "
                f"class's {report.ranked_title} is unknown")
    low, high = min(supports), max(supports)
    spread = f"{report.count_noun} per class: {low}" + (f" to {high}" if high != low else "")
    if high < report.min_support:
        return (f"Classes that most need labels: too early to tell ({spread} on {report.source}; a class needs "
                f"{report.min_support} to be told apart). Label more.")
    return (f"Classes that most need labels: too early to tell: no class's {report.ranked_title} is clearly below the "
            f"others' (95% intervals overlap; {spread} on {report.source}). Label more.")


def summary_lines(report: Report) -> list[str]:
    """The report in a few lines of text (the terminal summary)."""
    latest = report.points[-1] if report.points else None
    lines = [f"Labeled images: {report.labeled}"]
    if latest:
        lines.append(f"Latest model: {report.metric_title} {latest.accuracy:.3f} on {latest.snapshot}")
    to_target = report.labels_to_target
    if to_target == 0:
        lines.append(f"Target {report.metric_title.removeprefix('validation ')} {report.target_accuracy:.2f}: reached")
    elif to_target is not None:
        lines.append(f"Target {report.metric_title.removeprefix('validation ')} {report.target_accuracy:.2f}: about {to_target} more labels (fitted learning curve)")
    elif report.fit is not None:
        lines.append(f"Target {report.metric_title.removeprefix('validation ')} {report.target_accuracy:.2f}: the curve levels off at {report.fit.ceiling:.3f}, "
                     "below target: fix label errors, add data variety or try another architecture")
    else:
        lines.append(f"Target {report.metric_title.removeprefix('validation ')} {report.target_accuracy:.2f}: not enough iterations yet to fit a curve (need 3)")
    if report.classes:
        lines.append(needing_labels_line(report))
    if report.confused_pairs:
        lines.append("Most confused: " + ", ".join(f"{a}<->{b} ({n})" for a, b, n in report.confused_pairs[:3]))
    rate = report.acceptance.rate
    lines.append(
        "Suggestions accepted unchanged: "
        + (f"{rate:.1%} ({report.acceptance.accepted}/{report.acceptance.shown})" if rate is not None else "none made from a suggestion yet")
    )
    p = report.production
    if p is not None:
        lines.append(
            f"Production ({p.model_version}): {p.requests:,} answers, {p.share_routed:.1%} sent back to labeling; median "
            f"confidence {p.production_median:.2f} in production vs {p.validation_median:.2f} on validation "
            f"(KS {p.ks_statistic:.2f}, p={p.ks_pvalue:.1g})"
            + (": production images differ from the labeled ones, label the \"From production\" tab" if p.drifted else "")
        )
    return lines


def _plots(report: Report, labels: Sequence[str], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from components.tasks.classification import confusion_figure

    files = {}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if report.points:
        ax.plot([p.labels for p in report.points], [p.accuracy for p in report.points], "o", label=report.metric_title)
    if report.fit and report.points:
        top = max(report.points[-1].labels * 3, (report.fit.labels_for(report.target_accuracy) or 0) * 1.1)
        xs = np.linspace(min(p.labels for p in report.points), top, 200)
        ax.plot(xs, [report.fit.accuracy_at(x) for x in xs], "-", label=f"fit (levels off at {report.fit.ceiling:.3f})")
    ax.axhline(report.target_accuracy, color="gray", linestyle=":", label=f"target {report.target_accuracy:.2f}")
    ax.set_xlabel("labeled images")
    ax.set_ylabel(report.metric_title)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Learning curve")
    fig.tight_layout()
    files["learning_curve"] = "learning_curve.png"
    fig.savefig(folder / files["learning_curve"], dpi=100)
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    x = np.arange(len(report.classes))
    ranked = np.array([c.ranked for c in report.classes])
    known = all(c.low is not None and c.high is not None for c in report.classes)
    errors = (np.array([[c.ranked - (c.low or 0.0) for c in report.classes], [(c.high or 0.0) - c.ranked for c in report.classes]])
              .clip(min=0) if known and len(report.classes) else None)
    ax1.bar(x, ranked, yerr=errors, capsize=3, color="tab:blue", label=report.ranked_title)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel(f"{report.ranked_title} (95% interval)" if known else report.ranked_title)
    ax1.set_xticks(x, [f"{c.label}\n(n={c.support})" if c.support is not None else c.label for c in report.classes],
                   rotation=45, ha="right")
    ax2 = ax1.twinx()
    ax2.plot(x, [c.labeled for c in report.classes], "o-", color="tab:orange", label="labeled")
    ax2.set_ylabel(f"labeled {report.count_noun}")
    ax1.set_title(f"Per class: {report.ranked_title} (bars, n = support) and labels (line)", fontsize=10)
    fig.tight_layout()
    files["per_class"] = "per_class.png"
    fig.savefig(folder / files["per_class"], dpi=100)
    plt.close(fig)

    if report.confusion is not None:
        title = "Out-of-fold predictions over every label" if report.out_of_fold else "Champion on the latest validation split"
        fig = confusion_figure(np.array(report.confusion), labels, title)
        files["confusion"] = "confusion.png"
        fig.savefig(folder / files["confusion"], dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    versions = sorted(report.acceptance.by_model_version, key=lambda v: (len(v), v))
    rates = [report.acceptance.by_model_version[v][1] / report.acceptance.by_model_version[v][0] for v in versions]
    ax.bar(range(len(versions)), rates, color="tab:green")
    ax.set_xticks(range(len(versions)), versions, rotation=45, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("suggestions accepted unchanged")
    ax.set_title("Acceptance by the model version that made the suggestion")
    fig.tight_layout()
    files["acceptance"] = "acceptance.png"
    fig.savefig(folder / files["acceptance"], dpi=100)
    plt.close(fig)

    if report.production is not None:
        p = report.production
        fig, ax = plt.subplots(figsize=(7, 4.2))
        edges = np.linspace(0, 1, BINS + 1)
        ax.stairs(p.validation_hist, edges, label=f"validation (median {p.validation_median:.2f})", linewidth=2)
        ax.stairs(p.production_hist, edges, label=f"production (median {p.production_median:.2f})", linewidth=2)
        ax.set_xlabel("confidence of the answer")
        ax.set_ylabel("share of answers")
        ax.legend(loc="upper left")
        ax.set_title(f"Confidence: production vs validation ({p.model_version})")
        fig.tight_layout()
        files["production"] = "production.png"
        fig.savefig(folder / files["production"], dpi=100)
        plt.close(fig)
    return files


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(row: ClassRow) -> str:
    return "-" if row.low is None or row.high is None else f"{row.low:.3f} to {row.high:.3f}"


def _strategy_section(strategy: Path | None, folder: Path) -> str:
    """The last `flywheel strategy` comparison (boxes or masks, in annotation hours), if one was run."""
    import shutil

    if strategy is None or not (strategy / "strategy.json").is_file():
        return ""
    saved = json.loads((strategy / "strategy.json").read_text())
    shutil.copy(strategy / "strategy.png", folder / "strategy.png")
    sentences = "".join(f"<li>{html.escape(v['sentence'])}</li>" for v in saved["verdicts"].values())
    return f'<h2>Annotation strategy: boxes or masks (in annotation hours)</h2><ul>{sentences}</ul><img src="strategy.png" alt="strategy">'


def write_report(report: Report, labels: Sequence[str], folder: Path, title: str, strategy: Path | None = None) -> Path:
    """Write report.html, its PNG plots and report.json into `folder`. Returns the HTML's path.
    `strategy`: the folder of the last `flywheel strategy` comparison, shown as a section when there."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(report, labels, folder)
    summary = {**asdict(report), "labels_to_target": report.labels_to_target, "acceptance_rate": report.acceptance.rate,
               "classes_needing_labels": report.classes_needing_labels,
               "classes_clearly_needing_labels": report.classes_clearly_needing_labels, "summary": summary_lines(report)}
    (folder / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = "".join(
        f"<tr><td>{html.escape(c.label)}</td><td>{c.labeled}</td><td>{'-' if c.support is None else c.support}</td>"
        f"<td>{_cell(c.precision)}</td><td>{_cell(c.recall)}</td><td>{c.f1:.3f}</td><td>{_interval(c)}</td></tr>"
        for c in sorted(report.classes, key=lambda c: (c.ranked, c.labeled))
    )
    per_class_note = (f"<p>Figures from {html.escape(report.source)}; support: the {html.escape(report.count_noun)} of each "
                      f"class they were computed on; 95% Wilson interval of {html.escape(report.ranked_title)}"
                      + (" (an approximation for an AP)" if report.confusion is None else "")
                      + f". {html.escape(needing_labels_line(report))}</p>")
    pairs = "".join(f"<li>{html.escape(a)} &harr; {html.escape(b)}: {n}</li>" for a, b, n in report.confused_pairs)
    confused = (f"<h2>Most confused pairs</h2><ul>{pairs or '<li>none</li>'}</ul><img src=\"{plots['confusion']}\" alt=\"confusion\">"
                if "confusion" in plots else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in summary_lines(report))}</ul>
<h2>Learning curve</h2><img src="{plots['learning_curve']}" alt="learning curve">
<h2>Per class (lowest {html.escape(report.ranked_title)} first)</h2>
{per_class_note}
<table><tr><th>class</th><th>labeled</th><th>support</th><th>precision</th><th>recall</th><th>{html.escape(report.per_class_title)}</th>
<th>95% interval of {html.escape(report.ranked_title)}</th></tr>{rows}</table>
<img src="{plots['per_class']}" alt="per class">
{confused}
<h2>Suggestions accepted</h2><img src="{plots['acceptance']}" alt="acceptance">
{'<h2>Production</h2><img src="production.png" alt="production">' if "production" in plots else ""}
{_strategy_section(strategy, folder)}
</body></html>"""
    path = folder / "report.html"
    path.write_text(page)
    return path
