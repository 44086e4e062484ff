"""The MLflow adapter: runs, the model registry, and the `champion` alias moved fairly.

A model is logged without pickle: its weights (a state dict) and the recipe that rebuilds it
(`flywheel/`), its ONNX and TorchScript exports with the preprocessing inside (`export/`), and as
MLflow's model the ONNX file (MLflow's onnx flavor; the box task types, whose decoding ONNX cannot
write, fall back to the pytorch flavor's pickle). It is registered under one name. The `champion`
alias moves when the new model does better than the current champion on the *same* validation set
(see `promote_if_better`). Both are safe to repeat (the loop retries them after a transient failure):
a run is registered once, and its verdict is recorded before the alias moves.

This package is the only one that calls MLflow's client (Lightning's `MLFlowLogger` aside). Every
call goes through `calling`, which turns an unreachable or failing server into one `TrackingError`
that says what to do; the client's own retries and timeouts are bounded by `CLIENT_ENV`.

Where things are: `models` (`ModelRegistry`: registering, loading, the champion and its promotion),
`runs` (the client and its errors, searching runs, tags, closing abandoned runs), `versions`
(`RegisteredModel`, `Recipe`), `promotion` (the champion verdict, `Promotion`).
"""

from components.adapters.registry.models import ModelRegistry
from components.adapters.registry.promotion import Promotion, replaces
from components.adapters.registry.versions import CHAMPION, RECIPE, WEIGHTS, Recipe, RegisteredModel

__all__ = ["CHAMPION", "RECIPE", "WEIGHTS", "ModelRegistry", "Promotion", "Recipe", "RegisteredModel", "replaces"]
