"""The flywheel loop end to end: real Label Studio, MLflow, Prefect and DVC.

A person is played through Label Studio's API; everything else is the real flow.
"""

from __future__ import annotations

import filecmp
import random
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect import task

from components.tasks.classification import choice_result
from components.studies.datasets import materialize
from components.core.tags import TAG_ARCHITECTURE, TAG_CURSOR, TAG_DATA_REGISTRY, TAG_DVC_REV, TAG_KIND, TAG_MD5, TAG_PROJECT, KIND_TRAINING
from components.loop.workspace import open_workspace
from components.adapters.label_studio import LabelStudio, Project
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.data.snapshot import read_manifest
from components.studies.simulator import label_balanced
from components.adapters.versioning import DataRegistry
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def write_params(folder: Path, title: str, min_new_annotations: int = 10) -> Path:
    """A params.yaml for a small, fast project on scikit-learn's 8x8 digits."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["project"] = {"title": title, "config": str(ROOT / "label_studio_config" / "classification.xml")}
    params["poll"]["min_new_annotations"] = min_new_annotations
    params["train"].update({"image_size": 16, "max_epochs": 6, "min_steps": 0, "patience": 2})
    params["registry"] = {"model_name": f"test-{title}", "experiment": f"test-{title}"}
    params["architectures"] = {"small_cnn": {"width": 8}, "resnet18": {"pretrained": False}}
    params["train"]["architecture"] = "small_cnn"
    params["pretrain"]["enabled"] = False  # tests/integration/test_pretraining.py covers it
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def make_digits_project(
    label_studio: LabelStudio, folder: Path, prefix: str, limit: int, min_new_annotations: int = 10
) -> tuple[Path, Project, dict[str, str]]:
    """A fresh project of `limit` scikit-learn digits: (params.yaml path, project, file name -> true label)."""
    params_path = write_params(folder, f"{prefix}-{uuid.uuid4().hex[:6]}", min_new_annotations)
    params = load_params(params_path)
    images = materialize("digits", folder / "datasets", limit=limit)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    return params_path, project, {i.path.name: i.label for i in images}


class Person:
    """Plays an annotator who knows the ground truth of each image."""

    def __init__(self, label_studio: LabelStudio, project: Project, truth: dict[str, str]):
        self.ls, self.project, self.truth = label_studio, project, truth

    def label(self, count: int, seed: int = 0) -> list[int]:
        """Label `count` unlabeled tasks, round-robin over classes so every class gets some."""
        return label_balanced(self.ls, self.project, self.truth, count, random.Random(seed))


@pytest.fixture(scope="module")
def digits_project(loop_env: Settings, label_studio: LabelStudio, tmp_path_factory) -> tuple[Path, Project, Person]:
    folder = tmp_path_factory.mktemp("loop")
    params_path = write_params(folder, f"loop-{uuid.uuid4().hex[:6]}")
    params = load_params(params_path)
    images = materialize("digits", folder / "datasets", limit=240)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    return params_path, project, Person(label_studio, project, {i.path.name: i.label for i in images})


def test_crash_before_write_back_then_rerun_gives_one_set_of_predictions(
    digits_project, label_studio, loop_env, monkeypatch
):
    from flows import flywheel, tasks

    params_path, project, person = digits_project
    person.label(60)

    @task
    def crash(*args: object) -> int:  # a fake fault: the process dies right before write-back
        raise RuntimeError("simulated crash before write-back")

    monkeypatch.setattr(tasks, "write_back", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        flywheel.flywheel_iteration(str(params_path))
    assert label_studio.model_versions(project.id) == {}
    monkeypatch.undo()

    summary = flywheel.flywheel_iteration(str(params_path))
    assert summary["changed_tasks"] == 0 and summary["snapshot"] is None  # already versioned
    assert summary["trained"] is False  # already trained and registered before the crash

    ws = open_workspace(load_settings(), load_params(params_path))
    champion = ws.models.champion()
    assert champion is not None and summary["champion"] == champion.model_version
    unlabeled = label_studio.unlabeled_tasks(project.id)
    assert len(unlabeled) == 240 - 60
    assert label_studio.model_versions(project.id) == {champion.model_version: len(unlabeled)}
    assert label_studio.shown_model_version(project.id) == champion.model_version
    some = label_studio.task(next(iter(unlabeled)))
    assert [p["model_version"] for p in some["predictions"]] == [champion.model_version]
    assert 0 < some["predictions"][0]["score"] <= 1


def test_the_model_links_to_its_data(digits_project, loop_env, tmp_path):
    params_path, project, _ = digits_project
    ws = open_workspace(load_settings(), load_params(params_path))
    latest = ws.data.latest()
    assert latest is not None and latest.rev == "snapshot-0001" and latest.md5.endswith(".dir")
    assert latest.cursor is not None and latest.project_id == project.id

    champion = ws.models.champion()
    client = MlflowClient(loop_env.mlflow_tracking_uri)
    run = client.get_run(champion.run_id)
    assert run.data.tags[TAG_MD5] == latest.md5
    assert run.data.tags[TAG_PROJECT] == str(project.id)
    assert run.data.tags[TAG_CURSOR] == latest.cursor
    assert {"best_val_accuracy", "best_val_f1_macro", "best_val_f1_0", "val_loss"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert "confusion_matrix.png" in artifacts
    assert {a.path for a in client.list_artifacts(champion.run_id, "export")} == {
        "export/model.onnx", "export/model.onnx.json", "export/model.torchscript.pt", "export/model.torchscript.pt.json",
    }
    assert loop_env.label_studio_api_key not in str(run.data.params) + str(run.data.tags)

    restored = DataRegistry(Path(run.data.tags[TAG_DATA_REGISTRY]), loop_env.dvc_remote).restore(
        run.data.tags[TAG_DVC_REV], tmp_path / "restored"
    )
    by_rev = ws.data.checkout(latest)
    comparison = filecmp.dircmp(restored, by_rev)
    assert not comparison.left_only and not comparison.right_only
    names = ["manifest.parquet"] + [f"images/{p.name}" for p in (restored / "images").iterdir()]
    match, mismatch, errors = filecmp.cmpfiles(restored, by_rev, names, shallow=False)
    assert len(match) == len(names) and not mismatch and not errors


def test_a_second_run_with_nothing_new_does_nothing(digits_project, label_studio, loop_env):
    from flows import flywheel

    params_path, project, _ = digits_project
    before = label_studio.model_versions(project.id)
    summary = flywheel.flywheel_iteration(str(params_path))
    assert summary == {**summary, "changed_tasks": 0, "snapshot": None, "trained": False, "written": 0}
    assert label_studio.model_versions(project.id) == before


def test_too_few_new_annotations_wait_for_more(digits_project, loop_env):
    from flows import flywheel

    params_path, _, person = digits_project
    person.label(3, seed=1)
    summary = flywheel.flywheel_iteration(str(params_path))
    assert summary["changed_tasks"] == 3 and summary["snapshot"] is None and not summary["trained"]


def test_before_the_first_model_the_save_that_completes_a_class_brings_it(loop_env, label_studio, tmp_path):
    """`poll.min_new_annotations` (10) counts once a model exists. Before that, the one save that gives
    the last class its second label (`validate.min_per_class`) versions a snapshot and trains at once."""
    from flows import flywheel

    params_path, project, truth = make_digits_project(label_studio, tmp_path, "first", 80)
    data = label_studio.all_tasks(project.id)
    by_class: dict[str, list[int]] = {}
    for task_id in sorted(data):
        by_class.setdefault(truth[data[task_id]["filename"]], []).append(task_id)
    for label, ids in sorted(by_class.items()):
        for task_id in ids[: 1 if label == "0" else 2]:  # every class twice, but 0 once
            label_studio.annotate(task_id, choice_result(label, project.config))
    first = flywheel.flywheel_iteration(str(params_path))
    assert first["snapshot"] and not first["trained"]  # 0 has too few labels: versioned, no model

    label_studio.annotate(by_class["0"][1], choice_result("0", project.config))
    second = flywheel.flywheel_iteration(str(params_path))
    assert second["changed_tasks"] == 1 and second["snapshot"] and second["trained"]


def test_retrain_compares_every_architecture_in_one_experiment(digits_project, loop_env):
    from flows.retrain import retrain

    params_path, _, _ = digits_project
    params = load_params(params_path)
    summary = retrain(str(params_path))
    assert set(summary["score"]) == {"small_cnn", "resnet18"}
    client = MlflowClient(loop_env.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(params.registry.experiment)
    runs = client.search_runs([experiment.experiment_id])
    trained = [r for r in runs if r.data.tags.get(TAG_KIND) == KIND_TRAINING]  # not the reports' runs
    assert {r.data.tags[TAG_ARCHITECTURE] for r in trained} == {"small_cnn", "resnet18"}
    # each shows the snapshot it saw in MLflow's Datasets column: name, DVC hash, registry and rev
    (seen,) = {(i.dataset.name, i.dataset.digest, i.dataset.source) for r in trained for i in r.inputs.dataset_inputs}
    latest = open_workspace(load_settings(), params).data.latest()
    assert seen[0] == f"labels@{latest.rev}" and seen[1] == latest.md5[:36] and f'"rev": "{latest.rev}"' in seen[2]
    assert all(i.tags[0].value == "training" for r in trained for i in r.inputs.dataset_inputs)
    champion = client.get_model_version_by_alias(params.registry.model_name, "champion")
    best = max(float(v.tags["val_accuracy"]) for v in client.search_model_versions(f"name='{params.registry.model_name}'"))
    assert float(champion.tags["val_accuracy"]) == best


def test_malformed_annotations_are_left_out_and_the_rest_is_versioned(loop_env, label_studio, tmp_path):
    from flows import flywheel

    params_path, project, _ = make_digits_project(label_studio, tmp_path, "bad", 30, min_new_annotations=2)
    ids = sorted(label_studio.unlabeled_tasks(project.id))
    label_studio.annotate(ids[0], choice_result("cat", project.config))  # a label the config does not have
    label_studio.annotate(ids[1], [])  # an empty result
    label_studio.annotate(ids[2], choice_result("3", project.config))

    summary = flywheel.flywheel_iteration(str(params_path))
    assert summary["snapshot"] == "snapshot-0001" and summary["trained"] is False  # too few labels per class yet

    ws = open_workspace(load_settings(), load_params(params_path))
    latest = ws.data.latest()
    assert sorted(latest.quarantine) == ids[:2]
    assert f"Task {ids[0]}" in latest.quarantine[ids[0]]["reason"] and "'cat'" in latest.quarantine[ids[0]]["reason"]
    assert "empty result" in latest.quarantine[ids[1]]["reason"]
    assert read_manifest(ws.data.checkout(latest))["task_id"].tolist() == [ids[2]]
    assert latest.too_few  # classes without labels yet: versioned, training waits
    attention = label_studio.view_id(project.id, "Needs attention")
    assert sorted(int(t["id"]) for t in label_studio.view_tasks(project.id, attention)) == ids[:2]
    assert label_studio.task(ids[0])["annotations"][0]["result"] == choice_result("cat", project.config)


def test_a_run_that_finds_another_refreshing_versions_its_labels_and_leaves_the_rest_to_it(
    loop_env, label_studio, tmp_path, monkeypatch
):
    """Labels saved while a run trains reach a snapshot at once (the next run versions them and does not
    train beside it); the training run then trains that newest snapshot before it ends."""
    from flows import flywheel, tasks

    params_path, project, truth = make_digits_project(label_studio, tmp_path, "trainlock", 100)
    person = Person(label_studio, project, truth)
    person.label(40)
    real_train, others = tasks.train, []

    def train_while_people_label(*args: object, **kwargs: object) -> object:
        model = real_train(*args, **kwargs)
        if not others:  # another run starts while this one holds the training lock
            person.label(12, seed=1)
            others.append(flywheel.flywheel_iteration(str(params_path)))
        return model

    monkeypatch.setattr(tasks, "train", train_while_people_label)
    summary = flywheel.flywheel_iteration(str(params_path))

    other = others[0]
    assert other["snapshot"] == "snapshot-0002" and not other["trained"]
    assert other["left_to_another_run"] == "snapshot-0002"
    assert summary["snapshot"] == "snapshot-0001" and summary["trained"] and summary["caught_up_to"] == "snapshot-0002"
    ws = open_workspace(load_settings(), load_params(params_path))
    for rev in ("snapshot-0001", "snapshot-0002"):  # the training run trained the other's snapshot too
        assert ws.models.runs_tagged({TAG_DVC_REV: rev}, registered=True), rev
