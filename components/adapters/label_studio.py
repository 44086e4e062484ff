"""The Label Studio adapter: the only module that imports `label_studio_sdk`.

A narrow API over Label Studio's HTTP interface:

- `ensure_project(title, config)`: idempotent; a project whose label set differs is an error.
- `import_images(project, paths)`: tasks deduplicated by content hash.
- `fetch_changed(project, cursor)`: annotations created, updated or deleted since the cursor, at a
  cost proportional to what changed (a Data Manager filter on the task's `updated_at`).
- `write_predictions(project, predictions, model_version)`: the pre-annotations of every unlabeled
  task, in bulk, once per version; `tidy_predictions(project, keep)` deletes superseded ones later.
- `sync_marked_predictions(project, predictions, model_version, mark)`: marked predictions on
  labeled tasks (suspected label errors), rewritten only where they changed.
- `ensure_view(project, title, filters, ordering)`: a Data Manager tab people open.
- `download(url, task_id)`: a file Label Studio serves (uploads, local files, cloud storages).
- `ensure_webhook(project, url, headers, actions)`: idempotent; `newest_change(project)`: the
  safety-net poll's one cheap question.

It writes tasks, predictions and views only: no method here changes or deletes an annotation, and
no prediction that an annotation was started from is ever deleted (Label Studio would clear the
annotation's `parent_prediction`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from label_studio_sdk import LabelStudio as SDKClient
from label_studio_sdk.core.api_error import ApiError

from components.core.conversions import (
    LabeledTask,
    Prediction,
    format_cursor,
    parse_timestamp,
    prediction_to_ls,
    task_from_json,
)
from components.core.errors import LabelConfigError, LabelStudioError
from components.data.images import STORAGE_SCHEMES, file_sha256, read_capped
from components.core.labeling_config import LabelingConfig, parse_labeling_config

OBJECTS_DIR = "objects"  # under the image root: Label Studio refuses a storage at the root itself
BATCH = 1000  # tasks or predictions per import request; tasks per page of a read of ids and data only
# Reading tasks with their annotations or predictions costs Label Studio per task: whole tasks (every
# prediction, draft and Data Manager column) about 40 ms each while 20 annotators saved on 2 cores,
# so a page of 1,000 changed tasks took 17-45 s, past the client's 20 s timeout, and the loop's
# poll failed. Asked only for the fields it needs (`include`), a changed task costs 3-13 ms: a page
# of 1,000 took 3-8 s, one of 100 0.7-1.6 s (measured under bench/load.py's load). So each read asks
# only for what it uses, and pages stay far inside the timeout: a slow moment costs a page, not the read.
CHANGED_PAGE = 500  # tasks per page of `fetch_changed` (id, data, `updated_at`, annotations)
PAGE = 100  # tasks per page of a read that carries predictions or whole tasks
# `include` names fields of the task and of its annotations alike (Label Studio filters both by it):
# what `task_from_json` reads of an annotation, and of a task its id, data and `updated_at`.
ANNOTATION_FIELDS = "annotations,id,result,was_cancelled,created_at,updated_at,created_username,completed_by,lead_time,parent_prediction"
CHANGED_FIELDS = f"data,{ANNOTATION_FIELDS}"
PREDICTION_FIELDS = "id,predictions"  # a task's predictions come whole (their serializer takes no `include`)
# `fetch_changed` reads this much before its cursor again: a save is stamped (`updated_at`) while its
# request runs and seen once it commits, so a poll can miss one stamped just before its cursor. A save
# took at most 3 s while 20 annotators saved on 2 cores (bench/load.py): 30 s leaves room for worse.
OVERLAP_S = 30.0
# Tasks nobody has touched: no annotation, not even a skip. Pre-annotations are written (and
# replaced) on these only, so no prediction an annotation started from is ever deleted.
UNTOUCHED = [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
    {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", "type": "Number", "value": 0},
]
LABELED = [{"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]
# Orderings of a Data Manager tab. A prediction's score is the model's confidence.
BY_ID = ["tasks:id"]
LEAST_CONFIDENT_FIRST = ["tasks:predictions_score"]
MOST_CONFIDENT_FIRST = ["-tasks:predictions_score"]
# The Data Manager tabs the loop keeps, by title, and how a suspect's prediction is marked in them.
LABEL_NEXT_VIEW = "Label next"
SUSPECTS_VIEW = "Suspected label errors"
ATTENTION_VIEW = "Needs attention"
SUSPECT_MARK = "flywheel-label-error"  # the result id of a suspect's prediction


def _query(items: list[dict[str, Any]], ordering: list[str] | None = None) -> str:
    """A Data Manager query (filters joined by "and", optional ordering) as the API takes it."""
    body: dict[str, Any] = {"filters": {"conjunction": "and", "items": items}}
    if ordering:
        body["ordering"] = ordering
    return json.dumps(body)


def task_ids_filter(task_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Filter items matching exactly these tasks (join them with "or"); none matches no task."""
    ids = sorted(set(task_ids)) or [0]
    return [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(i)} for i in ids]


