"""The MLflow adapter: runs, the model registry, and the `champion` alias moved fairly.

A model is logged without pickle: its weights (a state dict) and the recipe that rebuilds it
(`flywheel/`), its ONNX and TorchScript exports with the preprocessing inside (`export/`), and as
MLflow's model the ONNX file (MLflow's onnx flavor; the box task types, whose decoding ONNX cannot
write, fall back to the pytorch flavor's pickle). It is registered under one name. The `champion`
alias moves when the new model does better than the current champion on the *same* validation set
(see `promote_if_better`). Both are safe to repeat (the loop retries them after a transient failure):
a run is registered once, and its verdict is recorded before the alias moves.

This module is the only one that calls MLflow's client (Lightning's `MLFlowLogger` aside). Every
call goes through `calling`, which turns an unreachable or failing server into one `TrackingError`
that says what to do; the client's own retries and timeouts are bounded by `CLIENT_ENV`.
"""

from __future__ import annotations

import json
import math
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import requests
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from mlflow.tracking import MlflowClient
import pandas as pd
from torch import nn

from components.core import compat
from components.core.errors import TrackingError
from components.core.faults import owner_gone
from components.core.tags import (
    KIND_PRETRAINING,
    TAG_ARCHITECTURE,
    TAG_CLOSED_BY,
    TAG_KIND,
    TAG_OWNER,
    TAG_PROJECT,
    TAG_PROMOTED,
    TAG_READY,
    TAG_REGISTERED,
)
from components.networks.export import FILES, INPUT, Preprocessed, example_pixels, export, exports_onnx, output_names
from components.tasks import task_type_named
from components.core.task_type import Scores

CHAMPION = "champion"
WEIGHTS = PurePosixPath("flywheel/weights.pt")  # the inference model's state dict
RECIPE = PurePosixPath("flywheel/recipe.json")  # what rebuilds it (`Recipe`)


