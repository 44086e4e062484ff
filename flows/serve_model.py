"""`flywheel serve-model`: the champion behind an HTTP endpoint (LitServe), hard images back to labeling.

Why LitServe (measured, bench/RESULTS.md "Serving"): it batches requests by itself, runs the model
in its own worker process beside the HTTP server, and its `LitAPI` hooks take the request's raw
bytes; MLflow's model server takes JSON/CSV frames (base64 images), answers one request at a time
and serves one fixed model URI (a new champion means a restart); BentoML brings 24 more packages
(OpenTelemetry, its own process supervisor) for the same FastAPI + uvicorn core.

Endpoints: `POST /predict` and `POST /feedback` (an answer the client found wrong), both taking an
image file's bytes or a `.npy` uint8 array; `GET /health`. One worker process answers both and
routes hard images (`components.production.serving.Router`).
"""

# No `from __future__ import annotations`: LitServe hands `decode_request`'s annotation to FastAPI as is.
import logging
import os
import signal
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Annotated, Any

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from fastapi import Body
from fastapi.responses import JSONResponse

from components.core.errors import SettingsError
from components.core.params import load_params
from components.adapters.registry import ModelRegistry
from components.networks.compute import resolve
from components.production.serving import (
    Decoded,
    Refusal,
    Router,
    ServingStats,
    decode_request,
    ensure_production_view,
    load_champion,
    load_version,
    stats_path,
)
from components.core.settings import load_settings

log = logging.getLogger("flywheel.serve_model")


FEEDBACK = b"\x00flywheel-feedback\x00"  # marks a body that came to /feedback (a client cannot route more by it)


