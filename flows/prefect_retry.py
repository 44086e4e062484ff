"""Prefect's client, retrying a busy SQLite server's 503 within milliseconds instead of 2 s.

On the embedded profile Prefect's server keeps its state in SQLite. A write that reads first (a lock's
slot, a Variable, a flow run's labels) and meets a task run's state being recorded at that moment
fails with SQLITE_BUSY_SNAPSHOT, which the server answers 503 at once; a second try a few
milliseconds later goes through. Prefect's client waits 2 s (then 4, 8...) before that second try,
and the loop made one to three such writes per iteration right after a task: 2-6 s of a 10 s
refresh (measured: bench/RESULTS.md, latency; the server issue: PrefectHQ/prefect#18934).

`install()` wraps the client's own retry (`_send_with_retry`, sync and async) so that a 503 is first
tried again after `QUICK_PAUSES_S`; what still fails then goes through Prefect's retries unchanged (a
server restarting, a 429, a connection refused). PostgreSQL (the team profile) never answers this 503.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from prefect.client import base

QUICK_PAUSES_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # 0.8 s in all, then Prefect's own 2 s backoff
BUSY = 503


def install() -> None:
    """Wrap Prefect's client retries (once per process)."""
    if getattr(base.PrefectHttpxSyncClient._send_with_retry, "quick_503", False):
        return
    base.PrefectHttpxSyncClient._send_with_retry = _sync(base.PrefectHttpxSyncClient._send_with_retry)
    base.PrefectHttpxAsyncClient._send_with_retry = _async(base.PrefectHttpxAsyncClient._send_with_retry)


def _sync(original: Any) -> Any:
    @functools.wraps(original)
    def send_with_retry(self: Any, request: Any, send: Any, **kwargs: Any) -> Any:
        def send_quickly(request: Any, *send_args: Any, **send_kwargs: Any) -> Any:
            response = send(request, *send_args, **send_kwargs)
            for pause in QUICK_PAUSES_S:
                if response.status_code != BUSY:
                    break
                time.sleep(pause)
                response = send(request, *send_args, **send_kwargs)
            return response

        return original(self, request=request, send=send_quickly, **kwargs)

    send_with_retry.quick_503 = True  # type: ignore[attr-defined]
    return send_with_retry


def _async(original: Any) -> Any:
    @functools.wraps(original)
    async def send_with_retry(self: Any, request: Any, send: Any, **kwargs: Any) -> Any:
        async def send_quickly(request: Any, *send_args: Any, **send_kwargs: Any) -> Any:
            response = await send(request, *send_args, **send_kwargs)
            for pause in QUICK_PAUSES_S:
                if response.status_code != BUSY:
                    break
                await asyncio.sleep(pause)
                response = await send(request, *send_args, **send_kwargs)
            return response

        return await original(self, request=request, send=send_quickly, **kwargs)

    send_with_retry.quick_503 = True  # type: ignore[attr-defined]
    return send_with_retry
