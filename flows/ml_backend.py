"""`python -m flows.ml_backend PARAMS`: flywheel as the project's ML backend in Label Studio.

`flywheel serve` starts it beside the loop (`flows.serve`), and it connects itself to the project
(Settings > Model shows "flywheel", once, however often it starts). It answers Label Studio 1.23's
protocol (`components.production.ml_backend` owns its shapes):

- `POST /predict` with no context (the Data Manager's "Retrieve predictions", a task opened without
  predictions): the champion's answer for each task, as the loop's write-back gives it;
- `POST /predict` with a context (a smart box or clicks drawn in a mask project): the object's mask, as a
  brush region (a polygon in a polygon project) with the class the person chose;
- `GET /health`, `POST /setup` (the champion's version), `POST /webhook` (acknowledged: the loop has its own).

The process stays warm: the workspace is opened and the champion loaded once, and the champion is
looked up again at most every `CHAMPION_CHECK_S`, so a request never pays an import or a model load it
could have paid before. A request that cannot be answered gets a 4xx whose `detail` says what to send;
nothing is written to Label Studio by this process except through the answers Label Studio asks for.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from PIL import Image
from fastapi.responses import JSONResponse

from components.core.errors import SETTINGS_EXIT, FlywheelError, LabelStudioError
from components.core.settings import Settings
from components.data.images import ImageError, StoredImage, decode_image, shown_size
from components.loop.workspace import Workspace
from components.networks.compute import torch_device
from components.production.assist import Measured, Sam, answer, load_sam, measure
from components.production.ml_backend import (
    BadRequest,
    answers,
    brush_region,
    health,
    parse_predict,
    polygon_region,
    prompt_of,
    setup,
)
from components.production.serving import Champion, Decoded, load_champion

log = logging.getLogger("flows.ml_backend")

CHAMPION_CHECK_S = 10.0  # how stale the champion may be: a lookup is one request to MLflow, in the background
FALLBACK_VERSION = "flywheel-assistant ({})"  # the model version of an answer by GrabCut or a team's SAM
CHUNK = 16  # images per forward pass of a batch call (Label Studio sends every selected task in one)


class Backend:
    """What answers Label Studio: the project's workspace, its champion (reloaded when it changes) and the
    mask assistant."""

    def __init__(self, ws: Workspace, sam: Sam | None = None):
        self.ws = ws
        self.config = ws.project.config
        self.sam = sam  # the team's SAM model (params.yaml assist.sam_checkpoint): the fallback instead of GrabCut
        self.fallback_name = "GrabCut" if sam is None else sam.name
        self.not_measured = Measured(0.0, 0.0, 0, self.fallback_name)
        # the champion and its mask head measured against the fallback (`assist.measure`): replaced together, read once
        self.state: tuple[Champion | None, Measured] = (None, self.not_measured)
        self.unmeasured = False  # a champion loaded whose mask head is not measured yet
        self.fallback_ious: dict[tuple[str, Any, str], float] = {}  # per validation object: measured once, for every champion

    def champion(self) -> Champion | None:
        """The champion as last looked up (`refresh`): a request never waits for a model load."""
        return self.state[0]

    @property
    def measured(self) -> Measured:
        return self.state[1]

    def refresh(self, measure: bool = True) -> None:
        """Look the champion up in the registry and load it when it changed: it answers at once, and boxes get
        the fallback until its mask head is measured (now, unless `measure` is False: a SAM embeds every
        validation image, minutes on a CPU, and the server should not wait for that to start)."""
        registered = self.ws.models.champion()
        current = self.champion()
        if registered is None:
            self.state = (None, self.not_measured)
            return
        if current is None or current.model_version != registered.model_version:
            device = str(torch_device(self.ws.compute))
            self.state = (load_champion(self.ws.models, self.config, device), self.not_measured)
            self.unmeasured = True
            log.info("ML backend: answering with %s.", registered.model_version)
        if measure and self.unmeasured:
            self._measure_champion()

    def _measure_champion(self) -> None:
        champion = self.champion()
        try:
            measured = self._measure(champion) if champion is not None else self.not_measured
        except Exception as e:  # noqa: BLE001 - the champion still answers "Retrieve predictions"; boxes get the fallback
            log.warning("ML backend: could not measure %s's mask head (%s): boxes are answered by %s.",
                        champion.model_version if champion else None, e, self.fallback_name)
            measured = self.not_measured
        if measured is None:  # a newer champion arrived while measuring: the next refresh loads and measures it
            return
        self.state, self.unmeasured = (champion, measured), False
        if measured.objects and champion is not None:
            log.info("ML backend: masks from a box by %s (mask IoU %.2f, %s's %.2f, on %d validation masks of %s).",
                     "the mask head" if measured.use_learned else self.fallback_name, measured.learned, self.fallback_name,
                     measured.fallback, measured.objects, champion.model_version)

    def _measure(self, champion: Champion) -> Measured | None:
        """The champion's mask head against the fallback on the latest snapshot's validation masks (None: a newer
        champion arrived meanwhile; it is looked up every CHAMPION_CHECK_S while measuring, which can take
        minutes with a SAM on a CPU)."""
        if champion.task.name != "segmentation":
            return self.not_measured
        from components.data.snapshot import read_manifest
        from components.tasks.objects import parse_target

        latest = self.ws.data.latest()
        if latest is None:
            return self.not_measured
        folder = self.ws.data.checkout(latest)
        manifest = read_manifest(folder)
        rows = manifest[manifest["split"] == "val"].sort_values("task_id")
        samples = [(folder / row.image, parse_target(row.label)) for row in rows.itertuples()]
        looked_up = [time.monotonic()]

        def superseded() -> bool:
            if time.monotonic() - looked_up[0] < CHAMPION_CHECK_S:
                return False
            looked_up[0] = time.monotonic()
            try:
                registered = self.ws.models.champion()
            except Exception:  # noqa: BLE001 - MLflow down for a moment: go on measuring the champion there is
                return False
            return registered is None or registered.model_version != champion.model_version

        return measure(champion.model, samples, self.ws.params.images.max_pixels, self.sam, self.fallback_ious, superseded)

    def keep_fresh(self, stopping: threading.Event) -> None:
        """`refresh` now and then every CHAMPION_CHECK_S until `stopping` (a failed lookup is retried, never fatal)."""
        while not stopping.is_set():
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - MLflow down for a while: keep answering with the model there is
                log.warning("ML backend: could not look the champion up (%s); answering with %s.", e, self.model_version())
            stopping.wait(CHAMPION_CHECK_S)

    def model_version(self) -> str | None:
        champion = self.champion()
        return champion.model_version if champion is not None else None

    def predict(self, body: Any) -> dict[str, Any]:
        """`/predict`: the champion's answers (a batch call), or the mask for a smart tool's prompt.

        Raises:
            BadRequest: What is wrong with the request (`components.production.ml_backend`), a task of
                another project, an image that cannot be read, a prompt drawn on another image.
        """
        request = parse_predict(body)
        for task in request.tasks:
            project = task.get("project", request.project_id)
            if project is not None and project != self.ws.project.id:
                raise BadRequest(f"Task {task['id']} is in project {project}; this backend serves project {self.ws.project.id} "
                                 f"({self.ws.project.title!r}). Connect a backend to each project (flywheel serve --project N).")
        if request.context is not None:
            return self.assist(request.tasks[0], request.context)
        return self.batch(request.tasks)

    def batch(self, tasks: tuple[Any, ...]) -> dict[str, Any]:
        """One prediction per task from the champion; none at all while there is no champion (Label
        Studio then shows the task without one)."""
        champion = self.champion()
        if champion is None:
            return {"results": []}
        decoded: list[Decoded | None] = []
        for task in tasks:
            try:
                decoded.append(self._decoded(task, champion.image_size))
            except BadRequest as e:  # this task's image: the others still get their predictions
                log.warning("ML backend: no prediction for task %s: %s", task["id"], e)
                decoded.append(None)
        readable = [d for d in decoded if d is not None]
        readings = iter([r for start in range(0, len(readable), CHUNK) for r in champion.answer(readable[start : start + CHUNK])])
        results = []
        for d in decoded:
            reading = next(readings) if d is not None else None
            results.append((reading.result, reading.confidence) if reading is not None else ([], 0.0))
        return answers(results, champion.model_version)

    def assist(self, task: Any, context: Any) -> dict[str, Any]:
        """The mask of the object a person prompted, as a region of the project's mask control: the
        champion's mask head for a box once it measures better than the fallback, else the fallback (GrabCut, or
        the team's SAM)."""
        if self.ws.task.name != "segmentation":
            raise BadRequest(f"Project {self.ws.project.id} labels with <{self.config.control_type}>: the mask assistant answers "
                             "smart tools in a mask project (<BrushLabels> or <PolygonLabels>) only.")
        prompt = prompt_of(context, self.config)
        image = self._stored(task).path
        try:
            width, height = shown_size(image)
        except Exception as e:  # noqa: BLE001 - whatever PIL raises on this file (a decompression bomb too) is this task's
            raise unreadable(task, e) from e
        if abs(prompt.width - width) > 1 or abs(prompt.height - height) > 1:
            raise BadRequest(f"The smart region was drawn on a {prompt.width}x{prompt.height} image, but task {task['id']}'s image is "
                             f"{width}x{height}: send the context drawn on this task's image.")
        champion, measured = self.state
        learned = champion is not None and prompt.box is not None and measured.use_learned
        try:
            mask, score, made_by = answer(image, prompt, champion.model if learned else None, self.ws.params.images.max_pixels, self.sam)
        except (ValueError, OSError) as e:  # a file that cannot be decoded, or went away meanwhile
            raise unreadable(task, e) from e
        version = f"{champion.model_version} ({made_by})" if learned and made_by != self.fallback_name else FALLBACK_VERSION.format(made_by)
        if not mask.any():
            return answers([([], 0.0)], version)
        region = (brush_region(mask, prompt.label, self.config, score) if self.config.control_type == "BrushLabels"
                  else polygon_region(mask, prompt.label, self.config, score))
        return answers([([region], score)], version)

    def _stored(self, task: Any) -> StoredImage:
        try:
            return self.ws.images.resolve(int(task["id"]), task["data"], self.config.data_key)
        except ImageError as e:  # it says what to do
            raise BadRequest(f"Cannot read the image of task {task['id']}: {e.problem}", status=422) from e
        except ValueError as e:  # a URL no path can be made of (a NUL byte)
            raise BadRequest(f"Cannot read the image of task {task['id']}: its URL is not a file path ({e}); fix the task's data.",
                             status=422) from e

    def _decoded(self, task: Any, image_size: int) -> Decoded:
        path = self._stored(task).path
        try:
            pixels, size, kind = decode_image(path, image_size, self.ws.params.images.max_pixels)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise unreadable(task, e) from e
        return Decoded(b"", pixels, size, kind)