class Requests:
    """ASGI middleware in front of LitServe's app: a POST without a body gets one clear 400 (FastAPI's
    own answer, a 422 "Field required", says nothing of what to send), and `POST /feedback` goes to
    `/predict`'s worker with its body marked, so one worker process (and one model) answers both."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if dict(scope.get("headers") or []).get(b"content-length") == b"0":
                detail = "The request body is empty: POST the image file's bytes (PNG, JPEG, ...) or an .npy uint8 array."
                await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
                return
            if scope["path"] == "/feedback":
                scope = {**scope, "path": "/predict", "raw_path": b"/predict"}
                receive = _prefixed(receive, FEEDBACK)
        await self.app(scope, receive, send)


def _prefixed(receive: Any, prefix: bytes) -> Any:
    first = True

    async def wrapped() -> dict[str, Any]:
        nonlocal first
        message = await receive()
        if first and message["type"] == "http.request":
            first = False
            message = {**message, "body": prefix + message.get("body", b"")}
        return message

    return wrapped


class QuietBatchedLoop(BatchedLoop):
    """LitServe's batched loop, but waiting for a batch's first request in one blocking call: its own
    loop polls the request queue every millisecond even while nobody sends anything (measured: 34% of
    a core for an idle endpoint with two workers; bench/RESULTS.md "Serving"). After the first, the
    batch fills as LitServe fills it (so it may hold `max_batch_size` + 1 requests)."""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        try:
            first = request_queue.get(timeout=1.0)
        except Empty:
            return [], []
        if first == _SENTINEL_VALUE:
            raise _StopLoopError()
        response_queue_id, uid, timestamp, payload = first
        self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
        batch, timed_out = [], []
        if lit_api.request_timeout not in (-1, False) and time.monotonic() - timestamp > lit_api.request_timeout:
            timed_out.append((response_queue_id, uid))
        else:
            batch.append((response_queue_id, uid, payload))
        more, more_timed_out = super().get_batch_requests(lit_api, request_queue, transport)
        return batch + more, timed_out + more_timed_out


class ChampionAPI(ls.LitAPI):
    """`/predict` (and `/feedback`, marked by `Requests`) answered with the registry's champion.

    Args:
        params_path: The project's params.yaml (read again in the worker process).
    """

    def __init__(self, params_path: Path):
        p = load_params(params_path).production
        super().__init__(max_batch_size=p.max_batch_size, batch_timeout=p.batch_timeout_ms / 1000, api_path="/predict",
                         loop=QuietBatchedLoop())
        self.params_path = params_path

    def setup(self, device: str) -> None:
        from components.adapters.label_studio import LabelStudio
        from components.loop.workspace import find_project

        import torch

        torch.set_num_threads(1)  # one core for the model, one for the HTTP server
        settings = load_settings()
        params = load_params(self.params_path)
        self.params = params
        self.max_pixels = params.images.max_pixels
        self.max_bytes = params.production.max_request_bytes
        label_studio = LabelStudio.from_settings(settings)
        project = find_project(label_studio, params, self.params_path.parent)
        if project is None:
            raise SettingsError(f"Label Studio has no project {params.project.title!r}: run `flywheel demo` or `flywheel import` first.")
        self.config = project.config
        self.models = ModelRegistry(settings.mlflow_tracking_uri, params.registry.model_name, params.registry.experiment)
        self.device = device
        champion = load_champion(self.models, self.config, device)
        if champion is None:
            raise SettingsError(
                f"No champion of {params.registry.model_name!r} in MLflow yet: label some images and run `flywheel run` "
                "(or `flywheel serve`) first."
            )
        self.champion = champion
        self.router = Router(label_studio, project, params.production.route_below, params.production.max_routed_per_hour)
        ensure_production_view(label_studio, project.id)
        self.stats = ServingStats(stats_path(settings.workspace, params.registry.model_name))
        threading.Thread(target=self._follow_champion, name="follow-champion", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._finish)  # LitServe stops this worker process with SIGTERM
        log.info("answering with %s", champion.model_version)

    def _finish(self, signum: int, frame: Any) -> None:
        """Before this worker goes: the images queued for Label Studio (up to 4 s: LitServe kills a
        worker 5 s after asking) and the counts."""
        self.router.stop(timeout_s=4.0)
        self.stats.write()
        raise SystemExit(0)

    def _follow_champion(self) -> None:
        """Swap in a newly promoted champion, loaded beside the one serving (never a dropped request)."""
        while True:
            time.sleep(self.params.production.reload_s)
            try:
                current = self.models.champion()
                if current is not None and current.version != self.champion.registered.version:
                    self.champion = load_version(self.models, current, self.config, self.device)
                    log.info("now answering with %s", current.model_version)
            except Exception as e:  # noqa: BLE001 - MLflow away: keep serving the model we have
                log.warning("Could not check the champion (%s); still answering with %s", e, self.champion.model_version)

    def decode_request(self, request: Annotated[bytes, Body(media_type="application/octet-stream")]) -> bytes:
        return request  # decoded in `predict`, at the input size of the model that answers the batch

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return inputs

    def predict(self, bodies: list[bytes]) -> list[dict[str, Any] | Refusal]:
        champion = self.champion  # one model for the whole batch, even if a new one is swapped in meanwhile
        flagged = [body.startswith(FEEDBACK) for body in bodies]
        decoded = [decode_request(body[len(FEEDBACK):] if flag else body, champion.image_size, self.max_pixels, self.max_bytes)
                   for body, flag in zip(bodies, flagged, strict=True)]
        images = [d for d in decoded if isinstance(d, Decoded)]
        readings = iter(champion.answer(images))
        answers: list[dict[str, Any] | Refusal] = []
        routed = 0
        answered = []
        for item, flag in zip(decoded, flagged, strict=True):
            if isinstance(item, Refusal):
                answers.append(item)
                continue
            reading = next(readings)
            answered.append(reading)
            route = self.router.consider(item, reading, champion.model_version, flagged=flag)
            routed += route in ("low confidence", "flagged")
            answers.append({
                "model_version": champion.model_version,
                "answer": reading.target,
                "confidence": reading.confidence,
                "result": reading.result,
                "routed": route,
            })
        self.stats.record(champion.model_version, answered, routed)
        return answers

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: dict[str, Any] | Refusal) -> Any:
        if isinstance(output, Refusal):
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        return output


def serve_model(params_path: Path, port: int | None = None) -> None:
    """Run the endpoint until stopped (Ctrl+C or SIGTERM)."""
    params = load_params(params_path)
    settings = load_settings()
    port = port or int(os.environ.get("FLYWHEEL_SERVE_MODEL_PORT", params.production.port))
    # fail here, with the message, rather than in a worker process whose error LitServe only logs
    from components.adapters.label_studio import LabelStudio

    LabelStudio.from_settings(settings).check()
    models = ModelRegistry(settings.mlflow_tracking_uri, params.registry.model_name, params.registry.experiment)
    if models.champion() is None:
        raise SettingsError(
            f"No champion of {params.registry.model_name!r} in MLflow at {settings.mlflow_tracking_uri} yet: label some "
            "images and run `flywheel run` (or `flywheel serve`) first."
        )
    path = params_path.resolve()
    server = ls.LitServer(
        ChampionAPI(path),
        accelerator=resolve(params.compute.accelerator, 1, params.compute.precision).accelerator,  # one setting for every model
        max_payload_size=params.production.max_request_bytes,
        middlewares=[Requests],
        fast_queue=True,
        timeout=30,
    )
    main = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main:  # a forked HTTP server process: die as LitServe expects
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt  # LitServe's graceful shutdown: it stops its HTTP server and worker processes

    signal.signal(signal.SIGTERM, stop)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
