"""Instance segmentation through the whole loop, against a real Label Studio, MLflow, Prefect and DVC.

A person is played through Label Studio's API with the composited demo set's exact masks.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.studies.datasets import SEGMENTATION, materialize
from components.adapters.label_studio import ATTENTION_VIEW, LABEL_NEXT_VIEW, SUSPECTS_VIEW
from components.loop.insight import report
from components.loop.publish import label_next, write_back
from components.loop.quality import check_labels
from components.loop.workspace import open_workspace
from components.adapters.label_studio import LabelStudio
from components.core.labeling_config import load_labeling_config
from components.data.masks import mask_iou, mask_of_brush, mask_of_coco, mask_of_polygon, points_in_pixels
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.data.snapshot import read_manifest
from components.tasks import task_type_of
from components.tasks.objects import parse_target
from tests.conftest import ROOT
from tests.integration.test_detection import write_detection_params

pytestmark = pytest.mark.integration


def true_masks(target: str) -> list[tuple[str, np.ndarray]]:
    parsed = parse_target(target)
    return sorted(((o["label"], mask_of_coco(o["mask"], parsed["width"], parsed["height"])) for o in parsed["boxes"]),
                  key=lambda m: (m[0], int(np.argmax(m[1]))))


def drawn_masks(result: list[dict], polygon: bool = False) -> list[tuple[str, np.ndarray]]:
    out = []
    for region in result:
        width, height = region["original_width"], region["original_height"]
        if polygon:
            mask = mask_of_polygon(points_in_pixels(region["value"]["points"], width, height), width, height)
            out.append((region["value"]["polygonlabels"][0], mask))
        else:
            out.append((region["value"]["brushlabels"][0], mask_of_brush(region["value"]["rle"], width, height)))
    return sorted(out, key=lambda m: (m[0], int(np.argmax(m[1]))))


def new_masks_project(label_studio: LabelStudio, folder: Path, prefix: str, limit: int):
    """A fresh brush-mask project of the segmentation demo's first `limit` images, with its params.yaml in
    `folder`: (params path, project, file name -> true target)."""
    params_path = write_detection_params(folder, f"{prefix}-{uuid.uuid4().hex[:6]}", "segmentation", "segmentation.xml")
    params = load_params(params_path)
    images = materialize(SEGMENTATION, folder / "datasets", limit=limit)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    return params_path, project, {i.path.name: i.label for i in images}


@pytest.fixture(scope="module")
def masks_project(loop_env: Settings, label_studio: LabelStudio, tmp_path_factory):
    return new_masks_project(label_studio, tmp_path_factory.mktemp("segmentation"), "seg", 36)


def test_brush_masks_round_trip_pixel_exact_and_polygons_within_098(label_studio, loop_env, tmp_path):
    images = materialize(SEGMENTATION, tmp_path / "datasets", limit=4, seed=5)
    truth = {i.path.name: i.label for i in images}
    for config_name, polygon in (("segmentation.xml", False), ("segmentation_polygon.xml", True)):
        config = load_labeling_config(ROOT / "label_studio_config" / config_name)
        project = label_studio.ensure_project(f"seg-rt-{uuid.uuid4().hex[:6]}", config)
        label_studio.import_images(project, [i.path for i in images])
        task_type = task_type_of(project.config)
        for task_id, data in label_studio.unlabeled_tasks(project.id).items():
            sent = task_type.result_of(truth[data["filename"]], project.config)
            label_studio.annotate(task_id, sent)
            stored = label_studio.task(task_id)["annotations"][0]["result"]
            back, want = drawn_masks(stored, polygon), true_masks(truth[data["filename"]])
            assert [label for label, _ in back] == [label for label, _ in want]
            for (_, got), (_, exact), (_, outline) in zip(back, want, drawn_masks(sent, polygon), strict=True):
                if polygon:  # Label Studio keeps the points: the polygon comes back as sent
                    assert mask_iou(got[None], outline[None])[0, 0] >= 0.98
                else:  # and the brush RLE pixel for pixel
                    assert (got == exact).all()


def test_a_segmentation_project_runs_the_loop_end_to_end(masks_project, label_studio, loop_env):
    from flows.flywheel import flywheel_iteration

    params_path, project, truth = masks_project
    ws = open_workspace(load_settings(), load_params(params_path))
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())
    labeled = tasks[:24]
    drawn = {}
    for task_id, data in labeled:
        drawn[task_id] = ws.task.result_of(truth[data["filename"]], project.config)
        label_studio.annotate(task_id, drawn[task_id])
    # two bad masks: an RLE that does not decode, one drawn on another image size; the rest trains
    good = ws.task.result_of(truth[tasks[24][1]["filename"]], project.config)[0]
    bad = {
        tasks[24][0]: {**good, "value": {**good["value"], "rle": good["value"]["rle"][:7]}},
        tasks[25][0]: {**good, "original_width": 300},
    }
    for task_id, region in bad.items():
        label_studio.annotate(task_id, [region])

    summary = flywheel_iteration(str(params_path))
    assert summary["snapshot"] and summary["trained"] and summary["written"] == len(tasks) - 26

    # Label Studio -> snapshot: every mask pixel-exact
    latest = ws.data.latest()
    manifest = read_manifest(ws.data.checkout(latest)).set_index("task_id")
    assert set(manifest.index) == {t for t, _ in labeled}
    for task_id, data in labeled:
        got, want = true_masks(manifest.loc[task_id, "label"]), true_masks(truth[data["filename"]])
        assert len(got) == len(want) and all(g[0] == w[0] and (g[1] == w[1]).all() for g, w in zip(got, want, strict=True))
    assert set(latest.quarantine) == set(bad)
    reasons = " ".join(q["reason"] for q in latest.quarantine.values())
    assert "does not decode" in reasons and "drawn on a 300x128 image" in reasons
    attention = label_studio.view_tasks(project.id, label_studio.view_id(project.id, ATTENTION_VIEW))
    assert {t["id"] for t in attention} == set(bad)

    # pre-annotations: brush masks on the image's own size, a score per mask, the task's score the weakest
    champion = ws.models.champion()
    unlabeled = label_studio.unlabeled_tasks(project.id)
    assert label_studio.model_versions(project.id) == {champion.model_version: len(unlabeled)}
    predictions = [label_studio.task(t)["predictions"][0] for t in list(unlabeled)[:5]]
    for prediction in predictions:
        assert 0.0 <= prediction["score"] <= 1.0
        for region in prediction["result"]:
            assert region["type"] == "brushlabels" and 0.0 <= region["score"] <= 1.0
            assert mask_of_brush(region["value"]["rle"], region["original_width"], region["original_height"]).shape == (128, 128)
        if prediction["result"]:
            assert prediction["score"] == pytest.approx(min(r["score"] for r in prediction["result"]), abs=1e-4)
    nxt = label_next(ws)
    assert 0 < len(nxt) <= ws.params.select.batch and set(nxt) <= set(unlabeled)

    # the error finder for masks fills the suspects tab
    table = check_labels(ws, latest)
    assert len(table) == len(labeled) and table["quality"].between(0, 1).all()
    write_back(ws, champion, latest)
    suspects = label_studio.view_tasks(project.id, label_studio.view_id(project.id, SUSPECTS_VIEW))
    assert {t["id"] for t in suspects} == set(table.loc[table["suspected"], "task_id"])
    assert label_studio.view_id(project.id, LABEL_NEXT_VIEW) is not None
    for task_id in drawn:  # no annotation was changed
        assert label_studio.task(task_id)["annotations"][0]["result"] == drawn[task_id]

    result, path = report(ws, champion, latest)
    assert path.is_file() and result.per_class_title == "AP" and "mask mAP@0.5" in path.read_text()


def test_a_self_intersecting_polygon_is_reported_and_the_rest_snapshots(label_studio, loop_env, tmp_path):
    from components.loop.ingest import poll, snapshot

    params_path = write_detection_params(tmp_path, f"poly-{uuid.uuid4().hex[:6]}", "segmentation", "segmentation_polygon.xml")
    ws = open_workspace(load_settings(), load_params(params_path), create_project=True)
    images = materialize(SEGMENTATION, tmp_path / "datasets", limit=4, seed=7)
    label_studio.import_images(ws.project, [i.path for i in images])
    truth = {i.path.name: i.label for i in images}
    tasks = sorted(label_studio.unlabeled_tasks(ws.project.id).items())
    for task_id, data in tasks[:3]:
        label_studio.annotate(task_id, ws.task.result_of(truth[data["filename"]], ws.project.config))
    region = ws.task.result_of(truth[tasks[3][1]["filename"]], ws.project.config)[0]
    bowtie = [[10.0, 10.0], [40.0, 40.0], [40.0, 10.0], [10.0, 40.0]]
    label_studio.annotate(tasks[3][0], [{**region, "value": {**region["value"], "points": bowtie}}])

    latest = ws.data.latest()
    changes = poll(ws, latest)
    staged = snapshot(ws, latest, changes, tmp_path / "staged")
    assert set(staged.manifest["task_id"]) == {t for t, _ in tasks[:3]}
    assert list(staged.quarantine) == [tasks[3][0]] and "edges cross" in staged.quarantine[tasks[3][0]]["reason"]


def test_flywheel_strategy_compares_boxes_and_masks_timed_by_lead_time(label_studio, loop_env, cli_env, tmp_path):
    from components.loop.insight import strategy_items
    from tests.integration.test_bad_inputs import run_cli

    params_path = write_detection_params(tmp_path, f"strat-{uuid.uuid4().hex[:6]}", "segmentation", "segmentation.xml")
    raw = yaml.safe_load(params_path.read_text())
    raw["strategy"].update(hours=[0.02, 0.04, 0.08], held_out=4)
    raw["strategy"]["train"].update(steps=4, image_size=64, batch_size=4)
    params_path.write_text(yaml.safe_dump(raw))
    ws = open_workspace(load_settings(), load_params(params_path), create_project=True)
    images = materialize(SEGMENTATION, tmp_path / "datasets", limit=16, seed=9)
    label_studio.import_images(ws.project, [i.path for i in images])
    truth = {i.path.name: i.label for i in images}
    lead = {}
    for n, (task_id, data) in enumerate(sorted(label_studio.unlabeled_tasks(ws.project.id).items())):
        masks = frozenset(o["mask"] for o in parse_target(truth[data["filename"]])["boxes"])
        lead[masks] = 20.0 + n
        label_studio.annotate(task_id, ws.task.result_of(truth[data["filename"]], ws.project.config), lead_time=lead[masks])

    items = strategy_items(ws)
    assert len(items) == 16
    for item in items:  # masks timed by Label Studio's lead_time, boxes by params.yaml's cost per box
        objects = parse_target(item.target)["boxes"]
        assisted = item.seconds.pop("assisted")  # a simulated person: the box and a look at least, drawing by hand at most
        assert len(objects) * (7.0 + 1.6) <= assisted <= len(objects) * (7.0 + 1.6 + 5 * 1.75 + 79.0)
        assert item.seconds == {"masks": lead[frozenset(o["mask"] for o in objects)], "boxes": len(objects) * 7.0}

    code, output, _ = run_cli(cli_env, "strategy", "--params", str(params_path), "--out", str(tmp_path / "strategy"))
    assert code == 0, output
    saved = json.loads((tmp_path / "strategy" / "strategy.json").read_text())
    assert {p["strategy"] for p in saved["points"]} == {"boxes", "masks", "assisted"}
    sentence = saved["verdicts"]["mask_map50"]["sentence"]
    assert sentence in output and ("sooner" in sentence or sentence.startswith("Too early to tell"))
    assert (tmp_path / "strategy" / "strategy.png").stat().st_size > 0


def test_a_coco_file_with_segmentation_imports_its_masks_as_pre_annotations(cli_env, label_studio, tmp_path):
    from components.data.composites import make_detection_set
    from tests.integration.test_bad_inputs import run_cli

    coco = make_detection_set(tmp_path / "coco", 4, seed=4)
    title = f"coco-seg-{uuid.uuid4().hex[:6]}"
    config = str(ROOT / "label_studio_config" / "segmentation.xml")
    code, output, _ = run_cli(cli_env, "import", str(coco), "--project", title, "--config", config)
    assert code == 0, output
    project = label_studio.ensure_project(title, load_labeling_config(config), create=False)
    truth = {i.path.name: i.label for i in materialize(str(coco), tmp_path, masks=True)}
    tasks = label_studio.unlabeled_tasks(project.id)
    assert len(tasks) == 4 and label_studio.model_versions(project.id) == {"coco:annotations.json": 4}
    for task_id, data in tasks.items():
        predicted = drawn_masks(label_studio.task(task_id)["predictions"][0]["result"])
        want = true_masks(truth[data["filename"]])
        assert [label for label, _ in predicted] == [label for label, _ in want]
        assert all((got == exact).all() for (_, got), (_, exact) in zip(predicted, want, strict=True))
