"""Object detection through the whole loop, against a real Label Studio, MLflow, Prefect and DVC.

A person is played through Label Studio's API with the composited demo set's exact boxes.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from components.studies.datasets import DETECTION, materialize
from components.adapters.label_studio import ATTENTION_VIEW, LABEL_NEXT_VIEW, SUSPECTS_VIEW
from components.loop.insight import report
from components.loop.publish import label_next, write_back
from components.loop.quality import check_labels
from components.loop.workspace import open_workspace
from components.adapters.label_studio import LabelStudio
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.data.snapshot import read_manifest
from components.tasks import task_type_of
from components.tasks.boxes import box_from_value
from components.tasks.detection import DetectionModel
from components.tasks.objects import parse_target
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def write_detection_params(folder: Path, title: str, task: str = "detection", config: str = "detection.xml") -> Path:
    """A demo's params (params.yaml + demo.<task>.params), small and fast for a test."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in params["demo"][task]["params"].items():
        params[section] = {**params[section], **values}
    params["project"] = {"title": title, "config": str(ROOT / "label_studio_config" / config)}
    params["poll"]["min_new_annotations"] = 1
    params["train"].update({"image_size": 64, "max_epochs": 4, "min_steps": 0, "patience": 2, "batch_size": 8,
                            "finetune_steps": 20})
    params["errors"].update({"folds": 2, "steps": 10})
    params["pretrain"]["enabled"] = False
    params["registry"] = {"model_name": f"test-{title}", "experiment": f"test-{title}"}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def boxes_project(loop_env: Settings, label_studio: LabelStudio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("detection")
    params_path = write_detection_params(folder, f"det-{uuid.uuid4().hex[:6]}")
    params = load_params(params_path)
    images = materialize(DETECTION, folder / "datasets", limit=40)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images])
    return params_path, project, {i.path.name: i.label for i in images}


def percent_boxes(result: list[dict]) -> list[tuple[str, tuple[float, ...]]]:
    return sorted((r["value"]["rectanglelabels"][0], tuple(round(r["value"][k], 6) for k in ("x", "y", "width", "height"))) for r in result)


