"""Task images: from whatever a task's URL points at to a checked, content-addressed local file.

A Label Studio task names its image by URL. flywheel reads:

| URL | how |
|---|---|
| `/data/local-files/?d=...` (what `flywheel import` writes) | the file under the image root; over HTTP from Label Studio when it is not on this machine |
| `/data/upload/...` and other paths on the Label Studio server | over HTTP from Label Studio, with the API token |
| `s3://`, `gs://`, `azure-blob://` (a Label Studio cloud storage) | Label Studio's storage resolver, which proxies or redirects to a presigned URL |
| `http://`, `https://` | fetched with `images.fetch_timeout_s` and `images.max_bytes` |
| `data:image/...;base64,...` | decoded |

Fetched bytes are stored once under their SHA-256 (`<store>/<sha[:2]>/<sha>`), with a small index from
URL to hash, so an image is downloaded once however often it is predicted. A URL is taken to name
fixed content. An image that cannot be read (unknown scheme, unreachable, too big, empty, not an
image, too many pixels) raises `ImageError` naming the task; a failed fetch is retried only after
`images.retry_failed_s`, so one dead URL does not slow every write-back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.core.errors import DataError, FlywheelError

LOCAL_FILES = "/data/local-files/?d="
STORAGE_SCHEMES = ("s3", "gs", "azure-blob")
HASH_BLOCK = 1 << 20


class ImageError(DataError):
    """A task's image cannot be read; the message names the task and says what to do.

    `transient` marks a fetch that may work later (a timeout, a refused connection, a 5xx): the task
    is checked again after `images.retry_failed_s` even if nobody changes it.
    """

    def __init__(self, task_id: int, problem: str, transient: bool = False):
        super().__init__(f"Task {task_id}: {problem}", [task_id])
        self.task_id = task_id
        self.problem = problem
        self.transient = transient


class FetchError(FlywheelError):
    """Bytes could not be fetched from a URL (the caller adds which task); `transient` as in ImageError."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class StoredImage:
    """A task's image on local disk, identified by its content.

    Attributes:
        sha256: Hash of the bytes: the image's identity across tasks, snapshots and imports.
        path: A local file with exactly those bytes.
        suffix: The file type suffix ("" when the URL does not say).
    """

    sha256: str
    path: Path
    suffix: str


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def shown_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as a browser shows it: EXIF orientation applied (read from the header)."""
    with Image.open(path) as image:
        width, height = image.size
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # Orientation: a quarter turn
    return (height, width) if turned else (width, height)


def read_image(path: Path, image_size: int, max_pixels: int) -> np.ndarray:
    """Decode an image file into (S, S, 3) uint8 RGB, resized: the one preprocessing of every model.

    Raises:
        ValueError: The file is empty, is not an image, is truncated, or has more than `max_pixels`
            pixels (checked from the header, before decoding); the message says which.
    """
    if path.stat().st_size == 0:
        raise ValueError("the image file is empty (0 bytes)")
    return decode_image(path, image_size, max_pixels)[0]


def decode_image(
    source: Path | BinaryIO, image_size: int, max_pixels: int, keep_aspect: bool = False
) -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode an image (a file, or bytes in a `BytesIO`) as `read_image` does. Returns the (S, S, 3)
    uint8 pixels, the upright image's (width, height) and its file type as PIL names it ("PNG", "JPEG", "").
    With `keep_aspect`, the pixels keep the image's shape, its longer side at most `image_size` (never enlarged).

    Raises:
        ValueError: As `read_image`.
    """
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"the image is {width}x{height} px, over images.max_pixels = {max_pixels:,}; "
                    "downscale it, or raise images.max_pixels in params.yaml"
                )
            shown = (height, width) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)
            image.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale, much faster
            # upright as a browser (and so Label Studio) shows it: boxes are drawn on that picture
            upright = ImageOps.exif_transpose(image)
            w, h = upright.size
            scale = min(1.0, image_size / max(w, h)) if keep_aspect else None
            size = (max(1, round(w * scale)), max(1, round(h * scale))) if scale is not None else (image_size, image_size)
            rgb = upright.convert("RGB").resize(size, Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8), shown, image.format or ""
    except UnidentifiedImageError as e:
        raise ValueError("the file is not an image PIL can read") from e
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"the image has more than {2 * Image.MAX_IMAGE_PIXELS:,} px (PIL refuses to decode it: a decompression "
            f"bomb guard), over images.max_pixels = {max_pixels:,}; downscale it"
        ) from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"the image cannot be decoded ({' '.join(str(e).split())})") from e


