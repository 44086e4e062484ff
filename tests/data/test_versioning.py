"""The data registry on real git + DVC (no servers): snapshots are atomic and read by revision."""

import shutil

import pandas as pd
import pytest

from components.core.errors import FlywheelError
from components.data.snapshot import MANIFEST, read_manifest
from components.adapters.versioning import DataRegistry

pytestmark = pytest.mark.data


def stage_rows(folder, rows: int) -> None:
    (folder / "images").mkdir()
    for i in range(rows):
        (folder / "images" / f"{i:064x}.png").write_bytes(bytes([i]) * 10)
    pd.DataFrame({"task_id": range(rows), "image": [f"images/{i:064x}.png" for i in range(rows)]}).to_parquet(folder / MANIFEST)


def test_a_failed_push_leaves_nothing_behind_and_the_cursor_where_it_was(tmp_path):
    registry = DataRegistry(tmp_path / "registry" / "project-1", str(tmp_path / "remote")).open()
    with registry.stage() as folder:
        stage_rows(folder, 2)
        first = registry.commit(folder, 1, "2026-11-25T00:00:00.000000Z", quarantine={7: {"reason": "Task 7: bad", "key": "1@t#s"}})
    assert first.rev == "snapshot-0001" and first.quarantine[7]["reason"] == "Task 7: bad"

    remote = tmp_path / "remote"
    shutil.rmtree(remote)
    remote.write_text("a file where the remote folder should be")  # the fault: the DVC remote is unusable
    with registry.stage() as folder:
        stage_rows(folder, 3)
        with pytest.raises(FlywheelError, match="cursor did not move"):
            registry.commit(folder, 1, "2026-11-25T01:00:00.000000Z")
    assert registry.latest() == first
    assert len(read_manifest(registry.snapshot_dir)) == 2  # the working copy is the versioned one again
    assert not list((tmp_path / "staging").iterdir())


def test_a_snapshot_is_read_by_revision_and_restored_from_the_remote(tmp_path):
    registry = DataRegistry(tmp_path / "registry" / "project-1", str(tmp_path / "remote")).open()
    with registry.stage() as folder:
        stage_rows(folder, 2)
        first = registry.commit(folder, 1, "c1")
    with registry.stage() as folder:
        stage_rows(folder, 3)
        second = registry.commit(folder, 1, "c2")
    assert second.rev == "snapshot-0002" and second.md5 != first.md5
    assert len(read_manifest(registry.checkout(first))) == 2 and len(read_manifest(registry.checkout(second))) == 3

    shutil.rmtree(registry.checkout(first))
    shutil.rmtree(registry.root / ".dvc" / "cache")
    restored = registry.checkout(first)  # from the DVC remote
    assert len(read_manifest(restored)) == 2 and (restored / "images" / f"{1:064x}.png").read_bytes() == b"\x01" * 10
