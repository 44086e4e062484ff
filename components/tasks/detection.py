"""Object detection (`<RectangleLabels>`): axis-aligned boxes, one class each.

Target: the image's size and its boxes in pixels of the original image, as JSON (`objects.make_target`).
Label Studio's percent coordinates and pixels are converted in exactly one place: `boxes.box_from_value`
and `boxes.value_from_box`. Model: a detector of `components.networks.detectors` (CenterNet by default, chosen by
`bench/detector_choice.py`), trained by `object_training.Detector`; promotion compares box mAP@0.5
(mAP@0.5:0.95 breaks ties) with torchmetrics. A suggestion is the boxes scored at least `SHOWN_FROM`,
each with its score; its confidence is the weakest shown box's score. "Label next" ranks by the most
borderline box. The error finder is `cleanlab.object_detection` over out-of-fold boxes (overlooked,
swapped and badly located boxes).

An annotation with no box is a valid label: "nothing to detect here". A rotated box, a box with
zero area, one outside the image or with a label the config lacks leaves the task out of the
snapshot (quarantined with that reason, listed in "Needs attention"); the rest trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from components.core.errors import SettingsError
from components.core.labeling_config import LabelingConfig
from components.core.conversions import Annotation
from components.data.images import shown_size
from components.learning.label_errors import TABLE_COLUMNS
from components.networks.detectors import DETECTORS
from components.networks.compute import infer
from components.core.effort import Edits
from components.core.task_type import CrossValidation, Reading, Scores, TaskType, ranked_label_table
from components.tasks.boxes import MATCH_IOU, NEAR_IOU, box_edits, boxes_match, boxes_of, iou, percent_boxes, value_from_box
from components.tasks.object_training import BoxesDataset, DetectionDataModule, Detector, boxes_in_model_pixels
from components.tasks.objects import (
    CANDIDATE_FROM, OPERATING_POINTS, answer_of, choose_shown_from, confidence_of, detections_of, make_target, out_of_fold,
    parse_target, per_class_ap, reading, shown_from,
)

MAX_DETECTIONS = 50


class DetectionModel(nn.Module):
    """What is logged and served: images (N, 3, S, S) in [0, 1] -> detections (N, K, 6), each row
    (x1, y1, x2, y2, score, class index) in input pixels, best first, rows past the last detection
    zero. A fixed-size tensor, so it traces (TorchScript) like any model."""

    exports_onnx = False  # its top-k decoding uses a sort the TorchScript-based ONNX exporter cannot write

    @property
    def exports_torchscript(self) -> bool:
        """Whether it traces: not a network whose detections have a data-dependent size (torchvision's)."""
        return bool(getattr(self.net, "traceable", True))

    def __init__(self, net: nn.Module, labels: Sequence[str], image_size: int, max_detections: int = MAX_DETECTIONS):
        super().__init__()
        self.net = net
        self.labels = list(labels)
        self.image_size = image_size
        self.max_detections = max_detections

    def detections_and_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.net(images)
        rows = self.net.decode_padded(outputs, self.max_detections)
        # a box is never suggested past the image's edge (a person accepting it would get "outside the image")
        boxes = rows[..., :4].clamp(0, self.image_size)
        return torch.cat([boxes, rows[..., 4:]], dim=-1), self.net.embed(outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.detections_and_embeddings(images)[0]


def _per_image(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [rows for chunk in images.split(128) for rows in model(chunk)]


def _named(rows: torch.Tensor, labels: Sequence[str], threshold: float) -> list[tuple[str, np.ndarray]]:
    found = answer_of(rows, threshold)
    return [(labels[int(c)], b.numpy().astype(float)) for b, c in zip(found["boxes"], found["labels"], strict=True)]


def _boxes(shown: dict[str, torch.Tensor], labels: Sequence[str], sx: float = 1.0, sy: float = 1.0) -> list[dict[str, Any]]:
    """The boxes of an answer (`answer_of`) as a target holds them, from model pixels scaled by (sx, sy)."""
    return [
        {"label": labels[int(c)], "x": float(b[0]) * sx, "y": float(b[1]) * sy,
         "w": float(b[2] - b[0]) * sx, "h": float(b[3] - b[1]) * sy, "score": float(s)}
        for b, s, c in zip(shown["boxes"], shown["scores"], shown["labels"], strict=True)
    ]


def _corners(boxes: Sequence[Mapping[str, Any]]) -> list[tuple[str, np.ndarray]]:
    """(label, xyxy) of a target's boxes, for `boxes_match`."""
    return [(b["label"], np.array([b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]])) for b in boxes]


class Detection(TaskType):
    """Object detection with axis-aligned boxes."""

    name = "detection"
    metric = "map50"
    metric_title = "box mAP@0.5"
    secondary_metric = "map50_95"
    count_noun = "boxes"
    drawn_as = "boxes"
    per_class_metric = "ap"
    # the end of the one-cycle schedule, not the epoch of lowest val loss on a handful of images:
    # held-out mAP@0.5 0.606 vs 0.532 at 60 images, 0.747 vs 0.744 at 200 (one seed, 2026-11-26)
    keeps_best_checkpoint = False
    # what differs for a task type of objects built on this one (segmentation)
    networks = DETECTORS
    data_module = DetectionDataModule
    inference_class = DetectionModel
    per_image = staticmethod(_per_image)  # what the label check keeps of a model's output for each image

    def target_of(self, annotation: Annotation, config: LabelingConfig, task_id: int, image: Path) -> str:
        width, height = shown_size(image)
        return make_target(width, height, boxes_of(annotation, config, task_id, width, height))

    def classes_in(self, target: str) -> list[str]:
        return [b["label"] for b in parse_target(target)["boxes"]]

    def result_of(self, target: str, config: LabelingConfig) -> list[dict[str, Any]]:
        parsed = parse_target(target)
        width, height = parsed["width"], parsed["height"]
        return [
            {
                "id": f"box{i}",
                "from_name": config.from_name,
                "to_name": config.to_name,
                "type": config.result_type,
                "value": {**value_from_box(b["x"], b["y"], b["w"], b["h"], width, height), config.result_type: [b["label"]]},
                **({"score": b["score"]} if "score" in b else {}),
            }
            for i, b in enumerate(parsed["boxes"])
        ]

    def agree(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> bool | None:
        truth = percent_boxes(annotated, config)
        if truth is None:
            return None
        suggested = percent_boxes(predicted, config)
        return suggested is not None and boxes_match(suggested, truth)

    def edits(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> Edits | None:
        truth, suggested = percent_boxes(annotated, config), percent_boxes(predicted, config)
        return None if truth is None or suggested is None else box_edits(suggested, truth)

    def builds(self, architecture: str) -> bool:
        return architecture in self.networks

    def datamodule(
        self, folder: Path, manifest: pd.DataFrame, labels: Sequence[str], image_size: int, batch_size: int, augment: bool
    ) -> DetectionDataModule:
        if image_size % 16:
            raise SettingsError(f"train.image_size is {image_size}; detection needs a multiple of 16 (e.g. 128) in params.yaml.")
        return self.data_module(folder, manifest, labels, image_size, batch_size, augment)

    def module(
        self, architecture: str, options: dict[str, Any], labels: Sequence[str], lr: float, augment: bool, copy_paste: float = 0.0
    ) -> Detector:
        return Detector(self.networks.build(architecture, len(labels), options), lr=lr, augment=augment, architecture=architecture,
                        copy_paste=copy_paste)

    def inference_model(self, net: nn.Module, labels: Sequence[str], image_size: int) -> DetectionModel:
        return self.inference_class(net, labels, image_size).eval()

    def evaluate(self, model: nn.Module, val_set: BoxesDataset, labels: Sequence[str]) -> Scores:
        if not len(val_set):
            return Scores(0.0, 0.0, np.zeros(0, dtype=bool), {"map50": 0.0, "map50_95": 0.0, "exact_match": 0.0})
        rows = _per_image(model, val_set.images)
        overall = MeanAveragePrecision(iou_type="bbox")
        per_class = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[MATCH_IOU], class_metrics=True)
        predictions = [detections_of(r, 0.0) for r in rows]
        for metric in (overall, per_class):
            metric.update(predictions, val_set.targets)
        result, by_class = overall.compute(), per_class.compute()
        correct = np.array([
            boxes_match(_named(r, labels, shown_from(model)), [(labels[int(c)], b.numpy().astype(float)) for b, c in zip(t["boxes"], t["labels"], strict=True)])
            for r, t in zip(rows, val_set.targets, strict=True)
        ], dtype=bool)
        map50, map50_95 = max(float(result["map_50"]), 0.0), max(float(result["map"]), 0.0)
        return Scores(
            score=map50,
            tiebreak=map50_95,
            correct=correct,
            metrics={"map50": map50, "map50_95": map50_95, "exact_match": float(correct.mean()) if len(correct) else 0.0},
            per_class=per_class_ap(by_class, labels),
        )

    def operating_point(self, model: nn.Module, val_set: BoxesDataset, labels: Sequence[str], costs: Any) -> tuple[float, float | None] | None:
        if not len(val_set):
            return None
        lowest = min(OPERATING_POINTS)
        found, truth = [], []
        for rows, t in zip(_per_image(model, val_set.images), val_set.targets, strict=True):
            answer = answer_of(rows, lowest)
            found.append([(labels[int(c)], b.numpy().astype(float), float(s))
                          for b, s, c in zip(answer["boxes"], answer["scores"], answer["labels"], strict=True)])
            truth.append([(labels[int(c)], b.numpy().astype(float)) for b, c in zip(t["boxes"], t["labels"], strict=True)])
        return choose_shown_from(found, truth, iou, MATCH_IOU, NEAR_IOU, costs)

    def figures(self, scores: Scores, labels: Sequence[str], title: str) -> dict[str, Any]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(labels), 3.5))
        ax.bar(range(len(labels)), [scores.per_class.get(label, 0.0) for label in labels], color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("AP@0.5 (validation)")
        ax.set_title(f"{title}: per-class AP, mAP@0.5 {scores.score:.3f}")
        fig.tight_layout()
        return {"per_class_ap.png": fig}

    def read(
        self, model: nn.Module, images: torch.Tensor, config: LabelingConfig, sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[list[Reading], np.ndarray]:
        rows, embeddings = infer(model, model.detections_and_embeddings, images)
        size = model.image_size
        readings = []
        line = shown_from(model)
        for image_rows in rows:
            shown = answer_of(image_rows, line)
            target = make_target(size, size, _boxes(shown, model.labels))
            readings.append(reading(self, target, config, shown["scores"], answer_of(image_rows, CANDIDATE_FROM)["scores"], line))
        return readings, embeddings.numpy()

    def find_label_errors(self, check: CrossValidation) -> tuple[pd.DataFrame, float]:
        checked = out_of_fold(check, self.per_image)
        if checked is None:
            return pd.DataFrame(columns=TABLE_COLUMNS), 0.0
        manifest, outputs, image_size = checked
        return self.judge_labels(manifest, check.labels, outputs, image_size)

    def judge_labels(
        self, manifest: pd.DataFrame, labels: Sequence[str], outputs: Sequence[Any], image_size: int
    ) -> tuple[pd.DataFrame, float]:
        """`find_label_errors` on the out-of-fold outputs (`per_image`'s, one per manifest row, from
        models of input size `image_size`): cleanlab's object detection scores over the boxes."""
        from cleanlab.object_detection.filter import find_label_issues
        from cleanlab.object_detection.rank import get_label_quality_scores

        given, predicted = [], []
        for target, image_rows in zip(manifest["label"], outputs, strict=True):
            boxes, names = boxes_in_model_pixels(parse_target(target), image_size)
            given.append({"bboxes": boxes.numpy().astype(float), "labels": np.array([labels.index(n) for n in names], dtype=int)})
            found = detections_of(image_rows, CANDIDATE_FROM)
            predicted.append(np.array([
                np.concatenate([found["boxes"][found["labels"] == c].numpy(), found["scores"][found["labels"] == c].numpy()[:, None]], axis=1)
                .reshape(-1, 5).astype(float)
                for c in range(len(labels))
            ], dtype=object))
        quality = get_label_quality_scores(given, predicted) if len(given) else np.zeros(0)
        issues = find_label_issues(given, predicted) if len(given) else np.zeros(0, dtype=bool)
        suggestions, confidence, correct = [], [], []
        for target, image_rows in zip(manifest["label"], outputs, strict=True):
            parsed = parse_target(target)
            shown = answer_of(image_rows)
            boxes = _boxes(shown, labels, parsed["width"] / image_size, parsed["height"] / image_size)
            suggestions.append(make_target(parsed["width"], parsed["height"], boxes))
            confidence.append(confidence_of(shown, answer_of(image_rows, CANDIDATE_FROM)["scores"]))
            correct.append(boxes_match(_corners(boxes), _corners(parsed["boxes"])))
        table = ranked_label_table(manifest, suggestions, quality, issues, confidence)
        return table, float(np.mean(correct)) if correct else 0.0
