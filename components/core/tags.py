"""The MLflow tags the loop writes on its runs and searches them by, and the kinds of runs it logs.

Names only, in one place: a run written by one module (training, pretraining, the label check, the
report) is found by another (the registry, the next iteration, a benchmark) by these names.
"""

from __future__ import annotations

# What links a model to its data (every run the loop trains, checks or reports on)
TAG_MD5 = "flywheel.dvc_md5"  # the DVC hash of the snapshot it read
TAG_DVC_REV = "flywheel.dvc_rev"  # that snapshot's tag in the project's data registry (snapshot-NNNN)
TAG_DVC_COMMIT = "flywheel.dvc_commit"  # that snapshot's git commit in the data registry
TAG_DATA_REGISTRY = "flywheel.data_registry"  # the data registry's folder (git + DVC)
TAG_PROJECT = "flywheel.label_studio_project"  # the Label Studio project id
TAG_LABEL_STUDIO_URL = "flywheel.label_studio_url"  # the Label Studio server it was polled from
TAG_CURSOR = "flywheel.cursor"  # the annotation cursor the snapshot was polled up to
TAG_ARCHITECTURE = "flywheel.architecture"  # the architecture's name in params.yaml
TAG_OWNER = "flywheel.owner"  # the process that runs it (components.core.faults.owner): alive, or killed
TAG_CLOSED_BY = "flywheel.closed_by"  # the run that closed it as FAILED after its process was killed
TAG_RUN_NAME = "mlflow.runName"  # MLflow's own: the name the UI shows (e.g. small_cnn@snapshot-0003)

# A trained model and its verdict
TAG_REGISTERED = "flywheel.registered_version"  # the registry version its model was registered as
TAG_PROMOTED = "flywheel.promoted"  # "true" on the run of a version the champion alias was moved to
TAG_FINE_TUNED_FROM = "flywheel.fine_tuned_from"  # the champion version it was fine-tuned from (the fast path)
TAG_SCHEDULE = "flywheel.schedule"  # how it trained: SCHEDULE_SCRATCH, SCHEDULE_FINE_TUNE, or SCHEDULE_BACKGROUND
SCHEDULE_SCRATCH = "scratch"  # from scratch (or from the pretrained backbone), in the loop
SCHEDULE_FINE_TUNE = "fine-tune"  # the champion fine-tuned (the fast path)
SCHEDULE_BACKGROUND = "background"  # from scratch, in the background, because the labeled set grew (`retrain.growth`)
TAG_BACKBONE = "flywheel.backbone_run"  # the pretraining run whose backbone it started from
TAG_BACKBONE_FROZEN = "flywheel.backbone_frozen"  # "true" when only its head trained on that backbone
TAG_CHAMPION = "flywheel.champion"  # the champion version a report was made for

# A pretrained backbone (self-supervised, on every image of the project)
TAG_POOL_PROJECT = "flywheel.pool_project"  # its project (not TAG_PROJECT: the loop closes those runs when abandoned)
TAG_POOL_SIZE = "flywheel.pool_images"  # how many images the pool held
TAG_POOL_REV = "flywheel.pool_rev"  # the pool's tag in the data registry (pool-NNNN)
TAG_IMAGE_SIZE = "flywheel.image_size"  # the input size it was pretrained at
TAG_ARCHITECTURE_OPTIONS = "flywheel.architecture_options"  # the architecture's options in params.yaml, as JSON
TAG_READY = "flywheel.backbone_ready"  # set once backbone.pt is logged (Lightning marks the run FINISHED before that)

# `dvc repro`'s training stage
TAG_SNAPSHOT_PATH = "flywheel.snapshot_path"  # the snapshot folder it trained on

# The kinds of run (TAG_KIND's values): MLflow's run list filters on them (`tags.flywheel.kind = 'training'`)
TAG_KIND = "flywheel.kind"  # what a run is
KIND_TRAINING = "training"  # a model trained on a snapshot (the loop's, the scheduled retrain's, `dvc repro`'s)
KIND_PRETRAINING = "pretraining"  # a backbone pretrained on the image pool
KIND_LABEL_ERRORS = "label-errors"  # a label check's table of suspects
KIND_REPORT = "report"  # a strategy report
