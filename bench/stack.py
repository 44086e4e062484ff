"""A throwaway embedded stack for a benchmark: fresh servers on free ports in a temporary workspace."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.adapters import stack
from components.core.settings import CLIENT_ENV, NO_PHONE_HOME, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def throwaway_stack(label_studio_only: bool = False) -> Iterator[tuple[Settings, Path]]:
    """Start the servers, point this process's environment at them, stop them afterwards.

    Yields:
        The settings (with the token `up` created) and a scratch folder.
    """
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        scratch = Path(tmp)
        env = {
            **NO_PHONE_HOME,
            **CLIENT_ENV,
            "FLYWHEEL_WORKSPACE": str(scratch / "ws"),
            "FLYWHEEL_LABEL_STUDIO_PORT": str(stack.free_port()),
            "FLYWHEEL_MLFLOW_PORT": str(stack.free_port()),
            "FLYWHEEL_PREFECT_PORT": str(stack.free_port()),
            "FLYWHEEL_LABEL_STUDIO_BIN": str(ROOT / ".venv-ls" / "bin" / "label-studio"),
        }
        for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
            os.environ.pop(key, None)
        if label_studio_only:  # mark the others external so `up` leaves them alone
            env.update(MLFLOW_TRACKING_URI="http://unused.invalid", PREFECT_API_URL="http://unused.invalid/api")
        os.environ.update(env)
        settings = load_settings(cwd=ROOT)
        if not label_studio_only:
            os.environ["PREFECT_API_URL"] = settings.prefect_api_url
            os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
        stack.up(settings)
        try:
            yield load_settings(cwd=ROOT), scratch
        finally:
            stack.down(settings)
