"""flywheel as a project's ML backend, against the real Label Studio 1.23 server: connected once, a smart
box answered with the object's mask, "Retrieve predictions" answered by the champion, bad requests
answered with a 4xx that says what to send while the backend keeps serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.adapters.label_studio import LabelStudio
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.data.masks import mask_iou, mask_of_brush, mask_of_coco
from components.networks.preprocessing import load_images
from components.tasks.objects import parse_target
from tests.conftest import ROOT
from tests.integration.fuzz import fuzz
from tests.integration.test_segmentation import new_masks_project

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0


def smart_box(obj: dict, width: int, height: int, label: str | None = None, name: str = "box_prompt") -> dict:
    """A smart rectangle as Label Studio's editor sends it: percent of the image."""
    return {"original_width": width, "original_height": height, "image_rotation": 0, "id": uuid.uuid4().hex[:10],
            "from_name": name, "to_name": "image", "type": "rectanglelabels", "origin": "manual",
            "value": {"x": 100 * obj["x"] / width, "y": 100 * obj["y"] / height, "width": 100 * obj["w"] / width,
                      "height": 100 * obj["h"] / height, "rotation": 0, "rectanglelabels": [label or obj["label"]]}}


def client_health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=5).json()


def start_backend(params_path: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.ml_backend", str(params_path)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def connected(label_studio: LabelStudio, project_id: int, url: str, process: subprocess.Popen, log: Path) -> list[dict]:
    """The project's backends once flywheel's is there and connected (polled with a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the ML backend exited: {log.read_text()[-3000:]}"
        backends = label_studio.ml_backends(project_id)
        if any(b["url"] == url and b["state"] == "CO" for b in backends):
            return backends
        time.sleep(0.5)
    raise AssertionError(f"flywheel's ML backend never connected: {label_studio.ml_backends(project_id)}; {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def backend(loop_env: Settings, label_studio: LabelStudio, stack_env: dict[str, str], tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("ml-backend")
    params_path, project, truth = new_masks_project(label_studio, folder, "mlb", 30)
    settings = load_settings()
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    log = folder / "backend.log"
    state = {"params": params_path, "project": project, "truth": truth, "env": env,
             "log": log, "process": start_backend(params_path, env, log), "url": settings.ml_backend_url, "folder": folder}
    try:
        yield state
    finally:  # the process running now: a test restarts it
        state["process"].terminate()
        state["process"].wait(timeout=20)


def test_it_connects_once_however_often_it_starts(backend, label_studio):
    project = backend["project"]
    connected(label_studio, project.id, backend["url"], backend["process"], backend["log"])
    backend["process"].terminate()
    backend["process"].wait(timeout=20)
    backend["process"] = start_backend(backend["params"], backend["env"], backend["log"])
    deadline = time.monotonic() + DEADLINE_S  # the second start connected too (updated, not added)
    while backend["log"].read_text().count(f"of project {project.id} answers at") < 2:
        assert time.monotonic() < deadline and "refused flywheel" not in backend["log"].read_text(), backend["log"].read_text()[-2000:]
        time.sleep(0.2)
    backends = connected(label_studio, project.id, backend["url"], backend["process"], backend["log"])
    ours = [b for b in backends if b["url"] == backend["url"]]
    assert len(ours) == 1 and ours[0]["is_interactive"] and ours[0]["title"] == "flywheel"


def test_a_smart_box_is_answered_with_the_objects_mask(backend, label_studio):
    project = backend["project"]
    backends = connected(label_studio, project.id, backend["url"], backend["process"], backend["log"])
    backend_id = next(b["id"] for b in backends if b["url"] == backend["url"])
    task_id, data = sorted(label_studio.unlabeled_tasks(project.id).items())[0]
    target = parse_target(backend["truth"][data["filename"]])
    width, height = target["width"], target["height"]
    ious = []
    for obj in target["boxes"]:
        reply = label_studio.sdk.ml.with_raw_response.predict_interactive(
            id=backend_id, task=task_id, context={"result": [smart_box(obj, width, height)]}).response.json()
        assert "errors" not in reply, reply
        regions = reply["data"]["result"]
        assert len(regions) == 1 and regions[0]["type"] == "brushlabels" and regions[0]["from_name"] == project.config.from_name
        assert regions[0]["value"]["brushlabels"] == [obj["label"]]
        got = mask_of_brush(regions[0]["value"]["rle"], width, height)
        ious.append(mask_iou(got[None], mask_of_coco(obj["mask"], width, height)[None])[0, 0])
    assert np.mean(ious) >= 0.5, ious  # the classical fallback (GrabCut from the box) on a digit; the figure is the bench's


def test_bad_requests_get_a_4xx_that_says_what_to_send_and_change_nothing(backend, label_studio):
    project = backend["project"]
    connected(label_studio, project.id, backend["url"], backend["process"], backend["log"])
    (task_id, data), (other_id, other) = sorted(label_studio.unlabeled_tasks(project.id).items())[1:3]
    obj = parse_target(backend["truth"][data["filename"]])["boxes"][0]
    task = {"id": task_id, "data": data, "project": project.id}
    before = label_studio.task(task_id)
    outside = smart_box({**obj, "x": 120, "w": 30}, 128, 128)
    missing = {"id": other_id, "data": {**other, "image": "/data/local-files/?d=nowhere/gone.png"}, "project": project.id}
    cases = {
        "unknown label": ({"tasks": [task], "params": {"context": {"result": [smart_box(obj, 128, 128, label="cat")]}}},
                          "not one of the project's labels"),
        "box outside the image": ({"tasks": [task], "params": {"context": {"result": [outside]}}}, "not inside the image"),
        "another project's task": ({"tasks": [{**task, "project": project.id + 1000}], "params": {"context": None}},
                                   "this backend serves project"),
        "drawn on another image": ({"tasks": [task], "params": {"context": {"result": [smart_box(obj, 300, 100)]}}},
                                   "send the context drawn on this task's image"),
        "unreadable image": ({"tasks": [missing], "params": {"context": {"result": [smart_box(obj, 128, 128)]}}},
                             "Cannot read the image of task"),
        "no tasks": ({"tasks": [], "params": {}}, "non-empty list of tasks"),
        "not JSON": (b"{tasks", "must be JSON"),
    }
    with httpx.Client(base_url=backend["url"], timeout=30) as client:
        for name, (body, message) in cases.items():
            reply = client.post("/predict", content=body) if isinstance(body, bytes) else client.post("/predict", json=body)
            assert 400 <= reply.status_code < 500 and message in reply.json()["detail"], (name, reply.status_code, reply.text)
        assert client.get("/health").json()["status"] == "UP"  # still serving
    # through Label Studio, a bad request comes back as its error (Label Studio shows the status line, not the
    # body), and the message is in the backend's log, which `flywheel serve` prints
    backend_id = next(b["id"] for b in label_studio.ml_backends(project.id) if b["url"] == backend["url"])
    shown = label_studio.sdk.ml.with_raw_response.predict_interactive(
        id=backend_id, task=task_id, context={"result": [smart_box(obj, 128, 128, label="cat")]}).response.json()
    assert "422 Client Error" in str(shown.get("errors")) and "data" not in shown, shown
    deadline = time.monotonic() + DEADLINE_S
    while "The label 'cat' is not one of the project's labels" not in backend["log"].read_text():
        assert time.monotonic() < deadline, backend["log"].read_text()[-2000:]
        time.sleep(0.2)
    after = label_studio.task(task_id)
    assert (after["annotations"], after["predictions"]) == (before["annotations"], before["predictions"])


def test_retrieve_predictions_answers_with_the_champion(backend, label_studio):
    from flows.flywheel import flywheel_iteration

    project = backend["project"]
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())
    from components.loop.workspace import open_workspace

    ws = open_workspace(load_settings(), load_params(backend["params"]))
    for task_id, data in tasks[:20]:
        label_studio.annotate(task_id, ws.task.result_of(backend["truth"][data["filename"]], project.config))
    summary = flywheel_iteration(str(backend["params"]))
    assert summary["trained"]
    champion = ws.models.champion()
    deadline = time.monotonic() + DEADLINE_S  # the backend looks the champion up every few seconds, then measures it
    with httpx.Client(base_url=backend["url"], timeout=5) as client:
        while (health := client.get("/health").json())["model_version"] != champion.model_version or not health["assist"]["measured_on_masks"]:
            assert time.monotonic() < deadline, f"the ML backend never took and measured the new champion: {health}"
            time.sleep(0.5)
    assist = health["assist"]  # the switch-over, measured on the snapshot's validation masks
    assert assist["measured_on_masks"] > 0 and assist["boxes_answered_by"] == (
        "mask head" if assist["mask_iou_learned"] >= assist["mask_iou_fallback"] else "GrabCut") and assist["fallback"] == "GrabCut"
    labeled = [task_id for task_id, _ in tasks[:3]]  # write-back leaves labeled tasks without predictions
    versions = lambda t: [p.model_version for p in label_studio.sdk.predictions.list(task=t)]  # noqa: E731 - opens no task
    assert all(versions(t) == [] for t in labeled)
    label_studio.sdk.actions.create(id="retrieve_tasks_predictions", project=project.id,
                                    selected_items={"all": False, "included": labeled})
    assert all(versions(t) == [champion.model_version] for t in labeled), [versions(t) for t in labeled]
    # what the champion itself reads in the image, region for region
    model = ws.models.load(champion)
    path = backend["folder"] / "datasets"
    image = next(path.rglob(tasks[0][1]["filename"]))
    reading = ws.task.read(model, load_images([image], model.image_size), project.config, [(128, 128)])[0][0]
    got = label_studio.task(labeled[0])["predictions"][0]["result"]
    assert [(r["type"], r["value"]["brushlabels"], r["value"]["rle"]) for r in got] == [
        (r["type"], r["value"]["brushlabels"], r["value"]["rle"]) for r in reading.result]
    # one unreadable image among the tasks asked for costs that task its prediction, not the others theirs
    good = {"id": tasks[4][0], "data": tasks[4][1], "project": project.id}
    gone = {"id": tasks[5][0], "data": {**tasks[5][1], "image": "/data/local-files/?d=nowhere/gone.png"}, "project": project.id}
    reply = httpx.post(f"{backend['url']}/predict", json={"tasks": [gone, good], "params": {"context": None}}, timeout=30)
    assert reply.status_code == 200, reply.text
    first, second = reply.json()["results"]
    assert first["result"] == [] and first["score"] == 0.0 and second["model_version"] == champion.model_version
    # a task opened without predictions gets the champion's too (Label Studio asks the backend as it opens it)
    opened = tasks[3][0]
    assert versions(opened) == [] and [p["model_version"] for p in label_studio.task(opened)["predictions"]] == [champion.model_version]


def test_the_backends_http_api_never_answers_5xx(backend, label_studio):
    """schemathesis, from the backend's OpenAPI schema, every operation: no 5xx, and every 4xx says what to send."""
    connected(label_studio, backend["project"].id, backend["url"], backend["process"], backend["log"])
    fuzz(backend["url"], {"/health", "/setup", "/predict", "/webhook", "/versions"})


def test_a_sam_checkpoint_of_another_kind_stops_the_backend_once_with_the_fix(backend, monkeypatch, capfd):
    """A file that holds no SAM of that kind: the backend says so and exits, and serve's supervisor does not start
    it again (a restart would say the same); the running backend is untouched (it exits before it listens)."""
    import threading

    from components.core.errors import SETTINGS_EXIT
    from flows.serve.processes import MLBackend

    folder = backend["params"].parent
    (folder / "not-sam.pth").write_bytes(b"\x00 not a checkpoint")
    params_path = folder / "params-not-sam.yaml"
    params_path.write_text(backend["params"].read_text().replace("sam_checkpoint: null", "sam_checkpoint: not-sam.pth"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", backend["env"]["MLFLOW_TRACKING_URI"])
    supervisor = MLBackend(params_path, threading.Event())
    supervisor.start()
    supervisor._thread.join(timeout=DEADLINE_S)
    assert not supervisor._thread.is_alive() and supervisor.process.returncode == SETTINGS_EXIT  # started once, not again
    said = "".join(capfd.readouterr())
    assert said.count("is not a SAM vit_b checkpoint") == 1 and "assist.sam_model_type" in said, said[-2000:]
    assert backend["process"].poll() is None and client_health(backend["url"])["status"] == "UP"


def test_a_teams_sam_checkpoint_answers_the_clicks(backend, label_studio):
    """params.yaml assist.sam_checkpoint: the backend loads it once and SAM answers in GrabCut's place, through
    Label Studio (segment-anything's vit_b with random weights, saved as a checkpoint is: what its masks are worth
    is not asserted, and it may find no object at all; tests/model/test_sam.py checks how it is asked). Last in
    this file: the backend it starts is the one the fixture stops."""
    import torch
    from segment_anything import sam_model_registry

    project = backend["project"]
    folder = backend["params"].parent
    torch.save(sam_model_registry["vit_b"]().state_dict(), folder / "sam_vit_b.pth")
    params_path = folder / "params-sam.yaml"
    params_path.write_text(backend["params"].read_text().replace("sam_checkpoint: null", "sam_checkpoint: sam_vit_b.pth"))
    backend["process"].terminate()
    backend["process"].wait(timeout=20)
    backend["process"] = start_backend(params_path, backend["env"], backend["log"])
    backends = connected(label_studio, project.id, backend["url"], backend["process"], backend["log"])
    assert client_health(backend["url"])["assist"]["fallback"] == "SAM vit_b"
    backend_id = next(b["id"] for b in backends if b["url"] == backend["url"])
    task_id, data = sorted(label_studio.unlabeled_tasks(project.id).items())[4]
    target = parse_target(backend["truth"][data["filename"]])
    width, height, obj = target["width"], target["height"], target["boxes"][0]
    click = {**smart_box(obj, width, height, name="click_prompt"), "type": "keypointlabels", "is_positive": True,
             "value": {"x": 100 * (obj["x"] + obj["w"] / 2) / width, "y": 100 * (obj["y"] + obj["h"] / 2) / height,
                       "width": 0.5, "keypointlabels": [obj["label"]]}}
    context = {"result": [smart_box(obj, width, height), click]}
    task = label_studio.task(task_id)
    # SAM embeds the image first (~25 s on two cores, past Label Studio's client's 20 s): asked directly once...
    direct = httpx.post(f"{backend['url']}/predict", json={"tasks": [{"id": task_id, "data": task["data"], "project": project.id}],
                                                            "params": {"context": context}}, timeout=180)
    assert direct.status_code == 200 and direct.json()["results"][0]["model_version"] == "flywheel-assistant (SAM vit_b)", direct.text
    # ...then through Label Studio, answered from the embedding it keeps
    reply = label_studio.sdk.ml.with_raw_response.predict_interactive(id=backend_id, task=task_id, context=context).response.json()
    assert "errors" not in reply, reply
    assert reply["data"]["model_version"] == "flywheel-assistant (SAM vit_b)", reply
    for region in reply["data"]["result"]:  # random weights may find no object at all; any mask is the task's size
        assert region["value"]["brushlabels"] == [obj["label"]] and region["original_width"] == width
