"""Load on the team profile: 20 simulated annotators save 5,000 annotations while two loop workers run.

On a throwaway team-profile stack (PostgreSQL, the object store, Label Studio, MLflow, Prefect):

- **annotators**: 20 threads (bounded, loopback) take the project's 5,000 MNIST tasks from one queue
  and each saves a correct annotation through Label Studio's API, as fast as it answers;
- **the loop**: two workers, each running `flywheel run` again and again (separate processes, as a
  Prefect process pool's flow runs are), so they contend for the cursor lock for real. Every run
  that starts while the annotators save is a run *during the load*: it must succeed, or skip with
  the reason it gives (`load_loop_runs_failed`, target 0 of at least 5);
- **snapshot lag**: while the load runs, the project's data registry (`components.adapters.versioning`: one
  git tag per snapshot) is polled; each new snapshot's commit time and manifest are read
  (`components.data.snapshot.read_manifest`), and each annotation's lag is the time from its save (its
  `updated_at`, as the manifest records it) to the commit of the first snapshot that holds it
  (`load_snapshot_lag_p95_s`, target <= 60 s). After the annotators stop, the workers go on until
  every saved annotation is in a snapshot (at most `DRAIN_S`), so the last saves' lag is measured too;
- **afterwards**: the workers stop, one last run, then every annotation must be in the latest
  snapshot exactly once (`load_annotations_lost`, target 0), and no task twice. These two are
  measured after the load.

Then `errors_check_blocks_poll_s`: the label check (k-fold training) starts in its own
process; while its folds train, a person saves a label and the time a poll waits for the cursor lock
is measured (the old single loop lock made it wait for the whole check).

Run: `flywheel bench load [--annotations 5000]`.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from bench.faults import RUN_TIMEOUT_S, Project, flywheel, team_stack
from bench.results import record
from components.core.settings import Settings

ANNOTATORS = 20
WORKERS = 2
WATCH_EVERY_S = 1.0  # how often the data registry is polled for new snapshots
SETTLED_S = 3.0  # a snapshot tagged this long ago has its checkout published (`DataRegistry.commit`)
DRAIN_S = 300  # after the load, how long the workers may take to snapshot the last saves
LAG_TARGET_S = 60
MIN_RUNS = 5


def annotate_all(
    project: Project, task_ids: list[int], annotators: int, latencies: list[float] | None = None
) -> tuple[dict[int, int], list[str], float]:
    """`annotators` threads label every task once: (task id -> annotation id, errors, seconds); each
    save's seconds are appended to `latencies`."""
    todo: queue.Queue[int] = queue.Queue()
    for task_id in task_ids:
        todo.put(task_id)
    created: dict[int, int] = {}
    errors: list[str] = []
    task_type = project.task_type
    filenames = project.filenames(task_ids)

    def person() -> None:
        while True:
            try:
                task_id = todo.get_nowait()
            except queue.Empty:
                return
            result = task_type.result_of(project.truth[filenames[task_id]], project.project.config)
            for attempt in range(3):
                try:
                    began = time.monotonic()
                    created[task_id] = project.ls.annotate(task_id, result)
                    if latencies is not None:
                        latencies.append(time.monotonic() - began)
                    break
                except Exception as e:  # noqa: BLE001 - counted: a save that never landed is not the loop's loss
                    if attempt == 2:
                        errors.append(f"task {task_id}: {e}")
                    time.sleep(0.5)

    started = time.monotonic()
    threads = [threading.Thread(target=person, daemon=True) for _ in range(annotators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return created, errors, time.monotonic() - started


@dataclass(frozen=True)
class LoopRun:
    """One `flywheel run` of a loop worker.

    Attributes:
        started: When it started (epoch seconds).
        seconds: How long it ran.
        exit: Its exit status.
        outcome: "succeeded", "skipped" (exit 0, it said why it did nothing) or "failed".
        reason: For a skip or a failure, the line in which the run said why.
        versioned: The snapshots it versioned.
    """

    started: float
    seconds: float
    exit: int
    outcome: str
    reason: str
    versioned: tuple[str, ...]


def judge_run(started: float, seconds: float, exit_code: int, output: str) -> LoopRun:
    """A run's outcome from its exit status and its own words (the CLI's `error:` line, or its
    "nothing to do" line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    versioned = tuple(word.rstrip(";.,") for line in lines for word in line.split() if word.startswith("snapshot-")
                      and "versioned" in line)
    if exit_code != 0:
        said = [line for line in lines if line.startswith("error:")]
        return LoopRun(started, seconds, exit_code, "failed", (said or lines[-1:] or ["(no output)"])[0], versioned)
    idle = [line for line in lines if line.endswith("nothing to do.")]
    if idle and not versioned:
        return LoopRun(started, seconds, exit_code, "skipped", idle[0], versioned)
    return LoopRun(started, seconds, exit_code, "succeeded", "", versioned)


def loop_worker(env: dict[str, str], params: Path, stop: threading.Event, runs: list[LoopRun]) -> None:
    """Run `flywheel run` again and again until `stop` (one worker of the pool)."""
    while not stop.is_set():
        started, began = time.time(), time.monotonic()
        run = flywheel(env, "run", "--params", str(params))
        try:
            output, _ = run.communicate(timeout=RUN_TIMEOUT_S * 2)
        except subprocess.TimeoutExpired:
            run.kill()
            output = run.communicate()[0] + f"\nerror: the run went on for more than {RUN_TIMEOUT_S * 2} s"
        outcome = judge_run(started, time.monotonic() - began, run.returncode, output)
        runs.append(outcome)
        if outcome.outcome == "failed":
            print(output[-2000:], file=sys.stderr)


@dataclass(frozen=True)
class Snapshot:
    """A versioned snapshot as the watch saw it: its rev, commit time (epoch seconds, whole seconds as
    git keeps them) and annotation id -> that annotation's save time (epoch seconds)."""

    rev: str
    committed_at: float
    saved_at: Mapping[int, float]


class SnapshotWatch:
    """Polls a project's data registry for new snapshot tags and reads each one's manifest once.

    It reads only: the tags and commits with git, the manifest from the snapshot's checkout (the
    folder `DataRegistry.commit` publishes, or restored by DVC like any worker's read by revision).
    """

    def __init__(self, settings: Settings, project_id: int):
        from components.adapters.versioning import DataRegistry

        root = settings.workspace / "registry" / f"project-{project_id}"
        self.registry = DataRegistry(root, settings.dvc_remote, endpoint_url=settings.s3_endpoint_url)  # never `open`ed here: the loop creates it
        self.project_id = project_id
        self.snapshots: dict[str, Snapshot] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> SnapshotWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, after one last look."""
        self._stop.set()
        self._thread.join()
        self.scan(settled_s=0)

    def holds(self) -> set[int]:
        """Every annotation id some snapshot seen so far holds."""
        return {a for s in list(self.snapshots.values()) for a in s.saved_at}

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            try:
                self.scan()
            except Exception as e:  # noqa: BLE001 - kept and reported: the watch must not stop the load
                self.errors.append(f"{e.__class__.__name__}: {e}")

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.registry.root), *args], capture_output=True, text=True,
                              check=True).stdout

    def scan(self, settled_s: float = SETTLED_S) -> None:
        """Read every snapshot tagged since the last scan, once it is `settled_s` old (its checkout is
        published by then: the manifest is read from there, not restored by DVC)."""
        if not (self.registry.root / ".git").exists():
            return
        refs = self._git("for-each-ref", "--format=%(refname:short) %(objectname) %(committerdate:unix)",
                         "refs/tags/snapshot-*")
        for line in refs.splitlines():
            rev, commit, committed = line.split()
            if rev not in self.snapshots and time.time() - float(committed) >= settled_s:
                self.snapshots[rev] = Snapshot(rev, float(committed), self._saves(rev, commit))

    def _saves(self, rev: str, commit: str) -> dict[int, float]:
        from components.core.conversions import parse_timestamp
        from components.data.snapshot import read_manifest
        from components.adapters.versioning import SNAPSHOT, SnapshotVersion

        dvc_file = yaml.safe_load(self._git("show", f"{commit}:{SNAPSHOT}.dvc"))
        version = SnapshotVersion(rev=rev, commit=commit, md5=dvc_file["outs"][0]["md5"], project_id=self.project_id,
                                  cursor=None, registry=self.registry.root)
        manifest = read_manifest(self.registry.checkout(version))
        return {int(a): parse_timestamp(str(u)).timestamp() for a, u in zip(manifest["annotation_id"], manifest["updated_at"])}


def snapshot_lags(snapshots: Iterable[Snapshot], annotations: Iterable[int]) -> dict[int, float]:
    """Annotation id -> seconds from its save to the commit of the first snapshot that holds it, for
    each of `annotations` some snapshot holds. Commit times are whole seconds (git's), so a lag under
    a second may come out negative: it counts as 0."""
    first: dict[int, float] = {}
    saved: dict[int, float] = {}
    for snap in sorted(snapshots, key=lambda s: (s.committed_at, s.rev)):
        for annotation, at in snap.saved_at.items():
            if annotation not in first:
                first[annotation], saved[annotation] = snap.committed_at, at
    return {a: max(0.0, first[a] - saved[a]) for a in annotations if a in first}


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None for no values."""
    values = list(values)
    return float(np.percentile(values, q)) if values else None


def drain(watch: SnapshotWatch, created: Iterable[int], timeout_s: float) -> float:
    """Wait until some snapshot holds every annotation of `created` (at most `timeout_s`); the seconds waited."""
    wanted = set(created)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and not wanted <= watch.holds():
        time.sleep(WATCH_EVERY_S)
    return time.monotonic() - started


def stage_seconds(settings: Settings, since: float, until: float) -> dict[str, list[float]]:
    """Each loop step's run times (Prefect's task runs, by task name) among those that started between
    `since` and `until` (epoch seconds): where a run's time went."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    found: dict[str, list[float]] = {}
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}), get_client(sync_client=True) as client:
        offset = 0
        while True:
            runs = client.read_task_runs(limit=200, offset=offset)
            for run in runs:
                if run.start_time and since <= run.start_time.timestamp() <= until and run.total_run_time is not None:
                    found.setdefault(run.name.rsplit("-", 1)[0], []).append(run.total_run_time.total_seconds())
            if len(runs) < 200:
                return found
            offset += 200


def describe_stages(stages: Mapping[str, list[float]]) -> str:
    """'poll 4.1 s median (9.0 max, 12 runs), ...' over the steps that took longest in all."""
    ranked = sorted(stages.items(), key=lambda item: -sum(item[1]))
    return ", ".join(f"{name} {percentile(times, 50):.1f} s median ({max(times):.1f} max, {len(times)} runs)"
                     for name, times in ranked[:8])


def lock_wait_during_check(settings: Settings, env: dict[str, str], project: Project, task_id: int) -> tuple[float, float]:
    """(seconds a poll waited for the cursor lock while the label check trained, the check's seconds);
    meanwhile a person saves a second opinion on the labeled task `task_id`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import CURSOR_LOCK, one_at_a_time

    filename = project.filenames([task_id])[task_id]
    result = project.task_type.result_of(project.truth[filename], project.project.config)
    check = flywheel(env, "errors", "--force", "--params", str(project.params_path))
    started = time.monotonic()
    said: list[str] = []
    folding = threading.Event()

    def listen() -> None:  # the check says when its folds train ("Checking labels: fold 1/5")
        for line in check.stdout:  # type: ignore[union-attr]
            said.append(line)
            if "Checking labels: fold" in line:
                folding.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    folding.wait(timeout=300)
    project.ls.annotate(task_id, result)  # a person saves a label while the folds train
    t0 = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}), one_at_a_time(None, CURSOR_LOCK):
        waited = time.monotonic() - t0
    still_running = check.poll() is None
    check.wait(timeout=RUN_TIMEOUT_S * 3)
    listener.join()
    if not still_running:
        raise RuntimeError(f"the label check ended (exit {check.returncode}) before the poll was measured: "
                           f"{''.join(said)[-1000:]}")
    return waited, time.monotonic() - started


def describe_runs(runs: list[LoopRun]) -> str:
    """'7 succeeded, 1 skipped (reason x1), 0 failed' for a list of runs."""
    def reasons(outcome: str) -> str:
        said: dict[str, int] = {}
        for run in runs:
            if run.outcome == outcome:
                said[run.reason] = said.get(run.reason, 0) + 1
        return "; ".join(f"\"{r}\" x{n}" for r, n in said.items())

    parts = []
    for outcome in ("succeeded", "skipped", "failed"):
        count = sum(1 for r in runs if r.outcome == outcome)
        why = reasons(outcome) if count and outcome != "succeeded" else ""
        parts.append(f"{count} {outcome}" + (f" ({why})" if why else ""))
    took = [r.seconds for r in runs]
    return ", ".join(parts) + (f"; {percentile(took, 50):.0f} s a run (median), {max(took):.0f} s the longest" if took else "")


def main(annotations: int = 5000, echo: Callable[[str], None] = print) -> dict[str, float]:
    with team_stack() as (settings, env, scratch):
        project = Project(settings, scratch / "project", images=annotations, dataset="mnist")
        task_ids = sorted(project.ls.unlabeled_tasks(project.project.id))[:annotations]
        echo(f"{len(task_ids)} tasks; {ANNOTATORS} annotators, {WORKERS} loop workers")
        watch = SnapshotWatch(settings, project.project.id).start()
        stop = threading.Event()
        runs: list[LoopRun] = []
        workers = [threading.Thread(target=loop_worker, args=(env, project.params_path, stop, runs)) for _ in range(WORKERS)]
        for w in workers:
            w.start()
        drained = 0.0
        latencies: list[float] = []
        load_started = time.time()
        try:
            created, errors, seconds = annotate_all(project, task_ids, ANNOTATORS, latencies)
            load_ended = time.time()
            drained = drain(watch, created.values(), DRAIN_S)
        finally:
            stop.set()
            for w in workers:
                w.join()
            watch.stop()
        stages = stage_seconds(settings, load_started, time.time())
        during = [r for r in runs if r.started < load_ended]
        after = [r for r in runs if r.started >= load_ended]
        lags = snapshot_lags(watch.snapshots.values(), created.values())
        after_load = sum(1 for s in watch.snapshots.values() if s.committed_at >= load_ended)
        save_p50, save_max = percentile(latencies, 50) or 0.0, max(latencies, default=0.0)
        echo(f"saved {len(created)} annotations in {seconds:.0f} s ({len(created) / seconds:.1f}/s, a save took {save_p50:.1f} s "
             f"median, {save_max:.1f} s the longest), {len(errors)} failed saves; "
             f"{len(during)} loop runs during the load: {describe_runs(during)}; "
             f"{len(after)} after it, until every save was in a snapshot ({drained:.0f} s): {describe_runs(after)}")
        p50, p95, worst = percentile(lags.values(), 50), percentile(lags.values(), 95), max(lags.values(), default=None)
        echo(f"{len(watch.snapshots)} snapshots ({after_load} after the load); save -> first snapshot holding it, "
             f"{len(lags)} of {len(created)} annotations: p50 {p50:.1f} s, p95 {p95:.1f} s, max {worst:.1f} s"
             if lags else f"{len(watch.snapshots)} snapshots; no saved annotation was in one during the load")
        echo(f"where the runs' time went (Prefect task runs): {describe_stages(stages)}")
        if watch.errors:
            echo(f"the snapshot watch failed {len(watch.errors)} time(s), e.g. {watch.errors[0]}")
        last = flywheel(env, "run", "--params", str(project.params_path))
        output, _ = last.communicate(timeout=RUN_TIMEOUT_S * 2)
        if last.returncode != 0:
            raise RuntimeError(f"the last run failed: {output[-2000:]}")

        from components.loop.workspace import latest_snapshot, open_workspace
        from components.data.snapshot import read_manifest

        ws = open_workspace(settings, project.params)
        latest, folder = latest_snapshot(ws)
        manifest = read_manifest(folder)
        counts = manifest["annotation_id"].value_counts()
        landed = set(manifest["annotation_id"].astype(int))
        lost = sorted(set(created.values()) - landed)
        twice = int((counts > 1).sum())
        snapshots = int(latest.rev.rsplit("-", 1)[1]) if latest else 0
        echo(f"{len(landed)} annotations in {latest.rev if latest else None}: {len(lost)} lost, {twice} twice, over {snapshots} snapshots")
        waited, check_s = lock_wait_during_check(settings, env, project, next(iter(created)))
        echo(f"a poll waited {waited:.2f} s for the cursor lock while the label check ran ({check_s:.0f} s)")

    failed = sum(1 for r in during if r.outcome == "failed")
    skipped = sum(1 for r in during if r.outcome == "skipped")
    unmeasured = len(created) - len(lags)
    measured = {
        "load_annotations_lost": len(lost),
        "load_annotations_saved": len(created),
        "load_annotations_twice": twice,
        "load_save_failures": len(errors),
        "load_saves_per_s": round(len(created) / seconds, 1),
        "load_loop_runs": len(during),
        "load_loop_runs_failed": failed,
        "load_loop_runs_skipped": skipped,
        "load_loop_runs_after": len(after),
        "load_loop_runs_after_failed": sum(1 for r in after if r.outcome == "failed"),
        "load_snapshots": len(watch.snapshots),
        "load_snapshot_lag_p50_s": round(p50, 1) if p50 is not None else None,
        "load_snapshot_lag_p95_s": round(p95, 1) if p95 is not None else None,
        "load_snapshot_lag_max_s": round(worst, 1) if worst is not None else None,
        "load_snapshot_lag_unmeasured": unmeasured,
        "errors_check_blocks_poll_s": round(waited, 2),
        "errors_check_s": round(check_s, 1),
    }
    figures = {name: value for name, value in measured.items() if value is not None}  # no lag without a snapshot
    verdict_runs = "met" if failed == 0 and len(during) >= MIN_RUNS else "not met"
    verdict_lag = "met" if p95 is not None and p95 <= LAG_TARGET_S and unmeasured == 0 else "not met"
    lag_text = (f"p50 **{p50:.1f} s**, p95 **{p95:.1f} s** (`load_snapshot_lag_p95_s`; target <= {LAG_TARGET_S} s: "
                f"{verdict_lag}), max {worst:.1f} s, over {len(lags)} of {len(created)} annotations"
                if lags else f"not measured: no saved annotation reached a snapshot (target <= {LAG_TARGET_S} s: not met)")
    record(figures, "load", f"""## Load and the lock (`flywheel bench load`, team profile: PostgreSQL + moto's S3 stand-in)

{ANNOTATORS} simulated annotators (threads on loopback) saved {len(created)} annotations of {len(task_ids)} MNIST tasks
in {seconds:.0f} s ({len(created) / seconds:.1f} saves/s; a save took {save_p50:.1f} s median, {save_max:.1f} s the longest;
{len(errors)} saves failed after 3 tries) while {WORKERS} loop workers ran `flywheel run` back to back.

- **During the load** (runs started while the annotators saved): {len(during)} runs, {describe_runs(during)}
  (`load_loop_runs_failed` = {failed}; target 0 of at least {MIN_RUNS}: {verdict_runs}). After the load the workers
  went on until every save was in a snapshot ({drained:.0f} s): {len(after)} runs, {describe_runs(after)}.
- **Snapshot lag**, from an annotation's save (its `updated_at`) to the commit of the first snapshot holding it,
  read from the data registry while the load ran ({len(watch.snapshots)} snapshots, {after_load} of them after the
  annotators stopped): {lag_text}{f"; {unmeasured} never reached a snapshot during the run" if unmeasured else ""}.
- **Where a run's time went** (Prefect's task runs, the longest steps in all): {describe_stages(stages)}.
- **After the load** (the workers stopped, one last run): the latest snapshot ({latest.rev if latest else None},
  {snapshots} snapshots in all) holds {len(landed)} annotations: **{len(lost)} lost**, {twice} twice
  (`load_annotations_lost`, `load_annotations_twice`).

While the label check trained its folds ({check_s:.0f} s in all), a poll waited **{waited:.2f} s** for the cursor
lock (`errors_check_blocks_poll_s`); with one loop lock it waited for the whole check.
""")
    return figures


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
