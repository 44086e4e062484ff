"""`flywheel serve-model` and `flywheel export` against the real endpoint, Label Studio and MLflow."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from components.studies.datasets import materialize
from components.networks.export import Preprocessed
from components.loop.workspace import open_workspace
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.production.serving import PRODUCTION_VIEW
from components.core.settings import load_settings
from components.adapters.stack import free_port
from tests.integration.fuzz import fuzz
from tests.integration.test_loop import Person, write_params

pytestmark = pytest.mark.integration
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for(condition, timeout_s: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}" + (f"\n{log.read_text()[-3000:]}" if log else ""))


@pytest.fixture(scope="module")
def served(loop_env, cli_env, label_studio, tmp_path_factory):
    """A digits project with a champion, and its endpoint running as `flywheel serve-model`."""
    from flows import flywheel

    folder = tmp_path_factory.mktemp("serving")
    params_path = write_params(folder, f"serving-{uuid.uuid4().hex[:6]}")
    params = yaml.safe_load(params_path.read_text())
    # every answer under full confidence is routed; concurrent requests share a batch (a bad one must spoil none)
    params["production"].update({"route_below": 1.0, "reload_s": 0.5, "batch_timeout_ms": 50})
    params["images"]["max_pixels"] = 1_000_000
    params_path.write_text(yaml.safe_dump(params))
    loaded = load_params(params_path)
    images = materialize("digits", folder / "datasets", limit=300)
    project = label_studio.ensure_project(loaded.project.title, load_labeling_config(loaded.project.config))
    label_studio.import_images(project, [i.path for i in images[:240]])
    truth = {i.path.name: i.label for i in images[:240]}
    # what a routed image is called in Label Studio, so the person can label those too
    truth |= {f"production-{hashlib.sha256(i.path.read_bytes()).hexdigest()[:12]}.png": i.label for i in images[240:]}
    person = Person(label_studio, project, truth)
    person.label(40)
    assert flywheel.flywheel_iteration(str(params_path))["trained"]
    port = free_port()
    log = folder / "serve-model.log"
    with open(log, "w") as out:
        process = subprocess.Popen([FLYWHEEL, "serve-model", "--params", str(params_path), "--port", str(port)],
                                   env=cli_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 120, "the endpoint to start", log)
    try:
        yield {"client": client, "params": params_path, "project": project, "person": person, "log": log,
               "fresh": [i.path for i in images[240:]], "ws": open_workspace(load_settings(), loaded)}
    finally:
        import psutil

        children = psutil.Process(process.pid).children(recursive=True)
        process.terminate()  # SIGTERM stops the endpoint with its HTTP server and worker processes
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=20)
        for leftover in alive:
            leftover.kill()
        client.close()
        assert not alive, f"SIGTERM left {len(alive)} of the endpoint's processes running"


def test_an_unsure_image_sent_three_times_becomes_one_task_with_its_preannotation(served, label_studio):
    client, project = served["client"], served["project"]
    body = served["fresh"][0].read_bytes()
    answers = [client.post("/predict", content=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
    champion = served["ws"].models.champion()
    first = answers[0].json()
    assert first["model_version"] == champion.model_version and 0 <= first["confidence"] < 1.0
    assert [a.json()["routed"] for a in answers] == ["low confidence", "duplicate", "duplicate"]

    digest = hashlib.sha256(body).hexdigest()
    task_id = wait_for(lambda: label_studio.task_with_hash(project.id, digest), 10, "the routed task", served["log"])
    task = label_studio.task(task_id)
    assert task["data"]["source"] == "production"
    [prediction] = task["predictions"]
    assert prediction["model_version"] == champion.model_version
    assert prediction["result"] == first["result"]
    view = label_studio.view_id(project.id, PRODUCTION_VIEW)
    assert view is not None and [t["id"] for t in label_studio.view_tasks(project.id, view)] == [task_id]
    client.post("/predict", content=body)  # a fourth time, after the import: still one task
    tasks = [data for data in label_studio.all_tasks(project.id).values() if data.get("sha256") == digest]
    assert len(tasks) == 1


def test_a_flagged_image_becomes_a_task(served, label_studio):
    client, project = served["client"], served["project"]
    body = served["fresh"][1].read_bytes()
    answer = client.post("/feedback", content=body)
    assert answer.status_code == 200 and answer.json()["routed"] == "flagged"
    task_id = wait_for(lambda: label_studio.task_with_hash(project.id, hashlib.sha256(body).hexdigest()), 10, "the flagged task")
    assert label_studio.task(task_id)["data"]["routed_because"] == "flagged"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "empty"),
        (b"these bytes are no image", 415, "not an image"),
        (png(Image.new("L", (2000, 1000))), 413, "max_pixels"),
        (npy(np.zeros((8, 8, 5), dtype=np.uint8)), 422, "channel"),
        (npy(np.zeros((8, 8, 3), dtype=np.float32)), 422, "uint8"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 415, "Cannot answer"),
        (npy(np.zeros((8, 8, 3), np.uint8))[:128] + b"\x00" * 10, 400, "shorter"),
    ],
    ids=["empty", "not-an-image", "huge", "five-channels", "float-array", "truncated-png", "truncated-array"],
)
def test_a_bad_request_gets_its_4xx_and_the_server_keeps_serving(served, body, status, says):
    client = served["client"]
    answer = client.post("/predict", content=body)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]
    good = client.post("/predict", content=served["fresh"][0].read_bytes())
    assert good.status_code == 200 and "model_version" in good.json()


def test_a_bad_request_in_a_batch_spoils_no_other_answer(served):
    client = served["client"]
    # bad ones of both kinds: bytes PIL refuses, and an array whose header claims more than the body holds
    bodies = [served["fresh"][i].read_bytes() if i % 2 else b"no image" if i % 4 else npy(np.zeros((64, 64, 3), np.uint8))[:200]
              for i in range(2, 18)]
    answers: list[int] = []
    threads = [threading.Thread(target=lambda b=b: answers.append(client.post("/predict", content=b).status_code)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [200] * 8 + [400] * 4 + [415] * 4


def test_the_endpoints_http_api_never_answers_5xx(served):
    """schemathesis, from the endpoint's OpenAPI schema, every operation: no 5xx, and every 4xx says what to send."""
    fuzz(str(served["client"].base_url).rstrip("/"), {"/predict", "/health"})
    assert served["client"].post("/predict", content=served["fresh"][0].read_bytes()).status_code == 200  # still serving


