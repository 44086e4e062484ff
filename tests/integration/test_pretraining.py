"""Self-supervised pretraining against the real servers: logged to MLflow, the pool versioned with DVC,
reused until the pool grows; the cold-start "Label next" is diverse; a model starts from the backbone."""

from __future__ import annotations

import random
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from components.studies.datasets import materialize
from components.adapters.label_studio import LABEL_NEXT_VIEW
from components.core.tags import TAG_BACKBONE, TAG_BACKBONE_FROZEN, TAG_POOL_REV, TAG_POOL_SIZE
from components.loop.pool import pool_tags
from components.loop.publish import label_next
from components.loop.workspace import open_workspace
from components.adapters.label_studio import LabelStudio
from components.core.labeling_config import load_labeling_config
from components.core.params import load_params
from components.learning.pretraining import BACKBONE_FILE, embed_with
from components.core.settings import Settings, load_settings
from components.studies.simulator import label_balanced
from components.networks.backbones import backbone_of
from components.networks.preprocessing import load_images
from tests.integration.test_loop import write_params

pytestmark = pytest.mark.integration

FIRST, MORE, ENOUGH = 100, 20, 40  # tasks imported at first, then a growth under 25%, then one past it
BATCH = 10


@pytest.fixture(scope="module")
def project(loop_env: Settings, label_studio: LabelStudio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    params_path = write_params(folder, f"pretrain-{uuid.uuid4().hex[:6]}")
    raw = yaml.safe_load(params_path.read_text())
    raw["train"]["architecture"] = "conv4"
    raw["architectures"] = {"conv4": {"width": 8}}
    raw["pretrain"].update(enabled=True, epochs=3, batch_size=32, refresh_growth=0.25)
    raw["select"].update(batch=BATCH, cold_start_below=50)
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    images = materialize("digits", folder / "datasets", limit=FIRST + MORE + ENOUGH)
    random.Random(0).shuffle(images)
    project = label_studio.ensure_project(params.project.title, load_labeling_config(params.project.config))
    label_studio.import_images(project, [i.path for i in images[:FIRST]])
    return params_path, project, images, {i.path.name: i.label for i in images}


def _pretraining_run(params_path: Path):
    ws = open_workspace(load_settings(), load_params(params_path))
    return ws, ws.models.latest_pretraining(pool_tags(ws, "conv4"))


def test_pretraining_is_logged_tied_to_its_pool_and_reused_until_the_pool_grows(project, label_studio):
    from flows.pretrain import pretrain

    params_path, ls_project, images, _ = project
    first = pretrain(str(params_path), progress=False)
    assert first["pretrained"] is True and first["pool_rev"] == "pool-0001"
    ws, run = _pretraining_run(params_path)
    assert run.info.run_id == first["run_id"]
    assert run.data.tags[TAG_POOL_REV] == "pool-0001" and run.data.tags[TAG_POOL_SIZE] == str(first["pool_images"])
    assert run.data.metrics["pretrain_s_per_1k"] > 0
    state = ws.models.artifact_tensors(run.info.run_id, BACKBONE_FILE)
    net = ws.task.module("conv4", {"width": 8}, ws.project.config.labels, 1.0, False).net
    assert state.keys() == backbone_of(net).state_dict().keys()
    # the pool it saw is in the project's DVC registry, one file per image
    pool_dvc = yaml.safe_load(subprocess.run(["git", "-C", str(ws.data.root), "show", "pool-0001:pool.dvc"],
                                             check=True, capture_output=True, text=True).stdout)
    assert pool_dvc["outs"][0]["nfiles"] == first["pool_images"] >= FIRST - 5  # a few 8x8 digits are pixel-identical

    assert pretrain(str(params_path), progress=False)["pretrained"] is False  # nothing grew: reused
    label_studio.import_images(ls_project, [i.path for i in images[FIRST:FIRST + MORE]])
    again = pretrain(str(params_path), progress=False)
    assert again["pretrained"] is False  # grew, by less than 25%
    label_studio.import_images(ls_project, [i.path for i in images[FIRST + MORE:]])
    grown = pretrain(str(params_path), progress=False)
    assert grown["pretrained"] is True and grown["pool_rev"] == "pool-0002" and grown["run_id"] != first["run_id"]
    assert _pretraining_run(params_path)[1].info.run_id == grown["run_id"]


def test_before_any_model_label_next_holds_diverse_typical_images(project):
    params_path, *_ = project
    ws, run = _pretraining_run(params_path)
    assert ws.models.champion() is None
    picked = label_next(ws)
    assert len(picked) == BATCH, f"the cold-start {LABEL_NEXT_VIEW!r} tab holds {len(picked)} tasks"
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    paths = {t: ws.images.resolve(t, data, ws.project.config.data_key).path for t, data in tasks.items()}
    state = ws.models.artifact_tensors(run.info.run_id, BACKBONE_FILE)
    everything = list(paths)
    vectors = embed_with(state, "conv4", {"width": 8}, 10, load_images([paths[t] for t in everything], 16))
    distance = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    nearest = np.median(distance.min(axis=1))  # how far an image typically is from its nearest neighbour
    rows = [everything.index(t) for t in picked]
    among_picked = distance[np.ix_(rows, rows)].min()
    assert among_picked > nearest, f"two picks are {among_picked:.3f} apart, nearer than a typical nearest neighbour ({nearest:.3f})"


def test_a_model_starts_from_the_pretrained_backbone_loads_and_predicts(project, label_studio):
    from flows.flywheel import flywheel_iteration

    params_path, ls_project, _, truth = project
    label_balanced(label_studio, ls_project, truth, 20, random.Random(0))  # 2 per class
    summary = flywheel_iteration(str(params_path), progress=False)
    assert summary["trained"] is True
    ws, run = _pretraining_run(params_path)
    champion = ws.models.champion()
    tags = ws.models.tags_of(champion.run_id)
    assert tags[TAG_BACKBONE] == run.info.run_id and tags[TAG_BACKBONE_FROZEN] == "true"
    model = ws.models.load(champion)
    state = ws.models.artifact_tensors(run.info.run_id, BACKBONE_FILE)
    kept = backbone_of(model.net).state_dict()
    assert all(torch.equal(kept[k], state[k]) for k in state), "a frozen backbone (20 labels) must come out as it went in"
    unlabeled = label_studio.unlabeled_tasks(ls_project.id)
    assert label_studio.model_versions(ls_project.id) == {champion.model_version: len(unlabeled)}
