"""Surviving a kill: who owns a half-done thing, and a hook for fault tests.

`owner()` names this process (host, pid, start time); `owner_gone` tells whether the process that
wrote such a name is dead, so a run can close what a killed one left (an MLflow run still RUNNING, a
staging folder) without touching what another live worker is doing right now.

`pause_point` is a test hook: it does nothing unless the environment names the point
(`FLYWHEEL_PAUSE_AT=write-back`). Then the process writes its pid to `FLYWHEEL_PAUSE_FILE` and
waits until that file is removed (the test lets it go on) or the process is killed (the test's
fault), for at most ten minutes. A process pauses once: a step retried after the fault (Prefect's
retries) goes on rather than waiting for a test that already let it go. Points: poll, version,
train, register, write-back.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psutil

PAUSE_AT = "FLYWHEEL_PAUSE_AT"
PAUSE_FILE = "FLYWHEEL_PAUSE_FILE"
_paused: set[str] = set()  # the points this process has paused at


def pause_point(name: str) -> None:
    """Wait here if a fault test asked to (see the module docstring)."""
    if os.environ.get(PAUSE_AT) != name or not os.environ.get(PAUSE_FILE) or name in _paused:
        return
    _paused.add(name)
    marker = Path(os.environ[PAUSE_FILE])
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def owner() -> str:
    """This process as "host:pid:start" (the start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(psutil.Process().create_time())}"


def owner_gone(name: str) -> bool:
    """True when `name` (from `owner`) is a process of this host that is no longer running. A process
    of another host is never called gone: its own host's runs close what it leaves. No name (a run
    from before owners were recorded) counts as gone."""
    if not name:
        return True
    host, _, rest = name.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        return started.isdigit() and int(psutil.Process(int(pid)).create_time()) != int(started)
    except psutil.NoSuchProcess:
        return True


def dead_pid_in(name: str) -> bool:
    """For a leftover named by `owned_name`: whether the process that made it is gone (on this host;
    another host's is never called gone). A name from before owners were recorded counts as gone."""
    parts = name.split("~")
    if len(parts) != 5:
        return True
    _, host, pid, started, _ = parts
    return owner_gone(f"{host}:{pid}:{started}")


def owned_name(prefix: str) -> str:
    """"<prefix>~<host>~<pid>~<start>~<random>": a temporary name `dead_pid_in` can judge."""
    host, pid, started = owner().split(":")
    return f"{prefix}~{host.replace('~', '-')}~{pid}~{started}~{os.urandom(4).hex()}"
