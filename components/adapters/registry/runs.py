"""The loop's runs on MLflow's tracking server: the client and its errors (every call goes through
`calling`), searching runs and their tags, logging a finished run in one call, and closing the runs
a killed process left open.
"""

from __future__ import annotations

import json
import time
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.core.errors import TrackingError
from components.core.faults import owner_gone
from components.core.tags import KIND_PRETRAINING, TAG_CLOSED_BY, TAG_KIND, TAG_OWNER, TAG_PROJECT, TAG_READY, TAG_REGISTERED


class Runs:
    """MLflow's tracking server, for the loop's experiment: its runs (built as `ModelRegistry` is,
    which says what each argument is)."""

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

    def experiment_id(self) -> str | None:
        """The id of the loop's experiment, None before it exists."""
        with self.calling("find the experiment"):
            experiment = self.client.get_experiment_by_name(self.experiment)
        return experiment.experiment_id if experiment else None

    def ensure_experiment(self) -> str:
        """The id of the loop's experiment, created if it does not exist yet (so no run's logger has to
        create it, and say so on the terminal)."""
        with self.calling("create the experiment"):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            try:
                return self.client.create_experiment(self.experiment)
            except MlflowException:  # another process created it meanwhile
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
                return found.experiment_id

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

    def log_input(self, run_id: str, name: str, digest: str, source: dict[str, str], context: str,
                  profile: dict[str, Any] | None = None) -> None:
        """Show what a run read in MLflow's own Datasets column (and the run page's inputs): a versioned
        snapshot or pool by its name, its hash and where it lives (`source`, e.g. the data registry and
        its rev), with its role (`context`: training, label-check, pretraining)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="dvc", source=json.dumps(source, sort_keys=True),
                          profile=json.dumps(profile, sort_keys=True) if profile else None)
        with self.calling(f"record what run {run_id} read"):
            self.client.log_inputs(run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Log figures to a finished run (one batch call)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self.calling(f"log to run {run_id}"):
            self.client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])

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

    def latest_pretraining(self, tags: dict[str, str]) -> Run | None:
        """The newest finished self-supervised pretraining run carrying every one of `tags` whose
        backbone is logged (`flywheel.backbone_ready`)."""
        clauses = [f"tags.`{TAG_KIND}` = '{KIND_PRETRAINING}'", "attributes.status = 'FINISHED'", f"tags.`{TAG_READY}` = 'true'"]
        clauses += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        runs = self.search_runs(" and ".join(clauses))
        return runs[0] if runs else None

    def tags_of(self, run_id: str) -> dict[str, str]:
        """A run's tags."""
        with self.calling(f"read run {run_id}"):
            return dict(self.client.get_run(run_id).data.tags)

    def artifact_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        """A run's tensors saved with `torch.save` (a state dict), read back without unpickling code."""
        with self.calling(f"download {name} of run {run_id}"), tempfile.TemporaryDirectory() as scratch:
            path = self.client.download_artifacts(run_id, name, scratch)
            return torch.load(path, map_location="cpu", weights_only=True)

    def _trained_images(self, run_id: str) -> float:
        with self.calling(f"read run {run_id}"):
            return self.client.get_run(run_id).data.metrics.get("train_images", 0.0)
