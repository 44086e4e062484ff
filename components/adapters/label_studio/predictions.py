"""Predictions: the pre-annotations written once per model version on the tasks nobody has touched,
tidied later; the marked predictions (suspected label errors) synced on labeled tasks; the model
version Label Studio shows. No prediction that an annotation was started from is ever deleted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from components.adapters.label_studio.changes import Changes
from components.adapters.label_studio.connection import (
    ANNOTATION_FIELDS,
    BATCH,
    LABELED,
    PAGE,
    PREDICTION_FIELDS,
    UNTOUCHED,
    Project,
    query,
)
from components.core.conversions import Prediction, format_cursor, prediction_to_ls


class Predictions(Changes):
    """The predictions of a project (a tidy reads what changed meanwhile, and leaves those tasks alone)."""

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Model version -> number of predictions it has in the project."""
        return self._raw("GET", f"api/projects/{project_id}/model-versions/", f"list model versions of {project_id}")

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
                project=project_id, fields="all", include=PREDICTION_FIELDS, query=query(UNTOUCHED), page_size=PAGE
            )
            return {t.id: {p.model_version or "" for p in t.predictions or []} for t in pages}

    def untouched_predictions(self, project_id: int) -> dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Task id -> (data, its predictions as {model_version, result, score}) for every task nobody has touched."""
        with self._calling(f"read the predictions of project {project_id}'s unlabeled tasks"):
            pages = self.sdk.tasks.list(
                project=project_id, fields="all", include=f"data,{PREDICTION_FIELDS}", query=query(UNTOUCHED), page_size=PAGE
            )
            return {
                t.id: (dict(t.data or {}), [{"model_version": p.model_version or "", "result": p.result or [], "score": p.score}
                                            for p in t.predictions or []])
                for t in pages
            }

    def untouched_ids(self, project_id: int) -> set[int]:
        """The ids of the tasks nobody has touched (cheaper than `unlabeled_tasks`: no data)."""
        with self._calling(f"list the unlabeled tasks of project {project_id}"):
            return {t.id for t in self.sdk.tasks.list(project=project_id, include="id", query=query(UNTOUCHED), page_size=BATCH)}

    def untouched_without(self, project_id: int, model_version: str) -> set[int]:
        """Untouched tasks that carry no prediction of `model_version` (new tasks, or a write cut short)."""
        return {t for t, versions in self.versions_on_untouched(project_id).items() if model_version not in versions}

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
                project=project.id, fields="all", include=PREDICTION_FIELDS, query=query(UNTOUCHED), page_size=PAGE
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
                query=query([*LABELED, marked]), page_size=PAGE,
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
