"""The dispatcher: what wakes `flywheel serve` (a webhook, the safety-net poll, idle time) and the work
it hands to the warm worker for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from components.adapters.label_studio import LabelStudio
from components.adapters.webhooks import LABEL_ACTIONS, Inbox, Wakeup
from components.core.errors import LabelStudioError
from components.core.params import Params
from flows.serve.background import Pretrainer, Retrainer
from flows.serve.processes import HEALTH_S, Worker

SAFETY_NET = "safety-net poll"
RETRAINED = "background retrain"  # a model from scratch registered: its pre-annotations are written by an iteration
# What the worker does once the loop is quiet: (its run, what it is called in a message).
IDLE_WORK = {"pass": ("iteration", "idle pass"), "tidy": ("tidy", "tidy of superseded pre-annotations"), "check": ("check", "label check")}

log = logging.getLogger("flows.serve")
polls = logging.getLogger("flywheel.polls")  # not under flows.*: the log file only (an idle serve polls all day)


class Dispatcher:
    """Hands work to the warm worker: an iteration when enough labels changed (announced by a webhook,
    or found by the safety-net poll), and once the loop is quiet, the idle work: the idle pass (the
    strategy report), the tidy, the label check. One line on the terminal per thing that matters."""

    def __init__(self, params: Params, ls: LabelStudio, project_id: int, inbox: Inbox, worker: Worker,
                 pretrainer: Pretrainer | None = None, retrainer: Retrainer | None = None):
        self.params, self.ls, self.project_id, self.inbox, self.worker = params, ls, project_id, inbox, worker
        self.pretrainer, self.retrainer = pretrainer, retrainer
        self.watermark: str | None = None  # Label Studio's newest change when work was last handed off
        self.cursor: str | None = None  # the latest snapshot's cursor, as the last iteration reported it
        self.retry = False  # the last iteration failed: the next wake-up runs one whatever changed
        self.has_model = False  # an iteration reported a champion: until then every label change counts
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
        if wakeup is None and self.retrainer is not None and self.retrainer.finished():
            wakeup = Wakeup(Counter({RETRAINED: 1}))
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
        count, so a person's saves start a flow run only every so many. Before the first model, one
        change is enough: the first snapshot may have too few labels of a class to train on, and the
        save that completes it should bring the first model, not wait for nine more."""
        try:
            pending = self.ls.count_changed(self.project_id, self.cursor)
        except LabelStudioError as e:
            log.warning("Counting the label changes: %s", e)
            return True
        if not self.params.poll.enough_changes(pending, lambda: self.has_model):
            self.watermark = self.newest_change()  # seen: the safety net waits for something newer
            return False
        return True

    def iterate(self, wakeup: Wakeup, stopping: threading.Event) -> None:
        trigger = "safety-net" if SAFETY_NET in wakeup.reasons else "retrain" if RETRAINED in wakeup.reasons else "webhook"
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
        """Note what an iteration reported: the cursor, the idle work it calls for, a background retrain."""
        now = time.monotonic()
        if self.retrainer is not None and summary.get("retrain_due") and not (self.pretrainer and self.pretrainer.running()):
            self.retrainer.maybe_start()  # not beside the pretraining: on a small machine they would share its cores
        self.cursor = summary.get("cursor") or self.cursor
        self.has_model = self.has_model or bool(summary.get("champion"))
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
