"""`flywheel serve`: react to Label Studio within seconds, and burn nothing while nobody labels.

This process stays lean (no torch: ~160 MB, asleep between events) and runs four things:

- **the webhook receiver** (`components.adapters.webhooks`): Label Studio posts each label change of the
  project; the receiver checks the shared secret and queues it; a burst coalesces into one wake-up.
- **the safety-net poll**: every `poll.safety_net_s`, one request asks Label Studio for its newest
  change; only when it moved since the last hand-off (a webhook never came) does work start. An
  empty poll costs milliseconds and makes no flow run.
- **the warm worker** (`flows.worker`): a child process that imported the training stack once and
  runs each iteration in-process as a Prefect flow run, fine-tuning the champion (the fast path).
  Once nobody has labeled for `poll.idle_after_s`, it writes the strategy report (the idle pass);
  after `predict.tidy_after_s`, it deletes superseded pre-annotations in small chunks; after
  `errors.after_idle_s`, it checks a new snapshot's labels (k-fold). The tidy and the check stop
  (after a chunk, after a fold) when new labels arrive, and run again when idle.
- **Prefect's runner** for the rare, long run, in a child process (`python -m flows.serve PARAMS`):
  the full retrain on `retrain.cron` (from scratch, every architecture). When Prefect stops
  answering, it pauses with one line and resumes.

In the team profile, the work goes to the Prefect process pool instead (`flows.deploy.PoolWorker`):
its workers run the iterations, the tidy, the label check (submitted, not waited for: it holds no
lock new labels wait for) and the scheduled retrain, each in a fresh process on any worker.

Ctrl-C or SIGTERM stops everything within `STOP_S` seconds; a run killed that way is closed by the
next one (see `flows.common`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from components.core.errors import FlywheelError, LabelStudioError, SettingsError
from components.adapters.label_studio import LabelStudio
from components.core.labeling_config import load_labeling_config
from components.core.params import Params, load_params
from components.core.settings import Settings
from components.adapters.stack import is_healthy
from components.adapters.webhooks import ACTIONS, LABEL_ACTIONS, SECRET_HEADER, Inbox, Receiver, Wakeup, ensure_secret

GRACE_S = 6.0  # a child's own shutdown, before the rest is killed
STOP_S = 10.0  # the promise: serving has stopped this long after Ctrl-C or SIGTERM
DOWN_AFTER_S = 10.0  # Prefect unreachable this long pauses the runner
HEALTH_S = 5.0  # how often the runner's health is looked at
QUICK_EXITS = 3  # a runner that dies this many times in a row within a minute, with Prefect up, is a real error
SAFETY_NET = "safety-net poll"
# What the worker does once the loop is quiet: (its run, what it is called in a message).
IDLE_WORK = {"pass": ("iteration", "idle pass"), "tidy": ("tidy", "tidy of superseded pre-annotations"), "check": ("check", "label check")}

log = logging.getLogger("flows.serve")
polls = logging.getLogger("flywheel.polls")  # not under flows.*: the log file only (an idle serve polls all day)


def serve_deployments(params: Params, params_path: Path) -> None:
    """Register the full retrain's deployment and serve it until interrupted (the runner child's work)."""
    from prefect import serve as prefect_serve

    from flows.retrain import retrain

    parameters = {"params_path": str(params_path.resolve())}
    prefect_serve(
        retrain.to_deployment(name="retrain", cron=params.retrain.cron, parameters=parameters, concurrency_limit=1),
        print_starting_message=False,
    )


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM a child, then kill whatever of it and its children is still alive after GRACE_S."""
    try:
        tree = [child.pid, *(p.pid for p in psutil.Process(child.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        tree = [child.pid]
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    try:
        child.wait(timeout=STOP_S - GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("Process %d did not exit after SIGKILL.", child.pid)


class Pretrainer:
    """Self-supervised pretraining in the background (`python -m flows.pretrain`): a child process at
    low priority with `pretrain.threads` torch threads, so it never holds up a pre-annotation refresh.
    Started when serving starts (it pretrains only if the pool grew, else exits) and whenever the
    project's task count grew by `pretrain.refresh_growth` since the last start."""

    NICE = 10

    def __init__(self, params_path: Path, params: Params):
        self.params_path, self.params = params_path, params
        self.process: subprocess.Popen | None = None
        self.started_at_tasks: int | None = None

    def maybe_start(self, task_count: int | None) -> None:
        """Start a pretraining child unless one runs, or the pool has not grown enough since the last."""
        if not self.params.pretrain.enabled or (self.process is not None and self.process.poll() is None):
            return
        if self.process is not None and self.process.returncode:
            log.error("The background pretraining failed (exit %d); details in the log file.", self.process.returncode)
        last = self.started_at_tasks
        if self.process is not None and (task_count is None or last is None or task_count <= last * (1 + self.params.pretrain.refresh_growth)):
            return
        env = {**os.environ, "OMP_NUM_THREADS": str(self.params.pretrain.threads)}
        self.process = subprocess.Popen(
            ["nice", "-n", str(self.NICE), sys.executable, "-m", "flows.pretrain", str(self.params_path)], env=env,
            stdin=subprocess.DEVNULL,
        )
        self.started_at_tasks = task_count

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _stop(self.process)


class Worker:
    """The warm worker process (`flows.worker`): started once, restarted if it dies."""

    def __init__(self, params_path: Path, stopping: threading.Event):
        self.params_path = params_path
        self.stopping = stopping
        self.process: subprocess.Popen | None = None
        self.running: str | None = None
        self._to: Any = None
        self._from: Any = None

    def start(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.worker", str(self.params_path), str(to_r), str(from_w)],
            pass_fds=(to_r, from_w), start_new_session=True,
        )
        os.close(to_r)
        os.close(from_w)
        self._to, self._from = os.fdopen(to_w, "w"), os.fdopen(from_r)
        ready = json.loads(self._from.readline() or "{}").get("ready")
        if not ready and not self.stopping.is_set():
            raise FlywheelError(f"The warm worker exited while starting (exit code {self.process.wait()}); see the log file.")

    def run(self, what: str, trigger: str) -> dict[str, Any]:
        """Run `what` ("iteration", "tidy" or "check") in the worker and wait for its reply."""
        if self.stopping.is_set():
            return {"ok": False, "error": "serving is stopping"}
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                log.warning("The warm worker died (exit code %s): starting it again.", self.process.returncode)
            self.start()
        self.running = what
        if self.stopping.is_set():  # Ctrl-C between the check above and here: the handler saw nothing running
            self.running = None
            return {"ok": False, "error": "serving is stopping"}
        try:
            self._to.write(json.dumps({"run": what, "trigger": trigger}) + "\n")
            self._to.flush()
            line = self._from.readline()
        except BrokenPipeError:
            line = ""
        finally:
            self.running = None
        if not line:
            try:
                self.process.wait(timeout=STOP_S)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()
            return {"ok": False, "error": f"the warm worker died during the {what} (exit code {self.process.returncode})"}  # type: ignore[union-attr]
        return json.loads(line)

    def yield_to_labels(self) -> None:
        """New labels arrived: a running tidy stops after its chunk, a label check after its fold."""
        if self.running in ("tidy", "check") and self.process is not None:
            self.process.send_signal(signal.SIGUSR1)

    def interrupt(self) -> None:
        """Stop a run in flight (SIGTERM), and kill the worker's whole process group GRACE_S later if
        it is still there (a flow run reporting its end to an unreachable server could take longer)."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.running is not None:
            self.process.send_signal(signal.SIGTERM)
        timer = threading.Timer(GRACE_S, self.kill)
        timer.daemon = True
        timer.start()

    def kill(self) -> None:
        """SIGKILL the worker and anything it started (its own session)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self._to.close()  # the worker's loop ends at EOF
            except BrokenPipeError:
                pass
            _stop(self.process)


class Runner(threading.Thread):
    """Prefect's runner for the scheduled full retrain, supervised in a thread: paused while Prefect
    does not answer, restarted when it exits."""

    def __init__(self, params_path: Path, prefect_health_url: str, stopping: threading.Event):
        super().__init__(name="prefect-runner", daemon=True)
        self.params_path = params_path
        self.health_url = prefect_health_url
        self.stopping = stopping
        self.failed = False

    def run(self) -> None:
        quick_exits = 0
        while not self.stopping.is_set():
            if not is_healthy(self.health_url):
                log.warning("Prefect at %s does not answer: the scheduled runs pause until it does (start it with "
                            "`flywheel stack up`).", self.health_url.removesuffix("/api/health"))
                while not self.stopping.wait(HEALTH_S) and not is_healthy(self.health_url):
                    pass
                if self.stopping.is_set():
                    break
                log.info("Prefect answers again: the scheduled runs resume.")
            started = time.monotonic()
            child = subprocess.Popen([sys.executable, "-m", "flows.serve", str(self.params_path)], start_new_session=True)
            unhealthy_since: float | None = None
            while child.poll() is None and not self.stopping.wait(HEALTH_S):
                if is_healthy(self.health_url):
                    unhealthy_since = None
                elif unhealthy_since is None:
                    unhealthy_since = time.monotonic()
                elif time.monotonic() - unhealthy_since > DOWN_AFTER_S:
                    break  # the check above says so, once, and waits
            if child.poll() is None:
                _stop(child)
                continue
            quick_exits = quick_exits + 1 if time.monotonic() - started < 60 else 1
            if quick_exits >= QUICK_EXITS and is_healthy(self.health_url):
                log.error("The scheduled runs stopped %d times in a row (exit code %s); see the log file.", quick_exits, child.returncode)
                self.failed = True
                self.stopping.set()


def _project_id(settings: Settings, params: Params, params_path: Path) -> tuple[LabelStudio, int]:
    ls = LabelStudio.from_settings(settings)
    config = load_labeling_config(params_path.parent / params.project.config)  # as `flows.common.connect` reads it
    project = ls.ensure_project(params.project.title, config, create=False)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {settings.label_studio_url} has no project {params.project.title!r}. Create it with "
            "`flywheel import FOLDER` (or `flywheel demo`), or set project.title in params.yaml."
        )
    return ls, project.id


def _start_receiver(settings: Settings, ls: LabelStudio, project_id: int, inbox: Inbox) -> tuple[Receiver | None, int | None]:
    """Start the receiver and register the project's webhook to it (idempotently); (None, None) when
    Label Studio refuses the webhook: the safety-net poll serves alone."""
    secret = ensure_secret(settings)
    try:
        receiver = Receiver(inbox, secret, project_id, settings.receiver_host, settings.receiver_port).start()
    except OSError as e:
        raise SettingsError(
            f"The webhook receiver cannot listen on {settings.receiver_host}:{settings.receiver_port} ({e.strerror}). "
            "Set FLYWHEEL_RECEIVER_PORT to a free port (or poll.webhooks: false in params.yaml to rely on the safety-net poll)."
        ) from e
    url = f"{settings.receiver_url}{receiver.path}"
    try:
        hook = ls.ensure_webhook(project_id, url, {SECRET_HEADER: secret}, ACTIONS)
    except LabelStudioError as e:
        receiver.stop()
        log.warning(
            "Label Studio refused the webhook to %s (%s). Serving on the safety-net poll alone; set "
            "FLYWHEEL_RECEIVER_URL to an address Label Studio can reach (a Label Studio on this machine needs "
            "SSRF_PROTECTION_ENABLED=false for loopback), or poll.webhooks: false to say so.", url, e,
        )
        return None, None
    return receiver, hook


class Dispatcher:
    """Hands work to the warm worker: an iteration when enough labels changed (announced by a webhook,
    or found by the safety-net poll), and once the loop is quiet, the idle work: the idle pass (the
    strategy report), the tidy, the label check. One line on the terminal per thing that matters."""

    def __init__(self, params: Params, ls: LabelStudio, project_id: int, inbox: Inbox, worker: Worker,
                 pretrainer: Pretrainer | None = None):
        self.params, self.ls, self.project_id, self.inbox, self.worker = params, ls, project_id, inbox, worker
        self.pretrainer = pretrainer
        self.watermark: str | None = None  # Label Studio's newest change when work was last handed off
        self.cursor: str | None = None  # the latest snapshot's cursor, as the last iteration reported it
        self.retry = False  # the last iteration failed: the next wake-up runs one whatever changed
        self.next_poll = time.monotonic()  # a first poll at once: catch up on what changed while serving was down
        self.idle_work: dict[str, float] = {"check": time.monotonic() + params.errors.after_idle_s}  # what -> when

    def newest_change(self) -> str | None:
        try:
            return self.ls.newest_change(self.project_id)
        except LabelStudioError as e:
            log.warning("Safety-net poll: %s", e)
            return self.watermark

    def step(self, stopping: threading.Event) -> None:
        """Wait for the next thing to do (at most HEALTH_S) and do it."""
        now = time.monotonic()
        deadline = min(self.next_poll, *self.idle_work.values(), now + HEALTH_S)
        wakeup = self.inbox.take(max(deadline - now, 0))
        if stopping.is_set():
            return
        now = time.monotonic()
        if wakeup is None and now >= self.next_poll:
            self.next_poll = now + self.params.poll.safety_net_s
            if self.newest_change() != self.watermark:
                wakeup = Wakeup(Counter({SAFETY_NET: 1}))
            else:
                polls.info("Safety-net poll: nothing new since %s.", self.watermark)
        if wakeup is not None and self.pretrainer is not None and "TASKS_CREATED" in wakeup.reasons:
            self.pretrainer.maybe_start(self.task_count())
        if wakeup is not None:
            self.postpone_idle_work()
            if self.retry or not set(wakeup.reasons) <= set(LABEL_ACTIONS) or self.enough_changed():
                self.iterate(wakeup, stopping)
            return
        due = [what for what, at in self.idle_work.items() if at <= now]
        if not due:
            return
        what = min(due, key=lambda w: self.idle_work[w])
        del self.idle_work[what]
        reply = self.worker.run(IDLE_WORK[what][0], "idle")
        summary = reply.get("summary")
        if isinstance(summary, dict) and summary.get("interrupted"):
            self.idle_work[what] = now  # again, once the new labels are handled and it is quiet
            self.postpone_idle_work()
        elif not reply.get("ok") and not stopping.is_set():
            log.error("The %s failed: %s", IDLE_WORK[what][1], reply.get("error"))
        elif what == "pass" and isinstance(summary, dict):
            self.handle(summary)

    def task_count(self) -> int | None:
        try:
            return self.ls.task_count(self.project_id)
        except LabelStudioError as e:
            log.warning("Counting the tasks: %s", e)
            return None

    def enough_changed(self) -> bool:
        """Whether an iteration would have something to version: at least `poll.min_new_annotations`
        tasks changed since the cursor (or, before the first snapshot, labeled at all): one cheap
        count, so a person's first few saves start no flow run."""
        try:
            pending = self.ls.count_changed(self.project_id, self.cursor)
        except LabelStudioError as e:
            log.warning("Counting the label changes: %s", e)
            return True
        if pending < self.params.poll.min_new_annotations:
            self.watermark = self.newest_change()  # seen: the safety net waits for something newer
            return False
        return True

    def iterate(self, wakeup: Wakeup, stopping: threading.Event) -> None:
        trigger = "webhook" if SAFETY_NET not in wakeup.reasons else "safety-net"
        if trigger == "safety-net" and self.watermark is not None:
            log.info("The safety-net poll found label changes no webhook announced.")
        self.watermark = self.newest_change()  # before the run: a change during it is seen by the next
        reply = self.worker.run("iteration", trigger)
        self.next_poll = time.monotonic() + self.params.poll.safety_net_s
        if not reply.get("ok"):
            if not stopping.is_set():  # a run stopped by Ctrl-C is not a failure
                log.error("The iteration failed: %s (retried at the next safety-net poll, in %g s)", reply.get("error"),
                          self.params.poll.safety_net_s)
            self.watermark, self.retry = None, True
            return
        self.retry = False
        self.handle(reply.get("summary") or {})

    def handle(self, summary: dict[str, Any]) -> None:
        """Note what an iteration reported: the cursor, and the idle work it calls for."""
        now = time.monotonic()
        self.cursor = summary.get("cursor") or self.cursor
        if summary.get("snapshot") or summary.get("trained"):
            self.idle_work["pass"] = now  # the idle pass: the strategy report for the new model
        if summary.get("written"):
            self.idle_work["tidy"] = now
        if summary.get("snapshot"):
            self.idle_work["check"] = now
        self.postpone_idle_work()

    def postpone_idle_work(self) -> None:
        """Idle work waits until nobody has labeled for a while: the idle pass `poll.idle_after_s`, the
        tidy `predict.tidy_after_s`, the label check (minutes of k-fold training) `errors.after_idle_s`."""
        now = time.monotonic()
        quiet = {"pass": self.params.poll.idle_after_s, "tidy": self.params.predict.tidy_after_s, "check": self.params.errors.after_idle_s}
        for what, at in self.idle_work.items():
            self.idle_work[what] = max(at, now + quiet[what])


def serve(settings: Settings, params_path: Path) -> int:
    """Serve until Ctrl-C or SIGTERM. Returns the exit code."""
    params = load_params(params_path)
    stopping = threading.Event()

    ls, project_id = _project_id(settings, params, params_path)
    if settings.team:  # the work pool's workers run the flows (and the scheduled retrain); see flows.deploy
        from flows.deploy import PoolWorker

        os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(settings.workspace / "prefect" / "results"))
        worker: Worker | PoolWorker = PoolWorker(params, params_path, stopping)
    else:
        worker = Worker(params_path, stopping)
    inbox = Inbox(on_put=worker.yield_to_labels)

    def request_stop(signum: int, frame: object) -> None:
        stopping.set()
        inbox.interrupt()
        worker.interrupt()  # a run in flight is stopped; the next run closes what it left open

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    receiver, hook = _start_receiver(settings, ls, project_id, inbox) if params.poll.webhooks else (None, None)
    runner = Runner(params_path, f"{settings.prefect_api_url}/health", stopping)
    pretrainer = Pretrainer(params_path, params)
    try:
        worker.start()
        if not settings.team:
            runner.start()
        dispatcher = Dispatcher(params, ls, project_id, inbox, worker, pretrainer)
        pretrainer.maybe_start(dispatcher.task_count())
        while not stopping.is_set():
            dispatcher.step(stopping)
    finally:
        stopping.set()
        worker.stop()
        pretrainer.stop()
        if hook is not None:
            try:
                ls.deactivate_webhook(hook)
            except LabelStudioError as e:
                log.warning("Could not deactivate the webhook: %s", e)
        if receiver is not None:
            receiver.stop()
        if runner.is_alive():
            runner.join(timeout=STOP_S)
    log.info("Serving stopped.")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    path = Path(sys.argv[1])
    serve_deployments(load_params(path), path)
