"""Instance segmentation (`<BrushLabels>` or `<PolygonLabels>`): one mask per object, one class each.

Target: detection's (`tasks.objects.make_target`: the image's size and its objects in pixels of
the original image) with each object's mask as COCO compressed RLE of the whole image (`mask`) and
its box the tight box of that mask. Every change of a mask's form (Label Studio's brush RLE, polygon
points, COCO RLE) is in `components.data.masks`. Model: a segmenter of `components.networks.segmenters`
(`mask_centernet`: the detector with a RoIAlign mask head, pasted back at pixel centres); promotion compares mask mAP@0.5
(mask mAP@0.5:0.95 breaks ties) with torchmetrics (`iou_type="segm"`). A suggestion is the objects
the detector would show, each outlined (a brush mask, or a polygon for a polygon project) with its
score. A suggestion is kept when every mask matches a drawn one of the same class at mask IoU >=
`MASK_MATCH_IOU`, nothing missing, nothing extra. The error finder flags a drawn mask that no
confident out-of-fold mask of its class overlaps well, and a confident out-of-fold mask nothing drawn
covers.

An annotation with no region is a valid label ("nothing here"). A brush RLE that does not decode or
has another size than the image, a polygon whose edges cross or with fewer than three corners, a
region that covers no pixel, or a label the config lacks leaves the task out of the snapshot
(quarantined with that reason); the rest trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from components.core.conversions import Annotation
from components.core.errors import AnnotationError
from components.data.images import shown_size
from components.core.labeling_config import LabelingConfig
from components.data.masks import (
    brush_of, coco_of, mask_iou, mask_of_brush, mask_of_coco, mask_of_polygon, points_in_percent, points_in_pixels,
    polygon_of, polygon_problem, tight_box,
)
from components.networks.segmenters import SEGMENTERS, mask_region
from components.networks.compute import infer
from components.core.effort import Edits
from components.core.task_type import Reading, Scores, ranked_label_table
from components.tasks.detection import Detection, DetectionModel
from components.tasks.object_training import BoxesDataset, DetectionDataModule
from components.tasks.objects import (
    CANDIDATE_FROM, OPERATING_POINTS, SAME_OBJECT_IOU, SHOWN_FROM, answer_of, choose_shown_from, confidence_of, detections_of,
    edits_between, make_target, one_to_one, shown_from,
    parse_target, per_class_ap, reading, regions_of, single_label,
)

MASK_MATCH_IOU = 0.8  # a suggested mask is kept as drawn when its mask IoU with the drawn one is >= this
MASK_NEAR_IOU = 0.5  # below MASK_MATCH_IOU but at least this, a suggested mask is corrected rather than deleted
SUSPECT_BELOW = 0.5  # an error-check quality below this marks the image a suspect
MAX_INSTANCES = 20  # objects per image the model outlines (the demo has at most 4)


# --- Label Studio results <-> masks ------------------------------------------------------------------


def _region_mask(region: Mapping[str, Any], config: LabelingConfig, width: int, height: int) -> np.ndarray:
    """A brush or polygon region -> its mask on a `width` x `height` image.

    Raises:
        ValueError: The region cannot be a mask; the message says why.
    """
    value = region["value"]
    drawn_on = (region.get("original_width"), region.get("original_height"))
    if config.control_type == "BrushLabels":
        if value.get("format", "rle") != "rle":
            raise ValueError(f"its format is {value.get('format')!r}; flywheel reads Label Studio's brush RLE")
        if None not in drawn_on and tuple(drawn_on) != (width, height):
            raise ValueError(f"it was drawn on a {drawn_on[0]}x{drawn_on[1]} image, but the image is {width}x{height}")
        return mask_of_brush(value.get("rle"), width, height)
    try:
        points = points_in_pixels(value.get("points") or [], width, height)
    except (TypeError, ValueError):
        raise ValueError("its points are not [x, y] pairs") from None
    problem = polygon_problem(points)
    if problem:
        raise ValueError(problem)
    return mask_of_polygon(points, width, height)


def objects_of(annotation: Annotation, config: LabelingConfig, task_id: int, width: int, height: int) -> list[dict[str, Any]]:
    """An annotation's objects on a `width` x `height` image: label, tight box and mask (COCO RLE).

    Raises:
        AnnotationError: A region has no single known label, or cannot be a mask (see the module
            docstring); the message names the task and the region and says what to do.
    """
    kind = "mask" if config.control_type == "BrushLabels" else "polygon"
    objects = []
    for i, region in enumerate(regions_of(annotation.result, config), start=1):
        where = f"Task {task_id}: annotation {annotation.id}, {kind} {i}"
        label = single_label(region["value"], config, where, task_id)
        try:
            mask = _region_mask(region, config, width, height)
        except ValueError as e:
            raise AnnotationError(f"{where} cannot be read: {e}. Redraw this {kind} in Label Studio; the rest trains.", [task_id]) from None
        if not mask.any():
            raise AnnotationError(f"{where} covers no pixel of the image; delete it or redraw it.", [task_id])
        x, y, w, h = tight_box(mask)
        objects.append({"label": label, "x": x, "y": y, "w": w, "h": h, "mask": coco_of(mask)})
    return objects


def _read_result(result: Sequence[Mapping[str, Any]], config: LabelingConfig) -> list[tuple[str, np.ndarray]] | None:
    """(label, mask) of each region of a result, on the size the regions were drawn on; None when a
    region cannot be read this way."""
    out = []
    for region in regions_of(result, config):
        try:
            width, height = int(region["original_width"]), int(region["original_height"])
            picked = region["value"].get(config.result_type) or []
            if len(picked) != 1:
                return None
            out.append((str(picked[0]), _region_mask(region, config, width, height)))
        except (KeyError, TypeError, ValueError):
            return None
    if len({m.shape for _, m in out}) > 1:
        return None
    return out


def masks_match(predicted: Sequence[tuple[str, np.ndarray]], truth: Sequence[tuple[str, np.ndarray]]) -> bool:
    """True when every true mask has its own predicted mask of the same class at mask IoU >=
    MASK_MATCH_IOU, and no predicted mask is left over."""
    return one_to_one(predicted, truth, mask_iou, MASK_MATCH_IOU)


def mask_edits(predicted: Sequence[tuple[str, np.ndarray]], truth: Sequence[tuple[str, np.ndarray]]) -> Edits:
    """Object by object, what a person does to the predicted masks to get the true ones (kept at mask
    IoU >= MASK_MATCH_IOU with the same class; corrected at >= MASK_NEAR_IOU; the rest deleted or painted)."""
    return edits_between(predicted, truth, mask_iou, MASK_MATCH_IOU, MASK_NEAR_IOU)


# --- the model ---------------------------------------------------------------------------------------


class SegmentationModel(DetectionModel):
    """What is logged and served: images (N, 3, S, S) in [0, 1] -> (detections (N, K, 6) as
    `DetectionModel`, mask probabilities (N, K, M, M) on each detection's box)."""

    output_names = ("detections", "masks")

    def __init__(self, net: nn.Module, labels: Sequence[str], image_size: int, max_detections: int = MAX_INSTANCES):
        super().__init__(net, labels, image_size, max_detections)

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(detections, mask probabilities, embeddings) of a batch."""
        outputs = self.net(images)
        rows = self.net.decode_padded(outputs, self.max_detections)
        rows = torch.cat([rows[..., :4].clamp(0, self.image_size), rows[..., 4:]], dim=-1)
        return rows, self.net.decode_masks(outputs, rows), self.net.embed(outputs)

    def detections_and_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, _, embeddings = self.outputs(images)
        return rows, embeddings

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, masks, _ = self.outputs(images)
        return rows, masks

    def masks_of_boxes(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The mask head on boxes a person drew (the mask assistant): one image (1, 3, S, S), boxes (K, 4)
        xyxy in model pixels -> mask probabilities (K, M, M) over each box's `mask_region`."""
        outputs = self.net(image)
        index = torch.zeros(len(boxes), 1, dtype=boxes.dtype, device=boxes.device)
        return self.net.mask_logits(outputs, torch.cat([index, boxes], dim=1)).sigmoid()


def paste(masks: torch.Tensor, boxes: torch.Tensor, image_size: int, width: int, height: int) -> np.ndarray:
    """Mask probabilities (K, M, M) of detected boxes (K, 4) in model pixels -> boolean masks
    (K, height, width) on the original image: each mask covers its box's `mask_region` and is sampled
    at the centres of the image's pixels there (the convention RoIAlign trained it with: pixel i
    covers [i, i + 1)), in at probability >= 0.5."""
    out = np.zeros((len(masks), height, width), dtype=bool)
    scale = torch.tensor([width / image_size, height / image_size] * 2, dtype=torch.float32)
    for k, (mask, box) in enumerate(zip(masks, mask_region(boxes.float().reshape(-1, 4)) * scale, strict=True)):
        x1, y1, x2, y2 = box.tolist()
        left, top = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        right, bottom = min(int(np.ceil(x2)), width), min(int(np.ceil(y2)), height)
        if right <= left or bottom <= top or x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        # where each pixel centre falls in the box, in grid_sample's [-1, 1] over the M x M mask
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(mask[None, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[k, top:bottom, left:right] = (sampled[0, 0] >= 0.5).numpy()
    return out


def _answer(
    rows: torch.Tensor, masks: torch.Tensor, labels: Sequence[str], image_size: int, width: int, height: int, threshold: float = SHOWN_FROM
) -> list[dict[str, Any]]:
    """The objects a person is shown on one image, in original pixels, each with mask and score."""
    shown = answer_of(rows, threshold)
    pasted = paste(masks[shown["index"]], shown["boxes"], image_size, width, height)
    objects = []
    for mask, score, label in zip(pasted, shown["scores"].tolist(), shown["labels"].tolist(), strict=True):
        if mask.any():  # a box whose mask came out empty shows nothing a person could keep
            x, y, w, h = tight_box(mask)
            objects.append({"label": labels[int(label)], "x": x, "y": y, "w": w, "h": h, "mask": coco_of(mask), "score": score})
    return objects


def _named_masks(target: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    return [(o["label"], mask_of_coco(o["mask"], target["width"], target["height"])) for o in target["boxes"]]


def _per_image(model: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model.eval()
    out = []
    with torch.no_grad():
        for chunk in images.split(64):
            rows, masks = model(chunk)
            out.extend(zip(rows, masks, strict=True))
    return out


def label_quality(drawn: Sequence[tuple[str, np.ndarray]], candidates: Sequence[Mapping[str, Any]], width: int, height: int) -> float:
    """How much an out-of-fold model backs an image's drawn masks, in [0, 1]: its worst object's.

    A drawn mask scores its best mask IoU with an out-of-fold mask of its class, discounted when that
    mask was not confident enough to be shown (score / SHOWN_FROM below it): a missed object, or one
    the model calls something else, ranks by how sure the model was. A shown out-of-fold mask that no
    drawn mask overlaps by SAME_OBJECT_IOU (an object left unlabeled) scores 1 - its score.
    """
    found = [(o["label"], mask_of_coco(o["mask"], width, height), float(o["score"])) for o in candidates]
    if not drawn and not found:
        return 1.0
    overlaps = mask_iou(
        np.stack([m for _, m in drawn]) if drawn else np.zeros((0, height, width), bool),
        np.stack([m for _, m, _ in found]) if found else np.zeros((0, height, width), bool),
    )
    backing = np.array([min(1.0, s / SHOWN_FROM) for _, _, s in found])
    same = np.array([[d == f for f, _, _ in found] for d, _ in drawn], dtype=bool).reshape(len(drawn), len(found))
    scores = [float((np.where(same[i], overlaps[i], 0.0) * backing).max(initial=0.0)) for i in range(len(drawn))]
    scores += [1.0 - s for j, (_, _, s) in enumerate(found) if s >= SHOWN_FROM and overlaps[:, j].max(initial=0.0) < SAME_OBJECT_IOU]
    return min(scores, default=1.0)


class SegmentationDataModule(DetectionDataModule):
    """A snapshot's splits with boxes and masks scaled with the image to S x S (`Detector` jitters
    all three when `augment`); arguments as `training.SplitsDataModule`."""

    def tensors_of(self, target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Detection's boxes and class indices, and the masks (K, S, S) in model pixels."""
        masks = torch.from_numpy(np.stack([m for _, m in _named_masks(target)]) if target["boxes"] else np.zeros((0, 1, 1), bool))
        # the share of each model pixel the mask covers (area sampling keeps thin strokes of large images)
        masks = F.interpolate(masks[None].float(), size=(self.image_size, self.image_size), mode="area")[0] >= 0.5 if len(masks) else torch.zeros(0, self.image_size, self.image_size, dtype=torch.bool)
        return {**super().tensors_of(target), "masks": masks}


class Segmentation(Detection):
    """Instance segmentation: a mask per object (brush or polygon)."""

    name = "segmentation"
    metric = "mask_map50"
    metric_title = "mask mAP@0.5"
    secondary_metric = "mask_map50_95"
    count_noun = "masks"
    drawn_as = "masks"
    per_class_metric = "ap"
    keeps_best_checkpoint = False  # as detection: the end of the one-cycle schedule
    networks = SEGMENTERS
    data_module = SegmentationDataModule
    inference_class = SegmentationModel
    per_image = staticmethod(_per_image)

    def target_of(self, annotation: Annotation, config: LabelingConfig, task_id: int, image: Path) -> str:
        width, height = shown_size(image)
        return make_target(width, height, objects_of(annotation, config, task_id, width, height))

    def result_of(self, target: str, config: LabelingConfig) -> list[dict[str, Any]]:
        parsed = parse_target(target)
        width, height = parsed["width"], parsed["height"]
        results = []
        for i, (obj, (label, mask)) in enumerate(zip(parsed["boxes"], _named_masks(parsed), strict=True)):
            if config.control_type == "BrushLabels":
                value = {"format": "rle", "rle": brush_of(mask), config.result_type: [label]}
            else:
                value = {"points": points_in_percent(polygon_of(mask), width, height), "closed": True, config.result_type: [label]}
            results.append({
                "id": f"mask{i}", "from_name": config.from_name, "to_name": config.to_name, "type": config.result_type,
                "original_width": width, "original_height": height, "image_rotation": 0, "value": value,
                **({"score": obj["score"]} if "score" in obj else {}),
            })
        return results

    def agree(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> bool | None:
        truth = _read_result(annotated, config)
        if truth is None:
            return None
        suggested = _read_result(predicted, config)
        if suggested is None or (suggested and truth and suggested[0][1].shape != truth[0][1].shape):
            return False
        return masks_match(suggested, truth)

    def edits(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> Edits | None:
        truth, suggested = _read_result(annotated, config), _read_result(predicted, config)
        if truth is None or suggested is None or (suggested and truth and suggested[0][1].shape != truth[0][1].shape):
            return None
        return mask_edits(suggested, truth)

    def evaluate(self, model: nn.Module, val_set: BoxesDataset, labels: Sequence[str]) -> Scores:
        names = ("mask_map50", "mask_map50_95", "box_map50", "exact_match")
        if not len(val_set):
            return Scores(0.0, 0.0, np.zeros(0, dtype=bool), dict.fromkeys(names, 0.0))
        size = model.image_size
        overall = MeanAveragePrecision(iou_type=("bbox", "segm"))
        per_class = MeanAveragePrecision(iou_type="segm", iou_thresholds=[0.5], class_metrics=True)
        correct = []
        for (rows, masks), truth in zip(_per_image(model, val_set.images), val_set.targets, strict=True):
            visible = ((rows[:, 2] - rows[:, 0]) >= 1) & ((rows[:, 3] - rows[:, 1]) >= 1)
            found = detections_of(rows[visible], 0.0)
            found["masks"] = torch.from_numpy(paste(masks[visible], found["boxes"], size, size, size))
            for metric in (overall, per_class):
                metric.update([found], [truth])
            shown = _answer(rows, masks, labels, size, size, size, threshold=shown_from(model))
            correct.append(masks_match(
                [(o["label"], mask_of_coco(o["mask"], size, size)) for o in shown],
                [(labels[int(c)], m.numpy()) for c, m in zip(truth["labels"], truth["masks"], strict=True)],
            ))
        result, by_class = overall.compute(), per_class.compute()
        metrics = {
            "mask_map50": max(float(result["segm_map_50"]), 0.0),
            "mask_map50_95": max(float(result["segm_map"]), 0.0),
            "box_map50": max(float(result["bbox_map_50"]), 0.0),
            "exact_match": float(np.mean(correct)),
        }
        return Scores(
            score=metrics["mask_map50"],
            tiebreak=metrics["mask_map50_95"],
            correct=np.array(correct, dtype=bool),
            metrics=metrics,
            per_class=per_class_ap(by_class, labels),
        )

    def operating_point(self, model: nn.Module, val_set: BoxesDataset, labels: Sequence[str], costs: Any) -> tuple[float, float | None] | None:
        if not len(val_set):
            return None
        size = model.image_size
        found, truth = [], []
        for (rows, masks), t in zip(_per_image(model, val_set.images), val_set.targets, strict=True):
            objects = _answer(rows, masks, labels, size, size, size, threshold=min(OPERATING_POINTS))
            found.append([(o["label"], mask_of_coco(o["mask"], size, size), float(o["score"])) for o in objects])
            truth.append([(labels[int(c)], m.numpy()) for c, m in zip(t["labels"], t["masks"], strict=True)])
        return choose_shown_from(found, truth, mask_iou, MASK_MATCH_IOU, MASK_NEAR_IOU, costs)

    def read(
        self, model: nn.Module, images: torch.Tensor, config: LabelingConfig, sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[list[Reading], np.ndarray]:
        rows, masks, embeddings = infer(model, model.outputs, images)
        size = model.image_size
        readings = []
        line = shown_from(model)
        for i, (image_rows, image_masks) in enumerate(zip(rows, masks, strict=True)):
            width, height = sizes[i] if sizes is not None else (size, size)
            objects = _answer(image_rows, image_masks, model.labels, size, width, height, threshold=line)
            target = make_target(width, height, objects)
            shown = torch.tensor([o["score"] for o in objects])
            readings.append(reading(self, target, config, shown, answer_of(image_rows, CANDIDATE_FROM)["scores"], line))
        return readings, embeddings.numpy()

    def judge_labels(
        self, manifest: pd.DataFrame, labels: Sequence[str], outputs: Sequence[Any], image_size: int
    ) -> tuple[pd.DataFrame, float]:
        """Out-of-fold masks against the drawn ones (`label_quality`); below SUSPECT_BELOW the image is a suspect."""
        suggestions, confidence, quality, correct = [], [], [], []
        for text, (rows, masks) in zip(manifest["label"], outputs, strict=True):
            target = parse_target(text)
            answer = _answer(rows, masks, labels, image_size, target["width"], target["height"])
            candidates = _answer(rows, masks, labels, image_size, target["width"], target["height"], threshold=CANDIDATE_FROM)
            drawn = _named_masks(target)
            found = [(o["label"], mask_of_coco(o["mask"], target["width"], target["height"])) for o in answer]
            quality.append(label_quality(drawn, candidates, target["width"], target["height"]))
            suggestions.append(make_target(target["width"], target["height"], answer))
            confidence.append(confidence_of({"scores": torch.tensor([o["score"] for o in answer])}, torch.tensor([o["score"] for o in candidates])))
            correct.append(masks_match(found, drawn))
        table = ranked_label_table(manifest, suggestions, quality, np.array(quality) < SUSPECT_BELOW, confidence)
        return table, float(np.mean(correct)) if correct else 0.0
