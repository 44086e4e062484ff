"""Per-class figures in the strategy report carry their support and an interval, and the report names a
class as needing labels only when its interval sets it apart."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.studies.report import (
    Acceptance,
    build_report,
    needing_labels_line,
    out_of_fold_confusion,
    read_out_of_fold,
    summary_lines,
    wilson_interval,
    write_report,
)

pytestmark = pytest.mark.unit

LABELS = [str(d) for d in range(10)]


def test_wilson_interval_is_wide_at_small_support_and_narrow_at_large():
    low, high = wilson_interval(0, 1)
    assert low == 0.0 and high == pytest.approx(0.7935, abs=1e-3)  # 0 of 1 says little
    low, high = wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-3) and high == pytest.approx(0.8666, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_one_validation_image_per_class_is_too_early_to_tell():
    # 20 labels, a validation split of one image per class, eight of ten classes missed: the report
    confusion = np.zeros((10, 10), dtype=int)
    confusion[0, 0] = confusion[1, 1] = 1
    for i in range(2, 10):
        confusion[i, 0] = 1
    report = build_report([], LABELS, dict.fromkeys(LABELS, 2), confusion, Acceptance(0, 0), 0.9)

    line = needing_labels_line(report)
    assert "too early to tell" in line
    assert "images per class: 1" in line and "validation split, 10 images" in line
    assert "F1 0.00" not in line and "recall 0.00" not in line
    assert report.classes_clearly_needing_labels == []
    assert line in summary_lines(report)
    assert all(c.support == 1 and c.low == 0.0 and c.high is not None and c.high > 0.75 for c in report.classes[2:])


def test_overlapping_intervals_are_too_early_to_tell_even_above_the_minimum_support():
    confusion = np.array([[7, 3], [5, 5]])  # recall 0.7 and 0.5 of 10 images each: the intervals overlap
    report = build_report([], ["a", "b"], {"a": 10, "b": 10}, confusion, Acceptance(0, 0), 0.9)
    line = needing_labels_line(report)
    assert "too early to tell" in line and "intervals overlap" in line and "images per class: 10" in line
    assert report.classes_needing_labels[0] == "b"  # the ordering by point figures is kept, the verdict is not given


def test_a_clearly_worse_class_is_named_with_its_support_and_interval():
    confusion = np.diag([38, 40, 39, 12]).astype(int)
    confusion[0, 1] = confusion[1, 2] = 2
    confusion[2, 0] = 1
    confusion[3, 0], confusion[3, 1] = 14, 14  # class "d": 12 of 40 right while the others get ~95%
    labels = ["a", "b", "c", "d"]
    report = build_report([], labels, dict.fromkeys(labels, 50), confusion, Acceptance(0, 0), 0.9)

    assert report.classes_clearly_needing_labels == ["d"]
    d = report.classes[3]
    assert d.support == 40 and d.recall == pytest.approx(0.3)
    assert (d.low, d.high) == pytest.approx(wilson_interval(12, 40), abs=1e-4)
    line = needing_labels_line(report)
    assert line.startswith("Classes that most need labels (recall on the champion's validation split, 162 images")
    assert f"d (recall 0.30, 95% interval {d.low:.2f}-{d.high:.2f}, 40 images; F1 " in line
    assert "a (" not in line and "too early" not in line


def test_out_of_fold_predictions_over_every_label_are_preferred(tmp_path):
    rng = np.random.default_rng(0)
    given = [label for label in LABELS for _ in range(30)]
    suggested = [label if label != "7" and rng.random() < 0.95 else str((int(label) + 1) % 10) for label in given]
    table = pd.DataFrame({"label": given, "suggested": suggested, "snapshot_rev": "v-3", "quality": 0.5})
    path = tmp_path / "label_errors.parquet"
    table.to_parquet(path, index=False)

    assert read_out_of_fold(path, LABELS, snapshot_rev="v-2") is None  # another snapshot's check does not count
    oof = read_out_of_fold(path, LABELS, snapshot_rev="v-3")
    assert oof is not None and oof.snapshot_rev == "v-3" and oof.confusion.sum() == 300
    tiny = np.eye(10, dtype=int)  # the validation split: one image per class
    report = build_report([], LABELS, dict.fromkeys(LABELS, 30), tiny, Acceptance(0, 0), 0.9, out_of_fold=oof)

    assert report.out_of_fold and "out-of-fold predictions over every label, 300 images of snapshot v-3" in report.source
    assert all(c.support == 30 for c in report.classes)
    assert report.classes_clearly_needing_labels == ["7"]
    assert "7 (recall 0.00, 95% interval 0.00-0.11, 30 images" in needing_labels_line(report)

    html_path = write_report(report, LABELS, tmp_path / "report", "t")
    page = html_path.read_text()
    assert "out-of-fold predictions over every label" in page and "95% interval of recall" in page
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["classes_clearly_needing_labels"] == ["7"] and saved["classes"][7]["support"] == 30


def test_a_table_of_boxes_gives_no_out_of_fold_confusion():
    boxes = json.dumps({"boxes": [{"label": "a", "x": 0, "y": 0, "w": 1, "h": 1}]})
    assert out_of_fold_confusion(pd.DataFrame({"label": [boxes], "suggested": [boxes]}), ["a"]) is None
    assert out_of_fold_confusion(pd.DataFrame({"label": ["a"], "suggested": ["a"]}), ["a"]).tolist() == [[1]]


def test_per_class_ap_carries_its_box_support():
    per_class = {"a": 0.9, "b": 0.85, "c": 0.1}
    report = build_report([], ["a", "b", "c"], {"a": 300, "b": 300, "c": 300}, None, Acceptance(0, 0), 0.5,
                          per_class=per_class, per_class_title="AP", support={"a": 60, "b": 60, "c": 60}, count_noun="boxes")
    assert report.ranked_title == "AP" and report.classes_clearly_needing_labels == ["c"]
    assert "c (AP 0.10, 95% interval" in needing_labels_line(report) and "60 boxes; 300 labeled)" in needing_labels_line(report)

    unknown = build_report([], ["a", "b"], {"a": 3, "b": 3}, None, Acceptance(0, 0), 0.5, per_class={"a": 0.0, "b": 0.9},
                           per_class_title="AP", count_noun="boxes")
    assert "too early to tell" in needing_labels_line(unknown) and unknown.classes_clearly_needing_labels == []
