"""The Data Manager tabs people open (the loop keeps "Label next", "Suspected label errors" and
"Needs attention"), their orderings, and the tasks a tab shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from components.adapters.label_studio.connection import PAGE, Connection

# Orderings of a Data Manager tab. A prediction's score is the model's confidence.
BY_ID = ["tasks:id"]
LEAST_CONFIDENT_FIRST = ["tasks:predictions_score"]
MOST_CONFIDENT_FIRST = ["-tasks:predictions_score"]
# The Data Manager tabs the loop keeps, by title, and how a suspect's prediction is marked in them.
LABEL_NEXT_VIEW = "Label next"
SUSPECTS_VIEW = "Suspected label errors"
ATTENTION_VIEW = "Needs attention"
SUSPECT_MARK = "flywheel-label-error"  # the result id of a suspect's prediction


def task_ids_filter(task_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Filter items matching exactly these tasks (join them with "or"); none matches no task."""
    ids = sorted(set(task_ids)) or [0]
    return [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(i)} for i in ids]


class Views(Connection):
    """The Data Manager tabs of a project."""

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
