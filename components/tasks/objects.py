"""What the task types of objects (boxes, masks) share: their target, a region's one label, matching
objects one to one, what a detector's output shows a person, and the out-of-fold reading their label
check runs on.

Target: the image's size and its objects in pixels of the original image, as JSON
(`{"width": W, "height": H, "boxes": [{"label", "x", "y", "w", "h"}]}`, x/y the top-left corner; for
masks each object also has its `mask`, COCO compressed RLE of the whole image). A detector's output
for one image is rows (x1, y1, x2, y2, score, class index) in model pixels, best first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold
from torch import nn

from components.core.errors import AnnotationError
from components.core.labeling_config import LabelingConfig
from components.networks.detectors import keep_confident
from components.networks.preprocessing import load_images
from components.core.effort import Edits, EffortCosts, effort_saved
from components.core.task_type import CrossValidation, Reading, TaskType

log = logging.getLogger(__name__)

SHOWN_FROM = 0.3  # objects scored at least this are suggested, unless the model carries its own operating point
# (`shown_from`): docs/studies/detector-choice.md found 0.3 the best exact-match share
OPERATING_POINTS = (SHOWN_FROM, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.4, 0.5, 0.6)  # tried in this order: moving off 0.3 must save
SAME_OBJECT_IOU = 0.5  # a box overlapping a better-scored one (any class) by more is a second guess, not shown
CANDIDATE_FROM = 0.05  # objects scored at least this count as what the model considered (confidence, "label next")

# --- the target ------------------------------------------------------------------------------------


def make_target(width: int, height: int, boxes: Sequence[Mapping[str, Any]]) -> str:
    """The manifest's text for an image's boxes (pixels; a `score` per box is kept when given, and
    for instance segmentation a `mask`, COCO compressed RLE counts of the whole image)."""
    ordered = sorted(boxes, key=lambda b: (float(b["y"]), float(b["x"]), str(b["label"])))
    return json.dumps(
        {
            "width": int(width),
            "height": int(height),
            "boxes": [
                {"label": str(b["label"]), **{k: round(float(b[k]), 2) for k in ("x", "y", "w", "h")},
                 **({"score": round(float(b["score"]), 4)} if "score" in b else {}),
                 **({"mask": b["mask"]} if "mask" in b else {})}
                for b in ordered
            ],
        },
        separators=(",", ":"),
    )


def parse_target(target: str) -> dict[str, Any]:
    """The manifest's text -> {"width", "height", "boxes"}."""
    return json.loads(target)


# --- Label Studio regions --------------------------------------------------------------------------


def regions_of(result: Sequence[Mapping[str, Any]], config: LabelingConfig) -> list[Mapping[str, Any]]:
    """The regions of a Label Studio result that belong to the config's labeling control."""
    return [
        r for r in result
        if isinstance(r, Mapping) and r.get("from_name") == config.from_name and isinstance(r.get("value"), Mapping)
    ]


def single_label(value: Mapping[str, Any], config: LabelingConfig, where: str, task_id: int) -> str:
    """A region's one label, which the config must hold.

    Raises:
        AnnotationError: None or several labels, or one the config lacks; the message starts with `where`.
    """
    picked = value.get(config.result_type) or []
    if not isinstance(picked, list) or len(picked) != 1:
        raise AnnotationError(f"{where} has labels {picked}; give each region exactly one label.", [task_id])
    if picked[0] not in config.labels:
        raise AnnotationError(
            f"{where} uses label {picked[0]!r}, which is not in the labeling config {list(config.labels)}. Fix the "
            "region, or add the label to the config.", [task_id],
        )
    return str(picked[0])


def _assign(overlaps: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """The most (predicted, true) pairs overlapping by at least `threshold`, one to one (ties broken
    toward larger overlaps): a maximum matching, not a greedy one."""
    from scipy.optimize import linear_sum_assignment

    if not overlaps.size:
        return []
    eligible = overlaps >= threshold
    rows, cols = linear_sum_assignment(-(eligible + 1e-3 * overlaps))
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if eligible[i, j]]


