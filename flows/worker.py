"""The warm worker: one process that imports the training stack once (torch, Lightning, MLflow, Great
Expectations: ~10 s on 2 cores) and then runs the loop's flows in-process whenever `flywheel serve`
asks, so an iteration starts in milliseconds. Each run is still a Prefect flow run, in Prefect's
history with what started it as its `trigger` parameter (webhook, safety-net, idle). (Not a Prefect
tag: every task run would then ask the server for that tag's concurrency slots.)

Why not Prefect's own runner: `prefect serve` and work pools start every flow run in a fresh process,
so each would pay the imports again; the rare, long run (the scheduled full retrain) still goes that
way (`flows.serve`).

`flywheel serve` talks to it over two pipes, one JSON line per message: a request
`{"run": "iteration" | "tidy" | "check", "trigger": "..."}` gets one reply `{"ok": true, "summary": ...}`
or `{"ok": false, "error": "..."}`; the first line, `{"ready": true}`, says the imports are done.
SIGUSR1 asks a running tidy (after its chunk) or label check (after its fold) to stop: new labels
are waiting.

The iterations and tidies it runs share one workspace (`components.loop.workspace.WorkspaceCache`): the
Label Studio, MLflow and data registry clients are built by the first run and reused while settings,
params and the labeling config are unchanged, so a run started by a new label does not reconnect
(seconds); a run that fails drops them, and the next one connects afresh.

Run: `python -m flows.worker PARAMS INBOX_FD OUTBOX_FD` (flows.serve does).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable

from flows import logs, runtime
from flows.logs import TRACEBACKS, describe

log = logging.getLogger("flows.worker")


def main(params_path: str, inbox_fd: int, outbox_fd: int) -> None:
    logs.setup()  # before the imports below: one of them would install a handler of its own
    signal.signal(signal.SIGUSR1, runtime.interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `flywheel serve`, which stops this process
    from components.loop.workspace import WorkspaceCache
    from flows.flywheel import flywheel_iteration, tidy_predictions
    from flows.label_errors import find_label_errors

    logs.adopt_library_loggers()  # MLflow and Lightning, imported above, through flywheel's handlers
    workspaces = WorkspaceCache()

    runs: dict[str, Callable[[str], object]] = {
        "iteration": lambda trigger: flywheel_iteration(params_path, warm=True, progress=False, trigger=trigger),
        "tidy": lambda trigger: tidy_predictions(params_path, trigger=trigger),
        "check": lambda trigger: find_label_errors(params_path, trigger=trigger),
    }
    with runtime.keeping_workspaces(workspaces), os.fdopen(inbox_fd) as inbox, os.fdopen(outbox_fd, "w") as outbox:

        def reply(message: dict[str, object]) -> None:
            runtime.clear_interrupt()  # cleared before the reply: a signal for the next request is never lost
            outbox.write(json.dumps(message, default=str) + "\n")
            outbox.flush()

        reply({"ready": True})
        for line in inbox:
            request = json.loads(line)
            try:
                reply({"ok": True, "summary": runs[request["run"]](request["trigger"])})
            except Exception as e:  # reported to serve as one line; the traceback goes to the log file
                workspaces.forget()  # the next run connects afresh: what failed may have been a connection
                logging.getLogger(TRACEBACKS).error("%s", e, exc_info=True)
                reply({"ok": False, "error": describe(e)})


if __name__ == "__main__":  # the flag and the workspace live in flows.runtime, which the flows import too
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
