"""Prefect glue shared by the flows: the tasks that open the workspace, and the loop's lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_client, task
from prefect.cache_policies import NONE
from prefect.concurrency.sync import concurrency

from components.iteration import Workspace, open_workspace
from components.params import load_params
from components.settings import load_settings

LOOP_LOCK = "flywheel-loop"


@task(retries=3, retry_delay_seconds=5, cache_policy=NONE)
def connect(params_path: str) -> Workspace:
    """Read settings and params, reach Label Studio, open the project's data registry."""
    path = Path(params_path)
    return open_workspace(load_settings(), load_params(path), project_root=path.parent)


@contextmanager
def one_at_a_time(name: str = LOOP_LOCK) -> Iterator[None]:
    """Hold a Prefect global concurrency limit of 1, so two loop runs (poll or retrain) never overlap."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=name, limit=1)
    # A short lease (Prefect's minimum): the holder renews it while alive, and a killed holder's
    # slot is reclaimed by the server within about a minute instead of five.
    with concurrency(name, occupy=1, strict=True, lease_duration=60):
        yield
