"""Training any task type on a snapshot with Lightning: early stopping, the best checkpoint, MLflow.

`fit` trains one architecture on one snapshot, tracked as one MLflow run through Lightning's
`MLFlowLogger` (metrics, hyperparameters, the task type's figures), and returns the trained model
with its validation scores. `fit_steps` trains for a fixed number of steps without tracking (one
fold of a cross-validation). What is trained and how it is judged comes from the task type
(`components/tasks/`); this module only runs the loop. Seeded and deterministic on CPU.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from components.core.faults import pause_point
from components.networks.backbones import backbone_of, load_backbone
from components.networks.compute import CPU, Compute, trainer_kwargs
from components.networks.preprocessing import MEAN, STD, load_images, to_tensor  # noqa: F401 (loop/iteration.py imports the last two here until it is split)

if TYPE_CHECKING:
    from components.core.task_type import Scores, TaskType

# Jittered views of each training image whose frozen-backbone features a head trains on (`HeadOnFeatures`):
# measured on MNIST (20-35 labels, a SimCLR backbone) as accurate as the whole network run at every step.
CACHED_VIEWS = 32


class SplitsDataModule(L.LightningDataModule):
    """A snapshot's train and validation splits, held in memory (images are small); a task type's
    subclass says how one split is read (`_split`) and batched (`collate_fn`).

    Args:
        snapshot_dir: The snapshot folder (manifest + images).
        manifest: Its manifest.
        labels: The label set; class index = position in it.
        image_size: Side of the square input.
        batch_size: Training batch size.
        augment: Whether training augments (the task type's module or split decides how).
    """

    collate_fn: Callable[[list[Any]], Any] | None = None
    val_batch_size = 256

    def __init__(
        self, snapshot_dir: Path, manifest: pd.DataFrame, labels: Sequence[str], image_size: int, batch_size: int, augment: bool
    ):
        super().__init__()
        self.snapshot_dir = Path(snapshot_dir)
        self.manifest = manifest
        self.labels = list(labels)
        self.image_size = image_size
        self.batch_size = batch_size
        self.augment = augment
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _split(self, split: str) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._split("train")
            self.val_set = self._split("val")

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator, collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, collate_fn=self.collate_fn)


class FaultPoint(L.Callback):
    """Where a fault test may stop training: after the first epoch (see `components.core.faults`; a no-op otherwise)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            pause_point("train")


class FrozenBackbone(L.Callback):
    """Keeps a pretrained backbone as it is while the head trains: no gradients, and its batch norms
    in eval mode (Lightning puts the whole module in train mode each epoch)."""

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.backbone.eval()


class HeadOnFeatures(L.LightningModule):
    """A network's head alone, trained on features its frozen backbone computed once (`CachedFeatures`):
    batches are (features, targets). A head on a frozen backbone sees the same features whether the
    backbone runs at every step or once per image view, so this trains it at the cost of one backbone
    pass per view instead of one per step (`head_on_cached_features`).

    Args:
        head: The network's head (its parameters are the ones trained, in place).
        loss: The task's loss on the head's output and the targets.
        hparams: What the task module would have logged as its hyperparameters (`lr` among them).
    """

    def __init__(self, head: nn.Module, loss: nn.Module, hparams: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters(dict(hparams))
        self.head = head
        self.loss = loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, targets = batch
        loss = self.loss(self.head(features), targets)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr)


class ViewBatches(Sampler[list[int]]):
    """Batches as a shuffled loader of the training images makes them (each pass over the images in a
    new order, cut into batches), each image in one of its cached views at random: rows
    `view * images + image` of `CachedFeatures.dataset`. An epoch is `passes` passes.

    Args:
        images: How many images were cached.
        views: How many views of each were cached.
        batch_size: Images per batch.
        passes: Passes over the images per epoch.
        seed: Seeds the orders and the views (one generator for all epochs).
    """

    def __init__(self, images: int, views: int, batch_size: int, passes: int, seed: int):
        self.images, self.views, self.batch_size, self.passes = images, views, batch_size, passes
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.passes * -(-self.images // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.passes):
            for chunk in torch.randperm(self.images, generator=self.generator).split(self.batch_size):
                view = torch.randint(self.views, (len(chunk),), generator=self.generator)
                yield (view * self.images + chunk).tolist()


@dataclass(frozen=True)
class CachedFeatures:
    """What a frozen backbone makes of the training images, computed once.

    Attributes:
        features: (views, images, ...): the features of each view of each image.
        targets: (images, ...): the images' targets.
    """

    features: torch.Tensor
    targets: torch.Tensor

    def loader(self, batch_size: int, seed: int, passes: int = CACHED_VIEWS) -> DataLoader:
        """Batches of (features, targets) as `ViewBatches` draws them."""
        views, images = self.features.shape[:2]
        dataset = TensorDataset(self.features.flatten(0, 1), self.targets.repeat(views, *[1] * (self.targets.dim() - 1)))
        return DataLoader(dataset, batch_sampler=ViewBatches(images, views, batch_size, passes, seed))


def head_on_cached_features(module: L.LightningModule, train_set: Any) -> tuple[L.LightningModule, CachedFeatures] | None:
    """What a head on a frozen backbone trains on instead of the whole module: the task module's head
    alone and the backbone's features of `CACHED_VIEWS` views of each training image, computed once
    (a task module offers it as `head_on_features(train_set, views)`). None when the module does not
    offer it, or its network is not a backbone followed by a head: the whole network then runs at
    every step."""
    offer = getattr(module, "head_on_features", None)
    return offer(train_set, CACHED_VIEWS) if callable(offer) else None


@dataclass(frozen=True)
class Backbone:
    """Pretrained backbone weights to start a model from, and how they train.

    Attributes:
        state: The weights of the network's `features` (`components.learning.pretraining`).
        run_id: The MLflow run that pretrained them.
        frozen: Only the head trains (few labels).
        lr_scale: Otherwise the backbone trains at lr x this.
    """

    state: dict[str, torch.Tensor]
    run_id: str
    frozen: bool
    lr_scale: float


def start_from_backbone(module: L.LightningModule, backbone: Backbone | None) -> list[L.Callback]:
    """Load pretrained weights into the module's network and set how its backbone trains. Returns the
    callbacks that keep it so (none when nothing is loaded: no backbone, or weights that do not fit)."""
    if backbone is None or not load_backbone(module.net, backbone.state):
        return []
    if backbone.frozen:
        return [FrozenBackbone(backbone_of(module.net))]
    module.backbone_lr_scale = backbone.lr_scale
    return []


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and how it did on the snapshot's validation split.

    Attributes:
        model: The inference model (what is logged and served).
        run_id: Its MLflow run.
        architecture: The architecture's name in params.yaml.
        metrics: What was logged as the run's summary metrics.
        scores: Its validation scores (the task type's `Scores`).
        val_set: The validation split, as the task type's `evaluate` takes it (to judge the champion
            on the same images).
    """

    model: nn.Module
    run_id: str
    architecture: str
    metrics: dict[str, float]
    scores: Scores
    val_set: Any


def fit_steps(
    task: TaskType,
    folder: Path,
    manifest: pd.DataFrame,
    labels: Sequence[str],
    architecture: str,
    architecture_options: dict[str, Any],
    *,
    image_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    augment: bool,
    seed: int,
    backbone: Backbone | None = None,
    copy_paste: float = 0.0,
    compute: Compute = CPU,
) -> nn.Module:
    """Train on every row of `manifest` for a fixed number of steps, without validation or tracking
    (one fold of a cross-validation), from a pretrained `backbone` if given (a frozen one: only the
    head trains, on the backbone's features computed once). Returns the inference model."""
    L.seed_everything(seed, workers=True, verbose=False)
    data = task.datamodule(folder, manifest.assign(split="train"), labels, image_size, batch_size, augment)
    module = task.module(architecture, architecture_options, labels, lr, augment, copy_paste)
    keep_backbone = start_from_backbone(module, backbone)
    data.setup("fit")
    cached = head_on_cached_features(module, data.train_set) if keep_backbone else None
    trainer = L.Trainer(
        max_steps=steps, max_epochs=-1, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=keep_backbone,
        **trainer_kwargs(compute),
    )
    if cached is not None:
        trainer.fit(cached[0], train_dataloaders=cached[1].loader(batch_size, seed))
    else:
        trainer.fit(module, train_dataloaders=_train_loader(data, seed))
    return task.inference_model(module.net.cpu(), labels, image_size)


def _train_loader(data: L.LightningDataModule, seed: int) -> Any:
    data.setup("fit")
    loader = data.train_dataloader()
    if loader.generator is not None:
        loader.generator.manual_seed(seed)
    return loader


class WaitWhile(L.Callback):
    """Holds training before each batch while `busy()` says so (the loop refreshing pre-annotations:
    a background pretraining or retrain gives it the cores); counts the seconds waited.

    Args:
        busy: Asked before each batch, then every `every_s` while it says True.
        every_s: How often to ask again.
    """

    def __init__(self, busy: Callable[[], bool], every_s: float = 0.2):
        self.busy = busy
        self.every_s = every_s
        self.waited_s = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        began = time.perf_counter()
        while self.busy():
            time.sleep(self.every_s)
        self.waited_s += time.perf_counter() - began


def fit(
    task: TaskType,
    snapshot_dir: Path,
    manifest: pd.DataFrame,
    labels: Sequence[str],
    architecture: str,
    architecture_options: dict[str, Any],
    *,
    image_size: int,
    batch_size: int,
    max_epochs: int,
    min_steps: int,
    patience: int,
    max_steps: int = -1,
    lr: float,
    augment: bool,
    copy_paste: float = 0.0,
    seed: int,
    tracking_uri: str,
    experiment: str,
    run_tags: dict[str, str],
    progress: bool = True,
    start_from: nn.Module | None = None,
    backbone: Backbone | None = None,
    devices: int = 1,
    compute: Compute = CPU,
    strategy: str = "ddp_fork",
    wait_while: Callable[[], bool] | None = None,
) -> TrainedModel:
    """Train `architecture` on a snapshot, tracked as one MLflow run.

    From scratch, validation after each epoch stops training early and keeps the best checkpoint.
    With `start_from` (the champion, same architecture and labels), its weights are fine-tuned for
    exactly `max_steps` steps with no validation in between: the served loop's fast path. Either
    way the result is judged on the whole validation split afterwards. From scratch, a pretrained
    `backbone` (self-supervised, `components.learning.pretraining`) gives the network's starting features;
    a frozen one leaves only the head to train, for `min_steps` steps without early stopping, on
    the backbone's features of the training images computed once (`head_on_cached_features`; on
    one device, when the task module offers it).

    Returns:
        The best (lowest validation loss) model wrapped for inference, its MLflow run id and its
        validation scores; the run holds `best_val_<metric>` for every metric of the task type, one
        per class (`best_val_f1_<label>`, `best_val_ap_<label>`), the image counts and the task type's figures.

    It trains where `compute` says (`components.networks.compute`); with `devices` > 1, Lightning's DDP
    trains on that many processes or GPUs (`strategy`; gloo on CPU), each on its share of every batch, so
    the effective batch stays `batch_size`. The model comes back on the CPU. With `wait_while` (a background
    retrain), each batch waits while it says True (an iteration refreshing pre-annotations: it gets the cores).
    """
    L.seed_everything(seed, workers=True, verbose=False)
    parallel = {**trainer_kwargs(compute, devices), **(dict(strategy=strategy) if devices > 1 else {})}
    data = task.datamodule(snapshot_dir, manifest, labels, image_size, max(1, batch_size // devices), augment)
    data.setup("fit")  # here, in this process: DDP's processes get it, and the splits are judged here afterwards
    module = task.module(architecture, architecture_options, labels, lr, augment, copy_paste)
    logger = MLFlowLogger(experiment_name=experiment, tracking_uri=tracking_uri, tags=run_tags, log_model=False)
    _ = logger.run_id  # the run is created here, in this process: DDP's processes log into it, not into runs of their own
    with tempfile.TemporaryDirectory(prefix="flywheel-ckpt-") as checkpoints:
        best = ModelCheckpoint(dirpath=checkpoints, monitor="val_loss", mode="min", save_weights_only=True)
        keep_backbone = start_from_backbone(module, backbone)
        waiting = [WaitWhile(wait_while)] if wait_while is not None else []
        head_only = bool(keep_backbone) and start_from is None  # a frozen pretrained backbone: only the head trains
        cached = head_on_cached_features(module, data.train_set) if head_only and devices == 1 else None
        if start_from is not None or head_only:
            if start_from is not None:
                module.net.load_state_dict(start_from.net.state_dict())
            # a head on frozen features trains `min_steps` steps: with a handful of labels, early stopping
            # on a handful of validation images kept near-untrained heads (bench/RESULTS.md)
            schedule: dict[str, Any] = dict(
                max_epochs=-1, max_steps=max_steps if start_from is not None else max(min_steps, 1),
                limit_val_batches=0, num_sanity_val_steps=0,
                callbacks=[FaultPoint(), *keep_backbone, *waiting], log_every_n_steps=10, enable_checkpointing=False,
            )
        else:
            schedule = dict(
                max_epochs=max_epochs, min_steps=min_steps, max_steps=max_steps,
                callbacks=[EarlyStopping(monitor="val_loss", patience=patience), best, FaultPoint(), *keep_backbone, *waiting],
                log_every_n_steps=1,
            )
        trainer = L.Trainer(
            deterministic=True, logger=logger, enable_progress_bar=progress, enable_model_summary=False,
            default_root_dir=checkpoints, **schedule, **parallel,
        )
        if cached is not None:
            trainer.fit(cached[0], train_dataloaders=cached[1].loader(batch_size, seed))
        else:
            trainer.fit(module, datamodule=data)
        if start_from is None and not head_only and task.keeps_best_checkpoint and best.best_model_path:
            module.load_state_dict(torch.load(best.best_model_path, weights_only=True)["state_dict"])
    inference = task.inference_model(module.net.cpu(), labels, image_size)
    scores = task.evaluate(inference, data.val_set, labels)
    metrics = {f"best_val_{name}": value for name, value in scores.metrics.items()}
    metrics.update({f"best_val_{task.per_class_metric}_{label}": value for label, value in scores.per_class.items()})
    metrics.update({"train_images": float(len(data.train_set)), "val_images": float(len(data.val_set))})
    client = logger.experiment
    for key, value in metrics.items():
        client.log_metric(logger.run_id, key, value)
    import matplotlib.pyplot as plt

    for name, fig in task.figures(scores, labels, architecture).items():
        client.log_figure(logger.run_id, fig, name)
        plt.close(fig)
    return TrainedModel(
        model=inference.eval(), run_id=logger.run_id, architecture=architecture,
        metrics=metrics, scores=scores, val_set=data.val_set,
    )
