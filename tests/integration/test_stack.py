"""The embedded stack, as `flywheel stack up` runs it."""

import pytest

from components.adapters import stack as embedded
from components.adapters.stack import is_healthy

pytestmark = pytest.mark.integration


def test_up_brings_every_server_up_on_loopback(stack):
    rows = embedded.status(stack)
    assert {r.name for r in rows} == {"label_studio", "mlflow", "prefect"}
    for row in rows:
        assert row.healthy and row.managed and row.pid, row
        assert row.url.startswith("http://127.0.0.1:")


def test_up_twice_is_harmless(stack):
    pids = {r.name: r.pid for r in embedded.status(stack)}
    said = []
    embedded.up(stack, echo=said.append)
    assert {r.name: r.pid for r in embedded.status(stack)} == pids
    assert all("already running" in line for line in said)


def test_token_is_kept_out_of_git_and_private(stack):
    mode = stack.credentials_path.stat().st_mode & 0o777
    assert mode == 0o600
    assert is_healthy(f"{stack.mlflow_tracking_uri}/health")


def test_the_demo_imports_its_tasks_in_random_order(cli_env, label_studio, tmp_path):
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    import yaml

    from components.studies.datasets import materialize
    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    title = f"demo-order-{uuid.uuid4().hex[:6]}"
    params["project"] = {"title": title, "config": str(ROOT / "label_studio_config" / "classification.xml")}
    params["demo"].update(dataset="digits", limit=60)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([str(Path(sys.executable).parent / "flywheel"), "demo", "--no-loop"], cwd=tmp_path, env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    project = next(p for p in label_studio.sdk.projects.list() if p.title == title)
    truth = {i.path.name: i.label for i in materialize("digits", tmp_path / "same", limit=60)}
    tasks = sorted(label_studio.unlabeled_tasks(project.id).items())  # the Data Manager's default order: by id
    first = [truth[data["filename"]] for _, data in tasks[:10]]
    assert len(tasks) == 60
    assert len(set(first)) >= 4, f"the first ten tasks are {first}: sorted by class, not shuffled"
