"""Tasks: images imported as tasks (content-addressed, deduplicated), the reads of tasks and their
data, a file Label Studio serves, and an annotation made as a person would (the simulator's and the
tests' hand; the loop never annotates).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components.adapters.label_studio.connection import BATCH, LABELED, PAGE, UNTOUCHED, Connection, Project, query
from components.core.conversions import LabeledTask, Prediction, prediction_to_ls, task_from_json
from components.core.errors import LabelStudioError
from components.data.images import STORAGE_SCHEMES, file_sha256, read_capped

OBJECTS_DIR = "objects"  # under the image root: Label Studio refuses a storage at the root itself


@dataclass(frozen=True)
class ImportResult:
    """What `import_images` did: task ids created, and files skipped as already imported."""

    created: tuple[int, ...]
    skipped: int


def printable_name(path: Path) -> str:
    """A file name as text Label Studio can store: bytes that are not UTF-8 become U+FFFD."""
    return path.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Tasks(Connection):
    """The tasks of a project: importing images, and reading tasks and their data."""

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
        by_hash = query([{"filter": "filter:tasks:data.sha256", "operator": "equal", "type": "String", "value": digest}])
        with self._calling(f"look up image {digest[:12]} in project {project_id}"):
            found = list(self.sdk.tasks.list(project=project_id, query=by_hash, include="id", page_size=1))
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
            pages = self.sdk.tasks.list(project=project_id, include="id,data", query=query(UNTOUCHED), page_size=BATCH)
            return {t.id: dict(t.data or {}) for t in pages}

    def all_tasks(self, project_id: int) -> dict[int, dict[str, Any]]:
        """Task id -> data for every task of the project, labeled or not (the image pool)."""
        with self._calling(f"list the tasks of project {project_id}"):
            return {t.id: dict(t.data or {}) for t in self.sdk.tasks.list(project=project_id, include="id,data", page_size=BATCH)}

    def task_count(self, project_id: int) -> int:
        """How many tasks the project holds (one request)."""
        with self._calling(f"count the tasks of project {project_id}"):
            return int(self.sdk.projects.get(id=project_id).task_number or 0)

    def labeled_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with an annotation, with its annotations and predictions (Label Studio's JSON).

        Costs in proportion to the labeled tasks, not the project."""
        with self._calling(f"list the labeled tasks of project {project_id}"):
            pages = self.sdk.tasks.list(project=project_id, fields="all", query=query(LABELED), page_size=PAGE)
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

    def export_all(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with its annotations, by a full JSON export (the slow way to find changes)."""
        with self._calling(f"export project {project_id}"):
            body = b"".join(
                self.sdk.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True)
            )
        return json.loads(body)
