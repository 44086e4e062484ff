"""What the per-class figures can tell: each class's support (the examples behind its figure), the
95% Wilson interval of that figure, and whether a class is clearly below the others or it is "too
early to tell".

Per-class figures come from the label check's out-of-fold predictions over every label when they are
at hand (`read_out_of_fold`), and from the champion's validation split otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


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
