"""`flywheel serve` reacts to Label Studio's webhooks: real Label Studio posting to the real receiver,
the warm worker running real Prefect flow runs, snapshots versioned with DVC.

A person is played through Label Studio's API (several at once for the burst)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.loop.workspace import Workspace, open_workspace
from components.core.params import load_params
from components.core.settings import load_settings
from components.data.snapshot import read_manifest
from components.adapters.stack import free_port
from components.adapters.webhooks import ACTIONS, SECRET_HEADER
from flows.logs import LOG_FILE
from tests.conftest import ROOT
from tests.integration.test_loop import make_digits_project

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")


def set_poll(params_path: Path, **poll: Any) -> None:
    raw = yaml.safe_load(params_path.read_text())
    raw["poll"].update(poll)
    params_path.write_text(yaml.safe_dump(raw))


@contextmanager
def serving(params_path: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`flywheel serve` as a user runs it, on a free receiver port; yields the receiver's base URL
    once it answers. Stopped with SIGTERM (as Ctrl-C) at the end: it must exit on its own, children and all."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "flywheel"), "serve", "--params", str(params_path)],
        env={**env, "FLYWHEEL_RECEIVER_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        if yaml.safe_load(params_path.read_text())["poll"]["webhooks"]:
            wait_for(answers, 120, "the receiver answering")
        yield base
    finally:
        children = psutil.Process(process.pid).children(recursive=True)
        process.terminate()  # as Ctrl-C
        try:
            process.wait(timeout=60)  # a generous deadline: the behaviour is that it stops by itself
        except subprocess.TimeoutExpired:
            pass
        stopped = process.poll() is not None
        process.kill()
        process.wait()
        log.close()
        assert stopped, f"serve did not exit after SIGTERM (it was killed):\n{log_path.read_text()[-3000:]}"
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running after serve stopped: {alive}"


def iteration_runs(stack: Any, params_path: Path, since: datetime, trigger: str) -> list[Any]:
    """The flywheel-iteration flow runs of this project with this trigger started since `since`, from
    Prefect's history (filtered by the server: the session's other tests make hundreds of runs)."""
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["flywheel-iteration"])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200,
        )
    return [r for r in runs if r.parameters.get("params_path") == str(params_path.resolve()) and r.parameters.get("trigger") == trigger]


def snapshot_task_ids(ws: Workspace) -> set[int]:
    latest = ws.data.latest()
    return set() if latest is None else set(read_manifest(ws.data.checkout(latest))["task_id"].astype(int))


@pytest.fixture(scope="module")
def served_project(loop_env, label_studio, cli_env, tmp_path_factory):
    """A 260-digit project with a first champion, served with webhooks (the safety net far away)."""
    folder = tmp_path_factory.mktemp("webhooks")
    params_path, project, truth = make_digits_project(label_studio, folder, "hooks", 260, min_new_annotations=1)
    set_poll(params_path, webhooks=True, safety_net_s=3600)
    from tests.integration.test_loop import Person

    person = Person(label_studio, project, truth)
    person.label(20)
    with serving(params_path, cli_env, folder / "serve.log") as receiver:
        ws = open_workspace(load_settings(cwd=ROOT), load_params(params_path), project_root=params_path.parent)
        wait_for(lambda: len(snapshot_task_ids(ws)) == 20, 180, "the catch-up iteration at start")
        yield params_path, project, person, ws, receiver, folder / "serve.log"


def test_webhook_is_registered_once_with_the_secret_header(served_project, label_studio):
    params_path, project, *_ = served_project
    every = [h for h in label_studio.webhooks(project.id) if h["is_active"]]
    # Label Studio adds its own hook to a connected ML backend (`<backend>/webhook`; ml/models.py): not flywheel's receiver's
    hooks = [h for h in every if not h["url"].endswith("/webhook")]
    assert len(hooks) == 1, every
    assert set(hooks[0]["headers"]) == {SECRET_HEADER}
    assert hooks[0]["url"].endswith(f"/label-studio/{project.id}")
    again = label_studio.ensure_webhook(project.id, hooks[0]["url"], hooks[0]["headers"], ACTIONS)  # as a restarted serve does
    assert again == hooks[0]["id"]
    assert len([h for h in label_studio.webhooks(project.id) if h["url"] == hooks[0]["url"]]) == 1


def test_a_burst_of_200_annotations_lands_in_a_snapshot_in_a_few_iterations(served_project, stack):
    params_path, project, person, ws, receiver, log = served_project
    before = snapshot_task_ids(ws)
    since = datetime.now(UTC)
    unlabeled = sorted(person.ls.unlabeled_tasks(project.id).items())[:200]
    task_type = ws.task

    def save(item: tuple[int, dict[str, Any]]) -> int:
        task_id, data = item
        person.ls.annotate(task_id, task_type.result_of(person.truth[data["filename"]], project.config))
        return task_id

    with ThreadPoolExecutor(max_workers=4) as people:  # four people saving at once
        saved = set(people.map(save, unlabeled))
    assert len(saved) == 200
    wait_for(lambda: saved <= snapshot_task_ids(ws), 300, "every one of the 200 annotations in a snapshot")
    assert before <= snapshot_task_ids(ws)
    runs = wait_for(lambda: iteration_runs(stack, params_path, since, "webhook"), 30, "the iterations in Prefect's history")
    health = httpx.get(f"{receiver}/health").json()
    assert health["counts"]["accepted"] >= 200  # one webhook per save arrived
    # They coalesced: a wake-up hands over every event waiting, and one with nothing new since the cursor
    # starts no run, so a run covers every save made before it began: a burst costs a few runs, not one
    # per webhook. The bound is about that, not speed: at most one run per ten saves.
    assert 1 <= len(runs) <= len(saved) // 10, f"{len(runs)} iterations for {len(saved)} saves"


def test_a_webhook_with_a_wrong_secret_is_refused_and_changes_nothing(served_project, stack):
    params_path, project, person, ws, receiver, log = served_project
    before = httpx.get(f"{receiver}/health").json()["counts"]
    before.setdefault("accepted", 0)
    latest = ws.data.latest()
    since = datetime.now(UTC)
    url = f"{receiver}/label-studio/{project.id}"
    for headers in ({SECRET_HEADER: "wrong"}, {}):
        answer = httpx.post(url, json={"action": "ANNOTATION_CREATED"}, headers=headers)
        assert answer.status_code == 403
        assert SECRET_HEADER in answer.json()["message"]
    after = httpx.get(f"{receiver}/health").json()
    assert after["counts"].get("refused", 0) == before.get("refused", 0) + 2
    assert after["counts"].get("accepted", 0) == before["accepted"]
    assert ws.data.latest().rev == latest.rev  # the cursor did not move
    assert not iteration_runs(stack, params_path, since, "webhook")


def test_a_deleted_annotation_leaves_the_snapshot(served_project, label_studio):
    params_path, project, person, ws, receiver, log = served_project
    labeled = label_studio.labeled_tasks(project.id)
    gone = labeled[0]
    assert gone["id"] in snapshot_task_ids(ws)
    label_studio.sdk.annotations.delete(id=gone["annotations"][0]["id"])  # a person deletes their annotation
    wait_for(lambda: gone["id"] not in snapshot_task_ids(ws), 120, "the deleted annotation leaving the snapshot")
    assert {t["id"] for t in labeled[1:]} <= snapshot_task_ids(ws)


def test_with_no_receiver_the_safety_net_poll_still_picks_changes_up(loop_env, label_studio, cli_env, stack, tmp_path):
    params_path, project, truth = make_digits_project(label_studio, tmp_path, "safety", 60, min_new_annotations=1)
    set_poll(params_path, webhooks=False, safety_net_s=5)
    from tests.integration.test_loop import Person

    person = Person(label_studio, project, truth)
    ws = open_workspace(load_settings(cwd=ROOT), load_params(params_path), project_root=params_path.parent)
    log_file = tmp_path / "flywheel.log"  # serve's own log file: it notes each safety-net poll that found nothing

    def empty_polls() -> int:
        return log_file.read_text().count("Safety-net poll: nothing new") if log_file.exists() else 0

    with serving(params_path, {**cli_env, LOG_FILE: str(log_file)}, tmp_path / "serve.log") as _:
        # flywheel registers no receiver: Label Studio posts to nothing but the ML backend's own `/webhook`, the hook it
        # adds itself when the backend connects (ml/models.py)
        assert all(h["url"].endswith("/webhook") for h in label_studio.webhooks(project.id)), label_studio.webhooks(project.id)
        labeled = set(person.label(20))
        wait_for(lambda: labeled <= snapshot_task_ids(ws), 180, "the safety-net poll versioning the labels")
        since = datetime.now(UTC)
        before = empty_polls()
        wait_for(lambda: empty_polls() >= before + 2, 180, "two safety-net polls finding nothing new")
        assert not iteration_runs(stack, params_path, since, "safety-net")  # neither started a flow run
