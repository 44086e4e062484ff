"""How the model's output is received: how often people keep its suggestions in Label Studio
(`measure_acceptance`), and how its answers in production compare with validation (`production_view`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.core.labeling_config import LabelingConfig
from components.core.conversions import current_annotation, task_from_json
from components.core.effort import EffortCosts, Edits, effort_saved
from components.core.task_type import TaskType


@dataclass(frozen=True)
class Acceptance:
    """Annotations made from a suggestion, and how many kept the suggested label; for boxes and masks,
    what people did object by object (`edits`) and the annotation time that saved (`effort_saved`)."""

    shown: int
    accepted: int
    by_model_version: dict[str, tuple[int, int]] = field(default_factory=dict)
    edits: Edits | None = None
    effort_saved: float | None = None

    @property
    def rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None

    @property
    def objects_kept(self) -> float | None:
        """True objects whose suggested object was kept as it is / true objects, over annotations made from a suggestion."""
        return self.edits.kept / self.edits.objects if self.edits and self.edits.objects else None


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


def measure_acceptance(
    tasks: Iterable[Mapping[str, Any]], config: LabelingConfig, task_type: TaskType, costs: EffortCosts | None = None
) -> Acceptance:
    """Compare each task's current annotation with the prediction it was started from.

    Args:
        tasks: Label Studio task JSON with annotations and predictions.
        config: The labeling config.
        task_type: Says whether an annotation kept a suggestion unchanged, and what was done to its objects.
        costs: Seconds per action on one object: with them, the effort the suggestions saved.
    """
    by_version: dict[str, list[int]] = {}
    edits: Edits | None = None
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
        done = task_type.edits(prediction.get("result") or [], annotation.result, config)
        if done is not None:
            edits = done if edits is None else edits + done
    return Acceptance(
        shown=sum(c[0] for c in by_version.values()),
        accepted=sum(c[1] for c in by_version.values()),
        by_model_version={v: (c[0], c[1]) for v, c in by_version.items()},
        edits=edits,
        effort_saved=effort_saved(edits, costs) if edits is not None and costs is not None else None,
    )
