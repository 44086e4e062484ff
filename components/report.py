"""Is the annotation strategy working? The learning curve, the classes that need labels, the confused
pairs, and how often people accept the model's suggestions, measured in Label Studio itself.

`build_report` computes it from plain inputs; `write_report` renders it as HTML with PNG plots and a
JSON summary (what `flywheel report` prints).
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
from scipy.optimize import OptimizeWarning, curve_fit

from components.conversions import current_annotation, task_from_json
from components.labeling_config import LabelingConfig
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


@dataclass(frozen=True)
class ClassRow:
    """One class: how many labels it has and the task type's per-class score (F1, AP)."""

    label: str
    labeled: int
    precision: float | None
    recall: float | None
    f1: float  # the per-class score: F1 for classification, AP@0.5 for detection


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

    @property
    def labels_to_target(self) -> int | None:
        """Labels still needed to reach the target accuracy by the fitted curve (0 if reached)."""
        if self.points and self.points[-1].accuracy >= self.target_accuracy:
            return 0
        needed = self.fit.labels_for(self.target_accuracy) if self.fit else None
        return None if needed is None else max(0, math.ceil(needed) - self.labeled)

    @property
    def classes_needing_labels(self) -> list[str]:
        """Worst F1 first (fewest labels breaking ties): where the next labels help most."""
        return [c.label for c in sorted(self.classes, key=lambda c: (c.f1, c.labeled))]


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
) -> Report:
    """Assemble the report.

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
    """
    labeled = int(sum(class_counts.values())) if labeled is None else labeled
    points = tuple(sorted(points, key=lambda p: p.labels))
    if confusion is None:
        rows = [ClassRow(label, int(class_counts.get(label, 0)), None, None, round(float((per_class or {}).get(label, 0.0)), 4))
                for label in labels]
        return Report(
            labeled=labeled, target_accuracy=target_accuracy, points=points,
            fit=fit_learning_curve(points), classes=tuple(rows), confused_pairs=(), acceptance=acceptance,
            confusion=None, metric_title=metric_title, per_class_title=per_class_title,
        )
    rows = []
    for i, label in enumerate(labels):
        tp = float(confusion[i, i])
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i, :].sum() if confusion[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(ClassRow(label, int(class_counts.get(label, 0)), round(precision, 4), round(recall, 4), round(f1, 4)))
    off_diagonal = [
        (labels[i], labels[j], int(confusion[i, j]) + int(confusion[j, i]))
        for i in range(len(labels)) for j in range(i + 1, len(labels))
        if confusion[i, j] + confusion[j, i] > 0
    ]
    pairs = tuple(sorted(off_diagonal, key=lambda p: -p[2])[:5])
    return Report(
        labeled=labeled,
        target_accuracy=target_accuracy,
        points=points,
        fit=fit_learning_curve(points),
        classes=tuple(rows),
        confused_pairs=pairs,
        acceptance=acceptance,
        confusion=confusion.astype(int).tolist(),
    )


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
        weakest = [c for c in sorted(report.classes, key=lambda c: (c.f1, c.labeled))][:3]
        lines.append("Classes that most need labels: " + ", ".join(
            f"{c.label} ({report.per_class_title} {c.f1:.2f}, {c.labeled} labeled)" for c in weakest))
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
    ax1.bar(x, [c.f1 for c in report.classes], color="tab:blue", label=report.per_class_title)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel(f"{report.per_class_title} (validation)")
    ax1.set_xticks(x, [c.label for c in report.classes], rotation=45, ha="right")
    ax2 = ax1.twinx()
    ax2.plot(x, [c.labeled for c in report.classes], "o-", color="tab:orange", label="labeled")
    ax2.set_ylabel("labeled images")
    ax1.set_title(f"Per class: {report.per_class_title} (bars) and labels (line)")
    fig.tight_layout()
    files["per_class"] = "per_class.png"
    fig.savefig(folder / files["per_class"], dpi=100)
    plt.close(fig)

    if report.confusion is not None:
        fig = confusion_figure(np.array(report.confusion), labels, "Champion on the latest validation split")
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
               "classes_needing_labels": report.classes_needing_labels, "summary": summary_lines(report)}
    (folder / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = "".join(
        f"<tr><td>{html.escape(c.label)}</td><td>{c.labeled}</td><td>{_cell(c.precision)}</td><td>{_cell(c.recall)}</td><td>{c.f1:.3f}</td></tr>"
        for c in sorted(report.classes, key=lambda c: (c.f1, c.labeled))
    )
    pairs = "".join(f"<li>{html.escape(a)} &harr; {html.escape(b)}: {n}</li>" for a, b, n in report.confused_pairs)
    confused = (f"<h2>Most confused pairs</h2><ul>{pairs or '<li>none</li>'}</ul><img src=\"{plots['confusion']}\" alt=\"confusion\">"
                if "confusion" in plots else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in summary_lines(report))}</ul>
<h2>Learning curve</h2><img src="{plots['learning_curve']}" alt="learning curve">
<h2>Per class (worst first: label these next)</h2>
<table><tr><th>class</th><th>labeled</th><th>precision</th><th>recall</th><th>{html.escape(report.per_class_title)}</th></tr>{rows}</table>
<img src="{plots['per_class']}" alt="per class">
{confused}
<h2>Suggestions accepted</h2><img src="{plots['acceptance']}" alt="acceptance">
{'<h2>Production</h2><img src="production.png" alt="production">' if "production" in plots else ""}
{_strategy_section(strategy, folder)}
</body></html>"""
    path = folder / "report.html"
    path.write_text(page)
    return path
