"""What a suggestion saves a person, object by object: the edits that turn it into their annotation,
and the seconds those edits cost against drawing every object (params.yaml `strategy.seconds_per_object`
and `strategy.seconds_per_action`, published per-action times)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edits:
    """What a person does to turn a suggestion into their annotation, object by object.

    Attributes:
        kept: True objects whose suggested object was kept as it is (same class, overlapping enough).
        adjusted: True objects whose suggestion was near (right place, wrong class or loose outline) and fixed.
        deleted: Suggested objects that match nothing and were deleted.
        drawn: True objects nothing was suggested for, drawn from nothing.
    """

    kept: int = 0
    adjusted: int = 0
    deleted: int = 0
    drawn: int = 0

    @property
    def objects(self) -> int:
        """The true objects of the image."""
        return self.kept + self.adjusted + self.drawn

    def __add__(self, other: Edits) -> Edits:
        return Edits(self.kept + other.kept, self.adjusted + other.adjusted, self.deleted + other.deleted, self.drawn + other.drawn)

    def seconds(self, costs: EffortCosts) -> float:
        """Annotation seconds with the suggestion: verify what is kept, verify and fix what is near,
        delete what is wrong, draw what is missing."""
        return (self.kept * costs.verify + self.adjusted * (costs.verify + costs.adjust)
                + self.deleted * costs.delete + self.drawn * costs.draw)

    def seconds_without(self, costs: EffortCosts) -> float:
        """Annotation seconds with no suggestion: every object drawn."""
        return self.objects * costs.draw


@dataclass(frozen=True)
class EffortCosts:
    """Seconds a person spends per action on one object (params.yaml `strategy.seconds_per_action`)."""

    draw: float
    verify: float
    adjust: float
    delete: float


def effort_saved(edits: Edits, costs: EffortCosts) -> float | None:
    """1 - annotation seconds with suggestions / seconds without; None when there was nothing to draw."""
    without = edits.seconds_without(costs)
    return 1.0 - edits.seconds(costs) / without if without else None


@dataclass(frozen=True)
class MaskCosts:
    """Seconds a person spends on one mask with the assistant (params.yaml `strategy`).

    Attributes:
        box: Drawing the smart box (`seconds_per_object.boxes`).
        verify: Looking at the mask that comes back (`seconds_per_action.verify`).
        click: One correction click on or off the object (`seconds_per_action.click`).
        draw: Drawing the mask by hand when clicks do not get it right (`seconds_per_object.masks`).
        max_clicks: Clicks a person gives before drawing by hand (`strategy.max_clicks`).
    """

    box: float
    verify: float
    click: float
    draw: float
    max_clicks: int
