"""The fault matrix on the team profile: kill -9 each server (and the worker) during each step, for real.

For each case (component x step), on a team-profile stack (PostgreSQL, the object store, Label
Studio, MLflow and Prefect on them):

1. a person saves a few new labels;
2. `flywheel run` starts and is held at the step (`components.core.faults.pause_point`, a test hook);
3. the component is killed with SIGKILL (its whole process group), and the run goes on into it;
4. the stack is brought back up (`flywheel stack up` restarts only what is dead) and the loop reruns;
5. the promises are checked: no annotation lost or changed, the cursor right (every label in the
   latest snapshot once, nothing left to poll), no prediction duplicated, exactly one champion shown
   with a complete set and promoted by its run, the DVC remote holding every snapshot, the registry's
   models loadable, and nothing left RUNNING in MLflow or Prefect.

The components: Label Studio, MLflow, PostgreSQL, the object store (moto's server, the stand-in for
S3: it replays its recorded requests when it starts again), and a worker of the team profile's
Prefect process pool (the iteration is run on the pool; the worker that runs it is killed together
with its flow-run process, as when its machine dies; the rerun goes through the pool too). The steps: poll, version (after the push,
before the commit that moves the cursor), train (after the first epoch), register (the model
logged and registered, the champion not judged) and write-back (after the first batch of
predictions). Nothing is faked: every kill is a real SIGKILL of a real process.

Run: `make faults` (every case, ~20 min on 2 cores) or `flywheel bench faults --case postgres:version`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.results import record
from components.adapters import stack
from components.core.faults import PAUSE_AT, PAUSE_FILE
from components.core.settings import CLIENT_ENV, NO_PHONE_HOME, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("label_studio", "mlflow", "postgres", "object_store", "worker")
STEPS = ("poll", "version", "train", "register", "write-back")
# The subset CI runs (tests/integration/test_team.py, on the stack its other tests share): each component
# once, each step once.
CI_CASES = (("postgres", "version"), ("object_store", "register"), ("worker", "train"), ("label_studio", "write-back"),
            ("mlflow", "poll"))
RUN_TIMEOUT_S = 300
NEW_LABELS = 6  # per case: enough for a new snapshot and a new model


@dataclass
class Case:
    """One case's outcome."""

    component: str
    step: str
    passed: bool = False
    first_exit: int | None = None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.component}:{self.step}"


def team_environ(workspace: Path) -> dict[str, str]:
    """Settings for a throwaway team-profile stack on free ports."""
    return {
        **NO_PHONE_HOME,
        **CLIENT_ENV,
        "FLYWHEEL_PROFILE": "team",
        "FLYWHEEL_WORKSPACE": str(workspace),
        "FLYWHEEL_LABEL_STUDIO_PORT": str(stack.free_port()),
        "FLYWHEEL_MLFLOW_PORT": str(stack.free_port()),
        "FLYWHEEL_PREFECT_PORT": str(stack.free_port()),
        "FLYWHEEL_POSTGRES_PORT": str(stack.free_port()),
        "FLYWHEEL_OBJECT_STORE_PORT": str(stack.free_port()),
        "FLYWHEEL_WORKER_PORT": str(_two_free_ports()),
        "FLYWHEEL_LABEL_STUDIO_BIN": str(ROOT / ".venv-ls" / "bin" / "label-studio"),
    }


def _two_free_ports() -> int:
    """A port p with p + 1 free too (the two workers' health ports)."""
    import socket

    while True:
        port = stack.free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


