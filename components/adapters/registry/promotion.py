"""The champion verdict: whether a candidate replaces the champion, judged on the same validation
set, and the outcome (`Promotion`) that `ModelRegistry.promote_if_better` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from components.adapters.registry.versions import RegisteredModel
from components.core.task_type import Scores


@dataclass(frozen=True)
class Promotion:
    """The outcome of comparing a new model with the champion on the same validation set."""

    candidate: RegisteredModel
    promoted: bool
    candidate_score: float
    champion_score: float | None
    champion: RegisteredModel


def replaces(scores: Scores, champion_scores: Scores, more_data: bool) -> bool:
    """Whether a candidate with `scores` replaces a champion with `champion_scores` (the same images).

    A candidate trained on more labeled images than the champion (`more_data`: the loop's next
    model) replaces it unless it is clearly worse: it gets more of these images wrong that the
    champion gets right by more than two standard deviations of that paired difference (McNemar).
    Tiny early validation sets would otherwise keep a stale champion for many iterations. A
    candidate trained on no more data (another architecture on the same snapshot) must beat it: a
    higher score, or an equal one and a better tiebreak.
    """
    if more_data:
        champion_only = int((champion_scores.correct & ~scores.correct).sum())
        candidate_only = int((scores.correct & ~champion_scores.correct).sum())
        return champion_only - candidate_only <= 2 * math.sqrt(champion_only + candidate_only)
    return (scores.score, scores.tiebreak) > (champion_scores.score, champion_scores.tiebreak)
