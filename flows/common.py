"""Prefect glue shared by the flows: the I/O task options, the task that opens the workspace, the
loop's two locks, and the failure hook of served runs.

The locks guard only what must be serial, so any worker can run any step and slow work (training,
the label check's k folds, the report) never holds up new labels:

- `CURSOR_LOCK`: poll -> snapshot -> version (the cursor moves in the snapshot's commit), and the
  image pool's commit to the same data registry;
- `PUBLISH_LOCK`: registering a model (the champion alias moves once at a time) and writing one
  model version's pre-annotations, views and tidy to Label Studio;
- `REFRESH_LOCK`: training the loop's model and refreshing the pre-annotations, never waited for: a
  run that finds a live run refreshing versions its labels and leaves the rest to that run, which
  trains and refreshes for the newest snapshot before it ends (`unless_busy`). So new labels reach a
  snapshot within seconds while a model trains or thousands of pre-annotations are written, and two
  trainings never share the cores (the later model supersedes the earlier anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import requests
from prefect import get_client, task
from prefect.cache_policies import NONE
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Crashed
from prefect.variables import Variable

from components.core.errors import FlywheelError
from components.core.faults import owner, owner_gone
from components.loop.workspace import Workspace, close_abandoned, open_workspace
from components.core.params import load_params
from components.core.settings import load_settings
from flows import prefect_retry
from flows.logs import describe

prefect_retry.install()  # before any flow talks to Prefect: a busy SQLite's 503 retried in ms, not 2 s

CURSOR_LOCK = "flywheel-cursor"
PUBLISH_LOCK = "flywheel-publish"
REFRESH_LOCK = "flywheel-refresh"
LOOP_LOCK = CURSOR_LOCK  # the lock a new label waits for
LEASE_S = 60  # Prefect's minimum: a killed holder's slot is reclaimed within about a minute

log = logging.getLogger(__name__)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass by itself (a server restarting, a 5xx), never a refused token, a 4xx or bad data."""
    error = state.data
    if isinstance(error, FlywheelError):
        return error.retryable
    if isinstance(error, PrefectHTTPStatusError):  # Prefect's server busy or restarting
        return error.response.status_code >= 500
    return isinstance(error, (ConnectionError, TimeoutError, httpx.TransportError, requests.ConnectionError))


# The tasks that talk to Label Studio, MLflow or the DVC remote: a short retry for a server restarting.
# Never persisted (`connect`'s Workspace holds the settings' secrets): only a flow's summary is.
io_task = partial(task, retries=2, retry_delay_seconds=3, retry_condition_fn=is_transient, cache_policy=NONE, persist_result=False)
step = partial(task, cache_policy=NONE, persist_result=False)


OWNER_LABEL = "flywheel.owner"  # a flow run's label: the process running it (components.core.faults.owner)


def label_owner() -> None:
    """Label this flow run with the process running it, so a run that finds that process dead later
    closes it as crashed. Called by the flow itself before its first task, while the server records no
    task run's state for it to collide with (`flows.prefect_retry`)."""
    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(UUID(str(flow_run.id)), {OWNER_LABEL: owner()})


@io_task(name="connect")
def _open(params_path: str) -> Workspace:
    path = Path(params_path)
    return open_workspace(load_settings(), load_params(path), project_root=path.parent)


def connect(params_path: str) -> Workspace:
    """Label this flow run with its process (`label_owner`), then read settings and params, reach
    Label Studio and open the project's data registry (the task `connect`)."""
    label_owner()
    return _open(params_path)


def _current_run() -> str:
    return str(flow_run.id or "")


def _holder(name: str) -> str:
    """The Prefect Variable naming the flow run that holds lock `name`."""
    return f"{name}-holder"


def _note_holder(name: str, value: dict[str, str]) -> None:
    """Say who holds the lock (for the "waiting for" line, and whether its holder's process is alive):
    a busy server answering 5xx costs the note, not the run."""
    try:
        Variable.set(_holder(name), value, overwrite=True)
    except (PrefectHTTPStatusError, httpx.TransportError) as e:
        log.debug("Could not note the holder of %s: %s", name, e)