def test_boxes_round_trip_and_the_loop_runs_end_to_end(boxes_project, label_studio, loop_env):
    from flows.flywheel import flywheel_iteration

    params_path, project, truth = boxes_project
    ws = open_workspace(load_settings(), load_params(params_path))
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())
    labeled = tasks[:24]
    drawn = {}
    for task_id, data in labeled:
        drawn[task_id] = ws.task.result_of(truth[data["filename"]], project.config)
        label_studio.annotate(task_id, drawn[task_id])
    # three bad boxes: rotated, outside the image, a label the config lacks; the rest trains
    bad = {tasks[24][0]: ("rotation", 30.0), tasks[25][0]: ("x", 95.0), tasks[26][0]: ("rectanglelabels", ["cat"])}
    for task_id, (key, value) in bad.items():
        region = ws.task.result_of(truth[dict(tasks)[task_id]["filename"]], project.config)[0]
        label_studio.annotate(task_id, [{**region, "value": {**region["value"], key: value}}])

    summary = flywheel_iteration(str(params_path))
    assert summary["snapshot"] and summary["trained"] and summary["written"] == len(tasks) - 27

    # Label Studio -> snapshot: pixels of the original image, within 1 px of the truth
    latest = ws.data.latest()
    manifest = read_manifest(ws.data.checkout(latest)).set_index("task_id")
    assert set(manifest.index) == {t for t, _ in labeled}
    for task_id, data in labeled:
        got, want = parse_target(manifest.loc[task_id, "label"]), parse_target(truth[data["filename"]])
        assert len(got["boxes"]) == len(want["boxes"])
        for g, w in zip(sorted(got["boxes"], key=lambda b: (b["x"], b["y"])), sorted(want["boxes"], key=lambda b: (b["x"], b["y"])), strict=True):
            assert g["label"] == w["label"] and max(abs(g[k] - w[k]) for k in "xywh") <= 1.0
    # bad boxes are reported by task and lose nothing
    assert set(latest.quarantine) == set(bad)
    reasons = " ".join(q["reason"] for q in latest.quarantine.values())
    assert "rotated" in reasons and "outside the image" in reasons and "'cat'" in reasons
    attention = label_studio.view_tasks(project.id, label_studio.view_id(project.id, ATTENTION_VIEW))
    assert {t["id"] for t in attention} == set(bad)

    # snapshot -> training target (model pixels) -> a model's output -> Label Studio -> pixels again
    data = ws.task.datamodule(ws.data.checkout(latest), manifest.reset_index(), list(project.config.labels), 64, 8, False)
    data.setup()
    everything = [*data.train_set.targets, *data.val_set.targets]
    rows = []
    for target in everything[:1]:
        scored = torch.cat([target["boxes"], torch.full((len(target["boxes"]), 1), 0.9), target["labels"][:, None].float()], dim=1)
        rows.append(torch.cat([scored, torch.zeros(50 - len(scored), 6)]))

    class Echo(torch.nn.Module):  # a fake network that outputs exactly the training target
        def forward(self, images):
            return {"embedding": torch.zeros(len(images), 2)}

        def decode_padded(self, outputs, k):
            return torch.stack(rows)

        def embed(self, outputs):
            return outputs["embedding"]

    readings, _ = ws.task.read(DetectionModel(Echo(), project.config.labels, 64), torch.zeros(1, 3, 64, 64), project.config)
    first_task = manifest.reset_index()[manifest.reset_index()["split"] == "train"].iloc[0]
    original = parse_target(first_task["label"])
    back = [box_from_value(r["value"], original["width"], original["height"]) for r in readings[0].result]
    want = sorted((b["x"], b["y"], b["w"], b["h"]) for b in original["boxes"])
    assert np.abs(np.array(sorted(back)) - np.array(want)).max() <= 1.0

    # pre-annotations: rectangles with a score per box; the prediction's score is the model's confidence
    champion = ws.models.champion()
    unlabeled = label_studio.unlabeled_tasks(project.id)
    assert label_studio.model_versions(project.id) == {champion.model_version: len(unlabeled)}
    some = label_studio.task(next(iter(unlabeled)))["predictions"][0]
    assert 0.0 <= some["score"] <= 1.0
    assert all(r["type"] == "rectanglelabels" and 0.0 <= r["score"] <= 1.0 for r in some["result"])
    if some["result"]:
        assert some["score"] == pytest.approx(min(r["score"] for r in some["result"]), abs=1e-4)
    # shown from the operating point chosen on the validation images, kept with the model and logged with its run
    model, recipe = ws.models.load_with_recipe(champion)
    logged = ws.models.client.get_run(champion.run_id).data.metrics
    assert recipe.shown_from == model.shown_from == logged["shown_from"] and "val_effort_saved" in logged
    assert all(r["score"] >= recipe.shown_from for t in unlabeled for r in label_studio.task(t)["predictions"][0]["result"])
    nxt = label_next(ws)
    assert 0 < len(nxt) <= ws.params.select.batch and set(nxt) <= set(unlabeled)
    scores = [label_studio.task(t)["predictions"][0]["score"] for t in nxt]
    assert scores == sorted(scores)  # least confident first

    # the error finder for boxes fills the suspects tab from out-of-fold boxes
    table = check_labels(ws, latest)
    assert len(table) == len(labeled) and table["quality"].between(0, 1).all()
    assert {"label", "suggested", "suspected"} <= set(table.columns)
    write_back(ws, champion, latest)
    suspects = label_studio.view_tasks(project.id, label_studio.view_id(project.id, SUSPECTS_VIEW))
    assert {t["id"] for t in suspects} == set(table.loc[table["suspected"], "task_id"])
    assert label_studio.view_id(project.id, LABEL_NEXT_VIEW) is not None
    for task_id in drawn:  # no annotation was changed
        assert percent_boxes(label_studio.task(task_id)["annotations"][0]["result"]) == percent_boxes(drawn[task_id])

    # the strategy report speaks detection: box mAP learning curve, per-class AP, no confusion matrix
    result, path = report(ws, champion, latest)
    assert path.is_file() and result.confusion is None and result.per_class_title == "AP"
    assert result.labeled == len(manifest) and result.points and result.points[-1].accuracy <= 1
    assert "box mAP@0.5" in path.read_text()


