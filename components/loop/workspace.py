"""What every stage of the loop works in: the `Workspace` (the project's Label Studio, data registry,
model registry and image store, built once from settings and params), where its reports live, its
latest snapshot, and the marks that make background pretraining wait while an iteration refreshes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.adapters.label_studio import LabelStudio, Project
from components.adapters.registry import ModelRegistry
from components.adapters.versioning import DataRegistry, SnapshotVersion
from components.core.errors import LabelStudioError
from components.core.faults import dead_pid_in, owned_name
from components.core.labeling_config import load_labeling_config
from components.core.params import Params
from components.core.settings import Settings
from components.data.images import ImageStore
from components.networks.compute import Compute, resolve
from components.tasks import TaskType, task_type_of

log = logging.getLogger(__name__)

LABEL_ERRORS_FILE = "label_errors.parquet"  # in `reports_dir`: the last label check's table, read by write-back and the report


@dataclass(frozen=True)
class Workspace:
    """Everything one iteration talks to, built once from settings and params."""

    settings: Settings
    params: Params
    label_studio: LabelStudio
    project: Project
    data: DataRegistry
    models: ModelRegistry
    images: ImageStore

    @property
    def task(self) -> TaskType:
        """The project's task type, from its labeling config's control tag."""
        return task_type_of(self.project.config)

    @property
    def compute(self) -> Compute:
        """Where this project's models run (params.yaml `compute`, resolved on this machine)."""
        c = self.params.compute
        return resolve(c.accelerator, c.devices, c.precision)


def find_project(label_studio: LabelStudio, params: Params, project_root: Path = Path("."), create: bool = False) -> Project | None:
    """The project params.yaml names: by `project.id` (its config, task type and labels read from the
    project itself; the local XML is not read), else by `project.title` (checked against, or with
    `create` created from, the local `project.config`). None when no project has the title.

    Raises:
        LabelStudioError: No project has that id, or Label Studio is unreachable or refuses the token.
        LabelConfigError: The project's config is not one flywheel serves, or differs from the local XML.
    """
    if params.project.id is not None:
        return label_studio.project(params.project.id)
    return label_studio.ensure_project(params.project.title, load_labeling_config(project_root / params.project.config), create=create)


def open_workspace(
    settings: Settings, params: Params, project_root: Path = Path("."), create_project: bool = False
) -> Workspace:
    """Connect to Label Studio, find the project (create it only when asked), open its data registry.

    Raises:
        LabelStudioError: Label Studio is unreachable or refuses the token, or the project does not
            exist (the loop never creates one silently: `flywheel import` and `flywheel demo` do).
        LabelConfigError: The project's labeling config does not match params.yaml's.
    """
    settings.ensure_workspace()
    settings.apply_client_env()
    label_studio = LabelStudio.from_settings(settings)
    project = find_project(label_studio, params, project_root, create=create_project)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {settings.label_studio_url} has no project {params.project.title!r}. Create it with "
            "`flywheel import FOLDER` (or `flywheel demo`), or set project.title in params.yaml. A project "
            f"deleted in Label Studio is gone there; its versioned snapshots stay under {settings.workspace / 'registry'}."
        )
    data = DataRegistry(
        settings.workspace / "registry" / f"project-{project.id}", settings.dvc_remote, endpoint_url=settings.s3_endpoint_url
    ).open()
    i = params.images
    return Workspace(
        settings=settings,
        params=params,
        label_studio=label_studio,
        project=project,
        data=data,
        models=ModelRegistry(settings.mlflow_tracking_uri, params.registry.model_name, params.registry.experiment),
        images=ImageStore(
            settings.workspace / "cache" / "images", settings.image_root, label_studio,
            fetch_timeout_s=i.fetch_timeout_s, max_bytes=i.max_bytes, max_pixels=i.max_pixels,
            retry_failed_s=i.retry_failed_s,
        ),
    )


class WorkspaceCache:
    """One process's workspace, kept from one run to the next (the warm worker's): opening one reaches
    Label Studio, MLflow and the data registry, seconds that a run started by a new label should not
    pay each time.

    `open` builds it with `open_workspace` the first time, and again whenever the settings, the params
    or the labeling config file read differently from those that built it; `forget` drops it, so the
    run after a failure connects afresh (a server restarted, a project recreated, a token changed).

    Args:
        opener: How a workspace is built (`open_workspace`).
    """

    def __init__(self, opener: Callable[[Settings, Params, Path], Workspace] = open_workspace):
        self._opener = opener
        self._built: tuple[tuple[Any, ...], Workspace] | None = None

    def open(self, settings: Settings, params: Params, project_root: Path = Path(".")) -> Workspace:
        """The kept workspace when `settings`, `params` and the labeling config they name are those it
        was built from; otherwise a new one, kept instead.

        Raises:
            FlywheelError: As `open_workspace`.
        """
        local = load_labeling_config(project_root / params.project.config) if params.project.id is None else None
        key = (settings, params, Path(project_root).resolve(), local)
        if self._built is not None and self._built[0] == key:
            settings.ensure_workspace()
            settings.apply_client_env()
            return self._built[1]
        self._built = None
        workspace = self._opener(settings, params, project_root)
        self._built = (key, workspace)
        return workspace

    def forget(self) -> None:
        """Drop the kept workspace: the next `open` connects afresh."""
        self._built = None


def reports_dir(ws: Workspace) -> Path:
    """Where the project's label-error table, needs-attention list and strategy report live."""
    return ws.settings.workspace / "reports" / f"project-{ws.project.id}"


def snapshot_folder(ws: Workspace, snapshot_version: SnapshotVersion | None) -> Path | None:
    """The folder of a versioned snapshot, read by its revision (None for no snapshot: before the first)."""
    return ws.data.checkout(snapshot_version) if snapshot_version else None


def latest_snapshot(ws: Workspace) -> tuple[SnapshotVersion | None, Path | None]:
    """The last versioned snapshot and its folder, read by revision (None, None before the first)."""
    latest = ws.data.latest()
    return latest, snapshot_folder(ws, latest)


def close_abandoned(ws: Workspace, closed_by: str) -> list[str]:
    """Clear what a killed loop run left behind (call while holding the loop lock): its MLflow runs,
    still RUNNING, are marked FAILED; its half-built snapshot folders are removed."""
    closed = ws.models.close_abandoned_runs(ws.project.id, closed_by)
    if closed:
        log.warning("Closed %d MLflow run(s) left running by a killed run as FAILED: %s", len(closed), ", ".join(closed))
    ws.data.sweep()
    return closed


def _refreshing_marks(ws: Workspace) -> Path:
    return ws.settings.workspace / "run" / f"refreshing-project-{ws.project.id}"


@contextmanager
def refreshing(ws: Workspace) -> Iterator[None]:
    """Mark the project's pre-annotations as being refreshed while the block runs: its background
    pretraining waits between its batches meanwhile (`refreshing_now`). On a small machine the two
    would share the cores (a fine-tuning measured several times slower beside it), and a person
    labeling waits on the refresh, nobody on the pretraining. A mark left by a killed process does
    not count."""
    folder = _refreshing_marks(ws)
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.iterdir():
        if dead_pid_in(left.name):
            left.unlink(missing_ok=True)
    mark = folder / owned_name("refresh")
    mark.touch()
    try:
        yield
    finally:
        mark.unlink(missing_ok=True)


def refreshing_now(ws: Workspace) -> bool:
    """Whether a live process is refreshing the project's pre-annotations (`refreshing`)."""
    folder = _refreshing_marks(ws)
    return folder.is_dir() and any(not dead_pid_in(mark.name) for mark in folder.iterdir())
