import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from components.core.conversions import Annotation, LabeledTask
from components.tasks.classification import Classification, choice_result
from components.core.errors import DataError
from components.data.images import ImageError, StoredImage
from components.data.snapshot import (
    apply_changes,
    due_for_retry,
    duplicates,
    empty_manifest,
    read_manifest,
    real_changes,
    split_of,
    training_rows,
    write_snapshot,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 25, tzinfo=UTC)


def task(task_id: int, label: str | None, config, when: int = 0, result=None) -> LabeledTask:
    annotations = () if label is None and result is None else (
        Annotation(id=task_id * 10, result=tuple(result if result is not None else choice_result(label, config)),
                   annotator="a@b.c", updated_at=T0.replace(second=when)),
    )
    return LabeledTask(id=task_id, data={"image": f"/data/local-files/?d=x/{task_id}.png"}, annotations=annotations, updated_at=T0)


def image(task_id: int, sha: str | None = None) -> StoredImage:
    return StoredImage(sha or f"{task_id:064x}", Path(f"/nowhere/{task_id}.png"), ".png")


def images(*tasks: LabeledTask) -> dict[int, StoredImage | DataError]:
    return {t.id: image(t.id) for t in tasks}


def test_split_is_fixed_by_content_hash():
    hashes = [f"{i:08x}" + "0" * 56 for i in range(0, 2**32, 2**32 // 1000)]
    splits = [split_of(h, 20) for h in hashes]
    assert splits == [split_of(h, 20) for h in hashes]  # stable
    assert 0.15 < splits.count("val") / len(splits) < 0.25


def test_changes_replace_rows_and_deletions_drop_them(classification_config):
    c = classification_config
    one, two = task(1, "3", c), task(2, "4", c)
    first = apply_changes(empty_manifest(), {}, [one, two], c, 20, images(one, two), Classification()).manifest
    assert first[["task_id", "label"]].values.tolist() == [[1, "3"], [2, "4"]]
    changed = [task(1, "5", c, when=9), task(2, None, c), task(3, "0", c)]
    second = apply_changes(first, {}, changed, c, 20, images(*changed), Classification()).manifest
    assert second[["task_id", "label"]].values.tolist() == [[1, "5"], [3, "0"]]
    assert second.loc[0, "split"] == first.loc[0, "split"]  # same image, same side


def test_bad_annotations_and_images_are_quarantined_by_task_and_the_rest_goes_on(classification_config):
    c = classification_config
    good, unknown, empty, unreadable = task(1, "2", c), task(7, "cat", c), task(9, None, c, result=[]), task(11, "4", c)
    found = {**images(good, unknown, empty), 11: ImageError(11, "the file is not an image PIL can read")}
    update = apply_changes(empty_manifest(), {}, [good, unknown, empty, unreadable], c, 20, found, Classification())
    assert update.manifest["task_id"].tolist() == [1]
    assert sorted(update.quarantine) == [7, 9, 11]
    assert "Task 7" in update.quarantine[7]["reason"] and "'cat'" in update.quarantine[7]["reason"]
    assert "empty result" in update.quarantine[9]["reason"]
    assert "Task 11" in update.quarantine[11]["reason"] and "not an image" in update.quarantine[11]["reason"]

    # carried while unchanged; a fixed task leaves the quarantine and trains
    fixed = task(7, "3", c, when=5)
    later = apply_changes(update.manifest, update.quarantine, [fixed], c, 20, images(fixed), Classification())
    assert sorted(later.quarantine) == [9, 11]
    assert later.manifest["task_id"].tolist() == [1, 7]


def test_a_change_only_to_predictions_is_not_a_change(classification_config):
    c = classification_config
    one, bad = task(1, "3", c), task(2, "cat", c)
    update = apply_changes(empty_manifest(), {}, [one, bad], c, 20, images(one, bad), Classification())
    touched = [task(1, "3", c), task(2, "cat", c), task(3, None, c)]  # same annotations, new updated_at
    assert real_changes(update.manifest, update.quarantine, touched, c.data_key) == ()
    edited = task(1, "4", c, when=3)
    assert real_changes(update.manifest, update.quarantine, [edited], c.data_key) == (edited,)
    replaced = LabeledTask(id=2, data={"image": "/data/local-files/?d=x/new.png"}, annotations=bad.annotations, updated_at=T0)
    assert real_changes(update.manifest, update.quarantine, [replaced], c.data_key) == (replaced,)  # its image changed


def test_a_transient_image_failure_is_due_again_later(classification_config):
    c = classification_config
    one = task(1, "3", c)
    update = apply_changes(empty_manifest(), {}, [one], c, 20, {1: ImageError(1, "no answer", transient=True)}, Classification(), retry_after_s=60)
    assert due_for_retry(update.quarantine) == []
    assert due_for_retry(update.quarantine, now=time.time() + 61) == [1]


def test_duplicated_images_train_once_on_the_latest_label_and_are_named(classification_config):
    c = classification_config
    first, again = task(1, "3", c), task(2, "5", c, when=4)
    same = {1: image(1, "ab" * 32), 2: image(2, "ab" * 32)}
    manifest = apply_changes(empty_manifest(), {}, [first, again], c, 20, same, Classification()).manifest
    assert training_rows(manifest)[["task_id", "label"]].values.tolist() == [[2, "5"]]
    found = duplicates(manifest)
    assert list(found) == [1] and "task 2" in found[1] and "'3'" in found[1] and "'5'" in found[1]


def test_write_snapshot_links_known_images_and_copies_new_ones(tmp_path, classification_config):
    c = classification_config
    source = tmp_path / "src.png"
    source.write_bytes(b"\x89PNG fake")
    one = task(1, "3", c)
    manifest = apply_changes(empty_manifest(), {}, [one], c, 20, {1: StoredImage("aa" * 32, source, ".png")}, Classification()).manifest
    first = tmp_path / "first"
    write_snapshot(manifest, {"aa" * 32: source}, first)
    assert sorted(p.name for p in (first / "images").iterdir()) == [f"{'aa' * 32}.png"]
    assert read_manifest(first).equals(manifest)
    second = tmp_path / "second"
    write_snapshot(manifest, {}, second, previous=first)  # no source needed: linked from the previous snapshot
    assert (second / "images" / f"{'aa' * 32}.png").stat().st_ino == (first / "images" / f"{'aa' * 32}.png").stat().st_ino
