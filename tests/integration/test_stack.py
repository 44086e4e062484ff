"""The embedded stack, as `flywheel stack up` runs it."""

import pytest

from components import stack as embedded
from components.stack import is_healthy

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
