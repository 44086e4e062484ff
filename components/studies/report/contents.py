"""What the report says: `build_report` assembles it from plain inputs, `summary_lines` says it in a
few lines of text."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from components.studies.report.classes import MIN_SUPPORT, ClassRow, OutOfFold, clearly_worse, wilson_interval
from components.studies.report.curve import CurveFit, LearningPoint, fit_learning_curve
from components.studies.report.feedback import Acceptance, ProductionView


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
    acceptance = report.acceptance
    if acceptance.objects_kept is not None and acceptance.edits is not None:
        edits = acceptance.edits
        effort = acceptance.effort_saved
        saved = ("" if effort is None else f"; annotation time saved {effort:.0%}" if effort >= 0
                 else f"; annotation time {-effort:.0%} longer than drawing every object (wrong suggestions cost more than they save)")
        lines.append(
            f"Objects kept as suggested: {acceptance.objects_kept:.1%} ({edits.kept}/{edits.objects}; {edits.adjusted} adjusted, "
            f"{edits.drawn} drawn, {edits.deleted} suggestions deleted){saved}"
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
