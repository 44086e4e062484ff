"""The bad-input corpus: every case against a real Label Studio, through `flywheel run` as a user runs it.

Data cases (a bad annotation or image among good ones) are all in one project and one run: each must
get one line naming its task, be left out (or trained on, when it is fine after all) without stopping
the rest, and change no annotation; the good tasks must still be trained on and pre-annotated.
Settings cases (wrong token, dead server, broken params.yaml, deleted project) each get one line
naming what to change and exit 1, quickly. `flywheel bench robustness` counts the cases that pass.
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from components.tasks.classification import choice_result
from components.studies.datasets import materialize
from components.adapters.label_studio import ATTENTION_VIEW
from components.loop.workspace import open_workspace
from components.adapters.label_studio import LabelStudio, Project
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.core.settings import Settings, load_settings
from components.studies.simulator import label_balanced
from components.data.snapshot import read_manifest
from components.adapters.stack import free_port
from tests.integration.test_loop import make_digits_project, write_params

pytestmark = pytest.mark.integration

MAX_BYTES = 60_000  # images.max_bytes for this project: the "too big" remote image is ~120 kB


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str, float]:
    """`flywheel ARGS` as a user runs it: (exit code, everything it printed, seconds)."""
    start = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def lines_naming(output: str, task_id: int) -> list[str]:
    return [line for line in output.splitlines() if f"Task {task_id}:" in line]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels (its header is all a size check reads)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Case:
    """One bad (or odd) input: the task it made, what must become of it, and the line that must name it.

    outcome: "quarantined" (labeled, left out), "trained" (labeled, fine after all), "duplicate"
    (named, the later label of the image trains), "unreadable" (unlabeled, no prediction, listed),
    "pre-annotated" (unlabeled, fine after all).
    """

    name: str
    task_id: int
    outcome: str
    message: str = ""


class Builder:
    """Makes the tasks of the corpus in a real Label Studio project, as other tools or people would."""

    def __init__(self, ls: LabelStudio, project: Project, settings: Settings, web: str, web_root: Path, digits: list[np.ndarray]):
        self.ls, self.project, self.settings, self.web, self.web_root = ls, project, settings, web, web_root
        self.digits = iter(digits)
        self.files = settings.image_root / "objects" / "corpus"
        self.files.mkdir(parents=True, exist_ok=True)

    def digit(self) -> bytes:
        return png_bytes(next(self.digits))

    def local(self, name: str, content: bytes) -> str:
        (self.files / name).write_bytes(content)
        return f"/data/local-files/?d=objects/corpus/{name}"

    def served(self, name: str, content: bytes) -> str:
        (self.web_root / name).write_bytes(content)
        return f"{self.web}/{name}"

    def task(self, data: dict, label: str | None = None, result: list | None = None) -> int:
        created = self.ls.sdk.projects.import_tasks(id=self.project.id, request=[{"data": data}], return_task_ids=True)
        task_id = int(created.task_ids[0])
        if label is not None or result is not None:
            self.ls.annotate(task_id, result if result is not None else choice_result(label, self.project.config))
        return task_id


def make_corpus(b: Builder) -> list[Case]:
    """Every data case, each a task of the project."""
    c = b.project.config
    ok = lambda url: {"image": url}  # noqa: E731
    cases = [
        Case("unknown label", b.task(ok(b.local("u.png", b.digit())), label="cat"), "quarantined", "'cat', which is not in the labeling config"),
        Case("empty result", b.task(ok(b.local("e.png", b.digit())), result=[]), "quarantined", "empty result"),
        Case("two labels in single-label", b.task(ok(b.local("t.png", b.digit())), result=[
            {"from_name": c.from_name, "to_name": c.to_name, "type": "choices", "value": {"choices": ["1", "2"]}}]),
            "quarantined", r"picks \['1', '2'\]"),
        Case("a box drawn on a classification task", b.task(ok(b.local("r.png", b.digit())), result=[
            {"from_name": "box", "to_name": c.to_name, "type": "rectanglelabels",
             "value": {"x": 90, "y": 90, "width": 40, "height": 40, "rectanglelabels": ["3"]}}]),
            "quarantined", "empty result"),
        Case("labeled image that is not an image", b.task(ok(b.local("garbage1.png", b"this is not a png")), label="1"),
             "quarantined", "not an image"),
        Case("unlabeled image that is not an image", b.task(ok(b.local("garbage2.png", os.urandom(300)))),
             "unreadable", "not an image"),
        Case("labeled image file missing", b.task(ok("/data/local-files/?d=objects/corpus/gone.png"), label="2"),
             "quarantined", "could not be fetched: the server answered 404"),
        Case("zero-byte image", b.task(ok(b.local("zero.png", b"")), label="3"), "quarantined", r"empty \(0 bytes\)"),
        Case("20,000 x 20,000 pixel image", b.task(ok(b.local("huge.png", png_header(20000, 20000))), label="4"),
             "quarantined", r"px .*over images.max_pixels"),
        Case("20,000-pixel-wide strip", b.task(ok(b.local("wide.png", png_bytes(np.full((24, 20000), 128, np.uint8)))), label="5"),
             "trained"),
        Case("unlabeled URL answering 404", b.task(ok(f"{b.web}/missing.png")), "unreadable", "the server answered 404"),
        Case("labeled http URL", b.task(ok(b.served("remote1.png", b.digit())), label="6"), "trained"),
        Case("unlabeled http URL", b.task(ok(b.served("remote2.png", b.digit()))), "pre-annotated"),
        Case("URL over images.max_bytes", b.task(ok(b.served("big.png", png_bytes(np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)))), label="7"),
             "quarantined", "over images.max_bytes"),
        Case("scheme flywheel cannot read", b.task(ok("ftp://example.invalid/digit.png")), "unreadable", r"scheme flywheel cannot read \(ftp:\)"),
        Case("task with an empty image field", b.task({"image": ""}, label="8"),
             "quarantined", "no image URL under data key 'image'"),
        Case("image inline as a data: URL", b.task(ok("data:image/png;base64," + base64.b64encode(b.digit()).decode()), label="9"), "trained"),
        Case("malformed data: URL", b.task(ok("data:image/png;base64,@@@not-base64@@@"), label="0"), "quarantined", "base64 payload is malformed"),
    ]
    # A file whose name is not UTF-8, imported with `flywheel import`'s code.
    folder = b.settings.workspace / "odd-names"
    folder.mkdir(exist_ok=True)
    raw = os.fsencode(folder) + b"/digit-\xff\xfe.png"
    with open(raw, "wb") as f:
        f.write(b.digit())
    created = b.ls.import_images(b.project, [Path(os.fsdecode(raw))]).created
    b.ls.annotate(created[0], choice_result("1", c))
    cases.append(Case("non-UTF-8 file name", created[0], "trained"))
    # The same image as two tasks, labeled differently: the later label trains, the earlier is named.
    twin = b.local("twin.png", b.digit())
    first = b.task(ok(twin), label="2")
    second = b.task(ok(twin), label="3")
    cases.append(Case("duplicated task", first, "duplicate", f"shows the same image as task {second}"))
    return cases


@pytest.fixture(scope="module")
def web_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a folder (where 'remote' images live)."""
    root = tmp_path_factory.mktemp("web")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def annotations_now(ls: LabelStudio, project: Project) -> dict[int, list[dict]]:
    keys = ("id", "result", "updated_at", "was_cancelled", "completed_by", "parent_prediction")
    return {int(t["id"]): [{k: a[k] for k in keys} for a in t["annotations"]] for t in ls.labeled_tasks(project.id)}


