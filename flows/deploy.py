"""The team profile's work pool: the loop's flows deployed to a Prefect process pool, run by its workers.

`deploy` registers one deployment per flow in the pool `POOL` (created as a process pool when
missing): the iteration, the label check, the tidy, and the full retrain on `retrain.cron`. Each
deployment runs from this project's folder with the given params.yaml; any worker of the pool can run
any of them, because every step reads its data by revision and the locks guard only the cursor and
one model version's write-back (`flows.common`).

`flywheel stack up --profile team` starts the workers (`prefect worker start --pool flywheel`, two
by default); `flywheel serve` in the team profile hands its work to the pool (`PoolWorker`) instead
of its warm worker, so a label check on one worker never holds up an iteration on the other.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from components.core.params import Params

POOL = "flywheel"
ROOT = Path(__file__).resolve().parents[1]
# run name -> (deployment name, flow entrypoint)
DEPLOYMENTS = {
    "iteration": ("flywheel-iteration/iteration", "flows/flywheel.py:flywheel_iteration"),
    "check": ("flywheel-label-errors/check", "flows/label_errors.py:find_label_errors"),
    "tidy": ("flywheel-tidy/tidy", "flows/flywheel.py:tidy_predictions"),
    "retrain": ("flywheel-retrain/retrain", "flows/retrain.py:retrain"),
}
log = logging.getLogger("flows.deploy")


def ensure_pool(name: str = POOL) -> None:
    """Create the process work pool when missing."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def deploy(params: Params, params_path: Path, pool: str = POOL) -> dict[str, UUID]:
    """Deploy the loop's flows to `pool` with this params.yaml (twice is harmless: they are updated).

    Returns:
        Run name -> deployment id.
    """
    from prefect import flow

    ensure_pool(pool)
    parameters = {"params_path": str(Path(params_path).resolve())}
    ids = {}
    for what, (name, entrypoint) in DEPLOYMENTS.items():
        loaded = flow.from_source(source=str(ROOT), entrypoint=entrypoint)
        deployment = loaded.to_deployment(
            name=name.split("/")[1], parameters=parameters, work_pool_name=pool,
            cron=params.retrain.cron if what == "retrain" else None,
            concurrency_limit=1 if what in ("retrain", "check") else None,  # one at a time of these; iterations queue on the lock
        )
        ids[what] = deployment.apply(work_pool_name=pool)
    return ids


def workers_online(pool: str = POOL) -> list[str]:
    """The names of the pool's workers that are online now."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return sorted(w.name for w in client.read_workers_for_work_pool(pool) if str(w.status).upper().endswith("ONLINE"))


class PoolWorker:
    """`flywheel serve`'s work handed to the pool instead of its warm worker (the team profile).

    Same interface as `flows.serve.Worker`. An iteration or a tidy waits for its flow run and
    returns its summary; a label check is only submitted (it runs on another worker, unlocked, while
    iterations go on), unless one is already queued or running.
    """

    WAIT_S = 1800.0

    def __init__(self, params: Params, params_path: Path, stopping: threading.Event | None = None):
        self.params, self.params_path = params, params_path
        self.stopping = stopping or threading.Event()
        self.ids: dict[str, UUID] = {}

    def start(self) -> None:
        self.ids = deploy(self.params, self.params_path)
        online = workers_online()
        if not online:
            log.warning("No worker of the work pool %r is online: runs wait in its queue. Start them with "
                        "`flywheel stack up --profile team`.", POOL)

    def run(self, what: str, trigger: str) -> dict[str, Any]:
        from prefect.deployments import run_deployment

        parameters = {"params_path": str(Path(self.params_path).resolve()), "trigger": trigger}
        try:
            if what == "check":
                if self._active("check"):
                    return {"ok": True, "summary": {"submitted": False}}
                run_deployment(self.ids["check"], parameters=parameters, timeout=0)
                return {"ok": True, "summary": {"submitted": True}}
            run = self._wait(run_deployment(self.ids[what], parameters=parameters, timeout=0))
        except Exception as e:  # noqa: BLE001 - the dispatcher says it in one line and retries
            return {"ok": False, "error": f"{e.__class__.__name__}: {e}"}
        if self.stopping.is_set():
            return {"ok": False, "error": "serving is stopping (the run goes on in the pool)"}
        state = run.state
        if state is None or not state.is_completed():
            return {"ok": False, "error": f"flow run {run.name} ended {state.name if state else 'without a state'}: "
                                          f"{state.message if state else ''}"}
        try:
            summary = state.result()
        except Exception:  # noqa: BLE001 - a result not persisted: the run completed, its summary is unknown
            summary = {}
        return {"ok": True, "summary": summary if isinstance(summary, dict) else {}}

    def _wait(self, run: Any) -> Any:
        """The flow run once it ended, or as it is when serving stops or WAIT_S passed."""
        from prefect import get_client

        deadline = time.monotonic() + self.WAIT_S
        with get_client(sync_client=True) as client:
            while not self.stopping.wait(0.5):
                run = client.read_flow_run(run.id)
                if (run.state is not None and run.state.is_final()) or time.monotonic() > deadline:
                    break
        return run

    def _active(self, what: str) -> bool:
        from prefect import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.ids[what]])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))),
                limit=1,
            )
        return bool(runs)

    def yield_to_labels(self) -> None:
        """Nothing to stop: a label check on the pool holds no lock new labels wait for."""

    def interrupt(self) -> None:
        """Runs on the pool go on without `flywheel serve`; the next run closes what a killed one left."""

    def stop(self) -> None:
        pass


def wait_for_workers(count: int, timeout_s: float = 120.0, pool: str = POOL) -> list[str]:
    """Wait until `count` workers of the pool are online; returns their names."""
    deadline = time.monotonic() + timeout_s
    while True:
        online = workers_online(pool)
        if len(online) >= count or time.monotonic() > deadline:
            return online
        time.sleep(1.0)