def edits_between(
    predicted: Sequence[tuple[str, np.ndarray]],
    truth: Sequence[tuple[str, np.ndarray]],
    overlap: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threshold: float,
    near: float,
) -> Edits:
    """How a person turns the predicted objects into the true ones: a true object with its own
    predicted one of the same class overlapping by at least `threshold` is kept; of the rest, one with
    a predicted object overlapping by at least `near` (any class) is adjusted; the predicted objects
    left over are deleted and the true ones left over drawn.

    Args:
        predicted: (label, box or mask) of each predicted object.
        truth: (label, box or mask) of each true object.
        overlap: The pairwise IoU of two stacks of boxes or masks, (N, ...) and (M, ...) -> (N, M).
        threshold: The least IoU of an object kept as suggested.
        near: The least IoU of a suggestion worth adjusting rather than deleting.
    """
    if not predicted or not truth:
        return Edits(deleted=len(predicted), drawn=len(truth))
    overlaps = overlap(np.stack([o for _, o in predicted]), np.stack([o for _, o in truth]))
    same = np.array([[p == t for t, _ in truth] for p, _ in predicted], dtype=bool)
    kept = _assign(np.where(same, overlaps, 0.0), threshold)
    rest_p = [i for i in range(len(predicted)) if i not in {i for i, _ in kept}]
    rest_t = [j for j in range(len(truth)) if j not in {j for _, j in kept}]
    adjusted = _assign(overlaps[np.ix_(rest_p, rest_t)], near) if rest_p and rest_t else []
    return Edits(
        kept=len(kept), adjusted=len(adjusted),
        deleted=len(rest_p) - len(adjusted), drawn=len(rest_t) - len(adjusted),
    )


def one_to_one(
    predicted: Sequence[tuple[str, np.ndarray]],
    truth: Sequence[tuple[str, np.ndarray]],
    overlap: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threshold: float,
) -> bool:
    """True when each true object has its own predicted object of the same class, overlapping it by at
    least `threshold`, and no predicted object is left over (nothing missing, nothing extra): a person
    keeps the whole suggestion as it is.

    Args:
        predicted: (label, box or mask) of each predicted object.
        truth: (label, box or mask) of each true object.
        overlap: The pairwise IoU of two stacks of boxes or masks, (N, ...) and (M, ...) -> (N, M).
        threshold: The least IoU of a match.
    """
    if len(predicted) != len(truth):
        return False
    return edits_between(predicted, truth, overlap, threshold, threshold).kept == len(truth)


# --- what a detector's output shows ----------------------------------------------------------------


