"""What a flow reads of the process it runs in: the warm worker's workspace cache and its interrupt
flag (`flows.worker` sets both; in any other process there is no cache and no flag)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.loop.workspace import WorkspaceCache

_flag = {"interrupted": False}  # this process's one flag, set by SIGUSR1 (a plain value: safe in a handler)
_workspaces: ContextVar[WorkspaceCache | None] = ContextVar("flywheel_warm_workspaces", default=None)


def warm_workspaces() -> WorkspaceCache | None:
    """The warm worker's workspace, kept between the flow runs it runs (None in any other process:
    there each flow run connects)."""
    return _workspaces.get()


@contextmanager
def keeping_workspaces(workspaces: WorkspaceCache) -> Iterator[None]:
    """The warm worker: its flow runs share `workspaces` while the block runs."""
    token = _workspaces.set(workspaces)
    try:
        yield
    finally:
        _workspaces.reset(token)


def interrupted() -> bool:
    """True when `flywheel serve` asked the running tidy or check to stop (new labels are waiting)."""
    return _flag["interrupted"]


def interrupt(signum: int = 0, frame: object = None) -> None:
    """Ask the running tidy or check to stop (the warm worker's SIGUSR1 handler)."""
    _flag["interrupted"] = True


def clear_interrupt() -> None:
    """Forget an earlier ask: the request it was for has ended."""
    _flag["interrupted"] = False