def test_a_coco_file_imports_as_tasks_with_its_boxes_as_pre_annotations(cli_env, label_studio, tmp_path):
    from components.data.composites import make_detection_set
    from tests.integration.test_bad_inputs import run_cli

    coco = make_detection_set(tmp_path / "coco", 6, seed=3)
    title = f"coco-{uuid.uuid4().hex[:6]}"
    config = str(ROOT / "label_studio_config" / "detection.xml")
    code, output, _ = run_cli(cli_env, "import", str(coco), "--project", title, "--config", config)
    assert code == 0, output
    project = label_studio.ensure_project(title, load_labeling_config(config), create=False)
    truth = {i.path.name: i.label for i in materialize(str(coco), tmp_path)}
    tasks = label_studio.unlabeled_tasks(project.id)
    assert len(tasks) == 6 and label_studio.model_versions(project.id) == {"coco:annotations.json": 6}
    for task_id, data in tasks.items():
        predicted = label_studio.task(task_id)["predictions"][0]["result"]
        assert percent_boxes(predicted) == percent_boxes(task_type_of(project.config).result_of(truth[data["filename"]], project.config))
    # a COCO file into a classification project: one clear message, nothing imported
    code, output, _ = run_cli(cli_env, "import", str(coco), "--project", f"{title}-c", "--config", str(ROOT / "label_studio_config" / "classification.xml"))
    assert code != 0 and "needs a detection or segmentation project" in output and len(output.strip().splitlines()) == 1


def test_a_coco_export_with_an_images_folder_and_its_own_classes_imports_and_simulates(cli_env, label_studio, loop_env, tmp_path,
                                                                                       monkeypatch):
    """A team's export as it is: file_names relative to `images/`, classes that are not the demo's."""
    from bench import simulate
    from bench.simulate import SimulationConfig, run_simulation
    from components.core.labeling_config import with_labels
    from tests.integration.test_bad_inputs import coco_export, run_cli

    names = {str(d): ("plants" if d < 5 else "rocks") for d in range(10)}  # two classes that are not digits
    coco = coco_export(tmp_path, "images", names, count=30)
    config = tmp_path / "own.xml"
    config.write_text(with_labels(load_labeling_config(ROOT / "label_studio_config" / "detection.xml"), ["plants", "rocks"]).xml)
    title = f"coco-own-{uuid.uuid4().hex[:6]}"
    code, output, _ = run_cli(cli_env, "import", str(coco), "--project", title, "--config", str(config))
    assert code == 0, output
    project = label_studio.ensure_project(title, load_labeling_config(config), create=False)
    assert label_studio.model_versions(project.id) == {"coco:annotations.json": 30}

    demo_params = simulate.scratch_params  # the detection demo's params, with 50 training steps instead of its 400: this
    # test is about reading a team's export, and the demo's training took 5 of the suite's minutes (2026-12-07)
    monkeypatch.setattr(simulate, "scratch_params", lambda run, scratch, labels, overrides: demo_params(
        run, scratch, labels, {**overrides, "train": {**overrides["train"], "min_steps": 50, "max_steps": 50}}))
    simulated = SimulationConfig(dataset=str(coco), orders=("random",), pool=24, held_out=6, budget=20, every=20, task="detection")
    (tmp_path / "sim").mkdir()
    (outcome,) = run_simulation(load_settings(), tmp_path / "sim", simulated, out_dir=tmp_path, echo=lambda line: None)
    assert outcome.steps[0].labels == 20 and outcome.steps[0].score is not None  # trained and scored on its own classes
    assert outcome.steps[0].objects > 0  # and the person's objects were counted


OWN_CONFIG = """<View>
  <Header value="Which animals?"/>
  <Image name="photo" value="$picture" zoom="true"/>
  <RectangleLabels name="animal" toName="photo">
    <Label value="cat" background="#ff0000"/>
    <Label value="dog" background="#00aa00"/>
  </RectangleLabels>
</View>"""