def unreadable(task: Any, reason: object) -> BadRequest:
    """The 422 for a task whose image file is there but cannot be decoded (`reason`: what PIL or the checks said)."""
    return BadRequest(f"Cannot read the image of task {task['id']}: {reason}. Replace the image in the task.", status=422)


# `/predict`'s body as Label Studio sends it, for the OpenAPI schema (the handler checks it itself, so that a
# wrong one is answered with what to send: `ml_backend.parse_predict`)
_REGION = {"type": "object", "properties": {
    "type": {"type": "string", "enum": ["rectanglelabels", "keypointlabels"]}, "original_width": {"type": "integer"},
    "original_height": {"type": "integer"}, "is_positive": {"type": "boolean"}, "from_name": {"type": "string"},
    "to_name": {"type": "string"}, "value": {"type": "object"}}, "required": ["type", "original_width", "original_height", "value"]}
PREDICT_SCHEMA = {"type": "object", "required": ["tasks"], "properties": {
    "tasks": {"type": "array", "items": {"type": "object", "required": ["id", "data"], "properties": {
        "id": {"type": "integer"}, "data": {"type": "object"}, "project": {"type": "integer"}}}},
    "project": {"type": "string", "description": "<project id>.<created timestamp>"},
    "label_config": {"type": "string"},
    "params": {"type": "object", "properties": {"context": {"anyOf": [
        {"type": "null"}, {"type": "object", "required": ["result"], "properties": {"result": {"type": "array", "items": _REGION}}}]}}},
}}