def test_after_a_promotion_the_endpoint_answers_with_the_new_version_dropping_nothing(served):
    from flows import flywheel

    client, ws = served["client"], served["ws"]
    before = ws.models.champion()
    body = served["fresh"][20].read_bytes()
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            while not stop.is_set():
                answer = own.post("/predict", content=body)
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    versions.append(answer.json()["model_version"])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        served["person"].label(40, seed=1)
        assert flywheel.flywheel_iteration(str(served["params"]))["trained"]
        after = ws.models.champion()
        if after.version == before.version:  # the rule kept the old one: promote the new version as the loop would
            from mlflow.tracking import MlflowClient

            latest = max(int(v.version) for v in MlflowClient(ws.settings.mlflow_tracking_uri).search_model_versions(f"name='{ws.models.name}'"))
            MlflowClient(ws.settings.mlflow_tracking_uri).set_registered_model_alias(ws.models.name, "champion", str(latest))
            after = ws.models.champion()
        wait_for(lambda: client.post("/predict", content=body).json()["model_version"] == after.model_version, 30,
                 f"the endpoint to answer with {after.model_version}", served["log"])
    finally:
        stop.set()
        asker.join()
    assert statuses and set(statuses) == {200}
    assert versions[0] == before.model_version and versions[-1] == after.model_version


def test_the_export_runs_outside_flywheel_as_pytorch_does(served, cli_env, tmp_path):
    import mlflow
    import onnxruntime
    import torch

    out = tmp_path / "export"
    done = subprocess.run([FLYWHEEL, "export", "--params", str(served["params"]), "--format", "onnx", "--format", "torchscript",
                           "--out", str(out)], env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ws = served["ws"]
    champion = ws.models.champion()
    reference = Preprocessed(ws.models.load(champion)).eval()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    rng = np.random.default_rng(0)
    worst = {"onnx": 0.0, "torchscript": 0.0}
    for i in range(100):
        height, width = (16, 16) if i % 2 else tuple(rng.integers(8, 64, size=2))
        pixels = rng.integers(0, 256, size=(1, height, width, 3), dtype=np.uint8)
        with torch.no_grad():
            expected = reference(torch.from_numpy(pixels)).numpy()
            worst["torchscript"] = max(worst["torchscript"], float(np.abs(scripted(torch.from_numpy(pixels)).numpy() - expected).max()))
        worst["onnx"] = max(worst["onnx"], float(np.abs(session.run(None, {"images": pixels})[0] - expected).max()))
    assert worst["onnx"] <= 1e-4 and worst["torchscript"] <= 1e-4, worst
    # the registered model is MLflow's onnx flavor: a protobuf, nothing unpickled to load it
    info = mlflow.models.get_model_info(f"models:/{ws.models.name}/{champion.version}")  # MLFLOW_TRACKING_URI: loop_env
    assert "onnx" in info.flavors and "pytorch" not in info.flavors


def test_the_stack_starts_and_stops_the_endpoint_as_an_optional_service(served, stack):
    from components.adapters import stack as embedded

    endpoint = embedded.model_endpoint(stack, served["params"], free_port())
    rows = embedded.up(stack, echo=lambda _: None, then=[endpoint])
    try:
        [row] = [r for r in rows if r.name == "serve_model"]
        assert row.healthy and row.pid is not None
        answer = httpx.post(endpoint.url, content=served["fresh"][0].read_bytes(), timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == served["ws"].models.champion().model_version
    finally:
        assert embedded.down(stack, echo=lambda _: None, only=["serve_model"]) == ["serve_model"]
    assert not [r for r in embedded.status(stack) if r.name == "serve_model"]
    assert all(r.healthy for r in embedded.status(stack))  # the rest of the stack is untouched
