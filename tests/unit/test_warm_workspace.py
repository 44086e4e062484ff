"""The warm worker's workspace is opened once and reused while settings, params and the labeling config
are unchanged; a change, or a failed run, opens a new one. Background pretraining waits while an
iteration refreshes pre-annotations."""

from __future__ import annotations

import shutil
import socket
from types import SimpleNamespace

import pytest
import yaml

from components.loop.workspace import WorkspaceCache, refreshing, refreshing_now
from components.core.params import load_params
from components.learning.pretraining import WaitWhile
from components.core.settings import load_settings
from flows.runtime import warm_workspaces
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path):
    """A project folder: params.yaml and its labeling config, as the worker reads them."""
    (tmp_path / "label_studio_config").mkdir()
    shutil.copy(ROOT / "label_studio_config" / "classification.xml", tmp_path / "label_studio_config")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


class Opener:
    """Stands in for `open_workspace`: counts the connections, hands out a new object each time."""

    def __init__(self) -> None:
        self.opened: list[object] = []

    def __call__(self, settings, params, project_root):
        self.opened.append(object())
        return self.opened[-1]


def test_the_workspace_is_reused_while_nothing_changed(project):
    opener = Opener()
    cache = WorkspaceCache(opener)
    open_ = lambda: cache.open(load_settings(environ={}, cwd=project), load_params(project / "params.yaml"), project)
    first = open_()
    assert open_() is first and open_() is first  # read again each run, equal: no reconnect
    assert len(opener.opened) == 1


def test_changed_params_settings_or_config_open_a_new_workspace(project):
    opener = Opener()
    cache = WorkspaceCache(opener)
    settings, params = load_settings(environ={}, cwd=project), load_params(project / "params.yaml")
    first = cache.open(settings, params, project)

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["finetune_steps"] = 50
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    edited = load_params(project / "params.yaml")
    second = cache.open(settings, edited, project)
    assert second is not first
    assert cache.open(settings, edited, project) is second

    other_server = load_settings(environ={"LABEL_STUDIO_URL": "http://ls.team:8080"}, cwd=project)
    third = cache.open(other_server, edited, project)
    assert third is not second

    config = project / "label_studio_config" / "classification.xml"
    config.write_text(config.read_text().replace("<Choice value=\"9\"/>", "<Choice value=\"9\"/><Choice value=\"x\"/>"))
    assert cache.open(other_server, edited, project) is not third
    assert len(opener.opened) == 4


def test_after_a_failure_the_next_run_connects_afresh(project):
    opener = Opener()
    cache = WorkspaceCache(opener)
    settings, params = load_settings(environ={}, cwd=project), load_params(project / "params.yaml")
    first = cache.open(settings, params, project)
    cache.forget()
    assert cache.open(settings, params, project) is not first


def test_a_workspace_that_cannot_be_opened_is_not_kept(project):
    calls = []

    def failing(settings, params, project_root):
        calls.append(1)
        raise ConnectionError("Label Studio is restarting")

    cache = WorkspaceCache(failing)
    settings, params = load_settings(environ={}, cwd=project), load_params(project / "params.yaml")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            cache.open(settings, params, project)
    assert len(calls) == 2


def test_outside_the_warm_worker_each_flow_run_connects():
    assert warm_workspaces() is None


def test_the_worker_sets_the_flag_and_the_workspace_the_flows_read(monkeypatch):
    """The warm worker (`python -m flows.worker`, which serve starts) runs a requested iteration with its
    workspace cache in place, and its SIGUSR1 reaches the flag the flows read (`flows.runtime`)."""
    import json
    import os
    import signal

    import flows.flywheel
    import flows.worker
    from flows import runtime

    seen = {}

    def iteration(*args: object, **kwargs: object) -> dict[str, object]:  # stands in for the real flow
        seen["workspaces"] = runtime.warm_workspaces()
        os.kill(os.getpid(), signal.SIGUSR1)  # what serve sends when new labels wait
        seen["interrupted"] = runtime.interrupted()
        return {}

    monkeypatch.setattr(flows.flywheel, "flywheel_iteration", iteration)
    inbox_r, inbox_w = os.pipe()
    outbox_r, outbox_w = os.pipe()
    with os.fdopen(inbox_w, "w") as inbox:
        inbox.write(json.dumps({"run": "iteration", "trigger": "test"}) + "\n")
    handlers = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGINT)
    try:
        flows.worker.main("params.yaml", inbox_r, outbox_w)
    finally:
        signal.signal(signal.SIGUSR1, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    with os.fdopen(outbox_r) as outbox:
        replies = [json.loads(line) for line in outbox.read().splitlines()]
    assert replies == [{"ready": True}, {"ok": True, "summary": {}}]
    assert isinstance(seen["workspaces"], WorkspaceCache) and seen["interrupted"]
    assert runtime.warm_workspaces() is None and not runtime.interrupted()  # cleared with the reply, and outside the worker


def test_background_pretraining_waits_while_an_iteration_refreshes_pre_annotations(tmp_path):
    ws = SimpleNamespace(settings=SimpleNamespace(workspace=tmp_path), project=SimpleNamespace(id=7))
    other = SimpleNamespace(settings=SimpleNamespace(workspace=tmp_path), project=SimpleNamespace(id=8))
    assert not refreshing_now(ws)
    with refreshing(ws):
        assert refreshing_now(ws) and not refreshing_now(other)  # another project's pretraining goes on
    assert not refreshing_now(ws)
    marks = tmp_path / "run" / "refreshing-project-7"
    (marks / f"refresh~{socket.gethostname()}~999999999~1~0000").touch()  # left by a process that was killed
    assert not refreshing_now(ws)


def test_the_pretraining_holds_its_next_batch_while_told_to():
    answers = iter([True, True, False])
    waiting = WaitWhile(lambda: next(answers), every_s=0.01)
    waiting.on_train_batch_start(None, None, None, 0)
    assert waiting.waited_s >= 0.02
