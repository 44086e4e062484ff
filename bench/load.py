"""Load on the team profile: 20 simulated annotators save 5,000 annotations while two loop workers run.

On a throwaway team-profile stack (PostgreSQL, the object store, Label Studio, MLflow, Prefect):

- **annotators**: 20 threads (bounded, loopback) take the project's 5,000 MNIST tasks from one queue
  and each saves a correct annotation through Label Studio's API, as fast as it answers;
- **the loop**: two workers, each running `flywheel run` again and again (separate processes, as a
  Prefect process pool's flow runs are), so they contend for the cursor lock for real;
- **afterwards**: one last run, then every annotation must be in the latest snapshot exactly once
  (`load_annotations_lost`, target 0), and no task twice.

Then `errors_check_blocks_poll_s`: the label check (k-fold training, minutes) starts in its own
process; while its folds train, a person saves a label and the time a poll waits for the cursor lock
is measured (the old single loop lock made it wait for the whole check).

Run: `flywheel bench load [--annotations 5000]`.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.faults import RUN_TIMEOUT_S, Project, flywheel, team_stack
from bench.results import record
from components.settings import Settings

ANNOTATORS = 20
WORKERS = 2


def annotate_all(project: Project, task_ids: list[int], annotators: int) -> tuple[dict[int, int], list[str], float]:
    """`annotators` threads label every task once: (task id -> annotation id, errors, seconds)."""
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
                    created[task_id] = project.ls.annotate(task_id, result)
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


def loop_worker(env: dict[str, str], params: Path, stop: threading.Event, outcomes: list[int]) -> None:
    """Run `flywheel run` again and again until `stop` (one worker of the pool)."""
    while not stop.is_set():
        run = flywheel(env, "run", "--params", str(params))
        output, _ = run.communicate(timeout=RUN_TIMEOUT_S * 2)
        outcomes.append(run.returncode)
        if run.returncode != 0:
            print(output[-2000:], file=sys.stderr)


def lock_wait_during_check(settings: Settings, env: dict[str, str], project: Project) -> tuple[float, float]:
    """(seconds a poll waited for the cursor lock while the label check trained, the check's seconds)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import CURSOR_LOCK, one_at_a_time

    check = flywheel(env, "errors", "--force", "--params", str(project.params_path))
    started = time.monotonic()
    log = settings.workspace / "logs" / "flywheel.log"
    deadline = started + 300
    while time.monotonic() < deadline and check.poll() is None:  # wait for its first fold to finish
        if log.exists() and "Checking labels: fold" in log.read_text(errors="replace")[-20000:]:
            break
        time.sleep(0.2)
    task_id = next(iter(project.ls.labeled_tasks(project.project.id)))["id"]  # a person saves a label (a second opinion on a task)
    filename = project.filenames([task_id])[task_id]
    project.ls.annotate(task_id, project.task_type.result_of(project.truth[filename], project.project.config))
    t0 = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}), one_at_a_time(None, CURSOR_LOCK):
        waited = time.monotonic() - t0
    still_running = check.poll() is None
    check.communicate(timeout=RUN_TIMEOUT_S * 3)
    if not still_running:
        raise RuntimeError("the label check ended before the poll was measured: use more labels")
    return waited, time.monotonic() - started


def main(annotations: int = 5000, echo: Callable[[str], None] = print) -> dict[str, float]:
    with team_stack() as (settings, env, scratch):
        project = Project(settings, scratch / "project", images=annotations, dataset="mnist")
        task_ids = sorted(project.ls.unlabeled_tasks(project.project.id))[:annotations]
        echo(f"{len(task_ids)} tasks; {ANNOTATORS} annotators, {WORKERS} loop workers")
        stop = threading.Event()
        outcomes: list[int] = []
        workers = [threading.Thread(target=loop_worker, args=(env, project.params_path, stop, outcomes)) for _ in range(WORKERS)]
        for w in workers:
            w.start()
        try:
            created, errors, seconds = annotate_all(project, task_ids, ANNOTATORS)
        finally:
            stop.set()
            for w in workers:
                w.join()
        echo(f"saved {len(created)} annotations in {seconds:.0f} s ({len(created) / seconds:.1f}/s), {len(errors)} failed saves; "
             f"{len(outcomes)} loop runs during the load, exits {sorted(set(outcomes))}")
        last = flywheel(env, "run", "--params", str(project.params_path))
        output, _ = last.communicate(timeout=RUN_TIMEOUT_S * 2)
        if last.returncode != 0:
            raise RuntimeError(f"the last run failed: {output[-2000:]}")

        from components.iteration import latest_snapshot, open_workspace

        from components.snapshot import read_manifest

        ws = open_workspace(settings, project.params)
        latest, folder = latest_snapshot(ws)
        manifest = read_manifest(folder)
        counts = manifest["annotation_id"].value_counts()
        landed = set(manifest["annotation_id"].astype(int))
        lost = sorted(set(created.values()) - landed)
        twice = int((counts > 1).sum())
        snapshots = int(latest.rev.rsplit("-", 1)[1]) if latest else 0
        echo(f"{len(landed)} annotations in {latest.rev if latest else None}: {len(lost)} lost, {twice} twice, over {snapshots} snapshots")
        waited, check_s = lock_wait_during_check(settings, env, project)
        echo(f"a poll waited {waited:.2f} s for the cursor lock while the label check ran ({check_s:.0f} s)")

    figures = {
        "load_annotations_lost": len(lost),
        "load_annotations_saved": len(created),
        "load_annotations_twice": twice,
        "load_save_failures": len(errors),
        "load_saves_per_s": round(len(created) / seconds, 1),
        "load_loop_runs": len(outcomes),
        "load_loop_runs_failed": sum(1 for o in outcomes if o != 0),
        "errors_check_blocks_poll_s": round(waited, 2),
        "errors_check_s": round(check_s, 1),
    }
    record(figures, "load", f"""## Load and the lock (`flywheel bench load`, team profile: PostgreSQL + moto's S3 stand-in)

{ANNOTATORS} simulated annotators (threads on loopback) saved {len(created)} annotations of {len(task_ids)} MNIST tasks
in {seconds:.0f} s ({len(created) / seconds:.1f} saves/s, {len(errors)} saves failed after 3 tries) while {WORKERS} loop
workers ran `flywheel run` back to back ({len(outcomes)} runs, {sum(1 for o in outcomes if o != 0)} failed). After
one last run, the latest snapshot ({latest.rev if latest else None}, {snapshots} snapshots in all) holds
{len(landed)} annotations: **{len(lost)} lost**, {twice} twice (`load_annotations_lost` = {len(lost)}).

While the label check trained its folds ({check_s:.0f} s in all), a poll waited **{waited:.2f} s** for the cursor
lock (`errors_check_blocks_poll_s`); with one loop lock it waited for the whole check.
""")
    return figures


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
