"""Label Studio's webhooks, received: a small HTTP server that wakes the loop when people label.

Label Studio posts each annotation change of the project to `<receiver>/label-studio/<project id>`
with the shared secret in the `X-Flywheel-Secret` header (`LabelStudio.ensure_webhook` registers
that, idempotently). The receiver checks the secret on every call (403 otherwise, and nothing is
queued), keeps only the actions that change labels, and answers at once: Label Studio sends its
webhooks while a person's save is in flight, so no work happens in that request.

What arrives waits in an `Inbox`, a bounded queue in which a burst coalesces: the loop takes
everything waiting as one wake-up and polls every change since its cursor, so 200 saves make one
iteration, not 200. A full inbox drops the oldest events but never the wake-up itself, so nothing is
lost: the poll, not the event, says what changed.

This module is lean on purpose (no torch, no MLflow): it runs in `flywheel serve`'s own process.
"""

from __future__ import annotations

import hmac
import os
import json
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The Label Studio actions that change what a snapshot holds, and new tasks (they need pre-annotations).
LABEL_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
ACTIONS = (*LABEL_ACTIONS, "TASKS_CREATED", "TASKS_DELETED")
SECRET_HEADER = "X-Flywheel-Secret"
SECRET_ENV = "FLYWHEEL_WEBHOOK_SECRET"
MAX_BODY = 1 << 20  # Label Studio sends no payload (send_payload off): a body this large is not from it
INBOX_CAPACITY = 1000


def new_secret() -> str:
    """A fresh shared secret for Label Studio's webhook header."""
    return secrets.token_urlsafe(32)


@dataclass
class Wakeup:
    """Everything that arrived since the loop last took from the inbox.

    Attributes:
        reasons: How many of each action (or "safety-net poll") arrived.
        dropped: Events the full inbox dropped (their changes are still polled).
    """

    reasons: Counter[str] = field(default_factory=Counter)
    dropped: int = 0

    @property
    def events(self) -> int:
        return sum(self.reasons.values())

    def describe(self) -> str:
        """One phrase, e.g. "12 label change(s) (webhook)"."""
        hooks = sum(n for reason, n in self.reasons.items() if reason in ACTIONS)
        parts = [f"{hooks} label change(s) (webhook)"] if hooks else []
        parts += [reason for reason in self.reasons if reason not in ACTIONS]
        return ", ".join(parts)


class Inbox:
    """A bounded queue of wake-ups in which bursts coalesce: `take` returns everything waiting as one.

    Args:
        capacity: Events kept before the oldest are dropped (counted, and still polled by the loop).
        on_put: Called after each event is queued (the loop uses it to cut idle work short).
    """

    def __init__(self, capacity: int = INBOX_CAPACITY, on_put: Callable[[], None] = lambda: None):
        self._events: deque[str] = deque(maxlen=capacity)
        self._dropped = 0
        self._interrupted = False
        self._ready = threading.Condition()
        self._on_put = on_put

    def put(self, reason: str) -> None:
        """Queue one event; wakes whoever waits in `take`."""
        with self._ready:
            if len(self._events) == self._events.maxlen:
                self._dropped += 1
            self._events.append(reason)
            self._ready.notify_all()
        self._on_put()

    def interrupt(self) -> None:
        """Make a waiting `take` return now (with what is waiting, or None)."""
        with self._ready:
            self._interrupted = True
            self._ready.notify_all()

    def take(self, timeout_s: float | None) -> Wakeup | None:
        """Wait up to `timeout_s` for an event; return all that are waiting as one wake-up, or None."""
        with self._ready:
            self._ready.wait_for(lambda: bool(self._events) or self._interrupted, timeout=timeout_s)
            self._interrupted = False
            if not self._events:
                return None
            wakeup = Wakeup(Counter(self._events), self._dropped)
            self._events.clear()
            self._dropped = 0
            return wakeup

    def __len__(self) -> int:
        with self._ready:
            return len(self._events)


class Receiver:
    """The HTTP server Label Studio's webhooks reach. Runs in a daemon thread until `stop`.

    Args:
        inbox: Where accepted events go.
        secret: The shared secret every call must carry in `X-Flywheel-Secret`.
        project_id: The Label Studio project served (the only path accepted).
        host: Interface to bind (127.0.0.1 by default: Label Studio on the same machine).
        port: Port to bind (0: a free one).
    """

    def __init__(self, inbox: Inbox, secret: str, project_id: int, host: str = "127.0.0.1", port: int = 0):
        if not secret:
            raise ValueError("The webhook receiver needs a non-empty secret.")
        self.inbox = inbox
        self.path = f"/label-studio/{project_id}"
        self.counts: Counter[str] = Counter()
        self._secret = secret.encode()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Receiver(url={self.url!r})"

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> Receiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorized(self, presented: str | None) -> bool:
        """Constant-time comparison of the secret a call presents."""
        return presented is not None and hmac.compare_digest(presented.encode(), self._secret)

    def receive(self, path: str, presented: str | None, body: bytes) -> tuple[HTTPStatus, str]:
        """Judge one call: (status, what it did). Only an accepted call touches the inbox."""
        if path.rstrip("/") != self.path:
            return HTTPStatus.NOT_FOUND, f"no such webhook; Label Studio posts to {self.path}"
        if not self.authorized(presented):
            self.counts["refused"] += 1
            return HTTPStatus.FORBIDDEN, f"missing or wrong {SECRET_HEADER}"
        try:
            action = json.loads(body or b"{}").get("action")
        except (ValueError, AttributeError):
            self.counts["malformed"] += 1
            return HTTPStatus.BAD_REQUEST, "the body is not a JSON object"
        if action not in ACTIONS:
            self.counts["ignored"] += 1
            return HTTPStatus.OK, f"ignored: {action!r} does not change labels"
        self.counts["accepted"] += 1
        self.inbox.put(action)
        return HTTPStatus.ACCEPTED, "queued"


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "flywheel-receiver"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            raw = self.headers.get("Content-Length") or "0"
            if not raw.isdigit():
                self._answer(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
                return
            length = int(raw)
            if length > MAX_BODY:
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"bodies over {MAX_BODY} bytes are refused")
                return
            body = self.rfile.read(length) if length else b""
            self._answer(*receiver.receive(self.path, self.headers.get(SECRET_HEADER), body))

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._answer(HTTPStatus.OK, "ok", counts=dict(receiver.counts), waiting=len(receiver.inbox))
            else:
                self._answer(HTTPStatus.NOT_FOUND, "POST webhooks to " + receiver.path)

        def _answer(self, status: HTTPStatus, message: str, **extra: Any) -> None:
            body = json.dumps({"status": status.value, "message": message, **extra}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # one line per request would flood the terminal
            pass

    return Handler


def ensure_secret(settings: Any) -> str:
    """The webhook secret: FLYWHEEL_WEBHOOK_SECRET when set, else the workspace's `webhook.secret`,
    created once (mode 0600) on first use."""
    if settings.webhook_secret:
        return settings.webhook_secret
    path = settings.webhook_secret_path
    settings.ensure_workspace()
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.unlink(missing_ok=True)  # empty (a write cut short): made again
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        secret = new_secret()
        f.write(secret + "\n")
    return secret
