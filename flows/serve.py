"""Register and serve the deployments: polling on an interval, the full retrain on a cron, the label
error check on its own (slower) interval."""

from __future__ import annotations

from pathlib import Path

from prefect import serve as prefect_serve

from components.params import Params
from flows.flywheel import flywheel_iteration
from flows.label_errors import find_label_errors
from flows.retrain import retrain


def serve(params: Params, params_path: Path) -> None:
    """Serve the deployments until interrupted; they appear in the Prefect UI with their schedules."""
    parameters = {"params_path": str(params_path.resolve())}
    prefect_serve(
        flywheel_iteration.to_deployment(
            name="poll", interval=params.poll.interval_s, parameters=parameters, concurrency_limit=1
        ),
        retrain.to_deployment(name="retrain", cron=params.retrain.cron, parameters=parameters, concurrency_limit=1),
        find_label_errors.to_deployment(
            name="label-errors", interval=params.errors.interval_s, parameters=parameters, concurrency_limit=1
        ),
    )
