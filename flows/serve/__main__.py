"""`python -m flows.serve PARAMS`: Prefect's runner for the scheduled full retrain, the child process
that `flywheel serve` supervises (`flows.serve.runner.Runner`)."""

import sys
from pathlib import Path

from flows import logs

logs.setup()  # before the imports below: one of them would install a handler of its own

from components.core.params import load_params  # noqa: E402
from flows.serve.runner import serve_deployments  # noqa: E402

if __name__ == "__main__":
    logs.adopt_library_loggers()
    path = Path(sys.argv[1])
    serve_deployments(load_params(path), path)