class ImageStore:
    """Resolves task image URLs to local, content-addressed files.

    Args:
        root: Where fetched images are stored.
        image_root: The folder Label Studio serves `/data/local-files/` from, when it runs here.
        label_studio: The Label Studio adapter (for files on its server and its storages).
        fetch_timeout_s: From params.yaml `images:`: how long one image may take to arrive.
        max_bytes: The largest image file accepted.
        max_pixels: The most pixels an image may have.
        retry_failed_s: How long an image that failed is left before it is tried again.
    """

    def __init__(
        self,
        root: Path,
        image_root: Path,
        label_studio: Any,
        *,
        fetch_timeout_s: float,
        max_bytes: int,
        max_pixels: int,
        retry_failed_s: float,
    ):
        self.root = Path(root)
        self.image_root = Path(image_root)
        self.label_studio = label_studio
        self.fetch_timeout_s = fetch_timeout_s
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.retry_failed_s = retry_failed_s

    def resolve(self, task_id: int, data: Mapping[str, Any], data_key: str) -> StoredImage:
        """The local file of a task's image, fetched if need be (not decoded: see `check`).

        Raises:
            ImageError: No URL, a scheme flywheel cannot read, or the fetch failed.
        """
        url = data.get(data_key)
        if not isinstance(url, str) or not url.strip():
            raise ImageError(task_id, f"the task has no image URL under data key {data_key!r}; fix the task's data.")
        url = url.strip()
        local = self._local_file(url)
        if local is not None:
            return StoredImage(file_sha256(local), local, local.suffix.lower())  # hashed: the file may have changed
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as e:
            raise ImageError(task_id, f"image URL {shown(url)!r} is malformed ({e}); fix the task's data.") from e
        if scheme not in ("http", "https", "data", *STORAGE_SCHEMES) and not url.startswith("/"):
            raise ImageError(
                task_id,
                f"image URL {shown(url)!r} uses a scheme flywheel cannot read ({scheme or 'none'}:). Use an "
                "http(s) URL, a Label Studio cloud storage (s3://, gs://, azure-blob://) or `flywheel import`.",
            )
        try:
            return self._cached(task_id, url)
        except FetchError as e:
            raise ImageError(task_id, f"image {shown(url)!r} could not be fetched: {e}", e.transient) from e

    def check(self, task_id: int, image: StoredImage, image_size: int) -> np.ndarray:
        """Decode the image as every model will see it.

        Raises:
            ImageError: Empty, not an image, truncated, or too many pixels.
        """
        try:
            return read_image(image.path, image_size, self.max_pixels)
        except FileNotFoundError as e:
            raise ImageError(task_id, f"the image file {image.path} is missing; restore it or re-import the image.") from e
        except ValueError as e:
            raise ImageError(task_id, f"{e}. Replace the image in the task, or skip the task.") from e

    # --- where bytes come from ----------------------------------------------------------------

    def _local_file(self, url: str) -> Path | None:
        """The file behind a local-files URL when Label Studio serves it from this machine."""
        if not url.startswith(LOCAL_FILES):
            return None
        path = (self.image_root / unquote(url.removeprefix(LOCAL_FILES))).resolve()
        if self.image_root.resolve() not in path.parents:
            return None  # outside the image root: let Label Studio decide what it serves
        return path if path.is_file() else None

    def _fetch(self, task_id: int, url: str) -> bytes:
        if url.startswith("data:"):
            return _decode_data_url(url)
        scheme = urlsplit(url).scheme.lower()
        if url.startswith("/") or scheme in STORAGE_SCHEMES or url.startswith(self.label_studio.url):
            return self.label_studio.download(url, task_id, max_bytes=self.max_bytes, timeout_s=self.fetch_timeout_s)
        return fetch_url(url, max_bytes=self.max_bytes, timeout_s=self.fetch_timeout_s)

    def _index(self, url: str) -> Path:
        return self.root / "index" / hashlib.sha256(url.encode()).hexdigest()

    def _cached(self, task_id: int, url: str) -> StoredImage:
        """Fetch once, store by content, remember URL -> hash (and recent failures)."""
        index = self._index(url)
        if index.is_file():
            entry = json.loads(index.read_text())
            if "sha256" in entry:
                path = self._object(entry["sha256"])
                if path.is_file():
                    return StoredImage(entry["sha256"], path, entry.get("suffix", ""))
            elif time.time() - entry.get("failed_at", 0) < self.retry_failed_s:
                raise FetchError(entry["error"], entry.get("transient", False))  # the same words: reported once
        try:
            content = self._fetch(task_id, url)
        except FetchError as e:
            record = {"error": str(e), "transient": e.transient, "failed_at": time.time()}
            _write_atomic(index, json.dumps(record).encode())
            raise
        sha = hashlib.sha256(content).hexdigest()
        path = self._object(sha)
        if not path.is_file():
            _write_atomic(path, content)
        suffix = Path(urlsplit(url).path).suffix.lower() if not url.startswith("data:") else ""
        _write_atomic(index, json.dumps({"sha256": sha, "suffix": suffix}).encode())
        return StoredImage(sha, path, suffix)

    def _object(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / sha


def fetch_url(url: str, *, max_bytes: int, timeout_s: float, headers: Mapping[str, str] | None = None) -> bytes:
    """GET a URL with a timeout and a size cap, following redirects.

    Raises:
        FetchError: Unreachable, timed out, an HTTP error status, or more than `max_bytes`.
    """
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            with client.stream("GET", url, headers=dict(headers or {})) as response:
                return read_capped(response, max_bytes)
    except httpx.TimeoutException as e:
        raise FetchError(f"no answer within images.fetch_timeout_s = {timeout_s:g} s", transient=True) from e
    except httpx.TransportError as e:
        raise FetchError(f"{e.__class__.__name__}: {' '.join(str(e).split())}", transient=True) from e
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
        raise FetchError(f"{e.__class__.__name__}: {' '.join(str(e).split())}") from e


def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The body of a streamed response, refusing more than `max_bytes` (checked before and while reading).

    Raises:
        FetchError: An HTTP error status, or a body over the cap.
    """
    if response.status_code >= 400:
        raise FetchError(f"the server answered {response.status_code}", transient=response.status_code >= 500)
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"it is {int(declared):,} bytes, over images.max_bytes = {max_bytes:,}")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"it is over images.max_bytes = {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise FetchError("a data: URL must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FetchError("its base64 payload is malformed") from e


def _write_atomic(path: Path, content: bytes) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


def shown(url: str, limit: int = 120) -> str:
    """A URL as it may be printed or committed: no query string or user info (a presigned URL's
    signature, a token), and no longer than `limit`."""
    try:
        parts = urlsplit(url)
        if parts.netloc and (parts.query or "@" in parts.netloc):
            url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="").geturl() + ("?..." if parts.query else "")
    except ValueError:
        pass
    return url if len(url) <= limit else url[: limit - 3] + "..."


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def find_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
