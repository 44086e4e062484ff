"""Draw a box (or click), get the mask: the answer to a smart tool.

Two answers, and the one that measures better on the project's own masks is used (`better_of`):

- **learned**: the project's segmenter (the loop's champion, trained on the masks people drew) runs its
  class-agnostic mask head on the box the person drew (`SegmentationModel.masks_of_boxes`);
- **classical**, before the project has a segmenter or while GrabCut measures better: OpenCV's GrabCut
  seeded by the box (everything outside it background), with the person's clicks as certain foreground
  (positive) or background (negative). Clicks alone always get GrabCut (the mask head reads boxes);
- **SAM**, when a team has a SAM checkpoint (params.yaml `assist.sam_checkpoint`, the `segment-anything`
  package's model): it takes GrabCut's place, boxes and clicks alike (`Sam`), and the mask head is measured
  against it.

Their mask IoU from the true box on held-out objects is `assist_mask_iou_0` / `assist_mask_iou_50` (bench).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from components.core.effort import MaskCosts
from components.core.errors import SettingsError
from components.data.images import decode_image
from components.data.masks import mask_of_coco, pair_iou
from components.production.ml_backend import Prompt

ASSIST_SIDE = 512  # GrabCut works on the image scaled to this longer side (a 12 MP photo answers in ~0.2 s)
MEASURE_OBJECTS = 40  # the learned answer is measured against GrabCut on this many of the snapshot's validation masks
CLICK_RADIUS = 0.02  # a click marks a disc of this share of the image's shorter side,
CLICK_BOX_SHARE = 0.1  # at most this share of the box's shorter side: a wider disc marks the background beside a thin part
# (a stem, a leg) as certain object too; photo set, 3 seeds x 100 objects: 21.3 s per mask vs 25.3 with the image's share alone
MARGIN = 0.1  # clicks without a box: the box around them, grown by this share of its size
SAM_SIDE = 1024  # SAM reads an image at this longer side
EMBEDDINGS = 8  # images whose SAM embedding is kept
GRABCUT_SEED = 0  # OpenCV's random generator (one per thread) is seeded with this before each GrabCut
SAM_DOWNLOAD = "https://github.com/facebookresearch/segment-anything#model-checkpoints"


def box_of(prompt: Prompt) -> tuple[int, int, int, int]:
    """The prompt's box in whole pixels inside the image: the one drawn, else around the positive clicks."""
    if prompt.box is not None:
        x1, y1, x2, y2 = prompt.box
    else:
        xs = [x for x, _ in prompt.positive] or [prompt.width / 2]
        ys = [y for _, y in prompt.positive] or [prompt.height / 2]
        pad = max(MARGIN * max(max(xs) - min(xs), max(ys) - min(ys)), 0.1 * min(prompt.width, prompt.height))
        x1, y1, x2, y2 = min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad
    x1, y1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    x2, y2 = min(prompt.width, int(np.ceil(x2))), min(prompt.height, int(np.ceil(y2)))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def grabcut(image: np.ndarray, prompt: Prompt, iterations: int = 4, start: np.ndarray | None = None) -> np.ndarray:
    """The object's mask (height, width) from GrabCut seeded by the prompt.

    Args:
        image: (height, width, 3) uint8 RGB, the size the prompt is in.
        prompt: The box and clicks.
        iterations: GrabCut's rounds.
        start: A mask to refine (the answer the person is correcting with clicks): its pixels start as
            probable object and the rest of the box (grown to hold the mask, which may reach past it) as
            probable background; None: the whole box starts as probable object.
    """
    import cv2

    height, width = image.shape[:2]
    x1, y1, x2, y2 = box_of(prompt)
    if start is not None and start.any():
        ys, xs = np.nonzero(start)
        x1, y1, x2, y2 = min(x1, int(xs.min())), min(y1, int(ys.min())), max(x2, int(xs.max()) + 1), max(y2, int(ys.max()) + 1)
    mask = np.full((height, width), cv2.GC_BGD, np.uint8)
    mask[y1:y2, x1:x2] = cv2.GC_PR_FGD
    if start is not None and start.any():
        mask[y1:y2, x1:x2] = np.where(start[y1:y2, x1:x2], cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    radius = max(1, int(min(CLICK_RADIUS * min(width, height), CLICK_BOX_SHARE * min(x2 - x1, y2 - y1))))
    for points, value in ((prompt.positive, cv2.GC_FGD), (prompt.negative, cv2.GC_BGD)):
        for x, y in points:
            cv2.circle(mask, (int(x), int(y)), radius, int(value), thickness=-1)
    if (x2 - x1) < 3 or (y2 - y1) < 3:
        return (mask == cv2.GC_PR_FGD) | (mask == cv2.GC_FGD)  # too small to model: the box itself
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[..., ::-1])
    cv2.setRNGSeed(GRABCUT_SEED)  # its colour models start from k-means: the same prompt always gets the same mask
    try:
        cv2.grabCut(bgr, mask, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a box of one colour: nothing to model, the box is the answer
        return (mask == cv2.GC_PR_FGD) | (mask == cv2.GC_FGD)
    found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return found if found.any() else np.zeros_like(found)


def learned(model: Any, pixels: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, float]:
    """The segmenter's mask for the prompt's box, on the image's own size, and its mean confidence.

    Args:
        model: A `SegmentationModel` (the champion).
        pixels: The image as the model takes it, (S, S, 3) uint8.
        prompt: The box, in the image's pixels (`prompt.width` x `prompt.height`).
    """
    from components.networks.compute import infer
    from components.networks.preprocessing import to_tensor
    from components.tasks.segmentation import paste

    size = int(model.image_size)
    sx, sy = size / prompt.width, size / prompt.height
    x1, y1, x2, y2 = prompt.box  # type: ignore[misc]
    boxes = torch.tensor([[x1 * sx, y1 * sy, x2 * sx, y2 * sy]], dtype=torch.float32)
    model.eval()
    probabilities = infer(model, lambda image: model.masks_of_boxes(image, boxes.to(image.device)), to_tensor([pixels], size))
    mask = paste(probabilities, boxes, size, prompt.width, prompt.height)[0]
    inside = probabilities[probabilities >= 0.5]
    return mask, float(inside.mean()) if len(inside) else 0.0


def scaled(prompt: Prompt, sx: float, sy: float) -> Prompt:
    """The prompt on the image scaled by (sx, sy)."""
    box = None if prompt.box is None else (prompt.box[0] * sx, prompt.box[1] * sy, prompt.box[2] * sx, prompt.box[3] * sy)
    return Prompt(prompt.label, box, tuple((x * sx, y * sy) for x, y in prompt.positive),
                  tuple((x * sx, y * sy) for x, y in prompt.negative), round(prompt.width * sx), round(prompt.height * sy))


def resized(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask at (width, height): one found on a scaled image back at the image's own size (the size Label
    Studio's regions are in), or one at that size onto the scaled image."""
    if mask.shape == (height, width):
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def assist_pixels(image: Path, max_pixels: int) -> np.ndarray:
    """An image file as GrabCut reads it: RGB, its longer side at most ASSIST_SIDE, aspect kept."""
    return decode_image(image, ASSIST_SIDE, max_pixels, keep_aspect=True)[0]


def grabcut_on(pixels: np.ndarray, prompt: Prompt, start: np.ndarray | None = None) -> np.ndarray:
    """GrabCut's mask for the prompt on an image as `assist_pixels` decoded it, at the prompt's image size
    (refining `start`, a mask at that size, when given)."""
    sx, sy = pixels.shape[1] / prompt.width, pixels.shape[0] / prompt.height
    small_start = None if start is None else resized(start, pixels.shape[1], pixels.shape[0])
    return resized(grabcut(pixels, scaled(prompt, sx, sy), start=small_start), prompt.width, prompt.height)


def grabcut_answer(image: Path, prompt: Prompt, max_pixels: int) -> np.ndarray:
    """GrabCut's mask for the prompt on an image file, at the prompt's image size."""
    return grabcut_on(assist_pixels(image, max_pixels), prompt)


def learned_answer(model: Any, image: Path, prompt: Prompt, max_pixels: int) -> tuple[np.ndarray, float]:
    """The segmenter's mask for the prompt's box on an image file, and its confidence."""
    pixels, _, _ = decode_image(image, int(model.image_size), max_pixels)
    return learned(model, pixels, prompt)


class Sam:
    """A team's SAM-family model (the `segment-anything` package's `SamPredictor`) answering prompts, loaded once.

    SAM embeds an image once (the slow part: ~23 s for vit_b on two CPU cores) and answers each box and
    click from that embedding (~0.08 s). A person's images' embeddings are kept (the last EMBEDDINGS, 4 MB
    each), so their clicks on an object reuse its image's; two asks about an image not yet embedded wait
    for one embedding. Measuring the mask head against SAM (`masks`, in the background) keeps none of its
    embeddings and waits while a person is being answered, so it neither evicts theirs nor slows them.
    """

    def __init__(self, predictor: Any, model_type: str):
        self.predictor = predictor
        self.name = f"SAM {model_type}"
        self._lock = threading.Lock()
        self._embeddings: OrderedDict[tuple[str, int], Embedding] = OrderedDict()
        self._embedding_now: dict[tuple[str, int], threading.Event] = {}  # images a person's ask is embedding
        self._asking = 0  # a person's asks being answered

    def _embed(self, image: Path, max_pixels: int) -> Embedding:
        from segment_anything import SamPredictor

        pixels = decode_image(image, SAM_SIDE, max_pixels, keep_aspect=True)[0]
        embedder = SamPredictor(self.predictor.model)  # its own state: embeddings are made side by side
        embedder.set_image(pixels)  # RGB, SamPredictor's default
        return Embedding(embedder.features, embedder.original_size, embedder.input_size)

    def _kept_embedding(self, image: Path, max_pixels: int) -> Embedding:
        """A person's image's embedding: kept, made once however many ask for it at once."""
        key = (str(image), image.stat().st_mtime_ns)
        while True:
            with self._lock:
                if key in self._embeddings:
                    self._embeddings.move_to_end(key)
                    return self._embeddings[key]
                underway = self._embedding_now.get(key)
                if underway is None:
                    self._embedding_now[key] = threading.Event()
                    break
            underway.wait()  # another ask is embedding it: take theirs (or embed it, if theirs failed)
        try:
            embedding = self._embed(image, max_pixels)
            with self._lock:
                self._embeddings[key] = embedding
                while len(self._embeddings) > EMBEDDINGS:
                    self._embeddings.popitem(last=False)
            return embedding
        finally:
            with self._lock:
                self._embedding_now.pop(key).set()

    def _answer(self, embedding: Embedding, prompt: Prompt) -> tuple[np.ndarray, float]:
        (height, width) = embedding.original_size
        small = scaled(prompt, width / prompt.width, height / prompt.height)
        points = [*small.positive, *small.negative]
        one_click = small.box is None and len(points) == 1  # ambiguous (a part or the whole?): SAM's three guesses, its best
        with self._lock:
            predictor = self.predictor
            predictor.features, predictor.original_size, predictor.input_size = embedding
            predictor.is_image_set = True
            masks, scores, _ = predictor.predict(
                point_coords=np.array(points, np.float32) if points else None,
                point_labels=np.array([1] * len(small.positive) + [0] * len(small.negative)) if points else None,
                box=None if small.box is None else np.array(small.box, np.float32), multimask_output=one_click)
        best = int(np.argmax(scores))
        return resized(np.asarray(masks[best], bool), prompt.width, prompt.height), float(scores[best])

    def mask(self, image: Path, prompt: Prompt, max_pixels: int) -> tuple[np.ndarray, float]:
        """A person's ask: the object's mask (at the prompt's image size) and SAM's own estimate of its IoU."""
        with self._lock:
            self._asking += 1
        try:
            return self._answer(self._kept_embedding(image, max_pixels), prompt)
        finally:
            with self._lock:
                self._asking -= 1

    def masks(self, image: Path, prompts: Sequence[Prompt], max_pixels: int) -> list[np.ndarray]:
        """Masks for several prompts on one image, in the background: after any person's ask being answered,
        the image embedded once and not kept."""
        while self._asking:
            time.sleep(0.2)
        embedding = self._embed(image, max_pixels)
        return [self._answer(embedding, prompt)[0] for prompt in prompts]


class Embedding(NamedTuple):
    """SAM's embedding of an image, as `SamPredictor.set_image` leaves it."""

    features: torch.Tensor
    original_size: tuple[int, int]  # the image SAM was given, (height, width)
    input_size: tuple[int, int]  # after its resize to SAM_SIDE


def sam_path(checkpoint: str, base: Path) -> Path:
    """The SAM checkpoint params.yaml `assist.sam_checkpoint` names (relative to the params file's folder `base`).

    Raises:
        SettingsError: It is not a file; the message says where to get one.
    """
    path = (base / Path(checkpoint).expanduser()).resolve()
    if not path.is_file():
        raise SettingsError(
            f"params.yaml assist.sam_checkpoint is {checkpoint!r}, but {path} is not a file. Download a SAM checkpoint there "
            f"(sam_vit_b_01ec64.pth, with assist.sam_model_type: vit_b; {SAM_DOWNLOAD}), or set assist.sam_checkpoint: null "
            "to answer smart tools with GrabCut and the project's own mask head.")
    return path


def load_sam(checkpoint: str, model_type: str, base: Path, device: str = "cpu") -> Sam:
    """The SAM model params.yaml `assist` points at, ready to answer.

    Args:
        checkpoint: `assist.sam_checkpoint`: a `.pth` state dict, as segment-anything's releases are.
        model_type: `assist.sam_model_type`: vit_b, vit_l or vit_h.
        base: The params file's folder (a relative checkpoint is relative to it).
        device: "cpu" or "cuda".

    Raises:
        SettingsError: The file is missing, or holds no checkpoint of that kind of SAM.
    """
    from segment_anything import SamPredictor, sam_model_registry

    path = sam_path(checkpoint, base)
    model = sam_model_registry[model_type]()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - not a pickle, not a state dict, or another model's weights: one message
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise SettingsError(
            f"{path} is not a SAM {model_type} checkpoint ({type(e).__name__}: {reason}). Set params.yaml assist.sam_model_type to "
            f"the kind it holds (vit_b, vit_l or vit_h), or point assist.sam_checkpoint at a SAM checkpoint ({SAM_DOWNLOAD}).") from e
    return Sam(SamPredictor(model.eval().to(device)), model_type)


class Answer(NamedTuple):
    """The assistant's mask, its confidence, and what made it ("mask head", "mask head + GrabCut", "GrabCut")."""

    mask: np.ndarray
    score: float
    made_by: str


def asker(image: Path, model: Any | None, max_pixels: int, sam: Sam | None = None) -> Callable[[Prompt], Answer]:
    """The assistant on one image file, asked again and again (a person adding clicks): the image decoded
    once, the mask head run once per box.

    With `model` (the champion, once its mask head measured better) and a box: the mask head's mask, refined
    by GrabCut from it with the person's clicks when there are any (confidence 1, as GrabCut's own): they
    correct the answer they see. Else `sam` from the box and clicks when a team has one, else GrabCut.
    """
    pixels: list[np.ndarray] = []
    heads: dict[tuple[float, float, float, float], tuple[np.ndarray, float]] = {}

    def grabcut_pixels() -> np.ndarray:
        if not pixels:
            pixels.append(assist_pixels(image, max_pixels))
        return pixels[0]

    def ask(prompt: Prompt) -> Answer:
        clicked = bool(prompt.positive or prompt.negative)
        if sam is not None and (model is None or prompt.box is None):
            return Answer(*sam.mask(image, prompt, max_pixels), sam.name)
        if model is not None and prompt.box is not None:
            if prompt.box not in heads:
                heads[prompt.box] = learned_answer(model, image, prompt, max_pixels)
            mask, score = heads[prompt.box]
            if not clicked:
                return Answer(mask, score, "mask head")
            return Answer(grabcut_on(grabcut_pixels(), prompt, start=mask), 1.0, "mask head + GrabCut")
        return Answer(grabcut_on(grabcut_pixels(), prompt), 1.0, "GrabCut")

    return ask


def answer(image: Path, prompt: Prompt, model: Any | None, max_pixels: int, sam: Sam | None = None) -> Answer:
    """The assistant's answer to one prompt on an image file (`asker`)."""
    return asker(image, model, max_pixels, sam)(prompt)


# --- what a mask costs a person with the assistant ----------------------------------------------------


@dataclass(frozen=True)
class Corrected:
    """One mask made with the assistant by a simulated person.

    Attributes:
        seconds: What it cost them.
        clicks: Correction clicks they gave.
        iou: The assistant's last mask's IoU with theirs.
        drawn: True when the clicks did not reach MASK_MATCH_IOU and they drew it by hand.
    """

    seconds: float
    clicks: int
    iou: float
    drawn: bool


def next_click(mask: np.ndarray, truth: np.ndarray) -> tuple[tuple[float, float], bool] | None:
    """A simulated person's next correction click (the protocol of Xu et al., CVPR 2016): the pixel deepest
    inside the larger error, positive when it is part of the object the mask missed, negative when it is
    background the mask took; None when the masks agree."""
    import cv2

    best: tuple[float, tuple[float, float], bool] | None = None
    for error, positive in ((truth & ~mask, True), (mask & ~truth, False)):
        if error.any():
            depth = cv2.distanceTransform(np.pad(error, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            if best is None or depth[y, x] > best[0]:
                best = (float(depth[y, x]), (x + 0.5, y + 0.5), positive)
    return None if best is None else (best[1], best[2])


def corrected(prompt: Prompt, truth: np.ndarray, ask: Callable[[Prompt], np.ndarray], costs: MaskCosts) -> Corrected:
    """A simulated person makes the mask `truth` with the assistant: draws the box (`prompt`), looks at the
    mask `ask` returns, clicks where it is most wrong (`next_click`) and asks again until its mask IoU with
    theirs reaches MASK_MATCH_IOU, or draws the mask by hand after `costs.max_clicks` clicks.

    Args:
        prompt: The object's box, in the image's pixels.
        truth: Their mask (height, width), the prompt's image size.
        ask: The assistant: a prompt (the box and every click so far) -> its mask.
        costs: Seconds per action.
    """
    from components.tasks.segmentation import MASK_MATCH_IOU

    mask = ask(prompt)
    seconds, clicks = costs.box + costs.verify, 0
    if not truth.any():  # an object too small to fill a pixel: nothing to correct
        return Corrected(seconds, 0, 0.0 if mask.any() else 1.0, False)
    score = pair_iou(mask, truth)
    while score < MASK_MATCH_IOU and clicks < costs.max_clicks and (click := next_click(mask, truth)) is not None:
        point, positive = click
        prompt = replace(prompt, positive=(*prompt.positive, point)) if positive else replace(prompt, negative=(*prompt.negative, point))
        mask = ask(prompt)
        clicks += 1
        seconds += costs.click
        score = pair_iou(mask, truth)
    drawn = score < MASK_MATCH_IOU
    return Corrected(seconds + (costs.draw if drawn else 0.0), clicks, score, drawn)


@dataclass(frozen=True)
class Measured:
    """Both answers' mean mask IoU from the true box, on the project's own validation masks.

    Attributes:
        learned: The segmenter's.
        fallback: The fallback's (GrabCut, or SAM when a team has one).
        objects: How many masks were measured (0: none yet, the fallback answers).
        fallback_name: "GrabCut", or the SAM model's name.
    """

    learned: float
    fallback: float
    objects: int
    fallback_name: str = "GrabCut"

    @property
    def use_learned(self) -> bool:
        """The switch-over: the learned answer once it measures at least as well as the fallback."""
        return self.objects > 0 and self.learned >= self.fallback


def measure(model: Any, samples: Sequence[tuple[Path, dict[str, Any]]], max_pixels: int, sam: Sam | None = None,
            known: dict[tuple[str, Any, str], float] | None = None, stop: Callable[[], bool] | None = None) -> Measured | None:
    """Ask both answers for each true object's mask from its own box (the first MEASURE_OBJECTS objects).

    Args:
        model: The project's segmenter (`SegmentationModel`).
        samples: (image file, target) of validation images; a target as the manifest holds it
            (`{"width", "height", "boxes": [{"label", "x", "y", "w", "h", "mask"}]}`).
        max_pixels: params.yaml `images.max_pixels`.
        sam: The team's SAM model: the fallback measured instead of GrabCut.
        known: The fallback's mask IoU per object measured before, filled in as it is measured: the fallback
            does not change between champions (a SAM on a CPU embeds each image in ~23 s). An object is its
            image file's name (a snapshot's are their content's hash), its box and its true mask.
        stop: Asked before each image: True stops measuring (a newer champion arrived) and returns None.
    """
    name = "GrabCut" if sam is None else sam.name
    known = {} if known is None else known
    ious: list[tuple[float, float]] = []
    for image, target in samples:
        if len(ious) >= MEASURE_OBJECTS:
            break
        if stop is not None and stop():
            return None
        objects = object_prompts(target)[: MEASURE_OBJECTS - len(ious)]
        keys = [(image.name, prompt.box, hashlib.sha1(np.packbits(truth)).hexdigest()) for prompt, truth in objects]
        unknown = [(key, prompt, truth) for key, (prompt, truth) in zip(keys, objects, strict=True) if key not in known]
        if unknown:
            prompts = [prompt for _, prompt, _ in unknown]
            theirs = (sam.masks(image, prompts, max_pixels) if sam is not None
                      else [grabcut_answer(image, prompt, max_pixels) for prompt in prompts])
            known.update({key: pair_iou(mask, truth) for (key, _, truth), mask in zip(unknown, theirs, strict=True)})
        ious += [(pair_iou(learned_answer(model, image, prompt, max_pixels)[0], truth), known[key])
                 for key, (prompt, truth) in zip(keys, objects, strict=True)]
    if not ious:
        return Measured(0.0, 0.0, 0, name)
    learned_mean, fallback_mean = np.mean(ious, axis=0)
    return Measured(round(float(learned_mean), 4), round(float(fallback_mean), 4), len(ious), name)


def seconds_with_assistant(image: Path, target: Mapping[str, Any], costs: MaskCosts, max_pixels: int, model: Any | None = None) -> float:
    """What making an image's masks with the assistant costs a simulated person (`corrected`, object by
    object, each from its own box), the answer GrabCut's unless `model` (a segmenter whose mask head answers).

    Args:
        image: The image file.
        target: Its masks as the manifest holds them (`{"width", "height", "boxes": [{..., "mask"}]}`).
        costs: Seconds per action (params.yaml `strategy.mask_costs()`).
        max_pixels: params.yaml `images.max_pixels`.
        model: The mask head's segmenter, or None for GrabCut.
    """
    ask = asker(image, model, max_pixels)
    return sum(corrected(prompt, truth, lambda p: ask(p).mask, costs).seconds for prompt, truth in object_prompts(target))


def object_prompts(target: Mapping[str, Any]) -> list[tuple[Prompt, np.ndarray]]:
    """Each true object of a target as the smart box a person would draw on it, with its true mask.

    Args:
        target: As the manifest holds it (`{"width", "height", "boxes": [{"label", "x", "y", "w", "h", "mask"}]}`).
    """
    width, height = int(target["width"]), int(target["height"])
    return [(Prompt(str(obj["label"]), (float(obj["x"]), float(obj["y"]), float(obj["x"] + obj["w"]), float(obj["y"] + obj["h"])),
                    (), (), width, height), mask_of_coco(obj["mask"], width, height)) for obj in target["boxes"]]
