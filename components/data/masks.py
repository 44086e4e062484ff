"""Instance masks: every change of form happens here, and only here.

A mask is a boolean (H, W) array over the original image. It takes four other forms:

- Label Studio's brush RLE (`BrushLabels`, `value.rle`): `brush_of` / `mask_of_brush`, with the Label
  Studio SDK's own encoder and decoder (`label_studio_sdk.converter.brush`), pixel-exact.
- A polygon in pixels (`PolygonLabels`, whose `value.points` are percent of the image):
  `mask_of_polygon` rasterizes it (pycocotools, as COCO does), `polygon_of` traces a mask's outline
  along pixel edges (OpenCV), and
  `polygon_problem` says why a drawn polygon cannot be trained on (shapely: self-intersecting,
  fewer than three corners, no area).
- COCO's compressed RLE (pycocotools), the text a manifest holds: `coco_of` / `mask_of_coco`.
- Percent <-> pixels for polygon points: `points_in_pixels` / `points_in_percent`.

Pixel convention: Label Studio's and COCO's coordinates put 0 at the image's left edge, so pixel
column i covers [i, i + 1). OpenCV traces through pixel centres; `polygon_of` moves its outline back
to pixel edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_POLYGON_CORNERS = 3


# --- Label Studio brush RLE ------------------------------------------------------------------------


def brush_of(mask: np.ndarray) -> list[int]:
    """A boolean (H, W) mask -> Label Studio's brush RLE (RGBA, every channel 255 where painted)."""
    from label_studio_sdk.converter.brush import mask2rle

    return [int(v) for v in mask2rle(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)]


def mask_of_brush(rle: Any, width: int, height: int) -> np.ndarray:
    """Label Studio's brush RLE -> a boolean (height, width) mask (a pixel is in where its alpha >= 128).

    Raises:
        ValueError: The RLE is not a list of integers, does not decode, or decodes to another size
            than the image's; the message says which.
    """
    from label_studio_sdk.converter.brush import decode_rle

    if not isinstance(rle, list | tuple) or not rle or not all(isinstance(v, int) and 0 <= v < 256 for v in rle):
        raise ValueError("its RLE is not a list of bytes")
    try:
        rgba = decode_rle(list(rle))
    except Exception as e:  # the SDK's bit reader fails with IndexError/ValueError on truncated data
        raise ValueError(f"its RLE does not decode ({type(e).__name__})") from None
    if rgba.size != width * height * 4:
        raise ValueError(f"its RLE holds {rgba.size // 4} pixels, but the image has {width}x{height} = {width * height}")
    return rgba.reshape(height, width, 4)[:, :, 3] >= 128


# --- polygons ---------------------------------------------------------------------------------------


