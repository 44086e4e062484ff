"""`flywheel serve`: react to Label Studio within seconds, and burn nothing while nobody labels.

This process stays lean (no torch: ~160 MB, asleep between events) and runs five things:

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
- **the ML backend** (`flows.ml_backend`, with `assist.backend`): a child process Label Studio calls as the
  project's model (Settings > Model): "Retrieve predictions" answered by the champion, and in a mask
  project the smart tools' masks. It connects itself to the project.
- **Prefect's runner** for the rare, long run, in a child process (`python -m flows.serve PARAMS`):
  the full retrain on `retrain.cron` (from scratch, every architecture). When Prefect stops
  answering, it pauses with one line and resumes.

In the team profile, the work goes to the Prefect process pool instead (`flows.deploy.PoolWorker`):
its workers run the iterations, the tidy, the label check (submitted, not waited for: it holds no
lock new labels wait for) and the scheduled retrain, each in a fresh process on any worker.

Ctrl-C or SIGTERM stops everything within `STOP_S` seconds; a run killed that way is closed by the
next one (see `flows.common`).

Where things are: `dispatcher` (what wakes serving and the work it hands off), `processes` (the
warm worker's process, stopping a child), `background` (the background pretraining and retrain), `runner`
(Prefect's runner for the scheduled retrain); `serve` itself, here, starts and stops them all.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from components.adapters.label_studio import LabelStudio
from components.adapters.webhooks import ACTIONS, SECRET_HEADER, Inbox, Receiver, ensure_secret
from components.core.errors import LabelStudioError, SettingsError
from components.core.params import Params, load_params
from components.core.settings import Settings
from flows.serve.dispatcher import Dispatcher
from flows.serve.background import Pretrainer, Retrainer
from flows.serve.processes import STOP_S, MLBackend, Worker
from flows.serve.runner import Runner, serve_deployments

__all__ = ["Dispatcher", "MLBackend", "Pretrainer", "Retrainer", "Runner", "Worker", "serve", "serve_deployments"]

log = logging.getLogger("flows.serve")


def _project_id(settings: Settings, params: Params, params_path: Path) -> tuple[LabelStudio, int]:
    from components.loop.workspace import find_project

    ls = LabelStudio.from_settings(settings)
    project = find_project(ls, params, params_path.parent)  # as `flows.common.connect` finds it
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


def serve(settings: Settings, params_path: Path) -> int:
    """Serve until Ctrl-C or SIGTERM. Returns the exit code."""
    params = load_params(params_path)
    if params.assist.backend and params.assist.sam_checkpoint:  # a missing SAM file stops serve here, with the fix
        from components.production.assist import sam_path

        sam_path(params.assist.sam_checkpoint, params_path.parent)
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
    pretrainer, retrainer = Pretrainer(params_path, params), Retrainer(params_path, params)
    ml_backend = MLBackend(params_path, stopping) if params.assist.backend else None
    try:
        if ml_backend is not None:
            ml_backend.start()
        worker.start()
        if not settings.team:
            runner.start()
        dispatcher = Dispatcher(params, ls, project_id, inbox, worker, pretrainer, retrainer)
        pretrainer.maybe_start(dispatcher.task_count())
        while not stopping.is_set():
            dispatcher.step(stopping)
    finally:
        stopping.set()
        worker.stop()
        pretrainer.stop()
        retrainer.stop()
        if ml_backend is not None:
            ml_backend.stop()
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
