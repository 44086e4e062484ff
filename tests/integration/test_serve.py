"""`flywheel serve` registers its deployments, with their schedules, on the real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.adapters.stack import free_port
from flows.common import LOOP_LOCK, one_at_a_time
from tests.integration.test_loop import write_params

pytestmark = pytest.mark.integration


@contextmanager
def served(stack, stack_env: dict[str, str], params_path: Path, log_path: Path) -> Iterator[subprocess.Popen]:  # noqa: ANN001
    """`flywheel serve --params params_path` against the test stack, its output in `log_path`; stopped afterwards."""
    env = {**os.environ, **stack_env, "PREFECT_API_URL": stack.prefect_api_url, "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
           "FLYWHEEL_RECEIVER_PORT": str(free_port())}
    with open(log_path, "w") as log:
        serving = subprocess.Popen(
            [str(Path(sys.executable).parent / "flywheel"), "serve", "--params", str(params_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield serving
        finally:
            serving.terminate()
            serving.wait(timeout=30)


def test_serve_registers_the_scheduled_retrain_deployment(stack, stack_env, label_studio, tmp_path):
    params_path = write_params(tmp_path, f"serve-{uuid.uuid4().hex[:6]}")
    params = load_params(params_path)
    label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    with served(stack, stack_env, params_path, tmp_path / "serve.log") as serving:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            found = {}
            names = ("retrain",)
            while time.monotonic() < deadline and len(found) < len(names):
                assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                found = {d.name: d for d in client.read_deployments() if d.name in names and d.parameters.get("params_path") == str(params_path.resolve())}
                time.sleep(0.5)
            assert set(found) == set(names), (tmp_path / "serve.log").read_text()[-2000:]
            assert found["retrain"].schedules[0].schedule.cron == params.retrain.cron
            assert not [d for d in client.read_deployments() if d.name == "poll"]  # iterations run in the warm worker


def test_two_loop_runs_never_overlap(stack):
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        with one_at_a_time():
            with pytest.raises(TimeoutError):
                with concurrency(LOOP_LOCK, occupy=1, strict=True, timeout_seconds=2):
                    pytest.fail("a second run entered while the first held the loop lock")
        with concurrency(LOOP_LOCK, occupy=1, strict=True, timeout_seconds=10):
            pass  # released once the first run is done


def _runs(process, module: str) -> bool:
    import psutil

    try:
        return module in " ".join(process.cmdline())
    except psutil.Error:  # a short-lived grandchild (git, DVC) that has just exited
        return False


def test_serve_pretrains_the_backbone_in_the_background_at_low_priority(stack, stack_env, loop_env, label_studio, tmp_path):
    import psutil
    import yaml

    from components.studies.datasets import materialize
    from components.core.tags import TAG_POOL_SIZE
    from components.loop.pool import pool_tags
    from components.loop.workspace import open_workspace

    params_path = write_params(tmp_path, f"serve-pretrain-{uuid.uuid4().hex[:6]}")
    raw = yaml.safe_load(params_path.read_text())
    raw["train"]["architecture"] = "conv4"
    raw["architectures"] = {"conv4": {"width": 8}}
    raw["pretrain"].update(enabled=True, epochs=2, batch_size=16)
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in materialize("digits", tmp_path / "datasets", limit=40)])
    with served(stack, stack_env, params_path, tmp_path / "serve.log") as serving:
        deadline = time.monotonic() + 60
        child = None
        while child is None and time.monotonic() < deadline:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            child = next((p for p in psutil.Process(serving.pid).children(recursive=True) if _runs(p, "flows.pretrain")), None)
            time.sleep(0.2)
        assert child is not None, "serve started no background pretraining"
        assert child.nice() >= 10  # below the loop's priority: it never holds up a refresh
        ws = open_workspace(loop_env, params)
        deadline = time.monotonic() + 240
        run = None
        while run is None and time.monotonic() < deadline:
            run = ws.models.latest_pretraining(pool_tags(ws, "conv4"))
            time.sleep(1)
        assert run is not None, (tmp_path / "serve.log").read_text()[-2000:]
        assert 35 <= int(run.data.tags[TAG_POOL_SIZE]) <= 40  # a few 8x8 digits are pixel-identical


def test_serve_retrains_from_scratch_in_the_background_once_the_labeled_set_grew(stack, stack_env, loop_env, label_studio, tmp_path):
    """An iteration finds the labeled set grown by `retrain.growth` since the first model: serve starts the retrain's
    child at low priority, it registers a model from scratch, and a new champion's pre-annotations follow."""
    import psutil
    import yaml

    from components.core.tags import SCHEDULE_BACKGROUND, SCHEDULE_SCRATCH, TAG_PROMOTED, TAG_SCHEDULE
    from components.loop.workspace import open_workspace
    from tests.integration.test_loop import make_digits_project

    params_path, project, truth = make_digits_project(label_studio, tmp_path, "serve-retrain", limit=90)
    raw = yaml.safe_load(params_path.read_text())
    raw["retrain"].update(growth=1.5, steps=200, threads=1)
    raw["validate"]["min_per_class"] = 1  # a first model from the first 30 labels
    params_path.write_text(yaml.safe_dump(raw))
    ws = open_workspace(loop_env, load_params(params_path))
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())

    def label(chunk: list) -> None:
        for task_id, data in chunk:
            label_studio.annotate(task_id, ws.task.result_of(truth[data["filename"]], project.config))

    def wait_for(what: str, found, seconds: float):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            if (value := found()) is not None:
                return value
            time.sleep(0.5)
        pytest.fail(f"{what} within {seconds} s: {(tmp_path / 'serve.log').read_text()[-2000:]}")

    label(tasks[:30])
    with served(stack, stack_env, params_path, tmp_path / "serve.log") as serving:
        wait_for("no first model", ws.models.champion, 180)
        label(tasks[30:80])  # the labeled set more than 1.5 times what the first model (from scratch) saw
        def retrain_child_nice() -> int | None:
            for child in psutil.Process(serving.pid).children(recursive=True):
                try:
                    if _runs(child, "flows.retrain"):
                        return child.nice()
                except psutil.Error:  # it ended meanwhile
                    pass
            return None

        assert wait_for("no background retrain started", retrain_child_nice, 240) >= 10  # never holds up a refresh
        run = wait_for("no model retrained from scratch registered and judged", lambda: next(  # registered, then judged
            (r for r in ws.models.runs_tagged({TAG_SCHEDULE: SCHEDULE_BACKGROUND}, registered=True) if TAG_PROMOTED in r.data.tags),
            None), 240)
        assert run.data.metrics["train_images"] >= 1.5 * ws.models.runs_tagged(
            {TAG_SCHEDULE: SCHEDULE_SCRATCH}, registered=True)[0].data.metrics["train_images"]
        if run.data.tags[TAG_PROMOTED] == "true":  # its pre-annotations come from the iteration serve starts when it ended
            wait_for("the retrained champion's pre-annotations not shown", lambda: True if label_studio.shown_model_version(
                project.id) == ws.models.champion().model_version else None, 120)