def points_in_pixels(points: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """A polygon's points in percent of the image -> (P, 2) pixels (Label Studio's edge convention)."""
    return np.asarray(points, dtype=float).reshape(-1, 2) * np.array([width, height]) / 100.0


def points_in_percent(points: np.ndarray, width: int, height: int) -> list[list[float]]:
    """(P, 2) pixels -> a polygon's points in percent of the image."""
    return [[round(100.0 * x / width, 4), round(100.0 * y / height, 4)] for x, y in np.asarray(points, dtype=float)]


def polygon_problem(points: np.ndarray) -> str | None:
    """Why a polygon (pixels) cannot be a mask, or None: too few corners, no area, or edges that cross."""
    from shapely import Polygon
    from shapely.validation import explain_validity

    if not np.isfinite(points).all():
        return "a corner has no number for a coordinate"
    if len(points) < MIN_POLYGON_CORNERS:
        return f"it has {len(points)} corner(s); a polygon needs at least {MIN_POLYGON_CORNERS}"
    if np.linalg.matrix_rank(points - points[0]) < 2:
        return "it has no area (its corners lie on one line)"
    polygon = Polygon(points)
    if not polygon.is_valid:
        return f"its edges cross ({explain_validity(polygon)})"
    return None


def mask_of_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A polygon in pixels -> a boolean (height, width) mask, rasterized as COCO does (pycocotools):
    a polygon along pixel edges covers exactly the pixels inside it."""
    from pycocotools import mask as coco

    encoded = coco.frPyObjects([[float(v) for v in np.asarray(points, dtype=float).ravel()]], int(height), int(width))
    return coco.decode(coco.merge(encoded)).astype(bool)


TRACE_SCALE = 4  # the outline is traced on the mask enlarged this many times: within 1/8 pixel of the pixel edges
SIMPLIFY_PX = 0.5  # corners closer than this to the line between their neighbours are dropped


def polygon_of(mask: np.ndarray) -> np.ndarray:
    """A mask's outline as one valid polygon in pixels: the outer edge of its largest part, along pixel
    edges to within 1/8 pixel (rasterized again by `mask_of_polygon`, a hole-free mask comes back at
    IoU ~0.99). Holes and smaller parts are not kept (a polygon cannot hold them). Returns (P, 2),
    empty when the mask is."""
    import cv2

    k = TRACE_SCALE
    enlarged = np.kron(np.asarray(mask, dtype=np.uint8), np.ones((k, k), dtype=np.uint8))
    contours, _ = cv2.findContours(enlarged, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2))
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    simple = cv2.approxPolyDP(largest.astype(np.float32), SIMPLIFY_PX * k, True).reshape(-1, 2)
    points = (simple.astype(float) + 0.5) / k  # centres of the enlarged edge pixels, back in image pixels
    if len(points) >= MIN_POLYGON_CORNERS and polygon_problem(points):
        # parts joined only at a corner trace an outline that touches itself: keep its largest valid piece,
        # so a suggestion accepted unchanged is never refused as "edges cross"
        from shapely import Polygon

        repaired = Polygon(points).buffer(0)
        pieces = list(getattr(repaired, "geoms", [repaired]))
        points = np.asarray(max(pieces, key=lambda p: p.area).exterior.coords)[:-1]
    return points


# --- the manifest's text ---------------------------------------------------------------------------


def coco_of(mask: np.ndarray) -> str:
    """A boolean mask -> COCO's compressed RLE counts (the size is kept beside it, in the target)."""
    from pycocotools import mask as coco

    return coco.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))["counts"].decode("ascii")


def mask_of_coco(counts: str, width: int, height: int) -> np.ndarray:
    """COCO's compressed RLE counts of a (height, width) image -> a boolean mask."""
    from pycocotools import mask as coco

    return coco.decode({"size": [int(height), int(width)], "counts": counts.encode("ascii")}).astype(bool)


def mask_of_coco_segmentation(segmentation: Any, width: int, height: int) -> np.ndarray:
    """A COCO annotation's `segmentation` (polygons, or RLE compressed or not) -> a boolean mask."""
    from pycocotools import mask as coco

    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        return mask_of_coco(segmentation["counts"], width, height)
    if not segmentation:
        raise ValueError("empty segmentation")
    encoded = coco.frPyObjects(segmentation, height, width)
    merged = coco.merge(encoded) if isinstance(encoded, list) else encoded
    return coco.decode(merged).astype(bool)


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, w, h) in pixels of the smallest box holding every pixel of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    return float(cols.min()), float(rows.min()), float(cols.max() + 1 - cols.min()), float(rows.max() + 1 - rows.min())


def pair_iou(a: np.ndarray, b: np.ndarray) -> float:
    """The IoU of two boolean masks of one size (0 when both are empty)."""
    return float(mask_iou(a[None], b[None])[0, 0])


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boolean masks (N, H, W) and (M, H, W) -> (N, M)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    fa = np.asarray(a, dtype=np.float32).reshape(len(a), -1)
    fb = np.asarray(b, dtype=np.float32).reshape(len(b), -1)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1e-12)