@pytest.fixture(scope="module")
def corpus(stack, label_studio, cli_env, web_server, tmp_path_factory):
    """The project with 30 good labels and every data case, after one `flywheel run`."""
    folder = tmp_path_factory.mktemp("corpus")
    params_path = write_params(folder, f"corpus-{uuid.uuid4().hex[:6]}", min_new_annotations=1)
    raw = yaml.safe_load(params_path.read_text())
    raw["images"]["max_bytes"] = MAX_BYTES
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    images = materialize("digits", folder / "datasets", limit=90)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images[:60]])
    good = label_balanced(label_studio, project, {i.path.name: i.label for i in images}, 30, random.Random(0))
    spare = [np.asarray(Image.open(i.path).convert("L")) for i in images[60:]]
    cases = make_corpus(Builder(label_studio, project, stack, web_server[0], web_server[1], spare))
    before = annotations_now(label_studio, project)
    code, output, seconds = run_cli(cli_env, "run", "--params", str(params_path))
    return {"params": params_path, "project": project, "cases": {c.name: c for c in cases}, "good": good,
            "before": before, "code": code, "output": output, "seconds": seconds}


@pytest.fixture(scope="module")
def outcome(corpus, label_studio, loop_env):
    """What the run left: the latest snapshot, its manifest, the Needs attention tab, the predictions."""
    project = corpus["project"]
    ws = open_workspace(load_settings(), load_params(corpus["params"]))
    latest = ws.data.latest()
    champion = ws.models.champion()
    view = label_studio.view_id(project.id, ATTENTION_VIEW)
    unlabeled = label_studio.unlabeled_tasks(project.id)
    predictions = {t: [p["model_version"] for p in label_studio.task(t)["predictions"]] for t in unlabeled}
    return {
        "latest": latest,
        "manifest": read_manifest(ws.data.checkout(latest)),
        "champion": champion,
        "attention": {int(t["id"]) for t in label_studio.view_tasks(project.id, view)} if view else set(),
        "predictions": predictions,
    }