@contextmanager
def team_stack() -> Iterator[tuple[Settings, dict[str, str], Path]]:
    """A team-profile stack in a scratch folder: (settings, the environment of a `flywheel` command, scratch).

    The scratch folder is open for passing through (0711): PostgreSQL runs as its own user when root
    runs this, and must reach its data under the workspace.
    """
    scratch = Path(tempfile.mkdtemp(prefix="flywheel-team-"))
    os.chmod(scratch, 0o711)
    environ = team_environ(scratch / "ws")
    saved = dict(os.environ)  # put back afterwards: later tests of the same session run the embedded profile
    for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MLFLOW_TRACKING_URI", "PREFECT_API_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FLYWHEEL_DVC_REMOTE", "FLYWHEEL_POSTGRES_URL"):
        os.environ.pop(key, None)
    os.environ.update(environ)
    settings = load_settings(environ=environ, cwd=ROOT)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        stack.up(settings, echo=lambda _: None)
        settings = load_settings(environ=environ, cwd=ROOT)  # with the credentials `up` created
        env = {**os.environ, **environ, **settings.client_env(), "PREFECT_API_URL": settings.prefect_api_url,
               "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
        yield settings, env, scratch
    finally:
        stack.down(settings, echo=lambda _: None)
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
        os.environ.clear()
        os.environ.update(saved)
        os.umask(umask)


def write_params(folder: Path, title: str) -> Path:
    """A small, fast digits project (8x8 images at 16 px, a few epochs)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["project"] = {"title": title, "config": str(ROOT / "label_studio_config" / "classification.xml")}
    params["poll"]["min_new_annotations"] = 1
    params["train"].update({"image_size": 16, "max_epochs": 4, "min_steps": 0, "patience": 2, "architecture": "small_cnn"})
    params["registry"] = {"model_name": f"faults-{title}", "experiment": f"faults-{title}"}
    params["architectures"] = {"small_cnn": {"width": 8}}
    params["pretrain"]["enabled"] = False
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


class Project:
    """A digits project in Label Studio and a person who labels it correctly."""

    def __init__(self, settings: Settings, folder: Path, images: int = 400, dataset: str = "digits"):
        from components.studies.datasets import materialize
        from components.adapters.label_studio import LabelStudio
        from components.core.labeling_config import load_labeling_config
        from components.core.params import load_params

        self.params_path = write_params(folder, f"faults-{uuid.uuid4().hex[:6]}")
        self.params = load_params(self.params_path)
        self.ls = LabelStudio.from_settings(settings)
        found = materialize(dataset, folder / "datasets", limit=images)
        self.project = self.ls.ensure_project(self.params.project.title, load_labeling_config(self.params.project.config))
        self.ls.import_images(self.project, [i.path for i in found])
        self.truth = {i.path.name: i.label for i in found}
        self.rng = random.Random(0)

    @property
    def task_type(self):  # noqa: ANN201 - components.tasks.TaskType
        from components.tasks import task_type_of

        return task_type_of(self.project.config)

    def filenames(self, task_ids: list[int]) -> dict[int, str]:
        """Task id -> its image's file name (the key of `truth`)."""
        data = self.ls.all_tasks(self.project.id)
        return {t: data[t]["filename"] for t in task_ids}

    def label(self, count: int) -> list[int]:
        from components.studies.simulator import label_balanced

        return label_balanced(self.ls, self.project, self.truth, count, self.rng)

    def annotations(self) -> dict[int, tuple[int, str]]:
        """Annotation id -> (task id, its result as JSON): what no fault may lose or change."""
        found = {}
        for task in self.ls.labeled_tasks(self.project.id):
            for a in task.get("annotations") or []:
                found[int(a["id"])] = (int(task["id"]), json.dumps(a["result"], sort_keys=True))
        return found


def flywheel(env: dict[str, str], *args: str, pause: tuple[str, Path] | None = None) -> subprocess.Popen:
    extra = {PAUSE_AT: pause[0], PAUSE_FILE: str(pause[1])} if pause else {}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "flywheel"), *args], env={**env, **extra},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def kill(settings: Settings, component: str, marker: Path) -> None:
    """SIGKILL the component: a stack server's whole process group, or the paused worker process."""
    if component == "worker":
        os.kill(int(marker.read_text()), signal.SIGKILL)
        return
    pid = stack.running_pid(settings, component)
    assert pid is not None, f"{component} is not running"
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.running_pid(settings, component) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_paused(marker: Path, run: subprocess.Popen, timeout_s: float = 240) -> bool:
    """Wait until the run holds at its pause point (False: it ended without reaching it)."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if run.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def check(settings: Settings, project: Project, before: dict[int, tuple[int, str]], env: dict[str, str]) -> list[str]:
    """Every promise after a fault and a rerun; returns what broke (empty: the case passed)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.core.tags import TAG_ARCHITECTURE, TAG_DVC_REV, TAG_PROMOTED
    from components.loop.ingest import poll
    from components.loop.workspace import latest_snapshot, open_workspace
    from components.data.snapshot import read_manifest

    failures = []
    after = project.annotations()
    lost = [a for a in before if a not in after]
    changed = [a for a in before if a in after and after[a] != before[a]]
    if lost or changed:
        failures.append(f"annotations lost {lost[:5]} or changed {changed[:5]}")

    ws = open_workspace(settings, project.params)
    latest, folder = latest_snapshot(ws)
    manifest = read_manifest(folder)
    current = {}
    for task in project.ls.labeled_tasks(project.project.id):
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if done:
            current[int(task["id"])] = max(done, key=lambda a: (a["updated_at"], a["id"]))["id"]
    in_snapshot = manifest.groupby("task_id")["annotation_id"].agg(list).to_dict() if not manifest.empty else {}
    if any(len(v) != 1 for v in in_snapshot.values()):
        failures.append("a task is in the snapshot more than once")
    missing = [t for t, a in current.items() if [a] != in_snapshot.get(t)]
    if missing:
        failures.append(f"{len(missing)} labeled task(s) not in the latest snapshot as labeled, e.g. {missing[:5]}")
    if poll(ws, latest).tasks:
        failures.append("the cursor is behind: a poll still finds changes")

    champion = ws.models.champion()
    versions = ws.label_studio.model_versions(project.project.id)
    unlabeled = ws.label_studio.unlabeled_tasks(project.project.id)
    if champion is None:
        failures.append("no champion")
    else:
        if ws.label_studio.shown_model_version(project.project.id) != champion.model_version:
            failures.append("Label Studio does not show the champion's predictions")
        untouched = ws.label_studio.untouched_predictions(project.project.id)
        with_champion = sum(1 for _, predictions in untouched.values() if any(p["model_version"] == champion.model_version for p in predictions))
        if with_champion != len(unlabeled) or versions.get(champion.model_version, 0) < len(unlabeled):
            failures.append(f"{with_champion} of {len(unlabeled)} unlabeled tasks carry the champion's prediction")
        mlflow = ws.models.client
        versions_registered = mlflow.search_model_versions(f"name = '{ws.models.name}'")
        promoted = [v for v in versions_registered if mlflow.get_run(v.run_id).data.tags.get(TAG_PROMOTED) == "true"]
        if champion.version not in {int(v.version) for v in promoted}:
            failures.append(f"the champion v{champion.version} was never promoted by a run that finished registering")
        try:
            ws.models.load(champion)
        except Exception as e:  # noqa: BLE001 - a case's finding, not the runner's failure
            failures.append(f"the champion does not load from the registry: {e}")
    for task_id, (_, predictions) in ws.label_studio.untouched_predictions(project.project.id).items():
        shown = [p["model_version"] for p in predictions]
        if len(shown) != len(set(shown)):
            failures.append(f"task {task_id} has a prediction duplicated: {shown}")
            break

    with tempfile.TemporaryDirectory() as tmp:  # the DVC remote holds the latest snapshot: restore it from there alone
        try:
            restored = ws.data.restore(latest.rev, Path(tmp) / "clone")
            if sorted(read_manifest(restored)["annotation_id"]) != sorted(manifest["annotation_id"]):
                failures.append("the snapshot restored from the DVC remote differs from the latest one")
        except Exception as e:  # noqa: BLE001
            failures.append(f"the latest snapshot cannot be restored from the DVC remote: {e}")
    for run in ws.models.search_runs("attributes.status = 'RUNNING'", max_results=20):
        failures.append(f"MLflow run {run.info.run_id} is left RUNNING")
    for run in ws.models.runs_tagged({TAG_ARCHITECTURE: project.params.train.architecture}, registered=True):
        rev = run.data.tags.get(TAG_DVC_REV, "")
        if rev and subprocess.run(["git", "-C", str(ws.data.root), "rev-parse", "--verify", "--quiet", rev],
                                  capture_output=True).returncode != 0:
            failures.append(f"model run {run.info.run_id} names snapshot {rev}, which the registry does not hold")
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}), get_client(sync_client=True) as client:
        stuck = [r.name for r in client.read_flow_runs(flow_run_filter=running, limit=50)]
    if stuck:
        failures.append(f"Prefect flow runs left running: {stuck}")
    return failures


