"""The Label Studio adapter against a real Label Studio server."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from components.core.conversions import Prediction, current_annotation
from components.tasks.classification import choice_result, label_of
from components.core.errors import LabelConfigError, LabelStudioError
from components.data.images import ImageStore
from components.adapters.label_studio import LabelStudio, Project
from components.data.images import find_images
from components.core.labeling_config import load_labeling_config, with_labels
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct small PNGs (random pixels, so every content hash differs)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def project(label_studio: LabelStudio, classification_config, tmp_path_factory) -> Project:
    """A project with 1,000 imported tasks."""
    project = label_studio.ensure_project(f"adapter {uuid.uuid4().hex[:8]}", classification_config)
    result = label_studio.import_images(project, write_images(tmp_path_factory.mktemp("imgs"), 1000))
    assert len(result.created) == 1000 and result.skipped == 0
    return project


def task_ids(label_studio: LabelStudio, project: Project) -> list[int]:
    return sorted(label_studio.task_hashes(project.id).values())


def test_ensure_project_is_idempotent(label_studio, project, classification_config):
    again = label_studio.ensure_project(project.title, classification_config)
    assert again.id == project.id


def test_a_changed_label_set_is_an_error(label_studio, project, classification_config):
    other = with_labels(classification_config, ["cat", "dog"])
    with pytest.raises(LabelConfigError, match=r"labels \['0', '1'.*but the config labels \['cat', 'dog'\]"):
        label_studio.ensure_project(project.title, other)


def test_import_is_deduplicated_by_content(label_studio, project, tmp_path):
    same = write_images(tmp_path / "again", 1000)  # same seed: same bytes under other names
    fresh = write_images(tmp_path / "fresh", 3, seed=99)
    result = label_studio.import_images(project, same + fresh)
    assert len(result.created) == 3 and result.skipped == 1000
    assert len(task_ids(label_studio, project)) == 1003


def test_imported_images_are_served_with_the_token(label_studio, project, stack, tmp_path):
    task = label_studio.task(task_ids(label_studio, project)[0])
    url = f"{stack.label_studio_url}{task['data']['image']}"
    assert httpx.get(url, headers={"Authorization": f"Token {stack.label_studio_api_key}"}).status_code == 200
    store = ImageStore(stack.workspace / "cache" / "adapter", tmp_path / "elsewhere", label_studio,
                       fetch_timeout_s=10, max_bytes=10**6, max_pixels=10**8, retry_failed_s=600)
    fetched = store.resolve(task["id"], task["data"], project.config.data_key)  # over HTTP, as from a remote server
    assert fetched.sha256 == task["data"]["sha256"] and fetched.path.read_bytes()[:4] == b"\x89PNG"


def test_incremental_fetch_sees_created_updated_and_deleted_annotations(label_studio, project):
    ids = task_ids(label_studio, project)
    cursor = label_studio.fetch_changed(project.id, None).cursor
    before = label_studio.fetch_changed(project.id, cursor)
    assert before.tasks == () and before.cursor == cursor

    made = {tid: label_studio.annotate(tid, choice_result(str(i), project.config)) for i, tid in enumerate(ids[10:13])}
    changes = label_studio.fetch_changed(project.id, cursor)
    assert sorted(t.id for t in changes.tasks) == sorted(made)
    labels = {t.id: label_of(current_annotation(t), project.config, t.id) for t in changes.tasks}
    assert labels == {ids[10]: "0", ids[11]: "1", ids[12]: "2"}
    assert changes.cursor is not None and changes.cursor > (cursor or "")

    # A person corrects one label and deletes another annotation.
    label_studio.sdk.annotations.update(id=made[ids[10]], result=choice_result("7", project.config))
    label_studio.sdk.annotations.delete(id=made[ids[11]])
    later = label_studio.fetch_changed(project.id, changes.cursor)
    by_id = {t.id: t for t in later.tasks}
    assert sorted(by_id) == [ids[10], ids[11]]
    assert label_of(current_annotation(by_id[ids[10]]), project.config, ids[10]) == "7"
    assert current_annotation(by_id[ids[11]]) is None
    assert label_studio.fetch_changed(project.id, later.cursor).tasks == ()


def annotations_with_provenance(label_studio: LabelStudio, task_id: int) -> list[dict]:
    keys = ("id", "result", "updated_at", "was_cancelled", "completed_by", "parent_prediction")
    return [{k: a[k] for k in keys} for a in label_studio.task(task_id)["annotations"]]


def test_writing_and_tidying_pre_annotations_never_touches_labeled_tasks_or_their_provenance(label_studio, project):
    ids = sorted(label_studio.unlabeled_tasks(project.id))[:40]
    first = [Prediction(t, tuple(choice_result(str(t % 10), project.config)), 0.5) for t in ids]
    assert label_studio.write_predictions(project, first, "model-1") == len(ids)
    assert label_studio.write_predictions(project, first, "model-1") == 0  # once per version
    label_studio.write_predictions(project, first[:3], "other-tool")  # another tool's version

    # A person accepts the suggestion on one task, skips another.
    accepted = label_studio.task(ids[0])["predictions"][0]
    label_studio.annotate(ids[0], accepted["result"], parent_prediction=accepted["id"])
    label_studio.sdk.annotations.create(id=ids[1], result=[], was_cancelled=True)
    human = {t: annotations_with_provenance(label_studio, t) for t in ids[:2]}
    shown_then = {t: [p["id"] for p in label_studio.task(t)["predictions"]] for t in ids[:2]}
    cursor = max(label_studio.task(t)["updated_at"] for t in ids[:2]).replace("+00:00", "Z")

    second = [Prediction(t, tuple(choice_result("1", project.config)), 0.7) for t in ids]  # as listed before the person labeled
    assert label_studio.write_predictions(project, second, "model-2") == len(ids) - 2
    assert label_studio.write_predictions(project, second, "model-2") == 0  # twice: no duplicates
    assert label_studio.untouched_without(project.id, "model-2").isdisjoint(ids)

    chunks = iter([False, True])  # new labels arrive after the first chunk: the tidy stops there
    keep = {"model-2", "other-tool"}
    partial = label_studio.tidy_predictions(project, keep, chunk=10, should_stop=lambda: next(chunks))
    assert partial == 10
    assert label_studio.tidy_predictions(project, keep, chunk=10) == len(ids) - 2 - partial
    assert label_studio.tidy_predictions(project, keep) == 0

    assert {t: annotations_with_provenance(label_studio, t) for t in ids[:2]} == human
    assert {t: [p["id"] for p in label_studio.task(t)["predictions"]] for t in ids[:2]} == shown_then  # history stays
    assert accepted["id"] in shown_then[ids[0]]
    assert sorted(p["model_version"] for p in label_studio.task(ids[2])["predictions"]) == ["model-2", "other-tool"]
    assert [p["model_version"] for p in label_studio.task(ids[5])["predictions"]] == ["model-2"]
    assert label_studio.untouched_without(project.id, "model-2").isdisjoint(ids)
    assert label_studio.fetch_changed(project.id, cursor).tasks == ()  # writing and tidying are not annotation changes


def test_marked_predictions_are_rewritten_only_where_they_changed(label_studio, project):
    labeled = sorted(label_studio.unlabeled_tasks(project.id))[-3:]
    for t in labeled:
        label_studio.annotate(t, choice_result("3", project.config))
    marked = [Prediction(t, ({**choice_result("8", project.config)[0], "id": "mark"},), 0.9) for t in labeled]
    assert label_studio.sync_marked_predictions(project, marked, "model-2", "mark") == 3
    kept = label_studio.task(labeled[0])["predictions"][0]
    label_studio.annotate(labeled[1], label_studio.task(labeled[1])["predictions"][0]["result"],
                          parent_prediction=label_studio.task(labeled[1])["predictions"][0]["id"])
    started_from = label_studio.task(labeled[1])["predictions"][0]["id"]

    assert label_studio.sync_marked_predictions(project, marked[:1], "model-2", "mark") == 0  # unchanged: kept as is
    assert [p["id"] for p in label_studio.task(labeled[0])["predictions"]] == [kept["id"]]
    assert [p["id"] for p in label_studio.task(labeled[1])["predictions"]] == [started_from]  # a person started from it
    assert label_studio.task(labeled[2])["predictions"] == []


def test_wrong_token_gives_one_clear_message(stack):
    wrong = LabelStudio(stack.label_studio_url, "not-the-token", stack.image_root)
    with pytest.raises(LabelStudioError, match="refused the API key .*LABEL_STUDIO_API_KEY"):
        wrong.check()


def test_missing_token_gives_one_clear_message(stack):
    with pytest.raises(LabelStudioError, match="No API key .*flywheel stack up"):
        LabelStudio(stack.label_studio_url, "", stack.image_root).check()


def test_unreachable_server_gives_one_clear_message(tmp_path):
    nowhere = LabelStudio(f"http://127.0.0.1:{free_port()}", "token", tmp_path, timeout_s=5)
    with pytest.raises(LabelStudioError, match="unreachable .*flywheel stack up.*LABEL_STUDIO_URL"):
        nowhere.check()


def test_unknown_config_gives_one_clear_message():
    with pytest.raises(LabelConfigError, match=r"No labeling config at .*keypoints\.xml.*classification\.xml.*detection\.xml.*segmentation\.xml"):
        load_labeling_config(ROOT / "label_studio_config" / "keypoints.xml")


def test_find_images_ignores_other_files(tmp_path):
    write_images(tmp_path / "a", 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert [p.name for p in find_images(tmp_path)] == ["00000.png", "00001.png"]


def test_busy_port_is_refused_not_silently_moved(tmp_path):
    from components.adapters import stack as embedded
    from components.core.errors import StackError
    from components.core.settings import load_settings
    from tests.conftest import stack_environ

    environ = stack_environ(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(environ["FLYWHEEL_MLFLOW_PORT"])))
        squatter.listen()
        settings = load_settings(environ={**environ, "LABEL_STUDIO_URL": "http://x", "PREFECT_API_URL": "http://x"})
        with pytest.raises(StackError, match=r"Port \d+ for mlflow is taken .*FLYWHEEL_MLFLOW_PORT"):
            embedded.up(settings, echo=lambda _: None)
