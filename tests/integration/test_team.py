"""The team profile, for real: PostgreSQL (Debian's server, data under the workspace) under Label
Studio, MLflow and Prefect; an S3 object store (moto's server, the stand-in for MinIO/S3) under the
DVC remote and MLflow's artifacts; a Prefect process pool with two workers. Then CI's subset of the
fault matrix (`bench/faults.py`; `make faults` runs every case) on the same stack."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
import yaml
from prefect import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench.faults import CI_CASES, Project, flywheel, run_matrix, team_stack
from components.adapters import stack
from components.core.settings import Settings
from flows.deploy import deploy, wait_for_workers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def team() -> Iterator[tuple[Settings, dict[str, str], Path]]:
    with team_stack() as started:
        yield started


def objects(settings: Settings, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                      aws_access_key_id=settings.aws_access_key_id, aws_secret_access_key=settings.aws_secret_access_key)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_the_loop_runs_on_postgres_and_the_object_store(team):
    settings, env, scratch = team
    rows = {r.name: r for r in stack.status(settings)}
    assert {"postgres", "object_store", "label_studio", "mlflow", "prefect", "worker_1", "worker_2"} <= set(rows)
    assert all(r.healthy for r in rows.values()), stack.describe(list(rows.values()))
    assert (settings.workspace / "postgres" / "PG_VERSION").exists()  # the data lives under the workspace

    project = Project(settings, scratch / "loop")
    project.label(30)
    run = flywheel(env, "run", "--params", str(project.params_path))
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-3000:]

    url = stack.postgres_url(settings)
    for database, table in (("labelstudio", "task"), ("mlflow", "runs"), ("prefect", "flow_run")):
        with psycopg.connect(f"{url}/{database}") as conn:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, database
    assert objects(settings, "dvc/")  # the snapshot pushed to the DVC remote in the bucket
    assert any(key.endswith("weights.pt") for key in objects(settings, "mlflow/"))  # the model's artifacts
    assert not (settings.workspace / "dvc-remote").exists() and not (settings.workspace / "mlflow" / "artifacts").exists()


def test_object_store_killed_keeps_its_objects(team):
    """moto keeps objects in memory: the stack replays its recorded requests when it starts it again."""
    settings, _, _ = team
    before = sorted(objects(settings, ""))
    assert before
    import os
    import signal

    os.killpg(stack.running_pid(settings, "object_store"), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.running_pid(settings, "object_store") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    stack.up(settings, echo=lambda _: None)
    assert sorted(objects(settings, "")) == before


def test_the_pool_runs_an_iteration_while_the_label_check_trains(team):
    """Two workers: an iteration submitted while the label check (k folds) runs finishes before the
    check does: the check holds no lock new labels wait for, and runs on the other worker."""
    settings, _, scratch = team
    project = Project(settings, scratch / "pool")
    params = yaml.safe_load(project.params_path.read_text())
    params["errors"]["steps"] = 3000  # k folds that train for a while on 2 cores
    project.params_path.write_text(yaml.safe_dump(params))
    project.label(60)
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        assert len(wait_for_workers(2)) >= 2
        ids = deploy(project.params, project.params_path)
        parameters = {"params_path": str(project.params_path.resolve()), "trigger": "test"}
        first = run_deployment(ids["iteration"], parameters=parameters, timeout=300, poll_interval=1)
        assert first.state.is_completed(), first.state
        check = run_deployment(ids["check"], parameters={**parameters, "force": True}, timeout=0)
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not client.read_flow_run(check.id).state.is_running():
                assert time.monotonic() < deadline, "the label check did not start on the pool"
                time.sleep(0.5)
            project.label(5)
            iteration = run_deployment(ids["iteration"], parameters=parameters, timeout=300, poll_interval=1)
            assert iteration.state.is_completed(), iteration.state
            assert client.read_flow_run(check.id).state.is_running()  # still checking: the iteration did not wait for it
            deadline = time.monotonic() + 600
            while not client.read_flow_run(check.id).state.is_final():
                assert time.monotonic() < deadline, "the label check did not finish within 10 min"
                time.sleep(1)
            done = client.read_flow_run(check.id)
        assert done.state.is_completed(), done.state
        assert iteration.state.result()["snapshot"]  # its summary comes back through the persisted result


def test_team_profile_survives_the_ci_fault_cases(team):
    results = run_matrix(list(CI_CASES), on=team)
    failed = {c.name: c.failures for c in results if not c.passed}
    assert not failed, failed
    assert {c.name for c in results} == {f"{c}:{s}" for c, s in CI_CASES}
