"""`python -m flows.serve PARAMS`: Prefect's runner for the scheduled full retrain, the child process
that `flywheel serve` supervises (`flows.serve.runner.Runner`)."""

import sys
from pathlib import Path

from components.core.params import load_params
from flows.serve.runner import serve_deployments

if __name__ == "__main__":
    path = Path(sys.argv[1])
    serve_deployments(load_params(path), path)
