"""A photo-scale detection and segmentation set with exact ground truth, from two Debian packages.

Objects are colour clip art from OpenClipArt (`openclipart-png`, public domain): its alpha channel
gives each object's exact instance mask. Backgrounds are crops of real photographs (`mate-backgrounds`,
its `nature` folder: leaves, flowers, grass, water, sky). Each 384x288 image holds 1 to 6 objects of
six classes at scales from 28 to 150 px on their longer side, flipped and lit differently, partly
hiding each other (at most `MAX_HIDDEN` of an object), over 0 to 2 unlabeled clip-art distractors
of other kinds (houses, instruments) a detector must learn to leave out.

A class is a few dozen distinct drawings (e.g. 31 bugs, 70 fruits), shared by the pool and the
held-out images: like a team's own objects, seen again in new scenes, not new kinds of object. The set
is written in the COCO layout a user's own export takes (`composites.read_coco` reads it), with each
object's mask as COCO `segmentation`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.core.errors import SettingsError
from components.data.masks import coco_of, tight_box

CLIPART = Path("/usr/share/openclipart/png")
PHOTOS = Path("/usr/share/backgrounds/mate/nature")
CLASSES: dict[str, tuple[str, ...]] = {  # class -> OpenClipArt folders it is drawn from
    "bug": ("animals/bugs",),
    "fish": ("animals/fish",),
    "mammal": ("animals/mammals",),
    "fruit": ("food/fruit",),
    "vehicle": ("transportation/vehicles",),
    "flower": ("plants/flowers",),
}
DISTRACTORS = ("buildings/homes", "recreation/music")  # unlabeled objects of other kinds
# drawings filed in a class's folder that are not of the class (road signs among vehicles, juice and pies
# among fruit): left out by a part of their file name
NOT_OF_CLASS = ("crossroads", "curve_ahead", "cycle_", "parking", "quay_sign", "juice", "pie_", "turkey", "champignon", "tree_whit")
WIDTH, HEIGHT = 384, 288
MIN_SIDE, MAX_SIDE = 28, 150  # an object's longer side, px (log-uniform between)
MAX_HIDDEN = 0.35  # an object may lose at most this share of its pixels to objects pasted over it
MIN_VISIBLE = 120  # pixels an object keeps at least
BANK_SIDE = 256  # clip art is kept at most this size on its longer side
GENERATOR = "components.data.photo_composites"  # a stored identifier of generated sets: changing it regenerates them
FORMAT = 1
INSTALL = "apt-get install openclipart-png mate-backgrounds"


@dataclass(frozen=True)
class Cutout:
    """One clip-art object: RGB float in [0, 1] and its alpha, cropped to the object."""

    rgb: np.ndarray
    alpha: np.ndarray


def _usable(path: Path) -> Cutout | None:
    """A clip art as a cutout, or None when it is not one colour object on a transparent background:
    huge files, no transparency, several separate parts, thin line art, or greyscale drawings."""
    import cv2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the huge files are skipped unread
        try:
            image = Image.open(path)
        except (OSError, Image.DecompressionBombError):
            return None
    with image:
        if image.width * image.height > 4096 * 4096:
            return None
        rgba = image.convert("RGBA")
    rgba.thumbnail((BANK_SIDE, BANK_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(rgba)
    solid = pixels[..., 3] > 127
    if solid.sum() < 200 or solid.all():
        return None
    _, _, stats, _ = cv2.connectedComponentsWithStats(solid.astype(np.uint8), connectivity=8)
    if stats[1:, cv2.CC_STAT_AREA].max() < 0.85 * solid.sum():
        return None
    x, y, w, h = tight_box(solid)
    if solid.sum() < 0.2 * w * h:
        return None
    saturation = cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2HSV)[..., 1][solid].mean() / 255
    if saturation < 0.2:
        return None
    crop = pixels[int(y) : int(y + h), int(x) : int(x + w)].astype(np.float32) / 255.0
    return Cutout(rgb=crop[..., :3], alpha=crop[..., 3])


@functools.cache
def _bank(folders: tuple[str, ...]) -> list[Cutout]:
    """The usable cutouts of some OpenClipArt folders, each drawing once (de-duplicated by content)."""
    seen: set[str] = set()
    out = []
    for folder in folders:
        for path in sorted((CLIPART / folder).rglob("*.png")):
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest in seen or any(part in path.name for part in NOT_OF_CLASS):
                continue
            seen.add(digest)
            cutout = _usable(path)
            if cutout is not None:
                out.append(cutout)
    return out


def _check_installed() -> list[Path]:
    photos = sorted(PHOTOS.glob("*.jpg"))
    missing = [str(p) for p, ok in ((CLIPART, CLIPART.is_dir()), (PHOTOS, bool(photos))) if not ok]
    if missing:
        raise SettingsError(f"The photo-scale set needs Debian's clip art and photographs ({', '.join(missing)} missing): "
                            f"`{INSTALL}` (public domain and GPL-2+ images, about 250 MB), then run again.")
    return photos


def _background(rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    """A random crop of a random photograph (a quarter of its width or more), resized to the set's size."""
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    w = int(rng.uniform(0.25, 1.0) * min(pw, ph * WIDTH / HEIGHT))
    h = int(w * HEIGHT / WIDTH)
    x, y = int(rng.integers(0, pw - w + 1)), int(rng.integers(0, ph - h + 1))
    crop = Image.fromarray(photo[y : y + h, x : x + w]).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    image = np.asarray(crop, dtype=np.float32) / 255.0
    return image[:, ::-1] if rng.random() < 0.5 else image


