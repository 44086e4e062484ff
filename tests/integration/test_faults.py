"""Fault tests: a server or `flywheel run` itself is killed (kill -9) mid-step, for real; then the rerun
finishes the job, leaves no debris and duplicates nothing.

`components.core.faults.pause_point` (a test hook, named as such) holds the run at the exact step so the
kill lands there: after the first training epoch, or in write-back after the old pre-annotations
were cleared and before the new ones are written. One fault is injected instead: an MLflow call that
fails once after the champion alias moved, so the register task is retried (Prefect's retry is real).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.adapters import stack as embedded
from components.core.errors import TrackingError
from components.core.faults import PAUSE_AT, PAUSE_FILE
from components.loop.workspace import open_workspace
from components.core.params import load_params
from components.adapters.registry import ModelRegistry, Promotion
from components.core.tags import TAG_CLOSED_BY, TAG_PROMOTED
from components.core.settings import load_settings
from components.studies.simulator import label_balanced
from tests.integration.test_bad_inputs import run_cli
from tests.integration.test_loop import make_digits_project

pytestmark = pytest.mark.integration


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s:.0f} s"
        time.sleep(0.1)


@pytest.fixture
def project(stack, label_studio, loop_env, tmp_path):
    params_path, project, truth = make_digits_project(label_studio, tmp_path, "faults", 150, min_new_annotations=1)
    return params_path, project, lambda count, seed: label_balanced(label_studio, project, truth, count, random.Random(seed))


def start_paused(env: dict[str, str], params_path: Path, point: str, marker: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "flywheel"), "run", "--params", str(params_path)],
        env={**env, PAUSE_AT: point, PAUSE_FILE: str(marker)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def running_mlflow_runs(tracking_uri: str, experiment: str) -> list[str]:
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'") if found else []
    return [r.info.run_id for r in runs]


def test_mlflow_killed_during_training_exits_clearly_and_the_rerun_finishes(project, stack, cli_env, tmp_path):
    params_path, ls_project, label = project
    params = load_params(params_path)
    label(40, 0)
    marker = tmp_path / "paused"
    run = start_paused(cli_env, params_path, "train", marker)
    try:
        wait_for(marker, run, 180)
        os.killpg(embedded.running_pid(stack, "mlflow"), signal.SIGKILL)  # the fault: MLflow dies mid-training
        marker.unlink()  # training goes on, and meets the dead server
        output, _ = run.communicate(timeout=120)  # how soon it exits is measured by bench/robustness.py
    finally:
        if run.poll() is None:
            run.kill()
        embedded.up(stack, echo=lambda _: None)  # back up for the rerun and the rest of the suite

    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, output[-3000:]
    assert "MLflow at" in errors[0] and "flywheel stack up" in errors[0] and "Traceback" not in output
    abandoned = running_mlflow_runs(stack.mlflow_tracking_uri, params.registry.experiment)
    assert abandoned  # the training run the fault cut short

    code, output, _ = run_cli(cli_env, "run", "--params", str(params_path))
    assert code == 0, output[-3000:]
    assert running_mlflow_runs(stack.mlflow_tracking_uri, params.registry.experiment) == []
    closed = MlflowClient(stack.mlflow_tracking_uri).get_run(abandoned[0])
    assert closed.info.status == "FAILED" and TAG_CLOSED_BY in closed.data.tags
    ws = open_workspace(load_settings(), params)
    champion = ws.models.champion()
    assert champion is not None
    assert ws.label_studio.model_versions(ls_project.id)[champion.model_version] == len(ws.label_studio.unlabeled_tasks(ls_project.id))


def test_flywheel_killed_during_write_back_rerun_leaves_one_complete_set(project, stack, cli_env, tmp_path):
    params_path, ls_project, label = project
    params = load_params(params_path)
    label(40, 0)
    code, output, _ = run_cli(cli_env, "run", "--params", str(params_path))
    assert code == 0, output[-3000:]

    label(20, 1)
    marker = tmp_path / "paused"
    run = start_paused(cli_env, params_path, "write-back", marker)
    try:
        wait_for(marker, run, 180)
        os.kill(int(marker.read_text()), signal.SIGKILL)  # the fault: flywheel itself dies mid write-back
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    ws = open_workspace(load_settings(), params)
    # killed after the new version's batch was written, before Label Studio was told to show it
    assert ws.label_studio.shown_model_version(ls_project.id) != ws.models.champion().model_version

    code, output, _ = run_cli(cli_env, "run", "--params", str(params_path))
    assert code == 0, output[-3000:]
    # whichever of its locks the killed run still held when the rerun came, the rerun waits it out and says so
    assert "Waiting for the loop lock" in output and "its process was killed" in output

    champion = ws.models.champion()
    unlabeled = ws.label_studio.unlabeled_tasks(ls_project.id)
    assert ws.label_studio.shown_model_version(ls_project.id) == champion.model_version
    for task_id in unlabeled:
        versions = [p["model_version"] for p in ws.label_studio.task(task_id)["predictions"]]
        assert versions.count(champion.model_version) == 1 and len(versions) <= params.predict.keep_versions, versions
    assert ws.label_studio.model_versions(ls_project.id)[champion.model_version] == len(unlabeled)

    assert running_mlflow_runs(stack.mlflow_tracking_uri, params.registry.experiment) == []
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}), get_client(sync_client=True) as client:
        ours = [r for r in client.read_flow_runs(limit=200)  # this project's: other tests share the server
                if Path(str(r.parameters.get("params_path", ""))).resolve() == params_path.resolve()]
        assert any(r.state is not None and r.state.is_crashed() for r in ours)  # the killed run, closed by the rerun
        assert [r.name for r in ours if r.state is not None and r.state.is_running()] == []


def test_register_retried_after_the_alias_moved_registers_once_and_the_champion_stays_promoted(project, loop_env, monkeypatch):
    """A transient MLflow failure after the champion alias moved (a busy server's timeout) makes Prefect
    retry the register task: the retry finds the run's version instead of registering it again, and
    the champion's run keeps saying it was promoted (bench/faults.py checks it after every fault)."""
    from flows import flywheel

    params_path, _, label = project
    label(40, 0)
    failed = []
    promote = ModelRegistry.promote_if_better

    def promote_then_fail(self: ModelRegistry, *args: Any, **kwargs: Any) -> Promotion:
        promotion = promote(self, *args, **kwargs)
        if not failed:  # once: the retry goes through
            failed.append(promotion)
            raise TrackingError(f"MLflow at {self.tracking_uri} timed out (injected after the alias moved)", retryable=True)
        return promotion

    monkeypatch.setattr(ModelRegistry, "promote_if_better", promote_then_fail)
    summary = flywheel.flywheel_iteration(str(params_path), progress=False)
    assert failed and failed[0].promoted  # the fault struck after the alias moved

    ws = open_workspace(load_settings(), load_params(params_path))
    champion = ws.models.champion()
    registered = ws.models.client.search_model_versions(f"name = '{ws.models.name}'")
    assert [(int(v.version), v.run_id) for v in registered] == [(champion.version, champion.run_id)]  # one version of one run
    assert ws.models.tags_of(champion.run_id)[TAG_PROMOTED] == "true"
    assert summary["trained"] and summary["promoted"], summary