@contextmanager
def _no_eprint() -> Iterator[None]:
    """Silence what MLflow prints on stdout while registering ("Registered model ... already exists",
    "Created version ..."): the loop says it in one line of its own."""
    from mlflow.utils.logging_utils import disable_logging, enable_logging

    disable_logging()
    try:
        yield
    finally:
        enable_logging()


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version.

    Attributes:
        name: Registered model name.
        version: Its version number.
        run_id: The MLflow run that trained it.
        model_version: The label written on its Label Studio predictions ("<name>-v<version>").
    """

    name: str
    version: int
    run_id: str

    @property
    def model_version(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Recipe:
    """What rebuilds a registered model from its weights: its task type, architecture (params.yaml's
    name and options), labels and input size."""

    task: str
    architecture: str
    options: dict[str, Any]
    labels: list[str]
    image_size: int

    def build(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """The inference model with these weights (strictly: a misfit is an error, never half-loaded)."""
        task = task_type_named(self.task)
        options = {**self.options, **({"pretrained": False} if "pretrained" in self.options else {})}  # weights follow: no download
        net = task.module(self.architecture, options, self.labels, lr=1e-3, augment=False).net
        model = task.inference_model(net, self.labels, self.image_size)
        model.load_state_dict(weights)
        return model.eval()


@dataclass(frozen=True)
class Promotion:
    """The outcome of comparing a new model with the champion on the same validation set."""

    candidate: RegisteredModel
    promoted: bool
    candidate_score: float
    champion_score: float | None
    champion: RegisteredModel


class ModelRegistry:
    """MLflow's tracking server and model registry, for one experiment and one registered model name.

    Args:
        tracking_uri: The MLflow tracking server.
        name: The registered model name (params.yaml registry.model_name).
        experiment: The loop's experiment (params.yaml registry.experiment).
    """

    def __init__(self, tracking_uri: str, name: str, experiment: str):
        self.tracking_uri = tracking_uri
        self.name = name
        self.experiment = experiment
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Turn MLflow failures into one message that says what to do (retryable when the server is
        unreachable or failing, not when it refused the request)."""
        try:
            yield
        except (requests.ConnectionError, requests.Timeout, socket.timeout, ConnectionError) as e:
            raise self._unreachable(what, e) from e
        except MlflowException as e:
            text = " ".join(str(e).split())
            if "API request to" in text or "Max retries exceeded" in text or "Connection refused" in text:
                raise self._unreachable(what, e) from e
            status = e.get_http_status_code()
            raise TrackingError(
                f"MLflow at {self.tracking_uri} refused to {what}: {text[:300]}", retryable=status >= 500
            ) from e

    def _unreachable(self, what: str, error: Exception) -> TrackingError:
        return TrackingError(
            f"MLflow at {self.tracking_uri} does not answer (while trying to {what}). Start it with "
            "`flywheel stack up` (or fix MLFLOW_TRACKING_URI), then run again: the rerun finishes the job.",
            retryable=True,
        )

    def experiment_id(self) -> str | None:
        """The id of the loop's experiment, None before it exists."""
        with self.calling("find the experiment"):
            experiment = self.client.get_experiment_by_name(self.experiment)
        return experiment.experiment_id if experiment else None

    def search_runs(self, filter_string: str, max_results: int = 1) -> list[Run]:
        """Runs of the loop's experiment matching an MLflow filter (none while the experiment does not exist)."""
        experiment_id = self.experiment_id()
        if experiment_id is None:
            return []
        with self.calling("search runs"):
            return self.client.search_runs([experiment_id], filter_string=filter_string, max_results=max_results)

    def runs_tagged(self, tags: dict[str, str], registered: bool = False, max_results: int = 1) -> list[Run]:
        """Runs of the loop's experiment carrying every one of `tags` (and a registered model, if asked)."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        if registered:
            clauses.append(f"tags.`{TAG_REGISTERED}` != ''")
        return self.search_runs(" and ".join(clauses), max_results=max_results)

    def record_run(
        self,
        tags: dict[str, str],
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        table: tuple[pd.DataFrame, str] | None = None,
        artifacts: tuple[Path, str] | None = None,
    ) -> str:
        """Log one finished run in one call: tags, params, metrics, a table (as `artifact_file`) and a
        folder of artifacts (under `artifact_path`). Returns its id."""
        with self.tracked_run(tags) as (client, run_id):
            for key, value in (params or {}).items():
                client.log_param(run_id, key, value)
            for key, value in (metrics or {}).items():
                client.log_metric(run_id, key, float(value))
            if table is not None:
                client.log_table(run_id, table[0], artifact_file=table[1])
            if artifacts is not None:
                client.log_artifacts(run_id, str(artifacts[0]), artifact_path=artifacts[1])
        return run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with self.calling(f"tag run {run_id}"):
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    @contextmanager
    def tracked_run(self, tags: dict[str, str]) -> Iterator[tuple[MlflowClient, str]]:
        """A run in the loop's experiment through the client: no process-wide active experiment or run
        is set (the fluent API's global state would trip the next `start_run(run_id=...)`)."""
        with self.calling("start a run"):
            experiment_id = self.experiment_id() or self.client.create_experiment(self.experiment)
            run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        try:
            with self.calling("log to a run"):
                yield self.client, run_id
        except BaseException:
            with self.calling("close a failed run"):
                self.client.set_terminated(run_id, status="FAILED")
            raise
        with self.calling("close a run"):
            self.client.set_terminated(run_id)

    def close_abandoned_runs(self, project_id: int, closed_by: str) -> list[str]:
        """Mark FAILED every run of this project's loop still RUNNING whose process is gone (killed
        mid-way); a run of a live worker, or of another host, is left running. Returns their ids."""
        runs = [
            run for run in self.search_runs(
                f"attributes.status = 'RUNNING' and tags.`{TAG_PROJECT}` = '{project_id}'", max_results=100
            )
            if owner_gone(run.data.tags.get(TAG_OWNER, ""))
        ]
        with self.calling("close abandoned runs"):
            for run in runs:
                self.client.set_tag(run.info.run_id, TAG_CLOSED_BY, closed_by)
                self.client.set_terminated(run.info.run_id, status="FAILED")
        return [r.info.run_id for r in runs]

    def register(self, model: nn.Module, run_id: str, recipe: Recipe) -> RegisteredModel:
        """Log `model` into its training run (its weights, recipe and exports) and register it, once:
        a run already registered (an attempt the loop retries after a transient failure got that far)
        gives back its version rather than a second version of the same model."""
        with self.calling("log and register the model"):
            return self.registered_version_of(run_id) or self._register(model, run_id, recipe)

    def registered_version_of(self, run_id: str) -> RegisteredModel | None:
        """The version a run is registered as (the newest, should MLflow's own retry have made two), or None."""
        with self.calling(f"find the version of run {run_id}"):
            found = self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
        if not found:
            return None
        newest = max(found, key=lambda mv: int(mv.version))
        return RegisteredModel(name=self.name, version=int(newest.version), run_id=run_id)

    @contextmanager
    def _fluent(self) -> Iterator[None]:
        """Point MLflow's fluent API (which `mlflow.pytorch` uses) at this server for one call, and
        put back what was there: the tracking URI is never left set process-wide."""
        previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])

    def _register(self, model: nn.Module, run_id: str, recipe: Recipe) -> RegisteredModel:
        model.eval()
        onnx_ready = exports_onnx(model)
        with tempfile.TemporaryDirectory() as scratch, self._fluent(), mlflow.start_run(run_id=run_id), _no_eprint():
            folder = Path(scratch)
            (folder / "flywheel").mkdir()
            torch.save(model.state_dict(), folder / "flywheel" / WEIGHTS.name)
            (folder / "flywheel" / RECIPE.name).write_text(json.dumps(asdict(recipe)))
            export(model, ["onnx", "torchscript"] if onnx_ready else ["torchscript"], folder / "export", f"run {run_id}")
            mlflow.log_artifacts(str(folder / "flywheel"), artifact_path="flywheel")
            mlflow.log_artifacts(str(folder / "export"), artifact_path="export")
            if onnx_ready:  # MLflow's onnx flavor: a protobuf, no pickle; runs under `mlflow models serve` too
                import onnx
                from mlflow import onnx as mlflow_onnx

                info = mlflow_onnx.log_model(
                    onnx.load(str(folder / "export" / FILES["onnx"])),
                    name="model",
                    signature=self._signature(model, pixels=True),
                    registered_model_name=self.name,
                    pip_requirements=[f"onnxruntime=={version('onnxruntime')}"],
                )
            else:  # no safe MLflow format fits a box model's decoding (pt2 drops its methods): pickled, named here
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    serialization_format="pickle",
                    signature=self._signature(model, pixels=False),
                    registered_model_name=self.name,
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )
        return RegisteredModel(name=self.name, version=int(info.registered_model_version), run_id=run_id)

    @staticmethod
    def _signature(model: nn.Module, pixels: bool) -> ModelSignature:
        """What the logged model takes: uint8 pixels (N, H, W, 3) for the export with its
        preprocessing, else the inference model's float images (N, 3, S, S) in [0, 1]."""
        size = int(model.image_size)
        example = example_pixels(model) if pixels else torch.rand(2, 3, size, size)
        with torch.no_grad():
            output = (Preprocessed(model) if pixels else model)(example)
        outputs = output if isinstance(output, tuple) else (output,)
        inputs = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), INPUT) if pixels else TensorSpec(np.dtype(np.float32), (-1, 3, size, size), INPUT)
        return ModelSignature(
            inputs=Schema([inputs]),
            outputs=Schema([
                TensorSpec(np.dtype(np.float32), (-1, *o.shape[1:]), name)
                for name, o in zip(output_names(model), outputs, strict=True)
            ]),
        )

    def champion(self) -> RegisteredModel | None:
        """The model version under the `champion` alias, if any."""
        with self.calling("read the champion"):
            try:
                mv = self.client.get_model_version_by_alias(self.name, CHAMPION)
            except MlflowException as e:
                if e.get_http_status_code() >= 500 or "API request to" in str(e):
                    raise
                return None  # no such model or alias yet
        return RegisteredModel(name=self.name, version=int(mv.version), run_id=mv.run_id)

    def latest_pretraining(self, tags: dict[str, str]) -> Run | None:
        """The newest finished self-supervised pretraining run carrying every one of `tags` whose
        backbone is logged (`flywheel.backbone_ready`)."""
        clauses = [f"tags.`{TAG_KIND}` = '{KIND_PRETRAINING}'", "attributes.status = 'FINISHED'", f"tags.`{TAG_READY}` = 'true'"]
        clauses += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        runs = self.search_runs(" and ".join(clauses))
        return runs[0] if runs else None

    def artifact_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        """A run's tensors saved with `torch.save` (a state dict), read back without unpickling code."""
        with self.calling(f"download {name} of run {run_id}"), tempfile.TemporaryDirectory() as scratch:
            path = self.client.download_artifacts(run_id, name, scratch)
            return torch.load(path, map_location="cpu", weights_only=True)

    def tags_of(self, run_id: str) -> dict[str, str]:
        """A run's tags."""
        with self.calling(f"read run {run_id}"):
            return dict(self.client.get_run(run_id).data.tags)

    def architecture_of(self, model: RegisteredModel) -> str:
        """The architecture (params.yaml's name) a registered version was trained as ("" if untagged)."""
        return self.tags_of(model.run_id).get(TAG_ARCHITECTURE, "")

    def load(self, model: RegisteredModel) -> nn.Module:
        """Load a registered version back as its task type's inference model (`load_with_recipe`)."""
        return self.load_with_recipe(model)[0]

    def load_with_recipe(self, model: RegisteredModel) -> tuple[nn.Module, Recipe | None]:
        """A registered version as its task type's inference model, rebuilt from its recipe and its
        weights (read without unpickling code), and the recipe. Versions logged before recipes
        existed load through MLflow's pytorch flavor (recipe None)."""
        recipe = self.recipe_of(model)
        if recipe is None:
            with self.calling(f"load model {model.model_version}"), self._fluent():
                # pickled: read through the table of moved modules, so versions from before a move still load
                return mlflow.pytorch.load_model(model.uri, map_location="cpu", pickle_module=compat).eval(), None
        return recipe.build(self.artifact_tensors(model.run_id, WEIGHTS.as_posix())), recipe

    def recipe_of(self, model: RegisteredModel) -> Recipe | None:
        """How a registered version was built (None for one logged before recipes existed)."""
        with self.calling(f"read the recipe of {model.model_version}"), tempfile.TemporaryDirectory() as scratch:
            try:
                path = self.client.download_artifacts(model.run_id, RECIPE.as_posix(), scratch)
            except MlflowException as e:
                if e.get_http_status_code() >= 500 or "API request to" in str(e):
                    raise
                return None
            except OSError as e:  # a missing artifact in a local store; a failing server is not "missing"
                if isinstance(e, requests.RequestException):
                    raise
                return None
            return Recipe(**json.loads(Path(path).read_text()))

    def download_export(self, model: RegisteredModel, fmt: str, out: Path) -> Path | None:
        """The export of `fmt` logged with a version, downloaded into `out` (None if it was not logged)."""
        with self.calling(f"download the {fmt} export of {model.model_version}"):
            try:
                return Path(self.client.download_artifacts(model.run_id, f"export/{FILES[fmt]}", str(out)))
            except MlflowException as e:
                if e.get_http_status_code() >= 500 or "API request to" in str(e):
                    raise
                return None
            except OSError as e:
                if isinstance(e, requests.RequestException):
                    raise
                return None

    def version(self, number: int) -> RegisteredModel:
        """A registered version by number."""
        with self.calling(f"read version {number} of {self.name}"):
            mv = self.client.get_model_version(self.name, str(number))
        return RegisteredModel(name=self.name, version=int(mv.version), run_id=mv.run_id)

    def _trained_images(self, run_id: str) -> float:
        with self.calling(f"read run {run_id}"):
            return self.client.get_run(run_id).data.metrics.get("train_images", 0.0)

    def promote_if_better(
        self,
        candidate: RegisteredModel,
        scores: Scores,
        judge: Callable[[nn.Module], Scores | None],
        metric: str,
    ) -> Promotion:
        """Move `champion` to `candidate` if it does better than the current champion on this validation set.

        The champion is re-evaluated on the candidate's validation set (`judge`), so both are judged
        on the same images. A candidate trained on more labeled images than the champion (the loop's
        next model) replaces it unless it is clearly worse: it gets more of these images wrong that
        the champion gets right by more than two standard deviations of that paired difference
        (McNemar). Tiny early validation sets would otherwise keep a stale champion for many
        iterations. A candidate trained on no more data (another architecture on the same
        snapshot) must beat it: a higher score, or an equal one and a better tiebreak. A champion
        `judge` cannot score (trained for another label set) is replaced.

        The verdict is written on the candidate's run (`TAG_PROMOTED`) before the alias moves, so no
        failure in between leaves a champion whose run does not say it was promoted; a candidate that
        is the champion already (a retry after the alias moved) stays it, without being judged again.

        Args:
            candidate: The new registered version.
            scores: Its validation scores.
            judge: Scores another model on the same validation set (None when it cannot).
            metric: The score's name, for the version's tag (e.g. "accuracy", "map50").
        """
        current = self.champion()
        already = current is not None and current.version == candidate.version  # an attempt failed after moving the alias
        champion_scores = judge(self.load(current)) if current is not None and not already else None
        if champion_scores is None:
            promoted = True
        elif self._trained_images(candidate.run_id) > self._trained_images(current.run_id):
            champion_only = int((champion_scores.correct & ~scores.correct).sum())
            candidate_only = int((scores.correct & ~champion_scores.correct).sum())
            promoted = champion_only - candidate_only <= 2 * math.sqrt(champion_only + candidate_only)
        else:
            promoted = (scores.score, scores.tiebreak) > (champion_scores.score, champion_scores.tiebreak)
        with self.calling("move the champion alias"):
            self.client.set_model_version_tag(self.name, str(candidate.version), f"val_{metric}", f"{scores.score:.4f}")
            self.client.set_tag(candidate.run_id, TAG_PROMOTED, str(promoted).lower())
            if promoted:
                self.client.set_registered_model_alias(self.name, CHAMPION, str(candidate.version))
        return Promotion(
            candidate=candidate,
            promoted=promoted,
            candidate_score=scores.score,
            champion_score=champion_scores.score if champion_scores else None,
            champion=candidate if promoted else current,  # type: ignore[arg-type]
        )
