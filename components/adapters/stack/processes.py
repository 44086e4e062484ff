"""One server of the stack as a process: start it, wait until it is healthy, stop it, find it again.

Each server runs in its own process group (so `stop` ends it and its workers together), logs to
`<workspace>/logs/<name>.log` and leaves its PID in `<workspace>/run/<name>.pid`, which is how a later
`up`, `down` or `status` knows it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from components.adapters.stack import postgres
from components.core.errors import StackError
from components.core.settings import LOGGING_ENV, NO_PHONE_HOME, Settings

if TYPE_CHECKING:
    from components.adapters.stack.service import Service


def pid_path(settings: Settings, name: str) -> Path:
    """Where the server `name` that `up` started notes its process id."""
    return settings.workspace / "run" / f"{name}.pid"


def running_pid(settings: Settings, name: str) -> int | None:
    """The process id of the server `name` that `up` started, while it runs; None otherwise."""
    try:
        pid = int(pid_path(settings, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    _reap(pid)  # a server this process started and that died is a zombie until reaped: not alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def is_healthy(url: str, timeout: float = 2.0, any_answer: bool = False) -> bool:
    """True when `url` answers 200 (`any_answer`: answers at all, as S3 does with a 403), or, for a
    postgresql:// URL, accepts a query."""
    if url.startswith("postgresql://"):
        return postgres.answers(url, timeout)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return any_answer
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


def start(settings: Settings, service: Service) -> int:
    """Start `service` in the background (after its `before_start`) and note its PID. Returns the PID.

    Raises:
        StackError: Its port is taken by another program, or what it needs is not installed.
    """
    if _port_busy(service.port):
        raise StackError(
            f"Port {service.port} for {service.name} is taken by another program. Stop it, or pick "
            f"another port with FLYWHEEL_{service.name.upper()}_PORT=<free port>."
        )
    logs = settings.workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pid_path(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
    if service.before_start is not None:
        service.before_start(settings, service)
    env = {name: value for name, value in os.environ.items() if name not in LOGGING_ENV}  # a server logs to its own file
    env.update({**NO_PHONE_HOME, **dict(service.env)})
    env.pop("PORT", None)  # Label Studio would take it over the -p flag
    with open(logs / f"{service.name}.log", "ab") as log:
        process = subprocess.Popen(
            service.command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=settings.workspace if service.user is None else "/",
            start_new_session=True,  # its own process group: `down` stops it and its workers together
            user=service.user,
        )
    pid_path(settings, service.name).write_text(str(process.pid))
    return process.pid


def wait_healthy(settings: Settings, service: Service, pid: int) -> None:
    """Wait until `service` (started as `pid`) is healthy.

    Raises:
        StackError: It died or did not become healthy within its `startup_s` (it is stopped then); the
            message holds the end of its log.
    """
    deadline = time.monotonic() + service.startup_s
    log = settings.workspace / "logs" / f"{service.name}.log"
    while time.monotonic() < deadline:
        if is_healthy(service.health_url):
            return
        if running_pid(settings, service.name) is None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    stop(settings, service.name)
    raise StackError(
        f"{service.name} did not become healthy at {_without_password(service.health_url)} within {service.startup_s:.0f} s "
        f"(pid {pid}). Its log is {log}; last lines:\n  " + "\n  ".join(tail)
    )


def _without_password(url: str) -> str:
    """A URL fit for a message: user:password@ becomes user@."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1@", url)


def stop(settings: Settings, name: str, timeout_s: float = 20.0) -> bool:
    """Stop the server `name` that `up` started (SIGTERM to its process group, SIGKILL after
    `timeout_s`). Returns whether it was running."""
    pid = running_pid(settings, name)
    if pid is None:
        pid_path(settings, name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and running_pid(settings, name) is not None:
        _reap(pid)
        time.sleep(0.2)
    if running_pid(settings, name) is not None:
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    pid_path(settings, name).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect a child we started in this process, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitpid(pid, os.WNOHANG)
