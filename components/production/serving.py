"""The champion behind an HTTP endpoint, and the images it is unsure of back to labeling.

`flywheel serve-model` runs a LitServe server (FastAPI + uvicorn, an inference worker process,
requests batched). `POST /predict` takes an image's bytes (PNG, JPEG, ... or a `.npy` uint8 array)
and answers with the model version, its answer (a target and the Label Studio result) and its
confidence. `POST /feedback` takes the same bytes when a client found the answer wrong. The
preprocessing is the loop's own (`images.decode_image`); classification runs the ONNX export
logged with the model (ONNX Runtime), the box task types their PyTorch model.

Hard images come back: an answer under `production.route_below`, or a flagged one, is imported into
the project as a new task (data `source: production`) with the answer as its pre-annotation, once
per image content (sha256), at most `production.max_routed_per_hour` an hour, from a background
thread so no answer waits for Label Studio. The Data Manager tab "From production" shows them.

The worker checks the registry's `champion` alias every `production.reload_s` and swaps a newly
promoted model in between two batches: no request is dropped or answered by half a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.core.conversions import Prediction
from components.networks.export import INPUT
from components.data.images import decode_image
from components.adapters.label_studio import LabelStudio, Project
from components.adapters.registry import ModelRegistry, RegisteredModel
from components.tasks import TaskType, task_type_named
from components.core.task_type import Reading
from components.networks.preprocessing import to_tensor

log = logging.getLogger(__name__)

PRODUCTION_VIEW = "From production"
NPY_MAGIC = b"\x93NUMPY"
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


@dataclass(frozen=True)
class Refusal:
    """A request the endpoint answers with a 4xx: the status and what to do."""

    status: int
    detail: str


@dataclass(frozen=True)
class Decoded:
    """A request's image, ready for the model."""

    body: bytes
    pixels: np.ndarray  # (S, S, 3) uint8
    size: tuple[int, int]  # the image's (width, height)
    suffix: str  # the file type to store it as, if it goes to Label Studio


def decode_request(body: bytes, image_size: int, max_pixels: int, max_bytes: int) -> Decoded | Refusal:
    """A request body -> the image as the model takes it, or why it cannot be answered.

    Image files are decoded as the loop decodes its images (`images.decode_image`); a `.npy` array
    must be uint8 (H, W) or (H, W, 3).
    """
    if not body:
        return Refusal(400, "The request body is empty: POST the image file's bytes (PNG, JPEG, ...) or an .npy uint8 array.")
    if len(body) > max_bytes:
        return Refusal(413, f"The request body is {len(body):,} bytes, over production.max_request_bytes = {max_bytes:,}: send a smaller image.")
    try:
        if body.startswith(NPY_MAGIC):
            return _decode_array(body, image_size, max_pixels)
        pixels, size, kind = decode_image(io.BytesIO(body), image_size, max_pixels)
        suffix = SUFFIXES.get(kind, ".png")
    except ValueError as e:
        status = 413 if "max_pixels" in str(e) or "bomb" in str(e) else 415
        return Refusal(status, f"Cannot answer: {e}. POST an image file's bytes (PNG, JPEG, ...) or an .npy uint8 array.")
    except Exception as e:  # noqa: BLE001 - whatever else a decoder raises on crafted bytes is this request's alone
        return Refusal(415, f"Cannot answer: the image cannot be decoded ({type(e).__name__}). POST an image file's bytes "
                            "(PNG, JPEG, ...) or an .npy uint8 array.")
    return Decoded(body, pixels, size, suffix)