def detections_of(rows: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """One image's (K, 6) rows -> torchmetrics' {"boxes", "scores", "labels"}, scored >= threshold."""
    keep = rows[:, 4] >= threshold
    return {"boxes": rows[keep, :4], "scores": rows[keep, 4], "labels": rows[keep, 5].long()}


def answer_of(rows: torch.Tensor, threshold: float = SHOWN_FROM) -> dict[str, torch.Tensor]:
    """What a person is shown for one image: boxes scored >= threshold with some area (clipping at
    the edge may leave none), one per object (the best guess); `index` says which rows they are."""
    visible = ((rows[:, 2] - rows[:, 0]) >= 1) & ((rows[:, 3] - rows[:, 1]) >= 1)
    every = {"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].long(), "index": torch.arange(len(rows))}
    return keep_confident({key: value[visible] for key, value in every.items()}, threshold, SAME_OBJECT_IOU)


def confidence_of(answer: dict[str, torch.Tensor], candidates: torch.Tensor) -> float:
    """How sure the model is of a whole answer: its weakest box's score, or, when it shows no box,
    one minus the best score of anything it left out."""
    if len(answer["scores"]):
        return float(answer["scores"].min())
    return 1.0 - float(candidates.max()) if len(candidates) else 1.0


def borderline(candidates: torch.Tensor, line: float = SHOWN_FROM) -> float:
    """What "Label next" ranks by: how close an image's most borderline object (candidate scores) is
    to the line between shown and not shown (`line`), in [0, 1]; 0 when nothing was found."""
    distance = (candidates - line).abs() / max(line, 1 - line)
    return float(1.0 - distance.min()) if len(candidates) else 0.0


def reading(
    task_type: TaskType, target: str, config: LabelingConfig, shown: torch.Tensor, candidates: torch.Tensor, line: float = SHOWN_FROM
) -> Reading:
    """One image's answer for Label Studio: its objects (`target`), the scores of those shown and of
    every candidate (scored at least CANDIDATE_FROM) giving its confidence and how borderline it is
    (against `line`, the score objects are shown from)."""
    confidence = confidence_of({"scores": shown}, candidates)
    return Reading(target, task_type.result_of(target, config), round(confidence, 4), borderline(candidates, line))


def shown_from(model: nn.Module) -> float:
    """The score a model's objects are suggested from: its own operating point (`choose_shown_from`,
    chosen when it was registered), else SHOWN_FROM."""
    return float(getattr(model, "shown_from", None) or SHOWN_FROM)


def choose_shown_from(
    found: Sequence[Sequence[tuple[str, np.ndarray, float]]],
    truth: Sequence[Sequence[tuple[str, np.ndarray]]],
    overlap: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threshold: float,
    near: float,
    costs: EffortCosts,
) -> tuple[float, float | None]:
    """The operating point: the score from which suggesting an object costs a person the fewest seconds
    on the validation images (`Edits.seconds` with the project's per-action times), and the effort it saves.

    Args:
        found: Per image, what the model found from the lowest of OPERATING_POINTS: (label, box or mask, score).
            The objects shown from a higher score are those scored at least that (the answer only drops objects).
        truth: Per image, the true objects (label, box or mask).
        overlap, threshold, near: As `edits_between`.
        costs: Seconds per action.

    Returns:
        (score to show objects from, effort saved there; None without true objects). SHOWN_FROM unless
        another point saves seconds.
    """
    best: tuple[float, float, Edits] | None = None
    for point in OPERATING_POINTS:
        edits = Edits()
        for objects, true in zip(found, truth, strict=True):
            edits += edits_between([(label, shape) for label, shape, score in objects if score >= point], true, overlap, threshold, near)
        seconds = edits.seconds(costs)
        if best is None or seconds < best[0] - 1e-6:
            best = (seconds, point, edits)
    assert best is not None
    return best[1], effort_saved(best[2], costs)


def per_class_ap(by_class: Mapping[str, torch.Tensor], labels: Sequence[str]) -> dict[str, float]:
    """Class -> its AP, from torchmetrics' `MeanAveragePrecision(class_metrics=True)`. A class absent
    from the validation split has no AP (torchmetrics says -1): left out, not 0."""
    classes = torch.atleast_1d(by_class.get("classes", torch.empty(0))).tolist()
    aps = torch.atleast_1d(by_class.get("map_per_class", torch.empty(0))).tolist()
    return {labels[int(c)]: float(ap) for c, ap in zip(classes, aps, strict=True) if 0 <= int(c) < len(labels) and ap >= 0}


# --- the label check's out-of-fold reading ---------------------------------------------------------


def out_of_fold(check: CrossValidation, run: Callable[[nn.Module, torch.Tensor], list[Any]]) -> tuple[pd.DataFrame, list[Any], int] | None:
    """Each of the check's manifest rows read by a model trained on the other folds (k-fold over images).

    Args:
        check: The snapshot's labels to cross-validate.
        run: A model's per-image output for a batch of images.

    Returns:
        The manifest (indexed from 0), `run`'s output for each of its rows in that order, and the
        models' input size; None when there are fewer than 2 labeled images (said in the log).
    """
    folder, manifest, _, train_fold, folds, seed, progress = check.unpacked()
    manifest = manifest.reset_index(drop=True)
    if len(manifest) < 2:
        log.warning("Not checking labels: cross-validation needs at least 2 labeled images.")
        return None
    k = max(2, min(folds, len(manifest)))
    outputs: list[Any] = [None] * len(manifest)
    image_size = 0
    for i, (fit_rows, held_rows) in enumerate(KFold(n_splits=k, shuffle=True, random_state=seed).split(manifest), start=1):
        progress(f"fold {i}/{k}")
        model = train_fold(manifest.iloc[fit_rows])
        image_size = model.image_size
        held = load_images([Path(folder) / p for p in manifest["image"].iloc[held_rows]], image_size)
        for j, output in zip(held_rows, run(model, held), strict=True):
            outputs[j] = output
    return manifest, outputs, image_size
