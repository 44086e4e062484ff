"""The incremental poll: the tasks whose annotations changed since a cursor, read in keyset pages at
a cost that follows what changed, and the cheap questions the safety-net poll asks (how many tasks
changed, when the newest change was).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from components.adapters.label_studio.connection import ANNOTATION_FIELDS, LABELED, Connection, query
from components.core.conversions import LabeledTask, format_cursor, parse_timestamp, task_from_json

CHANGED_PAGE = 500  # tasks per page of `fetch_changed` (id, data, `updated_at`, annotations): see `PAGE`
CHANGED_FIELDS = f"data,{ANNOTATION_FIELDS}"
# `fetch_changed` reads this much before its cursor again: a save is stamped (`updated_at`) while its
# request runs and seen once it commits, so a poll can miss one stamped just before its cursor. A save
# took at most 3 s while 20 annotators saved on 2 cores (bench/load.py): 30 s leaves room for worse.
OVERLAP_S = 30.0


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


class Changes(Connection):
    """What changed in a project since a cursor."""

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
            project=project_id, fields="all", include=CHANGED_FIELDS, query=query(items, ordering=[ordering]),
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
            page = self.sdk.tasks.list(project=project_id, include="id", query=query(after), page_size=1)
        return int(page.response.total) if page.response is not None else 0

    def newest_change(self, project_id: int) -> str | None:
        """The newest task `updated_at` of the project (None when it has no task): one row read,
        whatever the project's size. When it moves, an annotation was created, updated or deleted
        (or a task changed); a prediction import does not move it."""
        with self._calling(f"read the newest change of project {project_id}"):
            page = self.sdk.tasks.list(
                project=project_id, include="id,updated_at", query=query([], ordering=["-tasks:updated_at"]), page_size=1
            )
            newest = next(iter(page.items or []), None)
        return format_cursor(newest.updated_at) if newest is not None and newest.updated_at else None
