"""The embedded stack: Label Studio, MLflow and Prefect servers on 127.0.0.1, run from the workspace.

`up` starts what is not already running (and leaves alone any service the user points elsewhere),
`down` stops only what `up` started (it reads the PID files it wrote), `status` reports each one.
Logs and PID files live under `<workspace>/logs` and `<workspace>/run`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.errors import StackError
from components.settings import NO_PHONE_HOME, Settings

LABEL_STUDIO_ADMIN = "admin@flywheel.local"
TITLES = {"label_studio": "Label Studio", "mlflow": "MLflow", "prefect": "Prefect", "serve_model": "Model endpoint"}


@dataclass(frozen=True)
class Service:
    """One server of the embedded stack.

    Attributes:
        name: "label_studio", "mlflow" or "prefect".
        url: What a person opens in a browser.
        health_url: Answers 200 once the server is ready.
        port: The port it must bind (a busy port is an error, never silently another one).
        command: How to start it.
        env: Extra environment for it.
        startup_s: How long it may take to become healthy (Label Studio migrates its DB on first start).
    """

    name: str
    url: str
    health_url: str
    port: int
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    startup_s: float


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
        return TITLES[self.name]


def _bin(name: str) -> str:
    """An executable installed beside this interpreter (the project's virtual environment)."""
    return str(Path(sys.executable).parent / name)


def ensure_credentials(settings: Settings) -> dict[str, str]:
    """Create the embedded Label Studio's admin login and API token once, in a 0600 file.

    Returns:
        The credentials: LABEL_STUDIO_USERNAME, LABEL_STUDIO_PASSWORD, LABEL_STUDIO_API_KEY.
    """
    path = settings.credentials_path
    if path.exists():
        pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return {k: v for k, v in pairs}
    creds = {
        "LABEL_STUDIO_USERNAME": LABEL_STUDIO_ADMIN,
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_API_KEY": secrets.token_hex(20),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in creds.items()))
    return creds


def embedded_services(settings: Settings) -> list[Service]:
    """The servers `up` manages: every service the user has not pointed elsewhere."""
    ws = settings.workspace
    services = []
    if "label_studio" not in settings.external:
        creds = ensure_credentials(settings)
        port = settings.label_studio_port
        services.append(
            Service(
                name="label_studio",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/health",
                port=port,
                command=(
                    str(settings.label_studio_bin), "start", "--no-browser",
                    "--internal-host", "127.0.0.1", "-p", str(port), "--data-dir", str(ws / "ls"),
                ),
                env=(
                    ("LABEL_STUDIO_BASE_DATA_DIR", str(ws / "ls")),
                    ("LOCAL_FILES_SERVING_ENABLED", "true"),
                    ("LOCAL_FILES_DOCUMENT_ROOT", str(settings.image_root)),
                    ("LABEL_STUDIO_USERNAME", creds["LABEL_STUDIO_USERNAME"]),
                    ("LABEL_STUDIO_PASSWORD", creds["LABEL_STUDIO_PASSWORD"]),
                    ("LABEL_STUDIO_USER_TOKEN", creds["LABEL_STUDIO_API_KEY"]),
                    ("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", "true"),
                    ("LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK", "true"),
                    # Webhooks to flywheel's receiver on 127.0.0.1: Label Studio refuses loopback
                    # targets (a reserved network) unless SSRF protection is off.
                    ("SSRF_PROTECTION_ENABLED", "false"),
                ),
                startup_s=180,
            )
        )
    if "mlflow" not in settings.external:
        port = settings.mlflow_port
        services.append(
            Service(
                name="mlflow",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/health",
                port=port,
                command=(
                    _bin("mlflow"), "server",
                    "--backend-store-uri", f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}",
                    "--artifacts-destination", str(ws / "mlflow" / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                ),
                env=(("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),),
                startup_s=90,
            )
        )
    if "prefect" not in settings.external:
        port = settings.prefect_port
        services.append(
            Service(
                name="prefect",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/api/health",
                port=port,
                command=(_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)),
                env=(
                    ("PREFECT_HOME", str(ws / "prefect")),
                    ("PREFECT_API_URL", ""),
                    # Leases on disk, not in memory: a run holding the loop's lock when the server
                    # restarts would otherwise hold it forever (its lease gone, its slot still taken).
                    ("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"),
                ),
                startup_s=90,
            )
        )
    return services


def _pid_path(settings: Settings, name: str) -> Path:
    return settings.workspace / "run" / f"{name}.pid"


def _read_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(_pid_path(settings, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    _reap(pid)  # a server this process started and that died is a zombie until reaped: not alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port() -> int:
    """A port nothing listens on right now (for throwaway stacks in tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(settings: Settings, service: Service) -> int:
    if _port_busy(service.port):
        raise StackError(
            f"Port {service.port} for {service.name} is taken by another program. Stop it, or pick "
            f"another port with FLYWHEEL_{service.name.upper()}_PORT=<free port>."
        )
    logs = settings.workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _pid_path(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
    if service.name == "label_studio" and not Path(service.command[0]).exists():
        raise StackError(
            f"Label Studio is not installed at {service.command[0]}. Run `make install` (it builds "
            "its own virtual environment .venv-ls), or set FLYWHEEL_LABEL_STUDIO_BIN."
        )
    env = {**os.environ, **NO_PHONE_HOME, **dict(service.env)}
    env.pop("PORT", None)  # Label Studio would take it over the -p flag
    with open(logs / f"{service.name}.log", "ab") as log:
        process = subprocess.Popen(
            service.command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=settings.workspace,
            start_new_session=True,  # its own process group: `down` stops it and its workers together
        )
    _pid_path(settings, service.name).write_text(str(process.pid))
    return process.pid


def _wait_healthy(settings: Settings, service: Service, pid: int) -> None:
    deadline = time.monotonic() + service.startup_s
    log = settings.workspace / "logs" / f"{service.name}.log"
    while time.monotonic() < deadline:
        if is_healthy(service.health_url):
            return
        if _read_pid(settings, service.name) is None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    _stop(settings, service.name)
    raise StackError(
        f"{service.name} did not become healthy at {service.health_url} within {service.startup_s:.0f} s "
        f"(pid {pid}). Its log is {log}; last lines:\n  " + "\n  ".join(tail)
    )


def model_endpoint(settings: Settings, params_path: Path, port: int) -> Service:
    """`flywheel serve-model` as an optional service of the stack (`flywheel stack up --serve-model`),
    started once the servers it needs are healthy."""
    return Service(
        name="serve_model",
        url=f"http://127.0.0.1:{port}/predict",
        health_url=f"http://127.0.0.1:{port}/health",
        port=port,
        command=(_bin("flywheel"), "serve-model", "--params", str(Path(params_path).resolve()), "--port", str(port)),
        env=(),
        startup_s=120,
    )


def up(settings: Settings, echo: Callable[[str], None] = print, then: Sequence[Service] = ()) -> list[ServiceStatus]:
    """Start every embedded service that is not already running, and wait until each is healthy;
    then the services of `then` (the model endpoint), which need the others.

    Running `up` twice is harmless: a healthy service started earlier is left as it is.

    Raises:
        StackError: A port is taken by another program, or a server did not become healthy in time
            (the message holds the end of its log).
    """
    _bring_up(settings, embedded_services(settings), echo)
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
        pid = _read_pid(settings, service.name)
        if pid is not None and is_healthy(service.health_url):
            echo(f"{service.name}: already running (pid {pid})")
            continue
        if pid is not None:  # ours, alive, not answering yet: still starting, give it its deadline
            started.append((service, pid))
            continue
        echo(f"{service.name}: starting on {service.url}")
        started.append((service, _start(settings, service)))
    for service, pid in started:
        _wait_healthy(settings, service, pid)
        echo(f"{service.name}: healthy")


def _stop(settings: Settings, name: str, timeout_s: float = 20.0) -> bool:
    pid = _read_pid(settings, name)
    if pid is None:
        _pid_path(settings, name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _read_pid(settings, name) is not None:
        _reap(pid)
        time.sleep(0.2)
    if _read_pid(settings, name) is not None:
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    _pid_path(settings, name).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect a child we started in this process, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitpid(pid, os.WNOHANG)


def down(settings: Settings, echo: Callable[[str], None] = print, only: Sequence[str] | None = None) -> list[str]:
    """Stop the servers `up` started (and nothing else; `only` these of them). Returns the names stopped."""
    stopped = []
    for name in [n for n in ("serve_model", "prefect", "mlflow", "label_studio") if only is None or n in only]:
        if _stop(settings, name):
            echo(f"{name}: stopped")
            stopped.append(name)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """The state of each service, embedded or external."""
    managed = {s.name: s for s in embedded_services(settings)}
    external = {
        "label_studio": (settings.label_studio_url, f"{settings.label_studio_url}/health"),
        "mlflow": (settings.mlflow_tracking_uri, f"{settings.mlflow_tracking_uri}/health"),
        "prefect": (settings.prefect_api_url.removesuffix("/api"), f"{settings.prefect_api_url}/health"),
    }
    rows = []
    for name, (url, health) in external.items():
        service = managed.get(name)
        rows.append(
            ServiceStatus(
                name=name,
                url=service.url if service else url,
                managed=service is not None,
                pid=_read_pid(settings, name) if service else None,
                healthy=is_healthy(service.health_url if service else health),
            )
        )
    try:
        optional = [line.split() for line in _extra_path(settings).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        optional = []
    for name, url, health in optional:
        pid = _read_pid(settings, name)
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