def run_case(settings: Settings, env: dict[str, str], project: Project, component: str, step: str, scratch: Path,
             echo: Callable[[str], None] = print) -> Case:
    """One case: label, run held at `step`, kill `component`, go on, restart, rerun, check. A server's
    case runs the loop as `flywheel run`; the worker's on the work pool (`_pool_worker_case`)."""
    case = Case(component, step)
    started = time.monotonic()
    project.label(NEW_LABELS)
    before = project.annotations()
    marker = scratch / f"paused-{component}-{step}"
    if component == "worker":
        case.failures += _pool_worker_case(settings, project, step, marker)
        return _finish(case, settings, project, before, env, started, echo)
    run = flywheel(env, "run", "--params", str(project.params_path), pause=(step, marker))
    output = ""
    try:
        if not wait_paused(marker, run):
            output = run.communicate(timeout=60)[0] if run.poll() is None else run.stdout.read()  # type: ignore[union-attr]
            case.failures.append(f"the run never reached {step}: {output[-1500:]}")
        else:
            kill(settings, component, marker)
            marker.unlink()
            output, _ = run.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        case.failures.append(f"the run went on for more than {RUN_TIMEOUT_S} s after the fault")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    case.first_exit = run.returncode
    if case.first_exit not in (0, 1, -signal.SIGKILL):
        case.failures.append(f"the faulted run exited {case.first_exit}: {output[-1500:]}")
    if case.first_exit == 1 and sum(line.startswith("error:") for line in output.splitlines()) != 1:
        case.failures.append(f"the faulted run did not say what failed in one line: {output[-1500:]}")
    stack.up(settings, echo=lambda _: None)
    rerun = flywheel(env, "run", "--params", str(project.params_path))
    output, _ = rerun.communicate(timeout=RUN_TIMEOUT_S)
    if rerun.returncode != 0:
        case.failures.append(f"the rerun failed ({rerun.returncode}): {output[-1500:]}")
    return _finish(case, settings, project, before, env, started, echo)


