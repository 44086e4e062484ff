"""A server of the embedded stack as the processes that run it see it (`Service`): what every part of
the stack package shares, so none of them imports another to know it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.core.settings import Settings

Env = tuple[tuple[str, str], ...]
Hook = Callable[[Settings, "Service"], None]


@dataclass(frozen=True)
class Service:
    """One server of the embedded stack, ready to start.

    Attributes:
        name: "label_studio", "mlflow", "prefect", "postgres", "object_store", "worker_<n>" or "serve_model".
        url: What a person opens in a browser.
        health_url: Answers 200 once the server is ready.
        port: The port it must bind (a busy port is an error, never silently another one).
        command: How to start it.
        env: Extra environment for it.
        startup_s: How long it may take to become healthy (Label Studio migrates its DB on first start).
        user: Run it as this user (PostgreSQL refuses to run as root).
        before_start: What must be in place before it starts (PostgreSQL's cluster).
        when_healthy: What it needs once it answers, before the others use it (the databases, the bucket).
    """

    name: str
    url: str
    health_url: str
    port: int
    command: tuple[str, ...]
    env: Env
    startup_s: float
    user: str | None = None
    before_start: Hook | None = None
    when_healthy: Hook | None = None
