"""A 503 from a busy Prefect server is tried again within milliseconds (`flows.prefect_retry`), before
Prefect's own 2 s backoff. The server here is a stand-in, named as such: a real Prefect server on
SQLite answers this 503 only when a write races a task run's state being recorded (measured in
bench/RESULTS.md, latency), which a test cannot make happen on demand."""

from __future__ import annotations

import asyncio
import http.server
import logging
import threading
from collections.abc import Iterator

import pytest
from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

from flows import prefect_retry

PREFECT_BACKOFF = "Another attempt will be made"  # prefect.client's debug line before its 2 s wait


class BusyServer(http.server.ThreadingHTTPServer):
    """Answers the statuses in `codes` in turn (then 200), counting the requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.codes: list[int] = []
        self.seen = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: BusyServer

    def do_PATCH(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen += 1
        code = self.server.codes.pop(0) if self.server.codes else 204
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[BusyServer]:
    prefect_retry.install()
    server = BusyServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_a_few_503s_are_tried_again_at_once_not_after_prefects_backoff(busy: BusyServer, caplog: pytest.LogCaptureFixture) -> None:
    busy.codes = [503, 503, 503]
    caplog.set_level(logging.DEBUG, logger="prefect.client")
    with PrefectHttpxSyncClient(base_url=f"http://127.0.0.1:{busy.server_port}") as client:
        response = client.patch("/flow_runs/x/labels", json={"flywheel.owner": "me"})
    assert response.status_code == 204 and busy.seen == 4
    assert PREFECT_BACKOFF not in caplog.text


def test_the_async_client_too(busy: BusyServer, caplog: pytest.LogCaptureFixture) -> None:
    busy.codes = [503, 503]
    caplog.set_level(logging.DEBUG, logger="prefect.client")

    async def patch() -> int:
        async with PrefectHttpxAsyncClient(base_url=f"http://127.0.0.1:{busy.server_port}") as client:
            return (await client.patch("/variables/name/x", json={"value": 1})).status_code

    assert asyncio.run(patch()) == 204 and busy.seen == 3
    assert PREFECT_BACKOFF not in caplog.text


def test_a_server_that_stays_busy_still_gets_prefects_own_retries(busy: BusyServer, caplog: pytest.LogCaptureFixture) -> None:
    busy.codes = [503] * (len(prefect_retry.QUICK_PAUSES_S) + 1)  # every quick try answered 503
    caplog.set_level(logging.DEBUG, logger="prefect.client")
    with PrefectHttpxSyncClient(base_url=f"http://127.0.0.1:{busy.server_port}") as client:
        response = client.patch("/flow_runs/x/labels", json={})
    assert response.status_code == 204 and busy.seen == len(prefect_retry.QUICK_PAUSES_S) + 2
    assert PREFECT_BACKOFF in caplog.text  # then Prefect waited and tried again, as it would without the wrapper


def test_installing_twice_wraps_once() -> None:
    prefect_retry.install()
    wrapped = PrefectHttpxSyncClient._send_with_retry
    prefect_retry.install()
    assert PrefectHttpxSyncClient._send_with_retry is wrapped
