"""Polling while people save: `fetch_changed` reads small keyset pages of only the fields it needs,
reads every task of a bulk action that stamped more than a page alike, and keeps each task's newest
state once; a run waiting for the cursor lock asks for it again soon; the load benchmark's snapshot
lag and run outcomes are computed from what it measured."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from bench.load import Snapshot, describe_runs, judge_run, percentile, snapshot_lags
from components.core.conversions import format_cursor
from components.adapters.label_studio import CHANGED_FIELDS, CHANGED_PAGE, OVERLAP_S, LabelStudio

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stamp(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class FakeTasks:
    """The Data Manager's task list over an in-memory project: the filters and orderings
    `fetch_changed` uses, `page_size`, and a hook that lets people save between two pages."""

    def __init__(self, tasks: dict[int, dict[str, Any]]):
        self.tasks = tasks
        self.calls: list[dict[str, Any]] = []
        self.between_pages = lambda: None

    def list(self, *, project: int, fields: str, include: str, query: str, page_size: int) -> SimpleNamespace:
        self.calls.append({"fields": fields, "include": include, "page_size": page_size})
        body = json.loads(query)
        rows = [t for t in self.tasks.values() if all(self._matches(t, f) for f in body["filters"]["items"])]
        key = body["ordering"][0].removeprefix("tasks:")
        rows.sort(key=lambda t: t[key])
        page = [SimpleNamespace(model_dump=lambda mode, t=t: self._as_json(t)) for t in rows[:page_size]]
        self.between_pages()
        return SimpleNamespace(items=page)

    @staticmethod
    def _matches(task: dict[str, Any], item: dict[str, Any]) -> bool:
        field = item["filter"].removeprefix("filter:tasks:")
        if field == "total_annotations":  # Label Studio's count, which may lag the annotations
            return task.get("total_annotations", len(task["annotations"])) > item["value"]
        if field == "id":
            return task["id"] > item["value"]
        value = item["value"]
        if item["operator"] == "greater":
            return task["updated_at"] > datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        low, high = (datetime.strptime(value[k], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) for k in ("min", "max"))
        return low <= task["updated_at"] <= high

    @staticmethod
    def _as_json(task: dict[str, Any]) -> dict[str, Any]:
        return {"id": task["id"], "data": {"image": f"/{task['id']}.png"}, "updated_at": task["updated_at"].isoformat(),
                "annotations": [dict(a) for a in task["annotations"]]}


def labeled(task_id: int, at: datetime, annotation_id: int | None = None) -> dict[str, Any]:
    annotation = {"id": annotation_id or task_id, "result": [{"value": {"choices": ["a"]}}], "updated_at": at.isoformat(),
                  "created_at": at.isoformat(), "completed_by": 1}
    return {"id": task_id, "updated_at": at, "annotations": [annotation]}


def client(tasks: dict[int, dict[str, Any]]) -> tuple[LabelStudio, FakeTasks]:
    ls = LabelStudio("http://ls.invalid", "key", image_root=__import__("pathlib").Path("/tmp"))
    fake = FakeTasks(tasks)
    ls._sdk = SimpleNamespace(tasks=fake)
    return ls, fake


def test_pages_are_small_and_ask_only_for_what_a_snapshot_needs():
    tasks = {i: labeled(i, stamp(i)) for i in range(1, 2 * CHANGED_PAGE + 31)}
    ls, fake = client(tasks)
    changes = ls.fetch_changed(1, None)
    assert [t.id for t in changes.tasks] == sorted(tasks)
    assert changes.cursor == format_cursor(stamp(2 * CHANGED_PAGE + 30))
    assert {(c["fields"], c["include"], c["page_size"]) for c in fake.calls} == {("all", CHANGED_FIELDS, CHANGED_PAGE)}
    assert len(fake.calls) == 3  # pages of CHANGED_PAGE, the edge read again: no page of the whole change set


def test_a_task_saved_again_while_paging_is_read_again_in_its_newest_state_once():
    tasks = {i: labeled(i, stamp(i)) for i in range(1, CHANGED_PAGE + 51)}
    ls, fake = client(tasks)

    def save_again() -> None:  # a person corrects task 3 after the first page was read
        if len(fake.calls) == 1:
            tasks[3] = labeled(3, stamp(10_000), annotation_id=99)

    fake.between_pages = save_again
    changes = ls.fetch_changed(1, None)
    ids = [t.id for t in changes.tasks]
    assert sorted(ids) == sorted(tasks) and len(ids) == len(set(ids))
    assert next(t for t in changes.tasks if t.id == 3).annotations[0].id == 99


@pytest.mark.parametrize("tied", [CHANGED_PAGE, CHANGED_PAGE + 1, 3 * CHANGED_PAGE + 7])
def test_a_bulk_action_that_stamps_more_than_a_page_alike_loses_none_of_them(tied):
    """Label Studio's bulk actions (predictions to annotations, delete annotations) stamp every task they
    touch with one `updated_at`: more of them than a page holds are read by id, none skipped."""
    tasks = {i: labeled(i, stamp(i)) for i in range(1, 11)}
    tasks.update({i: labeled(i, stamp(50)) for i in range(11, 11 + tied)})
    tasks.update({i: labeled(i, stamp(100 + i)) for i in range(11 + tied, 31 + tied)})
    ls, _ = client(tasks)
    changes = ls.fetch_changed(1, format_cursor(stamp(0)))
    assert sorted(t.id for t in changes.tasks) == sorted(tasks)


def test_a_save_seen_late_is_read_by_the_next_poll():
    """A save is stamped while its request runs and seen once it commits: the next poll reads
    `OVERLAP_S` back and finds it."""
    tasks = {i: labeled(i, stamp(i)) for i in range(1, 100)}
    late = tasks.pop(90)  # stamped at 90 s, not committed yet
    ls, _ = client(tasks)
    first = ls.fetch_changed(1, None)
    assert 90 not in {t.id for t in first.tasks} and first.cursor == format_cursor(stamp(99))
    tasks[90] = late  # committed, 9 s before the cursor
    again = ls.fetch_changed(1, first.cursor, overlap_s=OVERLAP_S)
    assert 90 in {t.id for t in again.tasks} and again.cursor == first.cursor


def test_a_first_poll_does_not_trust_the_annotation_count():
    """Label Studio's annotation count lagged the annotations while people saved: the first poll reads
    every task and keeps those with annotations, so a task whose count lags is in it, not behind its cursor."""
    tasks = {i: labeled(i, stamp(i)) for i in range(1, 2 * CHANGED_PAGE)}
    tasks.update({i: {"id": i, "updated_at": stamp(i), "annotations": []} for i in range(2 * CHANGED_PAGE, 2 * CHANGED_PAGE + 20)})
    for i in range(50, 80):
        tasks[i]["total_annotations"] = 0  # saved, not counted yet
    ls, _ = client(tasks)
    changes = ls.fetch_changed(1, None)
    assert [t.id for t in changes.tasks] == list(range(1, 2 * CHANGED_PAGE))  # not the unlabeled ones
    assert changes.cursor == format_cursor(stamp(2 * CHANGED_PAGE + 19))  # every task up to there was read


def test_nothing_changed_keeps_the_cursor():
    ls, fake = client({1: labeled(1, stamp(1))})
    cursor = format_cursor(stamp(5))
    assert ls.fetch_changed(1, cursor).cursor == cursor and len(fake.calls) == 1


def test_snapshot_lag_is_from_each_save_to_the_first_snapshot_that_holds_it():
    saved = {1: 100.0, 2: 110.0, 3: 130.0}
    snapshots = [
        Snapshot("snapshot-0002", 150.0, {1: 100.0, 2: 110.0, 3: 130.0}),  # seen out of order: the earlier one counts
        Snapshot("snapshot-0001", 120.0, {1: 100.0, 2: 110.0}),
        Snapshot("snapshot-0003", 160.0, {1: 100.0, 2: 110.0, 3: 130.0, 4: 159.5}),
    ]
    lags = snapshot_lags(snapshots, [*saved, 4, 5])
    assert lags == {1: 20.0, 2: 10.0, 3: 20.0, 4: 0.5}  # 5 never reached a snapshot: no lag, not zero
    assert snapshot_lags([Snapshot("snapshot-0001", 100.0, {1: 100.4})], [1]) == {1: 0.0}  # git's whole seconds
    assert percentile(lags.values(), 50) == pytest.approx(15.0) and percentile([], 95) is None


def test_a_run_is_judged_by_its_exit_and_its_own_words():
    ok = judge_run(0.0, 30.0, 0, "INFO 12 changed task(s); versioned snapshot-0004; trained a model.\n")
    idle = judge_run(0.0, 3.0, 0, "0 changed task(s): nothing to do.\n")
    failed = judge_run(0.0, 60.0, 1, "INFO polling\nerror: Label Studio at http://x is unreachable (ReadTimeout).\n")
    assert (ok.outcome, ok.versioned) == ("succeeded", ("snapshot-0004",))
    assert (idle.outcome, idle.reason) == ("skipped", "0 changed task(s): nothing to do.")
    assert (failed.outcome, failed.reason) == ("failed", "error: Label Studio at http://x is unreachable (ReadTimeout).")
    assert describe_runs([ok, idle, failed, failed]) == (
        '1 succeeded, 1 skipped ("0 changed task(s): nothing to do." x1), '
        '2 failed ("error: Label Studio at http://x is unreachable (ReadTimeout)." x2); '
        "45 s a run (median), 60 s the longest"
    )
