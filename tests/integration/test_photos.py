"""The photo-scale set through the whole loop, boxes and masks, against a real Label Studio, MLflow,
Prefect and DVC: images that are not square, objects over photographs, six classes.

A person is played through Label Studio's API with the set's exact boxes and masks.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from components.adapters.label_studio import LabelStudio
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.data.masks import mask_of_brush
from components.data.photo_composites import HEIGHT, WIDTH
from components.data.snapshot import read_manifest
from components.loop.insight import report
from components.loop.workspace import open_workspace
from components.studies.datasets import PHOTO_DETECTION, PHOTO_SEGMENTATION, materialize
from components.tasks.objects import parse_target
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def photo_params(folder: Path, task: str) -> Path:
    """The photo demo's params (params.yaml + demo.<task>.params + demo.<task>.photo.params), small and fast."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in load_params(ROOT / "params.yaml").demo.of(task, photos=True).params.items():
        params[section] = {**params[section], **values}
    title = f"photo-{task[:3]}-{uuid.uuid4().hex[:6]}"
    params["project"] = {"title": title, "config": str(ROOT / params["project"]["config"])}
    params["poll"]["min_new_annotations"] = 1
    params["train"].update({"image_size": 96, "max_epochs": 4, "min_steps": 0, "max_steps": 40, "patience": 2, "batch_size": 8,
                            "finetune_steps": 20})
    params["pretrain"]["enabled"] = False
    params["registry"] = {"model_name": f"test-{title}", "experiment": f"test-{title}"}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def as_drawn(result: list[dict]) -> list[tuple]:
    """A result's regions as compared: label, and the box to 1e-6 percent or the brush RLE as it is."""
    def key(value: dict) -> tuple:
        if "rle" in value:
            return tuple(value["brushlabels"]), tuple(value["rle"])
        return tuple(value["rectanglelabels"]), tuple(round(value[k], 6) for k in ("x", "y", "width", "height"))
    return sorted(key(r["value"]) for r in result)


@pytest.mark.parametrize(("task", "dataset"), [("detection", PHOTO_DETECTION), ("segmentation", PHOTO_SEGMENTATION)])
def test_a_photo_project_runs_the_loop_and_counts_the_objects_people_keep(
    task, dataset, loop_env: Settings, label_studio: LabelStudio, tmp_path
):
    from flows.flywheel import flywheel_iteration

    params_path = photo_params(tmp_path, task)
    params = load_params(params_path)
    images = materialize(dataset, tmp_path / "datasets", limit=30, seed=1)
    truth = {i.path.name: i.label for i in images}
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    ws = open_workspace(load_settings(), params)
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())
    labeled = tasks[:16]
    drawn = {}
    for task_id, data in labeled:
        drawn[task_id] = ws.task.result_of(truth[data["filename"]], project.config)
        label_studio.annotate(task_id, drawn[task_id])

    summary = flywheel_iteration(str(params_path))
    assert summary["snapshot"] and summary["trained"] and summary["written"] == len(tasks) - len(labeled)

    # the snapshot holds each object on the 384x288 image, in its own pixels
    latest = ws.data.latest()
    manifest = read_manifest(ws.data.checkout(latest)).set_index("task_id")
    assert set(manifest.index) == {t for t, _ in labeled}
    for task_id, data in labeled:
        got, want = parse_target(manifest.loc[task_id, "label"]), parse_target(truth[data["filename"]])
        assert (got["width"], got["height"]) == (WIDTH, HEIGHT)
        assert sorted(b["label"] for b in got["boxes"]) == sorted(b["label"] for b in want["boxes"])

    # pre-annotations on every other task, drawn on the image's own (not square) size
    champion = ws.models.champion()
    unlabeled = label_studio.unlabeled_tasks(project.id)
    assert label_studio.model_versions(project.id) == {champion.model_version: len(unlabeled)}
    predictions = {t: label_studio.task(t)["predictions"][0] for t in list(unlabeled)[:6]}
    for prediction in predictions.values():
        for region in prediction["result"]:
            value = region["value"]
            if task == "detection":
                assert 0 <= value["x"] and value["x"] + value["width"] <= 100.01 and value["y"] + value["height"] <= 100.01
            else:
                assert mask_of_brush(value["rle"], region["original_width"], region["original_height"]).shape == (HEIGHT, WIDTH)

    # a person starts from those suggestions and draws the truth: the report counts, object by object,
    # what they kept, and the time the suggestions saved against drawing every object
    by_id = dict(tasks)
    for task_id, prediction in predictions.items():
        label_studio.annotate(task_id, ws.task.result_of(truth[by_id[task_id]["filename"]], project.config),
                              parent_prediction=prediction["id"])
    result, path = report(ws, champion, latest)
    edits = result.acceptance.edits
    true_objects = sum(len(parse_target(truth[by_id[t]["filename"]])["boxes"]) for t in predictions)
    assert edits is not None and edits.objects == true_objects
    assert edits.kept + edits.adjusted + edits.deleted == sum(len(p["result"]) for p in predictions.values())
    costs = params.strategy.effort_costs(ws.task.drawn_as)
    assert result.acceptance.effort_saved is not None and result.acceptance.effort_saved <= 1 - costs.verify / costs.draw + 1e-9
    assert "Objects kept as suggested" in path.read_text()
    for task_id in drawn:  # no annotation was changed
        assert as_drawn(label_studio.task(task_id)["annotations"][0]["result"]) == as_drawn(drawn[task_id])
