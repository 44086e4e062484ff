"""`flywheel strategy`'s pure parts: what hours buy, and the one-sentence verdict with its uncertainty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.studies.strategy import Labeled, StrategyPoint, bought, costs_of, target_for, verdict, write

pytestmark = pytest.mark.unit


def curve(strategy: str, ceiling: float, scale: float, hours: list[float], wobble: float = 0.0) -> list[StrategyPoint]:
    return [
        StrategyPoint(strategy, h, 10 * (i + 1), {"box_map50": ceiling - scale * h**-0.7 + wobble * (-1) ** i, "mask_map50": 0.0})
        for i, h in enumerate(hours)
    ]


def test_hours_buy_images_at_each_strategys_cost():
    target = json.dumps({"width": 8, "height": 8, "boxes": [{"label": "1", "x": 0, "y": 0, "w": 2, "h": 2, "mask": "x"}] * 3})
    seconds = costs_of(json.loads(target), {"boxes": 7.0, "masks": 79.0})
    assert seconds == {"boxes": 21.0, "masks": 237.0}
    items = [Labeled(Path(f"{i}.png"), target, seconds) for i in range(100)]
    assert len(bought(items, "boxes", 0.1)) == 17  # 360 s / 21 s
    assert len(bought(items, "masks", 0.1)) == 1
    assert "mask" not in target_for("boxes", target) and target_for("masks", target) == target


def test_a_clear_winner_is_named_with_hours_and_an_interval():
    hours_boxes, hours_masks = [0.25, 0.5, 1, 2, 4], [0.5, 1, 2, 4, 8]
    points = curve("boxes", 0.9, 0.3, hours_boxes) + curve("masks", 0.75, 0.5, hours_masks)
    said = verdict(points, "box_map50", 0.7)
    assert said.sooner == "boxes" and said.hours["boxes"] is not None
    low, high = said.hours["boxes"][1], said.hours["boxes"][2]
    assert low <= said.hours["boxes"][0] <= high
    assert said.sentence.startswith("Boxes reach box mAP@0.5 0.7 sooner") and "80% interval" in said.sentence


def test_curves_that_cannot_be_told_apart_say_so():
    points = curve("boxes", 0.8, 0.3, [0.5, 1, 2], wobble=0.03) + curve("masks", 0.8, 0.3, [0.5, 1, 2], wobble=-0.03)
    said = verdict(points, "box_map50", 0.7)
    assert said.sooner is None and said.sentence.startswith("Too early to tell")


def test_a_target_neither_reaches_and_a_lone_strategy_are_too_early():
    points = curve("boxes", 0.5, 0.2, [0.5, 1, 2]) + curve("masks", 0.4, 0.2, [0.5, 1, 2])
    assert "neither strategy reaches" in verdict(points, "box_map50", 0.9).sentence
    assert verdict(curve("boxes", 0.9, 0.3, [0.5, 1, 2]), "box_map50", 0.7).sentence.startswith("Too early to tell: only boxes")


def test_the_comparison_is_written_with_its_plot(tmp_path):
    points = curve("boxes", 0.9, 0.3, [0.25, 0.5, 1]) + curve("masks", 0.75, 0.5, [0.5, 1, 2])
    verdicts = {"box_map50": verdict(points, "box_map50", 0.7)}
    path = write(points, verdicts, tmp_path, "test", {"boxes": 7.0, "masks": 79.0})
    assert (tmp_path / "strategy.png").stat().st_size > 0 and verdicts["box_map50"].sentence in path.read_text()
    saved = json.loads((tmp_path / "strategy.json").read_text())
    assert len(saved["points"]) == 6 and saved["costs"]["masks"] == 79.0


def test_three_strategies_name_the_first_and_the_hours_it_saves_on_the_next():
    points = (curve("boxes", 0.75, 0.5, [0.5, 1, 2, 4, 8]) + curve("masks", 0.9, 0.3, [1, 2, 4, 8, 16])
              + curve("assisted", 0.9, 0.15, [0.25, 0.5, 1, 2, 4]))
    said = verdict(points, "box_map50", 0.7)
    assert said.sooner == "assisted" and said.hours_saved is not None and said.hours_saved[0] > 0
    assert said.sentence.startswith("Masks with the assistant reach box mAP@0.5 0.7 sooner"), said.sentence
    assert "masks drawn by hand after" in said.sentence and "boxes" in said.sentence and "h sooner than" in said.sentence