def _decode_array(body: bytes, image_size: int, max_pixels: int) -> Decoded | Refusal:
    stream = io.BytesIO(body)
    try:  # the header first: a tiny body must not make numpy allocate the shape it claims
        version = np.lib.format.read_magic(stream)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f".npy format version {version} is not one numpy.save writes for pixels")
        shape, _, dtype = reader(stream)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        return Refusal(400, f"The .npy body cannot be read ({' '.join(str(e).split())[:200]}): send numpy.save's bytes of a uint8 (H, W, 3) array.")
    if dtype != np.uint8:
        return Refusal(422, f"The array is {dtype}: send uint8 RGB pixels (0-255), shape (H, W, 3).")
    if len(shape) >= 2 and shape[0] * shape[1] > max_pixels:
        return Refusal(413, f"The image is {shape[1]}x{shape[0]} px, over images.max_pixels = {max_pixels:,}: downscale it.")
    if int(np.prod(shape)) > len(body) - stream.tell():
        return Refusal(400, f"The .npy body is shorter than its header's shape {shape}: send numpy.save's bytes of the whole array.")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return Refusal(400, f"The .npy body cannot be read ({' '.join(str(e).split())[:200]}): send numpy.save's bytes of a uint8 (H, W, 3) array.")
    if array.dtype != np.uint8:
        return Refusal(422, f"The array is {array.dtype}: send uint8 RGB pixels (0-255), shape (H, W, 3).")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        return Refusal(422, f"The array has shape {array.shape}: the model takes RGB images, shape (H, W, 3) (or (H, W) grey), "
                            "so a wrong channel count cannot be answered.")
    height, width = array.shape[:2]
    if height * width > max_pixels:
        return Refusal(413, f"The image is {width}x{height} px, over images.max_pixels = {max_pixels:,}: downscale it.")
    if height == 0 or width == 0:
        return Refusal(422, f"The array has shape {array.shape}: an image has at least one pixel.")
    image = Image.fromarray(array).convert("RGB")
    png = io.BytesIO()
    image.save(png, format="PNG")
    pixels = np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return Decoded(png.getvalue(), pixels, (width, height), ".png")


class Champion:
    """One registered version, ready to answer: ONNX Runtime runs its ONNX export when it has one
    (classification), else its PyTorch model.

    Args:
        registered: The version.
        task: Its task type (reads the outputs).
        model: Its inference model (labels, input size; the runtime of the box task types).
        onnx_file: Its ONNX export, if logged.
        config: The project's labeling config (Label Studio results).
        device: Where the model answers (LitServe's device for this worker: "cpu", "cuda:0").
    """

    def __init__(self, registered: RegisteredModel, task: TaskType, model: Any, onnx_file: Path | None, config: Any,
                 device: str = "cpu"):
        self.registered = registered
        self.task = task
        self.model = model.to(device)
        self.config = config
        self.image_size = int(model.image_size)
        self.session = None
        if onnx_file is not None and task.name == "classification" and device == "cpu":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # the endpoint's other process (the HTTP server) needs the other core
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    @property
    def model_version(self) -> str:
        return self.registered.model_version

    def answer(self, images: Sequence[Decoded]) -> list[Reading]:
        """One reading per image."""
        if not images:
            return []
        if self.session is not None:
            from components.tasks.classification import readings_of

            probabilities = self.session.run(None, {INPUT: np.stack([d.pixels for d in images])})[0]
            return readings_of(probabilities, self.model.labels, self.config)
        tensor = to_tensor([d.pixels for d in images], self.image_size)
        return self.task.read(self.model, tensor, self.config, [d.size for d in images])[0]


def load_champion(models: ModelRegistry, config: Any, device: str = "cpu") -> Champion | None:
    """The registry's champion, ready to answer on `device` (None while there is none)."""
    registered = models.champion()
    if registered is None:
        return None
    return load_version(models, registered, config, device)


def load_version(models: ModelRegistry, registered: RegisteredModel, config: Any, device: str = "cpu") -> Champion:
    """A registered version, ready to answer on `device` (on a GPU the PyTorch model answers, not its ONNX export)."""
    model, recipe = models.load_with_recipe(registered)
    task = task_type_named(recipe.task) if recipe else _task_of(model)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_file = models.download_export(registered, "onnx", Path(scratch))
        return Champion(registered, task, model, onnx_file, config, device)


def _task_of(model: Any) -> TaskType:
    """The task type of a model logged before recipes existed, from its class."""
    name = type(model).__name__
    return task_type_named("segmentation" if name.startswith("Segmentation") else "detection" if name.startswith("Detection") else "classification")


@dataclass
class RouteLedger:
    """Which images went to Label Studio, and when (for the hourly cap). Thread-safe."""

    max_per_hour: int
    known: set[str] = field(default_factory=set)
    times: deque = field(default_factory=deque)  # (time, digest) of each import, oldest first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, digest: str, now: float) -> str:
        """"new" (and counted), "duplicate" or "capped"."""
        with self.lock:
            if digest in self.known:
                return "duplicate"
            while self.times and self.times[0][0] <= now - 3600:
                self.times.popleft()
            if len(self.times) >= self.max_per_hour:
                return "capped"
            self.known.add(digest)
            self.times.append((now, digest))
            return "new"

    def release(self, digest: str) -> None:
        """An import that failed: the image may be routed again, and it does not count for the hour."""
        with self.lock:
            self.known.discard(digest)
            self.times = deque(entry for entry in self.times if entry[1] != digest)