def test_a_project_made_outside_flywheel_is_attached_by_id_and_runs_the_loop(label_studio, cli_env, loop_env, tmp_path):
    """A team's own project: its title, tag names, data key and classes are none of flywheel's. It is
    found by id alone (params.yaml's title and local XML are the digits demo's and are not used)."""
    from components.tasks.objects import make_target
    from tests.integration.test_bad_inputs import run_cli

    created = label_studio.sdk.projects.create(title=f"Team project {uuid.uuid4().hex[:6]}", label_config=OWN_CONFIG)
    project = label_studio.project(created.id)
    assert (project.config.from_name, project.config.to_name, project.config.data_key) == ("animal", "photo", "picture")
    items = materialize(DETECTION, tmp_path / "datasets", limit=30, seed=4)
    as_animals = {}
    for item in items:  # digits below 5 are cats, the rest dogs
        target = parse_target(item.label)
        boxes = [{**b, "label": "cat" if int(b["label"]) < 5 else "dog"} for b in target["boxes"]]
        as_animals[item.path.name] = make_target(target["width"], target["height"], boxes)
    label_studio.import_images(project, [i.path for i in items])
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())
    task_type = task_type_of(project.config)
    for task_id, data in tasks[:20]:
        label_studio.annotate(task_id, task_type.result_of(as_animals[data["filename"]], project.config))

    params_path = write_detection_params(tmp_path, "not the team project title")  # title and XML: the digits demo's
    code, output, _ = run_cli(cli_env, "run", "--params", str(params_path), "--project", str(project.id))
    assert code == 0, output[-3000:]
    unlabeled = [t for t, _ in tasks[20:]]
    shown = [label_studio.task(t)["predictions"] for t in unlabeled]
    assert all(len(p) == 1 for p in shown)  # every unlabeled task pre-annotated, in the project's own terms
    regions = [r for p in shown for r in p[0]["result"]]
    assert all(r["from_name"] == "animal" and r["to_name"] == "photo" for r in regions)
    assert {r["value"]["rectanglelabels"][0] for r in regions} <= {"cat", "dog"}
    attached = load_settings().workspace / "attached" / f"params-project-{project.id}.yaml"
    ws = open_workspace(load_settings(), load_params(attached))
    assert ws.project.id == project.id and ws.task.name == "detection"
    names = {b["label"] for text in read_manifest(ws.data.checkout(ws.data.latest()))["label"] for b in parse_target(text)["boxes"]}
    assert names == {"cat", "dog"} and list(ws.models.load(ws.models.champion()).labels) == ["cat", "dog"]  # trained on its classes
    assert label_studio.ensure_project("not the team project title", project.config, create=False) is None  # none made

    code, output, _ = run_cli(cli_env, "run", "--params", str(params_path), "--project", "987654")
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "has no project 987654" in errors[0] and "Projects there:" in errors[0], output[-2000:]


def retrain_params(folder: Path, growth: float) -> Path:
    """The detection demo's small test params with the background retrain on (`retrain.growth`), 30 steps from scratch."""
    params_path = write_detection_params(folder, f"retrain-{uuid.uuid4().hex[:6]}")
    raw = yaml.safe_load(params_path.read_text())
    raw["retrain"].update({"growth": growth, "steps": 100, "threads": 1})
    raw["validate"]["min_per_class"] = 1  # a first model from the first block
    params_path.write_text(yaml.safe_dump(raw))
    return params_path