@dataclass(frozen=True)
class Project:
    """A Label Studio project and the labeling config it was created from."""

    id: int
    title: str
    config: LabelingConfig


@dataclass(frozen=True)
class ImportResult:
    """What `import_images` did: task ids created, and files skipped as already imported."""

    created: tuple[int, ...]
    skipped: int


@dataclass(frozen=True)
class ChangeSet:
    """The tasks whose annotations changed since a cursor, and the cursor to use next time.

    Attributes:
        tasks: Each changed task with its *current* annotations; a task with none had its
            annotations deleted.
        cursor: The latest `updated_at` seen, or the old cursor when nothing changed.
    """

    tasks: tuple[LabeledTask, ...]
    cursor: str | None


class LabelStudio:
    """Talks to one Label Studio server.

    Args:
        url: Base URL, e.g. http://127.0.0.1:8080.
        api_key: A legacy token or a personal access token (never logged).
        image_root: The server's LOCAL_FILES_DOCUMENT_ROOT; imported images are copied under it.
        timeout_s: Per-request timeout: a server that stops answering is reported, not waited for.
    """

    def __init__(self, url: str, api_key: str, image_root: Path, timeout_s: float = 20.0):
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.image_root = Path(image_root)
        self._timeout_s = timeout_s
        self._sdk: SDKClient | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> LabelStudio:
        """Build from `components.core.settings.Settings`."""
        return cls(settings.label_studio_url, settings.label_studio_api_key, settings.image_root)

    def __repr__(self) -> str:
        return f"LabelStudio(url={self.url!r})"

    @property
    def sdk(self) -> SDKClient:
        """The SDK client, created on first use (never at import)."""
        if self._sdk is None:
            if not self._api_key:
                raise LabelStudioError(
                    f"No API key for Label Studio at {self.url}. Run `flywheel stack up` (it creates one), "
                    "or set LABEL_STUDIO_API_KEY (Label Studio: Account & Settings > Access Token)."
                )
            with self._calling("connect"):
                self._sdk = SDKClient(base_url=self.url, api_key=self._api_key, timeout=self._timeout_s)
        return self._sdk

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn transport and HTTP failures into one message that says what to do."""
        try:
            yield
        except httpx.TransportError as e:
            raise LabelStudioError(
                f"Label Studio at {self.url} is unreachable while trying to {what} ({e.__class__.__name__}). "
                "Start it with `flywheel stack up`, or set LABEL_STUDIO_URL to your server.",
                retryable=True,
            ) from e
        except ApiError as e:
            if e.status_code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API key ({e.status_code}) while trying to {what}. "
                    "Set LABEL_STUDIO_API_KEY to a valid token (Label Studio: Account & Settings > "
                    "Access Token); with the embedded stack, the workspace's credentials.env holds it."
                ) from e
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {e.status_code} while trying to {what}: {_short(e.body)}",
                retryable=e.status_code is not None and e.status_code >= 500,
            ) from e

    def check(self) -> str:
        """Verify the server answers and accepts the token. Returns the user's email."""
        with self._calling("check the connection"):
            return self.sdk.users.whoami().email or ""

    # --- projects -------------------------------------------------------------------------------

    def ensure_project(self, title: str, config: LabelingConfig, create: bool = True) -> Project | None:
        """Find the project with this title, or create it from `config` (None when `create` is False).

        Raises:
            LabelConfigError: A project with this title exists but its tags or label set differ.
        """
        with self._calling(f"find project {title!r}"):
            existing = [p for p in self.sdk.projects.list(title=title) if p.title == title]
        if not existing and not create:
            return None
        if not existing:
            with self._calling(f"create project {title!r}"):
                created = self.sdk.projects.create(title=title, label_config=config.xml)
            return Project(id=created.id, title=title, config=config)
        project = min(existing, key=lambda p: p.id)
        with self._calling(f"read project {project.id}"):
            xml = self.sdk.projects.get(id=project.id).label_config or ""
        current = parse_labeling_config(xml, source=f"project {title!r} (id {project.id})")
        if (current.control_type, current.from_name, current.to_name, current.data_key, current.labels) != (
            config.control_type, config.from_name, config.to_name, config.data_key, config.labels,
        ):
            raise LabelConfigError(
                f"Project {title!r} (id {project.id}) labels {list(current.labels)} with <{current.control_type}> "
                f"{current.from_name}->{current.to_name}, but the config labels {list(config.labels)} with "
                f"<{config.control_type}> {config.from_name}->{config.to_name}. Use another project title, or make the config "
                "match the project (Label Studio: Settings > Labeling Interface)."
            )
        return Project(id=project.id, title=title, config=current)

    def project(self, project_id: int) -> Project:
        """Read an existing project and its labeling config."""
        with self._calling(f"read project {project_id}"):
            p = self.sdk.projects.get(id=project_id)
        return Project(
            id=p.id, title=p.title or "", config=parse_labeling_config(p.label_config or "", f"project {p.id}")
        )

    # --- tasks ----------------------------------------------------------------------------------

    def _ensure_local_storage(self, project_id: int) -> None:
        objects = (self.image_root / OBJECTS_DIR).resolve()
        objects.mkdir(parents=True, exist_ok=True)
        with self._calling(f"list the storages of project {project_id}"):
            storages = self.sdk.import_storage.local.list(project=project_id)
        if any(Path(s.path or "").resolve() == objects for s in storages):
            return
        with self._calling(f"attach local storage {objects} to project {project_id}"):
            self.sdk.import_storage.local.create(
                project=project_id, path=str(objects), title="flywheel images", use_blob_urls=False
            )

    def task_hashes(self, project_id: int) -> dict[str, int]:
        """Content hash -> task id for every task of the project that flywheel imported."""
        with self._calling(f"list the tasks of project {project_id}"):
            tasks = self.sdk.tasks.list(project=project_id, include="id,data", page_size=BATCH)
            return {t.data["sha256"]: t.id for t in tasks if t.data and "sha256" in t.data}

    def import_images(
        self,
        project: Project,
        paths: Iterable[Path],
        progress: Callable[[Iterable[Path]], Iterable[Path]] = lambda it: it,
    ) -> ImportResult:
        """Copy images under the image root (content-addressed) and create one task per new image.

        Importing the same files again adds nothing. Task data holds the image URL under the
        config's data key, the content hash (`sha256`) and the original file name.

        Args:
            project: The target project.
            paths: Image files.
            progress: Wraps the iteration over files (e.g. a progress bar).
        """
        self._ensure_local_storage(project.id)
        known = self.task_hashes(project.id)
        objects = self.image_root / OBJECTS_DIR
        new: dict[str, dict[str, str]] = {}
        skipped = 0
        for path in progress(list(paths)):
            digest = file_sha256(path)
            if digest in known or digest in new:
                skipped += 1
                continue
            target = objects / digest[:2] / f"{digest}{path.suffix.lower()}"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            relative = target.relative_to(self.image_root).as_posix()
            new[digest] = {
                project.config.data_key: f"/data/local-files/?d={relative}",
                "sha256": digest,
                "filename": printable_name(path),
            }
        created: list[int] = []
        items = list(new.values())
        for start in range(0, len(items), BATCH):
            with self._calling(f"import tasks into project {project.id}"):
                response = self.sdk.projects.import_tasks(
                    id=project.id, request=items[start : start + BATCH], return_task_ids=True
                )
            created.extend(response.task_ids or [])
        return ImportResult(created=tuple(created), skipped=skipped)

    def task_with_hash(self, project_id: int, digest: str) -> int | None:
        """The task whose image has this content hash (`data.sha256`), if any: one filtered query."""
        query = _query([{"filter": "filter:tasks:data.sha256", "operator": "equal", "type": "String", "value": digest}])
        with self._calling(f"look up image {digest[:12]} in project {project_id}"):
            found = list(self.sdk.tasks.list(project=project_id, query=query, include="id", page_size=1))
        return int(found[0].id) if found else None

    def import_with_prediction(
        self, project: Project, body: bytes, suffix: str, data: dict[str, Any], prediction: Prediction, model_version: str
    ) -> int:
        """Store image bytes under the image root (content-addressed) and create one task for them,
        with `data` beside the image URL and the hash, and `prediction` as its pre-annotation, in one
        request (the task never exists without it). Returns its id."""
        self._ensure_local_storage(project.id)
        digest = hashlib.sha256(body).hexdigest()
        target = self.image_root / OBJECTS_DIR / digest[:2] / f"{digest}{suffix}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_bytes(body)
            partial.replace(target)
        url = f"/data/local-files/?d={target.relative_to(self.image_root).as_posix()}"
        task = {
            "data": {**data, project.config.data_key: url, "sha256": digest},
            "predictions": [{k: v for k, v in prediction_to_ls(prediction, model_version).items() if k != "task"}],
        }
        with self._calling(f"import an image into project {project.id}"):
            response = self.sdk.projects.import_tasks(id=project.id, request=[task], return_task_ids=True)
        return int((response.task_ids or [0])[0])

    def download(self, url: str, task_id: int, *, max_bytes: int, timeout_s: float) -> bytes:
        """A file Label Studio serves: a path on the server (`/data/upload/...`, `/data/local-files/...`),
        a URL on it, or a cloud storage URI (`s3://...`) resolved through the task's storage.

        Raises:
            FetchError: Not found, refused or too big: a problem of this task's image.
            LabelStudioError: The server is unreachable or failing (retryable): not the image's fault.
        """
        if urlsplit(url).scheme.lower() in STORAGE_SCHEMES:
            encoded = base64.urlsafe_b64encode(url.encode()).decode()
            path, params = f"tasks/{task_id}/resolve/", {"fileuri": encoded}
        else:
            path, params = url.removeprefix(self.url).lstrip("/"), None
        options = {"timeout_in_seconds": max(1, int(timeout_s)), "max_retries": 0}
        with self._calling(f"download the image of task {task_id}"):
            client = self.sdk._client_wrapper.httpx_client
            with client.stream(path, method="GET", params=params, request_options=options) as response:
                if response.status_code >= 500:
                    raise LabelStudioError(
                        f"Label Studio at {self.url} answered {response.status_code} for the image of task {task_id}; "
                        "check its log.", retryable=True,
                    )
                return read_capped(response, max_bytes)

    def unlabeled_tasks(self, project_id: int) -> dict[int, dict[str, Any]]:
        """Task id -> data for every task nobody has touched (no annotation, no skip): what
        pre-annotations are for."""
        with self._calling(f"list the unlabeled tasks of project {project_id}"):
            pages = self.sdk.tasks.list(project=project_id, include="id,data", query=_query(UNTOUCHED), page_size=BATCH)
            return {t.id: dict(t.data or {}) for t in pages}

    def all_tasks(self, project_id: int) -> dict[int, dict[str, Any]]:
        """Task id -> data for every task of the project, labeled or not (the image pool)."""
        with self._calling(f"list the tasks of project {project_id}"):
            return {t.id: dict(t.data or {}) for t in self.sdk.tasks.list(project=project_id, include="id,data", page_size=BATCH)}

    def task_count(self, project_id: int) -> int:
        """How many tasks the project holds (one request)."""
        with self._calling(f"count the tasks of project {project_id}"):
            return int(self.sdk.projects.get(id=project_id).task_number or 0)

    def untouched_ids(self, project_id: int) -> set[int]:
        """The ids of the tasks nobody has touched (cheaper than `unlabeled_tasks`: no data)."""
        with self._calling(f"list the unlabeled tasks of project {project_id}"):
            return {t.id for t in self.sdk.tasks.list(project=project_id, include="id", query=_query(UNTOUCHED), page_size=BATCH)}

    def untouched_without(self, project_id: int, model_version: str) -> set[int]:
        """Untouched tasks that carry no prediction of `model_version` (new tasks, or a write cut short)."""
        return {t for t, versions in self.versions_on_untouched(project_id).items() if model_version not in versions}

    def fetch_changed(self, project_id: int, cursor: str | None, overlap_s: float = 0.0) -> ChangeSet:
        """The tasks whose annotations were created, updated or deleted after `cursor`.

        Uses the Data Manager filter on the task's `updated_at` (which moves on every annotation
        change but not on bulk prediction imports), ordered oldest first, so the cost follows the
        number of changed tasks rather than the project size. With no cursor, every task that has
        an annotation (every task is read: Label Studio's annotation count lags a save).

        Safe while people save: pages are read by key (`updated_at` after the last page's), not by
        offset, so a task saved again meanwhile is read again (its newest state kept, never twice)
        instead of shifting another one out of reach. With `overlap_s` (the loop's poll: `OVERLAP_S`)
        the last seconds before the cursor are read again, for a save whose transaction committed
        after a later one's; the caller drops what its snapshot already holds.

        Args:
            project_id: The project.
            cursor: `updated_at` of the last change already consumed (from a previous ChangeSet).
        """
        found: dict[int, LabeledTask] = {}
        boundary = format_cursor(parse_timestamp(cursor) - timedelta(seconds=overlap_s)) if cursor else None
        with self._calling(f"fetch changed tasks of project {project_id}"):
            while True:  # keyset pages: a task saved again meanwhile moves past the boundary, never out of reach
                after = [{"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": boundary}]
                batch = self._changed_page(project_id, after if boundary else [], "tasks:updated_at", found)
                if len(batch) < CHANGED_PAGE:
                    break
                stamps = sorted({t.updated_at for t in batch})
                if len(stamps) == 1:  # one instant fills the page (a bulk action stamps every task it touches alike)
                    self._read_instant(project_id, stamps[0], found)
                boundary = format_cursor(stamps[-2] if len(stamps) > 1 else stamps[0])  # ties at the edge are read again
        latest = max((t.updated_at for t in found.values()), default=None)
        # With no cursor every task is read and those with annotations kept: not filtered on Label
        # Studio's annotation count (`LABELED`), which lagged the annotations while people saved. A
        # first poll filtered on it left out 172 tasks saved 1-10 s before it; its cursor passed them,
        # and 110 of them no later poll read again (bench/load.py, 20 annotators on 2 cores).
        kept = found.values() if cursor else [t for t in found.values() if t.annotations]
        tasks = tuple(sorted(kept, key=lambda t: (t.updated_at, t.id)))
        return ChangeSet(tasks=tasks, cursor=format_cursor(max(latest, parse_timestamp(cursor)) if cursor else latest) if latest else cursor)

    def _changed_page(
        self, project_id: int, items: list[dict[str, Any]], ordering: str, found: dict[int, LabeledTask]
    ) -> list[LabeledTask]:
        """One page of changed tasks (`CHANGED_FIELDS`, `CHANGED_PAGE` of them), each kept in `found` in its newest state."""
        page = self.sdk.tasks.list(
            project=project_id, fields="all", include=CHANGED_FIELDS, query=_query(items, ordering=[ordering]),
            page_size=CHANGED_PAGE,
        )
        batch = [task_from_json(t.model_dump(mode="json")) for t in page.items or []]
        for task in batch:  # seen twice (saved again while paging): its newest state
            if task.id not in found or task.updated_at >= found[task.id].updated_at:
                found[task.id] = task
        return batch

    def _read_instant(self, project_id: int, stamp: datetime, found: dict[int, LabeledTask]) -> None:
        """Every task whose `updated_at` is exactly `stamp`, in pages keyed by task id (the Data Manager
        orders by one key, so `updated_at` alone cannot page through tasks that share it)."""
        at = format_cursor(stamp)
        instant = {"filter": "filter:tasks:updated_at", "operator": "in", "type": "Datetime", "value": {"min": at, "max": at}}
        last = 0
        while True:
            after = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last}
            batch = self._changed_page(project_id, [instant, after], "tasks:id", found)
            if len(batch) < CHANGED_PAGE:
                return
            last = max(t.id for t in batch)

    def count_changed(self, project_id: int, cursor: str | None) -> int:
        """How many tasks changed after `cursor` (with no cursor: how many have an annotation); one
        row read, the count is in the answer."""
        after = LABELED if cursor is None else [
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": cursor}
        ]
        with self._calling(f"count the changed tasks of project {project_id}"):
            page = self.sdk.tasks.list(project=project_id, include="id", query=_query(after), page_size=1)
        return int(page.response.total) if page.response is not None else 0

    def newest_change(self, project_id: int) -> str | None:
        """The newest task `updated_at` of the project (None when it has no task): one row read,
        whatever the project's size. When it moves, an annotation was created, updated or deleted
        (or a task changed); a prediction import does not move it."""
        with self._calling(f"read the newest change of project {project_id}"):
            page = self.sdk.tasks.list(
                project=project_id, include="id,updated_at", query=_query([], ordering=["-tasks:updated_at"]), page_size=1
            )
            newest = next(iter(page.items or []), None)
        return format_cursor(newest.updated_at) if newest is not None and newest.updated_at else None

    def export_all(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with its annotations, by a full JSON export (the slow way to find changes)."""
        with self._calling(f"export project {project_id}"):
            body = b"".join(
                self.sdk.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True)
            )
        return json.loads(body)

    # --- predictions ----------------------------------------------------------------------------

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Model version -> number of predictions it has in the project."""
        return self._raw("GET", f"api/projects/{project_id}/model-versions/", f"list model versions of {project_id}")

    def _raw(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """An endpoint the SDK has no method for, through the SDK's own authenticated HTTP client."""
        with self._calling(what):
            response = self.sdk._client_wrapper.httpx_client.request(path, method=method, **kwargs)
            if response.status_code >= 400:
                raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
            return response.json() if response.content else {}

    def delete_prediction(self, prediction_id: int) -> None:
        """Delete one prediction (never one an annotation started from: callers check)."""
        self._raw("DELETE", f"api/predictions/{prediction_id}/", f"delete prediction {prediction_id}")

    def _import(self, project_id: int, items: list[dict[str, Any]], what: str, after_batch: Callable[[], None]) -> None:
        for start in range(0, len(items), BATCH):
            with self._calling(f"import {what} into project {project_id}"):
                self.sdk.projects.import_predictions(id=project_id, request=items[start : start + BATCH])
            after_batch()

    def add_predictions(self, project_id: int, predictions: Iterable[Prediction], model_version: str) -> int:
        """Write predictions in bulk under `model_version` (on new tasks: nothing is replaced). Returns how many."""
        items = [prediction_to_ls(p, model_version) for p in predictions]
        self._import(project_id, items, f"predictions of {model_version!r}", lambda: None)
        return len(items)

    def versions_on_untouched(self, project_id: int) -> dict[int, set[str]]:
        """Task id -> the model versions of its predictions, for every task nobody has touched."""
        with self._calling(f"read the predictions of project {project_id}'s unlabeled tasks"):
            pages = self.sdk.tasks.list(
                project=project_id, fields="all", include=PREDICTION_FIELDS, query=_query(UNTOUCHED), page_size=PAGE
            )
            return {t.id: {p.model_version or "" for p in t.predictions or []} for t in pages}

    def untouched_predictions(self, project_id: int) -> dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Task id -> (data, its predictions as {model_version, result, score}) for every task nobody has touched."""
        with self._calling(f"read the predictions of project {project_id}'s unlabeled tasks"):
            pages = self.sdk.tasks.list(
                project=project_id, fields="all", include=f"data,{PREDICTION_FIELDS}", query=_query(UNTOUCHED), page_size=PAGE
            )
            return {
                t.id: (dict(t.data or {}), [{"model_version": p.model_version or "", "result": p.result or [], "score": p.score}
                                            for p in t.predictions or []])
                for t in pages
            }

    def write_predictions(
        self,
        project: Project,
        predictions: Iterable[Prediction],
        model_version: str,
        after_batch: Callable[[], None] = lambda: None,
        untouched: Collection[int] | None = None,
    ) -> int:
        """Give every task nobody has touched its prediction of `model_version`, next to what it carries.

        Written once per version: a task that carries `model_version` already (a rerun after a write
        cut short) is skipped, so none gets it twice. A task labeled or skipped meanwhile is left
        alone (the tasks are listed again before writing). Nothing is deleted here: Label Studio
        shows one version (`show_model_version`), and `tidy_predictions` clears superseded ones
        later, when nobody waits (deleting costs Label Studio ~5 ms a prediction; importing, ~1).

        Args:
            project: The project.
            predictions: One per task (or fewer).
            model_version: Their version.
            after_batch: Called after each batch is written (a fault test pauses there).
            untouched: The untouched tasks, when the caller listed them a moment ago (saves listing
                them again; a task labeled in between gets a prediction it does not show).

        Returns:
            The number of `model_version` predictions written.
        """
        if self.model_versions(project.id).get(model_version):
            carrying = self.versions_on_untouched(project.id)
            still = {t for t, versions in carrying.items() if model_version not in versions}
        else:
            still = set(untouched) if untouched is not None else self.untouched_ids(project.id)
        items = [prediction_to_ls(p, model_version) for p in predictions if p.task_id in still]
        self._import(project.id, items, f"predictions of {model_version!r}", after_batch)
        return len(items)

    def tidy_predictions(
        self, project: Project, keep: set[str], chunk: int = 100, should_stop: Callable[[], bool] = lambda: False
    ) -> int:
        """Delete the predictions of versions not in `keep` from the tasks nobody has touched.

        In chunks of `chunk` tasks, asking `should_stop` before each (new labels never wait more than
        one chunk): a chunk's predictions are deleted in one Data Manager action, in which the server
        checks again that each task is untouched, and the kept ones are written back. (Deleting
        predictions one by one would move each task's `updated_at`, so the incremental poll would see
        every tidied task as changed; the action does not.) The kept ones come back with new ids:
        someone who opened a task before a tidy and saves after it is refused by Label Studio (the
        prediction they started from is gone), so the loop tidies only after `predict.tidy_after_s`
        without any label. A tidy cut short between the two calls leaves tasks without the champion's
        prediction, which `untouched_without` finds and the next write-back fills.

        Returns:
            The number of predictions deleted that were not kept.
        """
        began = format_cursor(datetime.now(UTC))
        with self._calling(f"read the predictions of project {project.id}'s unlabeled tasks"):
            pages = self.sdk.tasks.list(
                project=project.id, fields="all", include=PREDICTION_FIELDS, query=_query(UNTOUCHED), page_size=PAGE
            )
            predictions = {
                t.id: [{"task": t.id, "model_version": p.model_version, "score": p.score, "result": p.result} for p in t.predictions or []]
                for t in pages
            }
        kept = {t: [p for p in found if p["model_version"] in keep] for t, found in predictions.items()}
        superseded = {t: len(found) - len(kept[t]) for t, found in predictions.items() if len(found) > len(kept[t])}
        stale = sorted(superseded)
        deleted = 0
        for start in range(0, len(stale), chunk):
            if should_stop():
                break
            part = stale[start : start + chunk]
            self._raw(
                "POST", f"api/dm/actions?id=delete_tasks_predictions&project={project.id}",
                f"delete superseded pre-annotations of project {project.id}",
                json={"selectedItems": {"all": False, "included": part}, "filters": {"conjunction": "and", "items": UNTOUCHED}},
            )
            touched = {t.id for t in self.fetch_changed(project.id, began).tasks}  # the action left those alone
            cleared = [t for t in part if t not in touched]
            self._import(project.id, [k for t in cleared for k in kept[t]], "the kept predictions", lambda: None)
            deleted += sum(superseded[t] for t in cleared)
        return deleted

    def sync_marked_predictions(
        self, project: Project, predictions: Iterable[Prediction], model_version: str, mark: str
    ) -> int:
        """Make `predictions` (each region's result id starting with `mark`) the marked predictions on labeled tasks.

        Marked predictions already there and equal to a wanted one are left as they are; the others
        are deleted one by one, except those an annotation was started from (they are its history).

        Returns:
            The number of predictions written.
        """
        wanted = {self._key(item): item for item in (prediction_to_ls(p, model_version) for p in predictions)}
        marked = {"filter": "filter:tasks:predictions_results", "operator": "contains", "type": "String", "value": mark}
        with self._calling(f"list the marked predictions of project {project.id}"):
            tasks = list(self.sdk.tasks.list(
                project=project.id, fields="all", include=f"{PREDICTION_FIELDS},{ANNOTATION_FIELDS}",
                query=_query([*LABELED, marked]), page_size=PAGE,
            ))
        stale = []
        for task in tasks:
            started_from = {a.get("parent_prediction") for a in task.annotations or []}
            for p in task.predictions or []:
                if not any(str(r.get("id", "")).startswith(mark) for r in p.result or []):
                    continue
                key = self._key({"task": task.id, "model_version": p.model_version, "score": p.score, "result": p.result})
                if wanted.pop(key, None) is None and p.id not in started_from:
                    stale.append(int(p.id))
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(self.delete_prediction, stale))
        self._import(project.id, list(wanted.values()), f"marked predictions of {model_version!r}", lambda: None)
        return len(wanted)

    @staticmethod
    def _key(item: dict[str, Any]) -> str:
        values = [{k: r.get(k) for k in ("id", "from_name", "to_name", "type", "value")} for r in item["result"]]
        return json.dumps([item["task"], item["model_version"], round(float(item["score"] or 0), 4), values], sort_keys=True)

    def show_model_version(self, project_id: int, model_version: str) -> None:
        """Make `model_version` the one Label Studio shows people as pre-annotations."""
        with self._calling(f"set project {project_id}'s model version"):
            self.sdk.projects.update(id=project_id, model_version=model_version)

    def shown_model_version(self, project_id: int) -> str:
        """The model version Label Studio shows as pre-annotations ("" when none is chosen)."""
        with self._calling(f"read project {project_id}'s model version"):
            return self.sdk.projects.get(id=project_id).model_version or ""

    def labeled_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with an annotation, with its annotations and predictions (Label Studio's JSON).

        Costs in proportion to the labeled tasks, not the project."""
        with self._calling(f"list the labeled tasks of project {project_id}"):
            pages = self.sdk.tasks.list(project=project_id, fields="all", query=_query(LABELED), page_size=PAGE)
            return [t.model_dump(mode="json") for t in pages]

    # --- webhooks -------------------------------------------------------------------------------

    def ensure_webhook(self, project_id: int, url: str, headers: dict[str, str], actions: Iterable[str]) -> int:
        """Make Label Studio post `actions` of the project to `url` with `headers`, once: a webhook
        already there for `url` is updated (and re-activated), never duplicated. Returns its id."""
        body = {"actions": list(actions), "headers": headers, "is_active": True, "send_payload": False, "send_for_all_actions": False}
        with self._calling(f"register the webhook of project {project_id}"):
            same = [w for w in self.sdk.webhooks.list(project=str(project_id)) if w.url == url and w.project == project_id]
            if same:
                self.sdk.webhooks.update(id=same[0].id, url=url, **body)
                return int(same[0].id)
            return int(self.sdk.webhooks.create(url=url, project=project_id, **body).id)

    def deactivate_webhook(self, webhook_id: int, timeout_s: float = 2.0) -> None:
        """Stop Label Studio posting to a webhook (kept, so the next `ensure_webhook` re-activates it;
        Label Studio clears its actions on this update, and `ensure_webhook` sets them again). Quick:
        it runs while serving stops."""
        with self._calling(f"deactivate webhook {webhook_id}"):
            self.sdk.webhooks.update(
                id=webhook_id, is_active=False, request_options={"timeout_in_seconds": timeout_s, "max_retries": 0}
            )

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks as Label Studio lists them."""
        with self._calling(f"list the webhooks of project {project_id}"):
            return [w.model_dump(mode="json") for w in self.sdk.webhooks.list(project=str(project_id))]

    # --- views ----------------------------------------------------------------------------------

    def ensure_view(
        self, project_id: int, title: str, filters: list[dict[str, Any]], ordering: list[str], conjunction: str = "and"
    ) -> int:
        """Create or update the Data Manager tab `title` (filters joined by `conjunction`). Returns its id."""
        data = {"title": title, "filters": {"conjunction": conjunction, "items": filters}, "ordering": ordering}
        view = self.view_id(project_id, title)
        with self._calling(f"save view {title!r} of project {project_id}"):
            if view is not None:
                self.sdk.views.update(str(view), project=project_id, data=data)
                return view
            return int(self.sdk.views.create(project=project_id, data=data).id)

    def ensure_task_list_view(self, project_id: int, title: str, task_ids: Iterable[int], ordering: list[str]) -> int:
        """Create or update the Data Manager tab `title` showing exactly the tasks `task_ids`, sorted by
        `ordering` (e.g. `LEAST_CONFIDENT_FIRST`). Returns its id."""
        return self.ensure_view(project_id, title, task_ids_filter(task_ids), ordering, "or")

    def view_id(self, project_id: int, title: str) -> int | None:
        """The id of the Data Manager tab `title` (the oldest, if several), if it exists."""
        with self._calling(f"list the views of project {project_id}"):
            views = [v for v in self.sdk.views.list(project=project_id) if (v.data or {}).get("title") == title]
        return int(min(v.id for v in views)) if views else None

    def view_tasks(self, project_id: int, view_id: int) -> list[dict[str, Any]]:
        """The tasks a Data Manager tab shows, in its order, with their annotations and predictions."""
        with self._calling(f"read view {view_id} of project {project_id}"):
            pages = self.sdk.tasks.list(project=project_id, view=view_id, fields="all", page_size=PAGE)
            return [t.model_dump(mode="json") for t in pages]

    def labeled_task(self, task_id: int) -> LabeledTask:
        """One task with its current annotations, as `fetch_changed` returns them."""
        return task_from_json(self.task(task_id))

    def task(self, task_id: int) -> dict[str, Any]:
        """One task with its annotations and predictions, as Label Studio returns it."""
        with self._calling(f"read task {task_id}"):
            return self.sdk.tasks.get(id=task_id).model_dump(mode="json")

    def annotate(
        self, task_id: int, result: list[dict[str, Any]], parent_prediction: int | None = None, lead_time: float | None = None
    ) -> int:
        """Create an annotation as the token's user, as a person would in the UI (who took
        `lead_time` seconds, when given). Returns its id.

        flywheel's own loop never calls this; the simulator and the tests play the person with it.
        """
        with self._calling(f"annotate task {task_id}"):
            extra: dict[str, Any] = {"parent_prediction": parent_prediction} if parent_prediction else {}
            if lead_time is not None:
                extra["lead_time"] = lead_time
            return self.sdk.annotations.create(id=task_id, result=result, **extra).id


def printable_name(path: Path) -> str:
    """A file name as text Label Studio can store: bytes that are not UTF-8 become U+FFFD."""
    return path.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _short(body: Any, limit: int = 300) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text[:limit]