def _finish(case: Case, settings: Settings, project: Project, before: dict[int, tuple[int, str]], env: dict[str, str],
            started: float, echo: Callable[[str], None]) -> Case:
    case.failures += check(settings, project, before, env)
    case.passed = not case.failures
    case.seconds = time.monotonic() - started
    echo(f"{case.name:<26} {'passed' if case.passed else 'FAILED'} (faulted run exit {case.first_exit}, {case.seconds:.0f} s)"
         + ("".join(f"\n    {f}" for f in case.failures)))
    return case


def _pool_worker_case(settings: Settings, project: Project, step: str, marker: Path) -> list[str]:
    """The worker case, for real: the iteration runs on the team profile's work pool; the Prefect
    worker running it is killed with its flow-run process (SIGKILL, as a machine dies); the stack
    restarts it and the rerun goes through the pool too."""
    import psutil
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import deploy

    parameters = {"params_path": str(project.params_path.resolve()), "trigger": "fault matrix"}
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        ids = deploy(project.params, project.params_path)
        run_deployment(ids["iteration"], parameters=parameters, timeout=0,
                       job_variables={"env": {PAUSE_AT: step, PAUSE_FILE: str(marker)}})
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not marker.exists():
            return [f"the pool's run never reached {step}"]
        paused = psutil.Process(int(marker.read_text()))
        workers = {stack.running_pid(settings, f"worker_{i + 1}") for i in range(settings.workers)}
        owner = next((p for p in paused.parents() if p.pid in workers), None)
        if owner is None:
            return ["the paused run is not a child of a pool worker"]
        for victim in [owner, *owner.children(recursive=True)]:
            try:
                victim.kill()
            except psutil.NoSuchProcess:
                pass
        marker.unlink()
        stack.up(settings, echo=lambda _: None)  # the worker comes back
        rerun = run_deployment(ids["iteration"], parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=1)
    if rerun.state is None or not rerun.state.is_completed():
        return [f"the rerun on the pool ended {rerun.state.name if rerun.state else None}: {rerun.state.message if rerun.state else ''}"]
    return []