CASES = [
    "unknown label", "empty result", "two labels in single-label", "a box drawn on a classification task",
    "labeled image that is not an image", "unlabeled image that is not an image", "labeled image file missing",
    "zero-byte image", "20,000 x 20,000 pixel image", "20,000-pixel-wide strip", "unlabeled URL answering 404",
    "labeled http URL", "unlabeled http URL", "URL over images.max_bytes", "scheme flywheel cannot read",
    "task with an empty image field", "image inline as a data: URL", "malformed data: URL", "non-UTF-8 file name",
    "duplicated task",
]


def test_the_run_succeeds_and_trains_on_every_good_task(corpus, outcome):
    assert corpus["code"] == 0, corpus["output"][-3000:]
    assert set(corpus["good"]) <= set(outcome["manifest"]["task_id"])
    assert outcome["champion"] is not None
    assert "Traceback" not in corpus["output"]


def test_every_readable_unlabeled_task_is_pre_annotated_once(corpus, outcome):
    unreadable = {c.task_id for c in corpus["cases"].values() if c.outcome == "unreadable"}
    version = outcome["champion"].model_version
    for task_id, versions in outcome["predictions"].items():
        expected = [] if task_id in unreadable else [version]
        assert versions == expected, (task_id, versions)


def test_no_annotation_was_changed_or_lost(corpus, label_studio):
    assert annotations_now(label_studio, corpus["project"]) == corpus["before"]


@pytest.mark.parametrize("name", CASES)
def test_case(name, corpus, outcome):
    case = corpus["cases"][name]
    named = lines_naming(corpus["output"], case.task_id)
    in_manifest = case.task_id in set(outcome["manifest"]["task_id"])
    if case.outcome in ("trained", "pre-annotated"):
        assert named == [], named
        assert case.task_id not in outcome["attention"]
        if case.outcome == "trained":
            assert in_manifest
        else:
            assert outcome["predictions"][case.task_id] == [outcome["champion"].model_version]
        return
    assert len(named) == 1 and re.search(case.message, named[0]), (named, case.message)
    assert case.task_id in outcome["attention"]
    if case.outcome == "quarantined":
        assert not in_manifest and case.task_id in outcome["latest"].quarantine
    elif case.outcome == "duplicate":
        assert in_manifest and case.task_id in outcome["latest"].duplicates
    else:  # unreadable, unlabeled
        assert outcome["predictions"][case.task_id] == []


def test_each_problem_is_reported_once_and_a_fixed_task_is_checked_again(corpus, label_studio, cli_env, loop_env):
    code, output, _ = run_cli(cli_env, "run", "--params", str(corpus["params"]))
    assert code == 0 and not re.search(r"Task \d+:", output), output[-2000:]

    fixed = corpus["cases"]["unknown label"].task_id
    label_studio.annotate(fixed, choice_result("3", corpus["project"].config))  # a person labels it again, rightly
    code, output, _ = run_cli(cli_env, "run", "--params", str(corpus["params"]))
    assert code == 0 and not re.search(r"Task \d+:", output), output[-2000:]
    ws = open_workspace(load_settings(), load_params(corpus["params"]))
    latest = ws.data.latest()
    assert fixed not in latest.quarantine and fixed in set(read_manifest(ws.data.checkout(latest))["task_id"])


# --- settings cases: one line naming what to change, exit 1, no waiting ----------------------------


def broken_params(folder: Path, corpus_params: Path, edit: Callable[[dict], object] | str) -> Path:
    path = folder / "params.yaml"
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        raw = yaml.safe_load(corpus_params.read_text())
        edit(raw)
        path.write_text(yaml.safe_dump(raw))
    return path