def _placed(rng: np.random.Generator, cutout: Cutout) -> tuple[np.ndarray, np.ndarray]:
    """A cutout at a random scale (log-uniform longer side), maybe mirrored, lit a little differently."""
    side = float(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE))))
    h, w = cutout.alpha.shape
    scale = side / max(h, w)
    size = (max(4, round(w * scale)), max(4, round(h * scale)))
    rgb = np.asarray(Image.fromarray((cutout.rgb * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR), np.float32) / 255
    alpha = np.asarray(Image.fromarray((cutout.alpha * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR), np.float32) / 255
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    rgb = np.clip(rgb * rng.uniform(0.75, 1.2) + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    return rgb, alpha


def _paste(image: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> np.ndarray:
    """Alpha-blend a cutout at (x, y); returns its full-image mask (alpha > 0.5)."""
    h, w = alpha.shape
    region = image[y : y + h, x : x + w]
    region[:] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + h, x : x + w] = alpha > 0.5
    return mask


def _render(
    rng: np.random.Generator, photos: list[np.ndarray], banks: list[list[Cutout]], distractors: list[Cutout]
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple[float, float, float, float], int]]]:
    """One image: (rgb uint8, instance mask uint8, [(class index, xywh box, area)])."""
    image = _background(rng, photos).copy()
    for _ in range(int(rng.choice(3, p=[0.5, 0.3, 0.2]))):
        rgb, alpha = _placed(rng, distractors[int(rng.integers(len(distractors)))])
        h, w = alpha.shape
        _paste(image, rgb, alpha, int(rng.integers(0, WIDTH - w + 1)), int(rng.integers(0, HEIGHT - h + 1)))
    instances = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    classes: list[int] = []
    wanted = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.15, 0.25, 0.25, 0.15, 0.12, 0.08]))
    while len(classes) < wanted:  # tries again until the image holds its objects (at least one)
        label = int(rng.integers(len(banks)))
        rgb, alpha = _placed(rng, banks[label][int(rng.integers(len(banks[label])))])
        h, w = alpha.shape
        for _attempt in range(20):
            x, y = int(rng.integers(0, WIDTH - w + 1)), int(rng.integers(0, HEIGHT - h + 1))
            mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
            mask[y : y + h, x : x + w] = alpha > 0.5
            if mask.sum() < MIN_VISIBLE:
                break
            hides_too_much = any(
                (mask & (instances == k + 1)).sum() > MAX_HIDDEN * (instances == k + 1).sum()
                or (instances == k + 1).sum() - (mask & (instances == k + 1)).sum() < MIN_VISIBLE
                for k in range(len(classes))
            )
            if hides_too_much:
                continue
            _paste(image, rgb, alpha, x, y)
            instances[mask] = len(classes) + 1
            classes.append(label)
            break
        else:
            wanted -= 1 if len(classes) else 0  # no room left for another: keep those placed
    objects = []
    for k, label in enumerate(classes):
        visible = instances == k + 1
        objects.append((label, tight_box(visible), int(visible.sum())))
    return (image * 255).round().astype(np.uint8), instances, objects


def make_photo_set(dest: Path, count: int, seed: int = 0) -> Path:
    """Write the photo-scale set in COCO layout (once; a later identical call reuses it).

    Writes `dest/images/00000.jpg, ...` (JPEG, quality 92, as photos come), `dest/masks/00000.png, ...`
    (uint8; 0 is background and i the i-th annotation of that image) and `dest/annotations.json` (COCO,
    boxes the tight boxes of the visible masks, each mask as compressed RLE `segmentation`).

    Args:
        dest: The set's folder.
        count: Number of images.
        seed: Seed of the draw.

    Returns:
        The path of annotations.json.

    Raises:
        SettingsError: The Debian packages it is built from are not installed (the message says how).
    """
    dest = Path(dest)
    annotations_path = dest / "annotations.json"
    info = {"generator": GENERATOR, "format": FORMAT, "count": count, "seed": seed, "width": WIDTH, "height": HEIGHT}
    if annotations_path.exists():
        try:
            if json.loads(annotations_path.read_text()).get("info") == info:
                return annotations_path
        except json.JSONDecodeError:
            pass
    photo_paths = _check_installed()
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in photo_paths]
    banks = [_bank(folders) for folders in CLASSES.values()]
    distractors = _bank(DISTRACTORS)
    rng = np.random.default_rng(seed)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {
        "info": info, "images": [], "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    for image_id in range(count):
        rgb, instances, objects = _render(rng, photos, banks, distractors)
        name = f"{image_id:05d}"
        Image.fromarray(rgb).save(dest / "images" / f"{name}.jpg", quality=92)
        Image.fromarray(instances).save(dest / "masks" / f"{name}.png")
        coco["images"].append({"id": image_id, "file_name": f"images/{name}.jpg", "width": WIDTH, "height": HEIGHT})
        for k, (label, box, area) in enumerate(objects):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": label + 1, "bbox": list(box),
                "area": area, "segmentation": {"size": [HEIGHT, WIDTH], "counts": coco_of(instances == k + 1)}, "iscrowd": 0,
            })
    partial = annotations_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(coco))
    partial.replace(annotations_path)
    return annotations_path
