"""Data tests: the same Great Expectations suite the flow gates on, on small committed-style snapshots."""

import pandas as pd
import pytest
from PIL import Image

from components.tasks.classification import Classification
from components.data.validation import validate_snapshot

pytestmark = pytest.mark.data


@pytest.fixture
def snapshot(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i, label in enumerate(["0", "0", "1", "1"]):
        Image.new("L", (8, 8), color=i * 40).save(tmp_path / "images" / f"{i:064x}.png")
        rows.append({"task_id": i + 1, "image": f"images/{i:064x}.png", "sha256": f"{i:064x}", "label": label, "annotation_id": i + 1, "source": "s",
                     "annotator": "a@b.c", "updated_at": "2026-11-25T00:00:00+00:00", "split": "train" if i % 2 else "val"})
    return tmp_path, pd.DataFrame(rows)


def test_a_sound_snapshot_passes(snapshot):
    folder, manifest = snapshot
    report = validate_snapshot(manifest, folder, ("0", "1"), min_per_class=2, task_type=Classification())
    assert report.success, report.describe()


def test_unknown_label_duplicate_id_and_broken_image_name_their_tasks(snapshot):
    folder, manifest = snapshot
    manifest.loc[0, "label"] = "7"
    manifest.loc[3, "task_id"] = 3
    (folder / manifest.loc[1, "image"]).write_bytes(b"not a png")
    report = validate_snapshot(manifest, folder, ("0", "1"), min_per_class=1, task_type=Classification())
    assert not report.success and not report.only_too_few
    assert set(report.task_ids) == {1, 2, 3}
    text = report.describe()
    assert "label" in text and "task_id" in text and "image_readable" in text


def test_a_missing_image_is_reported(snapshot):
    folder, manifest = snapshot
    (folder / manifest.loc[2, "image"]).unlink()
    report = validate_snapshot(manifest, folder, ("0", "1"), min_per_class=1, task_type=Classification())
    assert report.task_ids == (3,)


def test_too_few_labels_per_class_waits_rather_than_fails(snapshot):
    folder, manifest = snapshot
    report = validate_snapshot(manifest, folder, ("0", "1", "2"), min_per_class=2, task_type=Classification())
    assert not report.success and report.only_too_few and report.too_few == ("2",)
    assert "'2': 0" in report.describe()


def test_schema_drift_is_caught(snapshot):
    folder, manifest = snapshot
    report = validate_snapshot(manifest.drop(columns=["annotator"]), folder, ("0", "1"), min_per_class=1, task_type=Classification())
    assert not report.success and "expect_table_columns_to_match_set" in report.describe()
