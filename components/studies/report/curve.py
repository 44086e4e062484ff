"""The learning curve: a model's score against the labels it saw, and the inverse power law fitted
through it (what says how many more labels reach the target)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


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