def _ensure_limit(name: str) -> bool:
    """Create the one-slot global concurrency limit `name` unless it exists (a read, where an upsert
    would be one more write to collide, `flows.prefect_retry`); returns whether a run holds it now."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).active_slots > 0
        except ObjectNotFound:
            client.upsert_global_concurrency_limit_by_name(name=name, limit=1)
            return False


def _read_holder(name: str) -> str:
    try:
        return (Variable.get(_holder(name), default=None) or {}).get("flow_run_name", "another run")
    except (PrefectHTTPStatusError, httpx.TransportError):
        return "another run"


def _close_abandoned(ws: Workspace) -> None:
    """Close what killed runs left open (called holding a lock): their Prefect flow runs, still
    RUNNING though their process is gone, as crashed; their MLflow runs as failed; their folders.
    A live worker's runs are left alone."""
    current = _current_run()
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with get_client(sync_client=True) as client:
        try:
            runs = client.read_flow_runs(flow_run_filter=running, limit=200)
        except (PrefectHTTPStatusError, httpx.TransportError) as e:  # housekeeping: the next run closes them
            log.debug("Could not list running flow runs: %s", e)
            runs = []
        for run in runs:
            own = (run.labels or {}).get(OWNER_LABEL)
            if str(run.id) == current or not own or not owner_gone(str(own)):
                continue
            client.set_flow_run_state(run.id, Crashed(message=f"Its process was killed; closed by flow run {current}."), force=True)
            log.warning("Closed flow run %r (%s) as crashed: its process was killed (it may have held the loop lock).",
                        run.name, run.id)
    close_abandoned(ws, closed_by=current or "flywheel")


@contextmanager
def one_at_a_time(ws: Workspace | None = None, name: str = CURSOR_LOCK) -> Iterator[None]:
    """Hold the Prefect global concurrency limit `name` (one slot: `CURSOR_LOCK` or `PUBLISH_LOCK`).

    Says so when it has to wait. Once it holds the lock, whatever a killed run left open is closed.
    """
    if _ensure_limit(name):
        if _holder_gone(name):
            log.info("Waiting for the loop lock %s: the run holding it was killed, its hold expires within %d s...", name, LEASE_S)
        else:
            log.info("Waiting for the loop lock %s, held by %s, until it is done...", name, _read_holder(name))
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S):
        if ws is not None:
            _close_abandoned(ws)
        current = _current_run()
        if current:
            _note_holder(name, {"flow_run_id": current, "flow_run_name": str(flow_run.name), "owner": owner()})
        try:
            yield
        finally:  # a run that ends, even by an exception, leaves no holder: only a killed one does
            if current:
                _note_holder(name, {})


def _holder_gone(name: str) -> bool:
    """Whether lock `name`'s noted holder is a process that was killed (its lease not yet expired)."""
    try:
        noted = Variable.get(_holder(name), default=None) or {}
    except (PrefectHTTPStatusError, httpx.TransportError):
        return False
    return bool(noted.get("owner")) and owner_gone(noted["owner"])


@contextmanager
def unless_busy(name: str) -> Iterator[bool]:
    """Hold lock `name` (one slot) if no live run holds it: yields True holding it, or False at once
    while a live run does. A holder that was killed is waited out (its lease expires within `LEASE_S`),
    so what it was doing is done here rather than left to nobody."""
    _ensure_limit(name)
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S, max_retries=0))
            free = True
        except ConcurrencySlotAcquisitionError as e:
            cause = e.__cause__
            if not (isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423):
                raise
            free = False  # yielded below, outside this handler: the caller's errors do not chain onto the 423
        if not free:
            if not _holder_gone(name):
                yield False
                return
            log.info("Waiting for the loop lock %s: the run holding it was killed, its hold expires within %d s...", name, LEASE_S)
            held.enter_context(concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S))
        current = _current_run()
        _note_holder(name, {"flow_run_id": current, "flow_run_name": str(flow_run.name), "owner": owner()})
        try:
            yield True
        finally:
            _note_holder(name, {})


def report_failure(flow: Any, run: Any, state: Any) -> None:
    """on_failure hook: a served run's failure as one line on the terminal (`flywheel run` prints its own)."""
    if deployment.id is None:
        return
    error = state.result(raise_on_failure=False)
    log.error("%s (%s) failed: %s", run.name, flow.name, describe(error) if isinstance(error, BaseException) else state.message)