SETTINGS_CASES = {
    "wrong API token": ({"LABEL_STUDIO_API_KEY": "wrong-token"}, None, r"refused the API key \(401\).*LABEL_STUDIO_API_KEY"),
    "Label Studio unreachable": ({"LABEL_STUDIO_URL": "http://127.0.0.1:{port}", "LABEL_STUDIO_API_KEY": "x"}, None,
                                 r"Label Studio at http://127.0.0.1:\d+ does not answer.*flywheel stack up"),
    "params.yaml not YAML": ({}, "project: [unclosed\n", r"params.yaml is not valid YAML"),
    "params.yaml without train:": ({}, lambda raw: raw.pop("train"), r"missing train \(every section and key is required\)"),
    "unknown architecture": ({}, lambda raw: raw["train"].update(architecture="vit_huge"),
                             r"train.architecture 'vit_huge' is not one of"),
}


@pytest.mark.parametrize("name", list(SETTINGS_CASES))
def test_settings_case(name, corpus, cli_env, tmp_path):
    extra, edit, message = SETTINGS_CASES[name]
    env = {**cli_env, **{k: v.format(port=free_port()) for k, v in extra.items()}}
    params = broken_params(tmp_path, corpus["params"], edit) if edit is not None else corpus["params"]
    code, output, _ = run_cli(env, "run", "--params", str(params), timeout=60)  # how soon: bench/robustness.py
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and re.search(message, errors[0]), output[-2000:]
    assert "Traceback" not in output


def test_settings_case_deleted_project(label_studio, cli_env, loop_env, tmp_path):
    from flows.flywheel import flywheel_iteration

    params_path, project, truth = make_digits_project(label_studio, tmp_path, "deleted", 30, min_new_annotations=1)
    params = load_params(params_path)
    label_balanced(label_studio, project, truth, 20, random.Random(0))
    flywheel_iteration(str(params_path))
    registry = open_workspace(load_settings(), params).data
    kept = registry.latest()

    label_studio.sdk.projects.delete(id=project.id)  # someone deletes the project in Label Studio
    code, output, _ = run_cli(cli_env, "run", "--params", str(params_path), timeout=60)  # how soon: bench/robustness.py
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, output[-2000:]
    assert f"no project {params.project.title!r}" in errors[0] and "snapshots stay under" in errors[0]
    assert label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config), create=False) is None
    assert registry.latest() == kept and registry.checkout(kept).is_dir()  # the versioned data is intact


# --- a team's COCO export: its own mistakes said as such, never as servers that stopped answering -------


def coco_export(folder: Path, images_in: str, classes: dict[str, str] | None = None, count: int = 4) -> Path:
    """The demo's boxes as a team's export: `export/annotations.json` whose file_names are bare names
    relative to `export/<images_in>/`, its categories renamed by `classes`."""
    import json
    import shutil

    from components.data.composites import make_detection_set

    made = make_detection_set(folder / "made", count, seed=5)
    coco = json.loads(made.read_text())
    export = folder / "export"
    (export / images_in).mkdir(parents=True)
    for image in coco["images"]:
        shutil.copy(made.parent / image["file_name"], export / images_in / Path(image["file_name"]).name)
        image["file_name"] = Path(image["file_name"]).name
    for category in coco["categories"]:
        category["name"] = (classes or {}).get(category["name"], category["name"])
    (export / "annotations.json").write_text(json.dumps(coco))
    return export / "annotations.json"


COCO_CASES = {
    "COCO file_names relative to a folder not beside it": (
        lambda folder: coco_export(folder, "pics"),
        r"annotations.json: image \d+'s file_name '\d+.png' is not at .*export/\d+.png or .*export/images/\d+.png\. "
        r"Pass the folder its file_name is relative to with --images DIR"),
    "COCO classes the labeling config lacks": (
        lambda folder: coco_export(folder, "images", {str(d): "plants" for d in range(5)}),
        r"annotations.json's classes are not all labels of the labeling config: \['plants'\] are only in the file; "
        r"the config has \['0', .*Add each as <Label value=\"...\"/>"),
}


@pytest.mark.parametrize("name", list(COCO_CASES))
def test_settings_case_coco(name, label_studio, cli_env, tmp_path):
    make, message = COCO_CASES[name]
    coco = make(tmp_path)
    title = f"coco-bad-{uuid.uuid4().hex[:6]}"
    config = str(Path(__file__).resolve().parents[2] / "label_studio_config" / "detection.xml")
    code, output, _ = run_cli(cli_env, "import", str(coco), "--project", title, "--config", config, timeout=120)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and re.search(message, errors[0]), output[-2000:]
    assert "stopped answering" not in output and "Traceback" not in output
    assert label_studio.ensure_project(title, load_labeling_config(config), create=False) is None  # nothing created