def test_the_background_retrain_trains_from_scratch_once_the_labeled_set_doubled(label_studio, loop_env, tmp_path):
    """The iteration that sees the labeled set doubled since the last model from scratch says so (`flywheel
    serve` then starts the retrain's child); the retrain trains from scratch, is judged like any model, and
    is not due again until the labeled set grows again."""
    from components.core.tags import SCHEDULE_BACKGROUND, SCHEDULE_FINE_TUNE, SCHEDULE_SCRATCH, TAG_PROMOTED, TAG_SCHEDULE
    from flows.flywheel import flywheel_iteration, version_new_labels
    from flows.retrain import background_retrain

    params_path = retrain_params(tmp_path, growth=1.5)
    ws = open_workspace(load_settings(), load_params(params_path), create_project=True)
    images = materialize(DETECTION, tmp_path / "datasets", limit=60)
    ws.label_studio.import_images(ws.project, [i.path for i in images])
    truth = {i.path.name: i.label for i in images}
    unlabeled = sorted(ws.label_studio.unlabeled_tasks(ws.project.id).items())

    def label(tasks: list) -> None:
        for task_id, data in tasks:
            ws.label_studio.annotate(task_id, ws.task.result_of(truth[data["filename"]], ws.project.config))

    label(unlabeled[:20])
    first = flywheel_iteration(str(params_path), progress=False)
    assert first["trained"] and not first.get("retrain_due")  # the first model is itself from scratch
    assert background_retrain(str(params_path)) == {"retrained": False}
    label(unlabeled[20:50])
    second = flywheel_iteration(str(params_path), progress=False)
    assert second["trained"] and second["retrain_due"], second
    schedules = [r.data.tags.get(TAG_SCHEDULE) for r in ws.models.runs_tagged({}, registered=True, max_results=10)]
    assert schedules == [SCHEDULE_FINE_TUNE, SCHEDULE_SCRATCH]  # newest first: the fast path fine-tuned the first model

    label(unlabeled[50:52])  # labels keep coming: a newer snapshot, versioned and not trained yet, when the retrain starts
    version_new_labels(ws, {})
    assert ws.data.latest().rev != second["snapshot"]
    retrained = background_retrain(str(params_path))
    assert retrained["retrained"] and retrained["snapshot"] == second["snapshot"], retrained  # the fast path's newest
    (run,) = ws.models.runs_tagged({TAG_SCHEDULE: SCHEDULE_BACKGROUND}, registered=True, max_results=10)
    assert run.data.tags[TAG_PROMOTED] == str(retrained["promoted"]).lower()  # judged, as every model is
    assert run.data.metrics["train_images"] == ws.models.runs_tagged({TAG_SCHEDULE: SCHEDULE_FINE_TUNE}, registered=True)[0].data.metrics["train_images"]
    assert background_retrain(str(params_path)) == {"retrained": False}  # done for this labeled set
    flywheel_iteration(str(params_path), progress=False)  # the one `flywheel serve` starts when the retrain ended
    assert ws.label_studio.shown_model_version(ws.project.id) == ws.models.champion().model_version


def test_the_simulated_background_retrain_lands_only_after_the_person_labeled_while_it_trained(label_studio, loop_env, tmp_path):
    """`bench simulate` plays the retrain in the person's time: trained at once, held back (not registered)
    until the annotation seconds since cover its training seconds, then judged and shown."""
    from bench.simulate import background_retraining
    from components.core.tags import SCHEDULE_BACKGROUND, TAG_SCHEDULE
    from components.studies.simulator import HeldOut, simulate, split_pool
    from flows.flywheel import flywheel_iteration

    params_path = retrain_params(tmp_path, growth=1.5)
    ws = open_workspace(load_settings(), load_params(params_path), create_project=True)
    pool, held_out = split_pool(materialize(DETECTION, tmp_path / "datasets", limit=90), 10, seed=0)
    ws.label_studio.import_images(ws.project, [i.path for i in pool])
    registered = []

    def background_models(step) -> None:
        registered.append(len(ws.models.runs_tagged({TAG_SCHEDULE: SCHEDULE_BACKGROUND}, registered=True, max_results=10)))

    outcome = simulate(
        ws.label_studio, ws.project, {i.path.name: i.label for i in pool},
        HeldOut(held_out, ws.task, ws.project.config.labels, ws.params.train.image_size), ws.models,
        run_iteration=lambda: flywheel_iteration(str(params_path), progress=False), order="random", budget=80, every=20,
        costs=ws.params.strategy.effort_costs("boxes"), retraining=background_retraining(ws), on_step=background_models,
    )
    events = [s.retrain for s in outcome.steps]
    started = next((i for i, s in enumerate(outcome.steps) if "retrain started" in s.retrain), None)
    landed = next((i for i, s in enumerate(outcome.steps) if "retrain landed" in s.retrain), None)
    assert started is not None and landed is not None and landed > started, events
    assert (registered[started], registered[landed]) == (0, 1), events  # held back, not registered, until it landed
    training_s = float(re.search(r"\((\d+) s of training\)", events[started])[1])
    waited = outcome.steps[started + 1: landed + 1]  # the blocks labeled while it trained, up to the one it landed in
    assert sum(s.seconds for s in waited) >= training_s - 1  # the person labeled at least as long as it trained
    assert sum(s.seconds for s in waited[:-1]) < training_s + sum(s.iteration_s for s in waited[:-1]) + 1  # and not a block longer
    with pytest.raises(ValueError, match="pass `costs`"):
        simulate(ws.label_studio, ws.project, {}, None, ws.models, lambda: None, "random", 1, 1,  # type: ignore[arg-type]
                 retraining=background_retraining(ws))
