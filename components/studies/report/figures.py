"""The report's plots: the learning curve, the per-class figures with their intervals, the confusion
matrix, acceptance by model version, and production against validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.studies.report.contents import Report
from components.studies.report.feedback import BINS


def draw_plots(report: Report, labels: Sequence[str], folder: Path) -> dict[str, str]:
    """Draw the report's plots as PNG files in `folder`. Returns each plot's name -> its file name."""
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