def run_matrix(cases: list[tuple[str, str]], echo: Callable[[str], None] = print,
               on: tuple[Settings, dict[str, str], Path] | None = None) -> list[Case]:
    """Run `cases` on one team-profile stack (`on`, or a throwaway one) and one fresh project (each
    case adds labels and a model)."""
    if on is None:
        with team_stack() as started:
            return run_matrix(cases, echo, started)
    settings, env, scratch = on
    project = Project(settings, scratch / f"project-{uuid.uuid4().hex[:6]}")
    project.label(30)
    first = flywheel(env, "run", "--params", str(project.params_path))
    output, _ = first.communicate(timeout=RUN_TIMEOUT_S)
    if first.returncode != 0:
        raise RuntimeError(f"the first iteration failed on the team stack: {output[-3000:]}")
    return [run_case(settings, env, project, component, step, scratch, echo) for component, step in cases]


def main(only: list[str] | None = None, echo: Callable[[str], None] = print) -> list[Case]:
    """Run the fault matrix and record its table; `only` these "component:step" cases: print them, record nothing."""
    cases = [(c, s) for c in COMPONENTS for s in STEPS]
    if only:
        cases = [tuple(name.split(":", 1)) for name in only]  # type: ignore[misc]
    results = run_matrix(cases, echo)
    if only:
        return results
    passed = sum(c.passed for c in results)
    rows = "\n".join(
        f"| {TITLES[c.component]} | {c.step} | {'exit ' + str(c.first_exit) if c.first_exit not in (None, -9) else 'killed'} "
        f"| {'passed' if c.passed else 'FAILED: ' + '; '.join(c.failures)[:300]} | {c.seconds:.0f} |"
        for c in results
    )
    record(
        {"faults_survived": round(passed / len(results), 3), "faults_cases": len(results)},
        "faults",
        f"""## Fault matrix (`make faults`, team profile: PostgreSQL + moto's S3 stand-in)

{passed} of {len(results)} cases passed (`faults_survived` = {passed / len(results):.3f}). Each case: a person saves
{NEW_LABELS} labels; `flywheel run` is held at the step; the component gets SIGKILL (its process group); the
run goes on into the fault; `stack up` restarts what is dead; the loop reruns; then every promise is
checked (annotations unchanged, every label in the latest snapshot once, nothing left to poll, one
champion shown with a complete set and promoted by its run, no duplicated prediction, the snapshot
restorable from the DVC remote alone, no MLflow or Prefect run left running). Every fault is real; the only stand-in is the
object store itself (moto's server, which replays its recorded requests when it restarts).

| killed | during | the faulted run | result | s |
|---|---|---|---|---|
{rows}
""",
    )
    return results


TITLES = {"label_studio": "Label Studio", "mlflow": "MLflow", "postgres": "PostgreSQL", "object_store": "object store (moto)",
          "worker": "worker (the flow's process)"}


if __name__ == "__main__":
    main(sys.argv[1:] or None)