def app_of(backend: Backend) -> FastAPI:
    """The HTTP API Label Studio calls."""
    app = FastAPI(title="flywheel ML backend", description=__doc__.split("\n\n")[0], version="1")

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        # Label Studio 1.23 shows a person only the status line ("422 Client Error: Unprocessable Entity",
        # its ml/api_connector.py raise_for_status), not the body: the message goes to serve's terminal too
        log.warning("ML backend: refused a %s to %s: %s", request.method, request.url.path, e)
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.get("/health")
    @app.get("/")
    def get_health() -> dict[str, Any]:
        """Whether the backend answers, with which model, and what answers a smart box (measured)."""
        m = backend.measured
        return {**health(backend.model_version()),
                "assist": {"boxes_answered_by": "mask head" if m.use_learned else m.fallback_name, "mask_iou_learned": m.learned,
                           "mask_iou_fallback": m.fallback, "fallback": m.fallback_name, "measured_on_masks": m.objects}}

    @app.post("/setup")
    def post_setup(body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Label Studio connects: the version its predictions are filed under."""
        return setup(backend.model_version())

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PREDICT_SCHEMA}}}})
    async def post_predict(request: Request) -> JSONResponse:
        """The champion's predictions for tasks, or a smart tool's mask (`params.context`)."""
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest('The body must be JSON: {"tasks": [{"id": 1, "data": {...}}], "params": {"context": null}}.', status=400) from None
        from starlette.concurrency import run_in_threadpool

        return JSONResponse(await run_in_threadpool(backend.predict, body))

    @app.post("/webhook")
    def post_webhook(body: dict[str, Any] | None = None) -> dict[str, str]:
        """Label Studio's project events and "Start training": acknowledged; the loop learns of labels by its own webhook."""
        return {"status": "ok"}

    @app.get("/versions")
    def get_versions() -> dict[str, list[str]]:
        """The model versions this backend answers with."""
        version = backend.model_version()
        return {"versions": [v for v in (version, FALLBACK_VERSION.format(backend.fallback_name)) if v]}

    return app


def run(settings: Settings, params_path: Path) -> None:
    """Open the workspace, start answering, connect to the project once the server listens."""
    import uvicorn

    from components.core.params import load_params
    from components.loop.workspace import open_workspace

    params = load_params(params_path)
    ws = open_workspace(settings, params, params_path.parent)
    sam = None
    if params.assist.sam_checkpoint:
        log.info("ML backend: loading %s (assist.sam_checkpoint).", params.assist.sam_checkpoint)
        sam = load_sam(params.assist.sam_checkpoint, params.assist.sam_model_type, params_path.parent,
                       str(torch_device(ws.compute)))
    backend = Backend(ws, sam)
    try:
        backend.refresh(measure=False)  # loaded before the first request, not during it (measured in the background)
    except Exception as e:  # noqa: BLE001 - MLflow not answering yet: looked up again in the background
        log.warning("ML backend: could not look the champion up yet (%s); answering without one until it can.", e)
    stopping = threading.Event()
    threading.Thread(target=backend.keep_fresh, args=(stopping,), daemon=True, name="champion").start()
    server = uvicorn.Server(uvicorn.Config(app_of(backend), host=settings.ml_backend_host, port=settings.ml_backend_port,
                                           log_level="warning", access_log=False))

    def connect() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if not server.started:
            return
        try:
            backend_id = ws.label_studio.ensure_ml_backend(ws.project.id, settings.ml_backend_url)
        except LabelStudioError as e:
            log.warning("Label Studio refused flywheel as the project's ML backend at %s (%s). Set FLYWHEEL_ML_BACKEND_URL to an "
                        "address Label Studio can reach (a Label Studio on this machine needs ML_BLOCK_LOCAL_IP=false, as "
                        "`flywheel stack up` starts it).", settings.ml_backend_url, e)
            return
        log.info("ML backend %d of project %d answers at %s.", backend_id, ws.project.id, settings.ml_backend_url)

    threading.Thread(target=connect, daemon=True, name="connect-ml-backend").start()
    parent = os.getppid()

    def orphaned() -> None:  # `flywheel serve` killed outright (SIGKILL): stop with it, freeing the port
        while not server.should_exit:
            if os.getppid() != parent:
                log.warning("ML backend: flywheel serve is gone; stopping.")
                server.should_exit = True
            time.sleep(1.0)

    threading.Thread(target=orphaned, daemon=True, name="parent").start()
    try:
        server.run()
    finally:
        stopping.set()


def main() -> None:
    from components.core.settings import load_settings
    from flows import logs

    logs.setup()
    try:
        run(load_settings(), Path(sys.argv[1]))
    except FlywheelError as e:  # a setting it cannot start with (a SAM checkpoint of another kind): serve does not restart it
        log.error("ML backend: %s", e)
        sys.exit(SETTINGS_EXIT)


if __name__ == "__main__":
    main()
