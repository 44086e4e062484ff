"""The stack as a whole: `up` starts what is not running, `down` stops what `up` started, `status`
reports every server, embedded or the user's own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.adapters.stack.processes import is_healthy, running_pid, start, stop, wait_healthy
from components.adapters.stack.servers import SERVERS, Service, embedded_services
from components.core.settings import Settings

TITLES = {"label_studio": "Label Studio", "mlflow": "MLflow", "prefect": "Prefect", "serve_model": "Model endpoint",
          "postgres": "PostgreSQL", "object_store": "Object store (moto, a stand-in for S3)"}


@dataclass(frozen=True)
class ServiceStatus:
    """What `status` knows of one service."""

    name: str
    url: str
    managed: bool
    pid: int | None
    healthy: bool

    @property
    def title(self) -> str:
        """The server's name as people write it."""
        return TITLES.get(self.name, self.name.replace("_", " "))


def up(settings: Settings, echo: Callable[[str], None] = print, then: Sequence[Service] = ()) -> list[ServiceStatus]:
    """Start every embedded service that is not already running, and wait until each is healthy;
    then the services of `then` (the model endpoint), which need the others.

    Running `up` twice is harmless: a healthy service started earlier is left as it is.

    Raises:
        StackError: A port is taken by another program, or a server did not become healthy in time
            (the message holds the end of its log).
    """
    settings.ensure_workspace()
    services = embedded_services(settings)
    infrastructure = {server.name for server in SERVERS if server.team_only}
    first = [s for s in services if s.name in infrastructure]
    last = [s for s in services if s.name.startswith("worker_")]  # they need Prefect
    _bring_up(settings, first, echo)
    _bring_up(settings, [s for s in services if s not in first and s not in last], echo)
    _bring_up(settings, last, echo)
    if then:
        _bring_up(settings, list(then), echo)
        _extra_path(settings).write_text("".join(f"{s.name} {s.url} {s.health_url}\n" for s in then))
    return status(settings)


def _extra_path(settings: Settings) -> Path:
    """Where `up` notes the optional services it started (`status` shows them)."""
    return settings.workspace / "run" / "optional.txt"


def _bring_up(settings: Settings, services: list[Service], echo: Callable[[str], None]) -> None:
    started = []
    for service in services:
        pid = running_pid(settings, service.name)
        if pid is not None and is_healthy(service.health_url):
            echo(f"{service.name}: already running (pid {pid})")
            continue
        if pid is not None:  # ours, alive, not answering yet: still starting, give it its deadline
            started.append((service, pid))
            continue
        echo(f"{service.name}: starting on {service.url}")
        started.append((service, start(settings, service)))
    for service, pid in started:
        wait_healthy(settings, service, pid)
        if service.when_healthy is not None:
            service.when_healthy(settings, service)
        echo(f"{service.name}: healthy")


def down(settings: Settings, echo: Callable[[str], None] = print, only: Sequence[str] | None = None) -> list[str]:
    """Stop the servers `up` started (and nothing else; `only` these of them). Returns the names stopped."""
    stopped = []
    order = ("serve_model", *(f"worker_{i + 1}" for i in range(settings.workers)), *(server.name for server in reversed(SERVERS)))
    for name in [n for n in order if only is None or n in only]:
        if stop(settings, name):
            echo(f"{name}: stopped")
            stopped.append(name)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """The state of each service, embedded or external."""
    managed = {s.name: s for s in embedded_services(settings)}
    rows = []
    for server in sorted(SERVERS, key=lambda server: server.team_only):  # the team's infrastructure last
        if server.team_only and not settings.team:
            continue
        service = managed.get(server.name)
        url, health = (service.url, service.health_url) if service else server.external(settings)
        rows.append(
            ServiceStatus(
                name=server.name,
                url=url,
                managed=service is not None,
                pid=running_pid(settings, server.name) if service else None,
                healthy=is_healthy(health, any_answer=server.any_answer),
            )
        )
    for service in (s for s in managed.values() if s.name.startswith("worker_")):
        rows.append(ServiceStatus(name=service.name, url=service.url, managed=True, pid=running_pid(settings, service.name),
                                  healthy=is_healthy(service.health_url)))
    try:
        optional = [line.split() for line in _extra_path(settings).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        optional = []
    for name, url, health in optional:
        pid = running_pid(settings, name)
        if pid is not None:
            rows.append(ServiceStatus(name=name, url=url, managed=True, pid=pid, healthy=is_healthy(health)))
    return rows


def describe(rows: list[ServiceStatus]) -> str:
    """One line per service, for the terminal."""
    return "\n".join(
        f"{r.name:<13} {'up  ' if r.healthy else 'DOWN'} {r.url:<28} "
        f"{'pid ' + str(r.pid) if r.pid else ('external' if not r.managed else 'not started')}"
        for r in rows
    )
