"""The mask assistant in Label Studio's own UI, driven in Debian's Chromium by Playwright (no browser
download): a person logs in, opens a segmentation task, turns Auto-Annotation on, picks a class and draws
a smart box around an object; flywheel's mask comes back as a brush region of that class.

Run alone: `pytest -m browser`. Screenshots land in the test's temporary folder (printed on failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import pytest

from components.adapters.label_studio import LabelStudio
from components.core.settings import Settings, load_settings
from components.data.masks import mask_of_brush, mask_of_coco, pair_iou
from components.tasks.objects import parse_target
from tests.integration.test_ml_backend import connected, start_backend
from tests.integration.test_segmentation import new_masks_project

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package; .ci/run installs it
DEADLINE_MS = 60_000
# Chromium as root, headless, with nothing phoning home (refused on a closed network, many at a time)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def project(loop_env: Settings, label_studio: LabelStudio, tmp_path_factory):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it).")
    folder = tmp_path_factory.mktemp("browser")
    params_path, project, truth = new_masks_project(label_studio, folder, "ui", 4)
    settings = load_settings()
    log = folder / "backend.log"
    process = start_backend(params_path, {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}, log)
    try:
        connected(label_studio, project.id, settings.ml_backend_url, process, log)
        yield {"project": project, "settings": settings, "truth": truth, "folder": folder}
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_smart_box_drawn_in_label_studio_brings_back_the_mask(project, label_studio, tmp_path):
    from playwright.sync_api import sync_playwright

    settings = project["settings"]
    creds = dict(line.split("=", 1) for line in settings.credentials_path.read_text().splitlines() if "=" in line)
    task_id, data = min(label_studio.unlabeled_tasks(project["project"].id).items())
    target = parse_target(project["truth"][data["filename"]])
    obj = target["boxes"][0]
    shots = tmp_path / "screens"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(DEADLINE_MS)
        try:
            page.goto(f"{settings.label_studio_url}/user/login/")
            page.fill("input[name=email]", creds["LABEL_STUDIO_USERNAME"])
            page.fill("input[name=password]", creds["LABEL_STUDIO_PASSWORD"])
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url)
            page.goto(f"{settings.label_studio_url}/projects/{project['project'].id}/data?task={task_id}")
            page.get_by_text("Auto-Annotation").first.wait_for()
            page.screenshot(path=shots / "1-task.png")
            page.get_by_test_id("bottombar-auto-annotation-toggle").click()
            # Label Studio 1.23.2's own test ids and class names (requirements-ls.lock pins it)
            # the smart rectangle: one of the tools behind the toolbar's Auto-Detect button
            page.locator(".lsf-tool_smart").first.hover()
            page.locator(".lsf-toolbar__smart [aria-label=rectangle-tool]").click()
            # its class, in the box prompt's label group (the config's second; each group lists the same names)
            page.locator(".lsf-labels").nth(1).locator(".lsf-label__text").get_by_text(obj["label"], exact=True).click()
            page.screenshot(path=shots / "2-tool.png")
            # the image as shown (the page is tall enough for it and the three label rows: nothing scrolls)
            page.locator("img[alt=image]").scroll_into_view_if_needed()
            image = page.locator("img[alt=image]").bounding_box()
            assert image is not None
            sx, sy = image["width"] / target["width"], image["height"] / target["height"]
            x1, y1 = image["x"] + obj["x"] * sx - 2, image["y"] + obj["y"] * sy - 2
            x2, y2 = x1 + obj["w"] * sx + 4, y1 + obj["h"] * sy + 4
            page.mouse.move(x1, y1)
            page.mouse.down()
            page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=5)
            page.mouse.move(x2, y2, steps=5)
            page.mouse.up()
            # the mask comes back as a suggestion to accept (Auto-Accept off, as a careful person keeps it)
            page.get_by_test_id("bottombar-accept-suggestions-button").wait_for()
            page.screenshot(path=shots / "3-suggested.png")
            page.get_by_test_id("bottombar-accept-suggestions-button").click()
            deadline = time.monotonic() + DEADLINE_MS / 1000
            while not (brush := [r for r in results(page) if r.get("type") == "brushlabels"]):
                assert time.monotonic() < deadline, f"no brush region in the annotation; screenshots in {shots}"
                page.wait_for_timeout(250)
            page.screenshot(path=shots / "4-accepted.png")
            page.get_by_test_id("bottombar-submit-button").or_(page.get_by_role("button", name="Submit")).first.click()
            # what Label Studio stored: the accepted mask, in the brush control
            deadline = time.monotonic() + DEADLINE_MS / 1000
            while not (saved := label_studio.task(task_id)["annotations"]):
                assert time.monotonic() < deadline, f"the annotation was not saved; screenshots in {shots}"
                page.wait_for_timeout(250)
            page.screenshot(path=shots / "5-submitted.png")
        except Exception:
            with contextlib.suppress(Exception):  # a page that crashed cannot be photographed: the error above says why
                page.screenshot(path=shots / "failed.png")
                (shots / "failed.html").write_text(page.content())
            raise
        finally:
            browser.close()
    result = saved[0]["result"]
    brush = [r for r in result if r["type"] == "brushlabels"]
    assert len(brush) == 1 and brush[0]["value"]["brushlabels"] == [obj["label"]] and brush[0]["from_name"] == "label", result
    assert not [r for r in result if r["type"] == "rectanglelabels"], result  # the smart box is not kept
    got = mask_of_brush(brush[0]["value"]["rle"], target["width"], target["height"])
    iou = pair_iou(got, mask_of_coco(obj["mask"], target["width"], target["height"]))
    assert iou >= 0.5, (iou, shots)  # GrabCut on a digit (no mask labeled yet)


def results(page) -> list[dict]:
    """The regions of the annotation open in Label Studio's editor, as it would save them."""
    return page.evaluate("() => window.Htx?.annotationStore?.selected?.serializeAnnotation() ?? []")
