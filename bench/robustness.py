"""Robustness: bad inputs handled, the wait for a clear error with a server dead, predictions kept per task.

Method (one run, this machine, a fresh embedded stack in a temporary workspace):

1. `bad_inputs_handled`: the bad-input corpus (`tests/integration/test_bad_inputs.py`: 20 data cases in one
   project through `flywheel run`, 6 settings cases and 2 of a COCO export), run with pytest; handled = cases passed / tried.
2. `dead_server_exit_s`: a 150-task project. Each server (Label Studio, MLflow, Prefect) is killed (kill -9
   of its process group) before `flywheel run`, and MLflow, Label Studio and Prefect again mid-run (at the
   test hook after the first training epoch, or in write-back); the clock runs from the kill (or the
   start, when it was dead before) to the exit with its one error line. The figure is the longest.
3. `predictions_per_task_after_10_models`: the same project, ten rounds of 10 labels and an iteration
   (ten registered models); the most predictions any task holds, with the shipped `predict.keep_versions`.

Run: `flywheel bench robustness`. Writes bench/results.json and RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bench.results import record
from bench.stack import ROOT, throwaway_stack
from components.adapters import stack
from components.studies.datasets import materialize
from components.core.faults import PAUSE_AT, PAUSE_FILE
from components.loop.workspace import open_workspace
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.studies.simulator import label_balanced

CLI = str(Path(sys.executable).parent / "flywheel")
CASE_TESTS = ("test_case[", "test_settings_case")


def corpus() -> tuple[int, int, list[str]]:
    """(handled, tried, names of the cases that failed) from the bad-input corpus."""
    mine = ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    env = {k: v for k, v in os.environ.items() if k not in mine and not k.startswith("FLYWHEEL_")}  # its own stack
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "tests/integration/test_bad_inputs.py", "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True,
        )
        cases = [c for c in ET.parse(report).getroot().iter("testcase") if c.get("name", "").startswith(CASE_TESTS)]
    failed = [c.get("name", "") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    return len(cases) - len(failed), len(cases), failed


def kill(settings: Settings, name: str) -> None:
    os.killpg(stack.running_pid(settings, name), signal.SIGKILL)


def timed_run(params_path: Path, title: str, pause: str | None = None, victim: str | None = None,
              settings: Settings | None = None) -> float:
    """Seconds from the fault to `flywheel run` exiting with one error line naming `title`."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "paused"
        env = {**os.environ, **({PAUSE_AT: pause, PAUSE_FILE: str(marker)} if pause else {})}
        start = time.monotonic()
        run = subprocess.Popen([CLI, "run", "--params", str(params_path)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        if pause:
            deadline = time.monotonic() + 300
            while not marker.exists():
                if run.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the run never reached {pause}: {run.stdout.read()[-2000:]}")
                time.sleep(0.1)
            kill(settings, victim)
            start = time.monotonic()
            marker.unlink()
        output, _ = run.communicate(timeout=600)
        seconds = time.monotonic() - start
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    if run.returncode != 1 or len(errors) != 1 or title not in errors[0]:
        raise RuntimeError(f"expected one error naming {title}, got exit {run.returncode}: {output[-3000:]}")
    print(f"  {title} dead{' at ' + pause if pause else ''}: {seconds:.1f} s: {errors[0][:160]}")
    return seconds


def main() -> None:
    handled, tried, failed = corpus()
    print(f"bad inputs handled: {handled}/{tried}" + (f" (failed: {', '.join(failed)})" if failed else ""))
    with throwaway_stack() as (settings, workspace):
        settings = dataclasses.replace(settings, external=frozenset())  # ours to kill and restart
        params_path = workspace / "params.yaml"
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["project"] = {"title": "robustness bench", "config": str(ROOT / raw["project"]["config"])}
        raw["train"].update({"image_size": 16, "max_epochs": 6, "min_steps": 0, "patience": 2})
        raw["poll"]["min_new_annotations"] = 10
        params_path.write_text(yaml.safe_dump(raw))
        params = load_params(params_path)
        images = materialize("digits", workspace / "datasets", limit=300)
        truth = {i.path.name: i.label for i in images}
        from components.adapters.label_studio import LabelStudio

        ls = LabelStudio.from_settings(settings)
        project = ls.ensure_project(params.project.title, load_labeling_config(params.project.config))
        ls.import_images(project, [i.path for i in images])
        rng = random.Random(0)
        label_balanced(ls, project, truth, 40, rng)
        subprocess.run([CLI, "run", "--params", str(params_path)], check=True, capture_output=True)

        dead: dict[str, float] = {}
        for name, title in (("label_studio", "Label Studio"), ("mlflow", "MLflow"), ("prefect", "Prefect")):
            kill(settings, name)
            dead[f"{name}_before_run"] = timed_run(params_path, title)
            stack.up(settings, echo=lambda _: None)
        for name, title, pause in (("mlflow", "MLflow", "train"), ("label_studio", "Label Studio", "write-back"),
                                   ("prefect", "Prefect", "train")):
            label_balanced(ls, project, truth, 10, rng)
            dead[f"{name}_at_{pause.replace('-', '_')}"] = timed_run(params_path, title, pause, name, settings)
            stack.up(settings, echo=lambda _: None)

        from flows.flywheel import flywheel_iteration, tidy_predictions

        ws = open_workspace(load_settings(cwd=ROOT), params)
        before = len(ws.models.client.search_model_versions(f"name='{params.registry.model_name}'"))
        for _ in range(10):
            label_balanced(ls, project, truth, 10, rng)
            flywheel_iteration(str(params_path))
            tidy_predictions(str(params_path))  # what `flywheel serve` does once nobody labels
        models = len(ws.models.client.search_model_versions(f"name='{params.registry.model_name}'")) - before
        tasks = [t.model_dump(mode="json") for t in ls.sdk.tasks.list(project=project.id, fields="all", page_size=1000)]
        per_task = [len(t["predictions"]) for t in tasks]
        unlabeled = [len(t["predictions"]) for t in tasks if not t["annotations"]]

    longest = max(dead, key=dead.get)
    figures = {
        "bad_inputs_handled": round(handled / tried, 3),
        "bad_inputs_tried": tried,
        "dead_server_exit_s": round(dead[longest], 1),
        **{f"dead_server_exit_s_{k}": round(v, 1) for k, v in dead.items()},
        "predictions_per_task_after_10_models": max(per_task),
        "predictions_per_unlabeled_task_after_10_models": max(unlabeled),
        "predictions_per_task_mean_after_10_models": round(sum(per_task) / len(per_task), 2),
    }
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v:.1f} |" for k, v in dead.items())
    markdown = f"""## Robustness: bad inputs, dead servers, predictions kept (`bench/robustness.py`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), one run, fresh embedded stacks.

**Bad inputs** — the corpus in `tests/integration/test_bad_inputs.py` against a real Label Studio, through
`flywheel run`: **{handled}/{tried} handled** (`bad_inputs_handled` = {handled / tried:.2f}, target 1.0 over >= 15).
Each case gets one line naming its task (or the setting), the rest trains and is pre-annotated, no
annotation changes. {"Failed: " + ", ".join(failed) if failed else "None failed."}

**Dead servers** — seconds from the kill (kill -9 of the server's process group) to `flywheel run` exiting
with its one error line; "before run" = dead before the run started (the clock starts with the run):

| server, when | s |
|---|---|
{rows}

Longest: **{dead[longest]:.1f} s** ({longest.replace('_', ' ')}; `dead_server_exit_s`, target <= 30).

**Predictions kept** — after {models} more models on a 300-task project (10 labels and one iteration each round,
`predict.keep_versions` = {params.predict.keep_versions}): at most **{max(per_task)}** predictions on any task
(`predictions_per_task_after_10_models`, target <= keep_versions + 1 = {params.predict.keep_versions + 1}), at most
{max(unlabeled)} on an unlabeled task, {sum(per_task) / len(per_task):.2f} on average. A labeled task keeps the
predictions it was shown when a person labeled it (an annotation's `parent_prediction` is never deleted).
"""
    record(figures, "robustness", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