class Router:
    """Sends hard images to Label Studio from a background thread, once per image content.

    Args:
        label_studio: The Label Studio the routed images go to.
        project: The project they go to, as tasks.
        route_below: An answer less confident than this is routed.
        max_per_hour: The hourly cap on routed images.
    """

    def __init__(self, label_studio: LabelStudio, project: Project, route_below: float, max_per_hour: int):
        self.label_studio = label_studio
        self.project = project
        self.route_below = route_below
        self.ledger = RouteLedger(max_per_hour)
        self.queue: queue.Queue[tuple[Decoded, Reading, str, str, str] | None] = queue.Queue(maxsize=10_000)
        self.routed = 0
        self.thread = threading.Thread(target=self._run, name="route-to-label-studio", daemon=True)
        self.thread.start()

    def consider(self, image: Decoded, reading: Reading, model_version: str, flagged: bool = False) -> str | None:
        """Route `image` if its answer is unsure (or `flagged`). Returns why it was routed ("low
        confidence", "flagged"), or why not ("duplicate", "capped"), or None when it is not hard."""
        reason = "flagged" if flagged else "low confidence" if reading.confidence < self.route_below else None
        if reason is None:
            return None
        digest = hashlib.sha256(image.body).hexdigest()
        claim = self.ledger.claim(digest, time.monotonic())
        if claim != "new":
            return claim
        try:
            self.queue.put_nowait((image, reading, model_version, reason, digest))
        except queue.Full:
            self.ledger.release(digest)
            return "capped"
        return reason

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            image, reading, model_version, reason, digest = item
            try:
                if self.label_studio.task_with_hash(self.project.id, digest) is None:  # also another worker's, or an import
                    self.label_studio.import_with_prediction(
                        self.project, image.body, image.suffix,
                        {"source": "production", "routed_because": reason, "production_confidence": reading.confidence,
                         "filename": f"production-{digest[:12]}{image.suffix}"},
                        Prediction(task_id=0, result=tuple(reading.result), score=reading.confidence),
                        model_version,
                    )
                    self.routed += 1
            except Exception as e:  # noqa: BLE001 - Label Studio down: the image may come again; serving goes on
                self.ledger.release(digest)
                log.warning("Could not send image %s to Label Studio (%s); it is routed again when it comes back.", digest[:12], e)
            finally:
                self.queue.task_done()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the queued imports (up to `timeout_s`) and stop."""
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self.thread.join(timeout_s)


def ensure_production_view(label_studio: LabelStudio, project_id: int) -> int:
    """The Data Manager tab "From production": tasks the endpoint sent back, least confident first."""
    source = {"filter": "filter:tasks:data.source", "operator": "equal", "type": "String", "value": "production"}
    return label_studio.ensure_view(project_id, PRODUCTION_VIEW, [source], ["tasks:data.production_confidence"])


class ServingStats:
    """Counts and confidences of the answers given, written every `every_s` to a JSON file the
    strategy report reads (production confidence against validation confidence: drift)."""

    def __init__(self, path: Path, every_s: float = 10.0, keep: int = 5000):
        self.path = path
        self.every_s = every_s
        self.confidences: deque[float] = deque(maxlen=keep)
        self.requests = 0
        self.routed = 0
        self.model_version = ""
        self._written = time.monotonic()

    def record(self, model_version: str, readings: Sequence[Reading], routed: int) -> None:
        if model_version != self.model_version:  # a new champion: its confidences alone say how it does
            self.confidences.clear()
        self.model_version = model_version
        self.requests += len(readings)
        self.routed += routed
        self.confidences.extend(r.confidence for r in readings)
        if time.monotonic() - self._written >= self.every_s:
            self.write()

    def write(self) -> None:
        """Write the counts (never fails a request: a full disk only costs the drift view)."""
        self._written = time.monotonic()
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({
                "model_version": self.model_version, "requests": self.requests, "routed": self.routed,
                "written": time.time(), "confidences": [round(c, 4) for c in self.confidences],
            }))
            partial.replace(self.path)
        except OSError as e:
            log.warning("Could not write the serving counts to %s (%s)", self.path, e)


def stats_path(workspace: Path, model_name: str) -> Path:
    """Where the endpoint of a registered model writes its counts."""
    return workspace / "serving" / f"{model_name}.json"


def read_stats(workspace: Path, model_name: str) -> dict[str, Any] | None:
    """The endpoint's counts, if it has served."""
    path = stats_path(workspace, model_name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


