"""Error finder, "Label next" selection and the strategy report, against real servers.

A person labels 200 digits through Label Studio, getting 20 of them wrong on purpose; the real
flows then version, train, rank and check the labels.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.tasks.classification import choice_result
from components.studies.datasets import materialize
from components.adapters.label_studio import LABEL_NEXT_VIEW, SUSPECTS_VIEW
from components.loop.publish import label_next
from components.loop.workspace import LABEL_ERRORS_FILE, open_workspace, reports_dir
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.core.settings import load_settings
from components.studies.simulator import shown_prediction
from tests.integration.test_loop import write_params

pytestmark = pytest.mark.integration

LABELED, FLIPPED = 200, 20


@pytest.fixture(scope="module")
def noisy_project(loop_env, label_studio, tmp_path_factory):
    """(params path, project, truth, flipped task ids, annotations as they were saved)."""
    from flows.flywheel import flywheel_iteration
    from flows.label_errors import find_label_errors

    folder = tmp_path_factory.mktemp("strategy")
    params_path = write_params(folder, f"strategy-{uuid.uuid4().hex[:6]}")
    raw = yaml.safe_load(params_path.read_text())
    raw["architectures"]["small_cnn"] = {"width": 16}
    raw["errors"].update({"folds": 4, "steps": 300})
    raw["select"].update({"batch": 30})
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    images = materialize("digits", folder / "datasets", limit=300)
    truth = {i.path.name: i.label for i in images}
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())
    rng = random.Random(0)
    chosen = rng.sample(tasks, LABELED)
    flipped = {task_id for task_id, _ in chosen[:FLIPPED]}
    for task_id, data in chosen:
        label = truth[data["filename"]]
        if task_id in flipped:
            label = rng.choice([c for c in project.config.labels if c != label])
        label_studio.annotate(task_id, choice_result(label, project.config))
    saved = {t: label_studio.task(t)["annotations"] for t in flipped}
    flywheel_iteration(str(params_path))
    find_label_errors(str(params_path))
    return params_path, project, truth, flipped, saved


def test_flipped_labels_rank_at_the_top_of_the_suspects_tab(noisy_project, label_studio, loop_env):
    params_path, project, _, flipped, _ = noisy_project
    view = label_studio.view_id(project.id, SUSPECTS_VIEW)
    assert view is not None
    shown = label_studio.view_tasks(project.id, view)
    top = [int(t["id"]) for t in shown[:FLIPPED]]
    assert len(set(top) & flipped) >= 0.6 * FLIPPED  # chance would be 0.1
    scores = [t["predictions_score"] for t in shown]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    champion = label_studio.shown_model_version(project.id)
    for task in shown:
        suspect = shown_prediction(task, champion)
        annotated = task["annotations"][0]["result"][0]["value"]["choices"]
        assert suspect["result"][0]["value"]["choices"] != annotated  # it suggests another label

    ws = open_workspace(load_settings(), load_params(params_path))
    table = pd.read_parquet(reports_dir(ws) / LABEL_ERRORS_FILE)
    assert len(table) == LABELED and list(table["rank"]) == list(range(1, LABELED + 1))
    is_flipped = table["task_id"].isin(flipped)
    assert table.loc[is_flipped, "rank"].mean() < table.loc[~is_flipped, "rank"].mean() / 3
    run = MlflowClient(loop_env.mlflow_tracking_uri).search_runs(
        [MlflowClient(loop_env.mlflow_tracking_uri).get_experiment_by_name(ws.params.registry.experiment).experiment_id],
        filter_string="tags.`flywheel.kind` = 'label-errors'",
    )[0]
    assert run.data.metrics["labeled"] == LABELED
    logged = {a.path for a in MlflowClient(loop_env.mlflow_tracking_uri).list_artifacts(run.info.run_id)}
    assert "label_errors.json" in logged


def test_human_annotations_are_never_changed(noisy_project, label_studio):
    _, _, _, flipped, saved = noisy_project
    for task_id in flipped:
        now = label_studio.task(task_id)["annotations"]
        assert [(a["id"], a["result"], a["updated_at"]) for a in now] == [
            (a["id"], a["result"], a["updated_at"]) for a in saved[task_id]
        ]


def test_label_next_tab_holds_the_top_of_the_ranking_in_order(noisy_project, label_studio, loop_env):
    params_path, project, _, _, _ = noisy_project
    ws = open_workspace(load_settings(), load_params(params_path))
    view = label_studio.view_id(project.id, LABEL_NEXT_VIEW)
    tasks = label_studio.view_tasks(project.id, view)
    assert len(tasks) == ws.params.select.batch
    assert all(not t["annotations"] for t in tasks)
    scores = [t["predictions_score"] for t in tasks]
    assert scores == sorted(scores) and all(0 < s <= 1 for s in scores)  # confidences, least confident first
    assert label_next(ws) == [int(t["id"]) for t in tasks]
    unlabeled = set(label_studio.unlabeled_tasks(project.id))
    assert set(label_next(ws)) <= unlabeled


def test_report_measures_acceptance_from_label_studio(noisy_project, label_studio, loop_env):
    from flows.flywheel import flywheel_iteration

    params_path, project, truth, _, _ = noisy_project
    champion = label_studio.shown_model_version(project.id)
    accepted = corrected = 0
    for task_id in label_next(open_workspace(load_settings(), load_params(params_path)))[:10]:
        task = label_studio.task(task_id)
        suggestion = shown_prediction(task, champion)
        answer = truth[task["data"]["filename"]]
        if suggestion["result"][0]["value"]["choices"] == [answer]:
            accepted += 1
            result = suggestion["result"]
        else:
            corrected += 1
            result = choice_result(answer, project.config)
        label_studio.annotate(task_id, result, parent_prediction=suggestion["id"])
    busy = flywheel_iteration(str(params_path))
    assert busy["trained"] and "report" not in busy  # the report never delays fresh pre-annotations
    summary = flywheel_iteration(str(params_path))  # the next, idle poll writes it
    assert not summary["trained"] and "report" in summary
    assert "report" not in flywheel_iteration(str(params_path))  # once per snapshot and champion

    folder = Path(summary["report"]).parent
    for name in ("report.html", "learning_curve.png", "per_class.png", "confusion.png", "acceptance.png"):
        assert (folder / name).stat().st_size > 1000, name
    report = json.loads((folder / "report.json").read_text())
    assert report["acceptance"]["shown"] == 10 and report["acceptance"]["accepted"] == accepted
    assert report["acceptance"]["by_model_version"] == {champion: [10, accepted]}
    assert [p["labels"] for p in report["points"]] == [LABELED, LABELED + 10]
    assert sorted(report["classes_needing_labels"]) == sorted(project.config.labels)
    html = (folder / "report.html").read_text()
    assert "learning_curve.png" in html and "Suggestions accepted unchanged" in html


def test_a_fully_labeled_project_is_not_rewritten_every_poll(loop_env, label_studio, tmp_path):
    from flows.flywheel import flywheel_iteration

    params_path = write_params(tmp_path, f"full-{uuid.uuid4().hex[:6]}")
    params = load_params(params_path)
    images = materialize("digits", tmp_path / "datasets", limit=80)
    truth = {i.path.name: i.label for i in images}
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    for task_id, data in label_studio.unlabeled_tasks(project.id).items():
        label_studio.annotate(task_id, choice_result(truth[data["filename"]], project.config))
    assert flywheel_iteration(str(params_path))["trained"]

    from components.loop.publish import predictions_stale

    ws = open_workspace(load_settings(), params)
    assert label_studio.model_versions(project.id) == {}  # nothing to predict, nothing written
    assert not predictions_stale(ws, ws.models.champion(), ws.data.latest())
