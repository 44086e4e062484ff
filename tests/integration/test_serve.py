"""`flywheel serve` registers its deployments, with their schedules, on the real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.params import load_params
from flows.common import LOOP_LOCK, one_at_a_time
from tests.integration.test_loop import write_params

pytestmark = pytest.mark.integration


def test_serve_registers_polling_retrain_and_label_error_deployments(stack, stack_env, tmp_path):
    params_path = write_params(tmp_path, f"serve-{uuid.uuid4().hex[:6]}")
    params = load_params(params_path)
    env = {**os.environ, **stack_env, "PREFECT_API_URL": stack.prefect_api_url, "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri}
    log = open(tmp_path / "serve.log", "w")
    serving = subprocess.Popen(
        [str(Path(sys.executable).parent / "flywheel"), "serve", "--params", str(params_path)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            found = {}
            names = ("poll", "retrain", "label-errors")
            while time.monotonic() < deadline and len(found) < len(names):
                assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                found = {d.name: d for d in client.read_deployments() if d.name in names}
                time.sleep(0.5)
            assert set(found) == set(names), (tmp_path / "serve.log").read_text()[-2000:]
            poll_schedule = found["poll"].schedules[0].schedule
            retrain_schedule = found["retrain"].schedules[0].schedule
            assert poll_schedule.interval == timedelta(seconds=params.poll.interval_s)
            assert retrain_schedule.cron == params.retrain.cron
            assert found["label-errors"].schedules[0].schedule.interval == timedelta(seconds=params.errors.interval_s)
            # the schedules fire at once: let those runs finish (their project is empty) before stopping,
            # so no run is killed while it holds the loop's lock
            interval_ids = {found["poll"].id, found["label-errors"].id}
            while time.monotonic() < deadline:
                runs = [r for r in client.read_flow_runs(limit=50) if r.deployment_id in interval_ids]
                started = {r.deployment_id for r in runs}
                if started == interval_ids and all(r.state is not None and r.state.is_final() for r in runs):
                    break
                time.sleep(1)
    finally:
        serving.terminate()
        serving.wait(timeout=30)
        log.close()


def test_two_loop_runs_never_overlap(stack):
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        with one_at_a_time():
            with pytest.raises(TimeoutError):
                with concurrency(LOOP_LOCK, occupy=1, strict=True, timeout_seconds=2):
                    pytest.fail("a second run entered while the first held the loop lock")
        with concurrency(LOOP_LOCK, occupy=1, strict=True, timeout_seconds=10):
            pass  # released once the first run is done
