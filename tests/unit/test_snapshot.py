from datetime import UTC, datetime

import pytest

from components.conversions import Annotation, LabeledTask, choice_result
from components.errors import AnnotationError
from components.snapshot import apply_changes, empty_manifest, read_manifest, split_of, write_snapshot

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 25, tzinfo=UTC)


def task(task_id: int, label: str | None, config, sha: str | None = None, when: int = 0) -> LabeledTask:
    annotations = () if label is None else (
        Annotation(id=task_id * 10, result=tuple(choice_result(label, config)), annotator="a@b.c",
                   updated_at=T0.replace(second=when)),
    )
    data = {"image": f"/data/local-files/?d=objects/x/{sha or f'{task_id:08x}'}.png", "sha256": sha or f"{task_id:08x}"}
    return LabeledTask(id=task_id, data=data, annotations=annotations, updated_at=T0)


def test_split_is_fixed_by_content_hash():
    hashes = [f"{i:08x}" + "0" * 56 for i in range(0, 2**32, 2**32 // 1000)]
    splits = [split_of(h, 20) for h in hashes]
    assert splits == [split_of(h, 20) for h in hashes]  # stable
    assert 0.15 < splits.count("val") / len(splits) < 0.25


def test_changes_replace_rows_and_deletions_drop_them(classification_config):
    first = apply_changes(empty_manifest(), [task(1, "3", classification_config), task(2, "4", classification_config)], classification_config, 20)
    assert first[["task_id", "label"]].values.tolist() == [[1, "3"], [2, "4"]]
    second = apply_changes(first, [task(1, "5", classification_config, when=9), task(2, None, classification_config), task(3, "0", classification_config)], classification_config, 20)
    assert second[["task_id", "label"]].values.tolist() == [[1, "5"], [3, "0"]]
    assert second.loc[0, "split"] == first.loc[0, "split"]  # same image, same side


def test_every_bad_annotation_is_named_and_nothing_changes(classification_config):
    bad = [task(7, "cat", classification_config), task(8, "2", classification_config)]
    empty = LabeledTask(id=9, data={"sha256": "ff"}, updated_at=T0, annotations=(
        Annotation(id=90, result=(), annotator="x", updated_at=T0),))
    with pytest.raises(AnnotationError) as e:
        apply_changes(empty_manifest(), [*bad, empty], classification_config, 20)
    assert e.value.task_ids == [7, 9]
    assert "Task 7" in str(e.value) and "Task 9" in str(e.value) and "cursor did not move" in str(e.value)


def test_write_snapshot_copies_new_images_and_drops_stale_ones(tmp_path, classification_config):
    source = tmp_path / "src.png"
    source.write_bytes(b"\x89PNG fake")
    manifest = apply_changes(empty_manifest(), [task(1, "3", classification_config, sha="aa" * 32)], classification_config, 20)
    folder = tmp_path / "snap"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "stale.png").write_bytes(b"old")
    write_snapshot(manifest, {"aa" * 32: source}, folder)
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{'aa' * 32}.png"]
    assert read_manifest(folder).equals(manifest)
