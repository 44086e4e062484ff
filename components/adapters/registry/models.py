"""`ModelRegistry`, the MLflow adapter whole: registering a model (without pickle), loading a version
back from its recipe, the `champion` alias and its promotion, on top of the runs (`runs`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import requests
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from torch import nn

from components.adapters.registry.promotion import Promotion, replaces
from components.adapters.registry.runs import Runs
from components.adapters.registry.versions import CHAMPION, RECIPE, WEIGHTS, Recipe, RegisteredModel
from components.core import compat
from components.core.tags import TAG_ARCHITECTURE, TAG_PROMOTED
from components.core.task_type import Scores
from components.networks.export import FILES, INPUT, Preprocessed, example_pixels, export, exports_onnx, output_names


class ModelRegistry(Runs):
    """MLflow's tracking server and model registry, for one experiment and one registered model name.

    Args:
        tracking_uri: The MLflow tracking server.
        name: The registered model name (params.yaml registry.model_name).
        experiment: The loop's experiment (params.yaml registry.experiment).
    """

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

    def _register(self, model: nn.Module, run_id: str, recipe: Recipe) -> RegisteredModel:
        model.eval()
        onnx_ready = exports_onnx(model)
        with tempfile.TemporaryDirectory() as scratch, self._fluent(), mlflow.start_run(run_id=run_id):
            folder = Path(scratch)
            (folder / "flywheel").mkdir()
            torch.save(model.state_dict(), folder / "flywheel" / WEIGHTS.name)
            (folder / "flywheel" / RECIPE.name).write_text(json.dumps(asdict(recipe)))
            formats = ["onnx"] * onnx_ready + ["torchscript"] * bool(getattr(model, "exports_torchscript", True))
            if formats:
                export(model, formats, folder / "export", f"run {run_id}")
                mlflow.log_artifacts(str(folder / "export"), artifact_path="export")
            mlflow.log_artifacts(str(folder / "flywheel"), artifact_path="flywheel")
            if onnx_ready:  # MLflow's onnx flavor: a protobuf, no pickle; runs under `mlflow models serve` too
                import onnx
                from mlflow import onnx as mlflow_onnx

                info = mlflow_onnx.log_model(
                    onnx.load(str(folder / "export" / FILES["onnx"])),
                    name="model",
                    signature=self._signature(model, pixels=True),
                    pip_requirements=[f"onnxruntime=={version('onnxruntime')}"],
                )
            else:  # no safe MLflow format fits a box model's decoding (pt2 drops its methods): pickled, named here
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    serialization_format="pickle",
                    signature=self._signature(model, pixels=False),
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )
        return RegisteredModel(name=self.name, version=self._new_version(info.model_uri, info.model_id, run_id), run_id=run_id)

    def _new_version(self, model_uri: str, model_id: str, run_id: str) -> int:
        """Register a logged model as the next version of `name` through MLflow's client: the fluent
        `registered_model_name=` prints "Successfully registered model ..." and "Created version ..." to
        stderr, and MLflow turns its own silencing back on midway (`disable_logging` does not hold)."""
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        return int(self.client.create_model_version(self.name, source=model_uri, run_id=run_id, model_id=model_id).version)

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

    def version(self, number: int) -> RegisteredModel:
        """A registered version by number."""
        with self.calling(f"read version {number} of {self.name}"):
            mv = self.client.get_model_version(self.name, str(number))
        return RegisteredModel(name=self.name, version=int(mv.version), run_id=mv.run_id)

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

    def promote_if_better(
        self,
        candidate: RegisteredModel,
        scores: Scores,
        judge: Callable[[nn.Module], Scores | None],
        metric: str,
    ) -> Promotion:
        """Move `champion` to `candidate` if it does better than the current champion on this validation set.

        The champion is re-evaluated on the candidate's validation set (`judge`), so both are judged
        on the same images, and `replaces` gives the verdict: a candidate trained on more labeled
        images replaces it unless clearly worse, one trained on no more data must beat it. A
        champion `judge` cannot score (trained for another label set) is replaced.

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
        else:
            more_data = self._trained_images(candidate.run_id) > self._trained_images(current.run_id)
            promoted = replaces(scores, champion_scores, more_data)
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
