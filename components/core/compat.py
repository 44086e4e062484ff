"""Models registered before a module moved still load: where each old module path lives now.

A model version logged before recipes existed (MLflow's pytorch flavor) is a pickle that names its
classes by module path, e.g. `components.architectures.SmallCNN`. When modules move, such a version
would no longer unpickle. `Unpickler` reads those paths through `MOVED_MODULES` and `MOVED_CLASSES`;
`components.adapters.registry.models` hands this module to `mlflow.pytorch.load_model` as its
`pickle_module`. Add a line here whenever a module that may be pickled moves.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

# old module -> its module now (issue 25 put components/ in layered subpackages)
MOVED_MODULES: dict[str, str] = {
    "components.errors": "components.core.errors",
    "components.settings": "components.core.settings",
    "components.params": "components.core.params",
    "components.faults": "components.core.faults",
    "components.labeling_config": "components.core.labeling_config",
    "components.conversions": "components.core.conversions",
    "components.tasks.base": "components.core.task_type",
    "components.images": "components.data.images",
    "components.masks": "components.data.masks",
    "components.snapshot": "components.data.snapshot",
    "components.validation": "components.data.validation",
    "components.composites": "components.data.composites",
    "components.datasets": "components.studies.datasets",
    "components.architectures": "components.networks.architectures",
    "components.detectors": "components.networks.detectors",
    "components.segmenters": "components.networks.segmenters",
    "components.export": "components.networks.export",
    "components.training": "components.learning.training",
    "components.pretraining": "components.learning.pretraining",
    "components.prediction": "components.learning.prediction",
    "components.selection": "components.learning.selection",
    "components.label_errors": "components.learning.label_errors",
    "components.label_studio": "components.adapters.label_studio",
    "components.registry": "components.adapters.registry",
    "components.versioning": "components.adapters.versioning",
    "components.webhooks": "components.adapters.webhooks",
    "components.stack": "components.adapters.stack",
    "components.report": "components.studies.report",
    "components.strategy": "components.studies.strategy",
    "components.simulator": "components.studies.simulator",
    "components.serving": "components.production.serving",
}
# (old module, class) -> the class's module now, where a class moved on its own
MOVED_CLASSES: dict[tuple[str, str], str] = {
    # the classification inference model, pickled before task types existed
    ("components.training", "InferenceModel"): "components.tasks.classification",
}


def current_path(module: str, name: str) -> str:
    """The module that holds `name`, pickled as `module.name`, now."""
    return MOVED_CLASSES.get((module, name)) or MOVED_MODULES.get(module, module)


class Unpickler(pickle.Unpickler):
    """`pickle.Unpickler` that finds a class by where it lives now (`current_path`)."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(current_path(module, name), name)


def load(file: IO[bytes], **kwargs: Any) -> Any:
    """`pickle.load` through `Unpickler`."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    """`pickle.loads` through `Unpickler`."""
    import io

    return Unpickler(io.BytesIO(data), **kwargs).load()


Pickler = pickle.Pickler  # torch.save/torch.load look these up on their pickle_module
dump, dumps, HIGHEST_PROTOCOL = pickle.dump, pickle.dumps, pickle.HIGHEST_PROTOCOL
