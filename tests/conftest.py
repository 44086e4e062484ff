"""Shared fixtures. `stack` starts the real embedded servers once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from components.adapters import stack as embedded
from components.adapters.stack import free_port
from components.adapters.label_studio import LabelStudio
from components.core.labeling_config import LabelingConfig, load_labeling_config
from components.core.settings import CLIENT_ENV, NO_PHONE_HOME, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def no_phone_home() -> None:
    for key, value in {**NO_PHONE_HOME, **CLIENT_ENV}.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def classification_config() -> LabelingConfig:
    return load_labeling_config(ROOT / "label_studio_config" / "classification.xml")


def stack_environ(workspace: Path) -> dict[str, str]:
    """Settings for a throwaway embedded stack on free ports (never the user's own)."""
    return {
        "FLYWHEEL_WORKSPACE": str(workspace),
        "FLYWHEEL_LABEL_STUDIO_PORT": str(free_port()),
        "FLYWHEEL_MLFLOW_PORT": str(free_port()),
        "FLYWHEEL_PREFECT_PORT": str(free_port()),
        "FLYWHEEL_ML_BACKEND_PORT": str(free_port()),
        "FLYWHEEL_LABEL_STUDIO_BIN": str(ROOT / ".venv-ls" / "bin" / "label-studio"),
    }


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that selects the test stack (flows read their settings from it)."""
    return stack_environ(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Settings]:
    """The real embedded stack (Label Studio, MLflow, Prefect) in a temporary workspace."""
    environ = stack_env
    settings = load_settings(environ=environ, cwd=ROOT)
    embedded.up(settings, echo=lambda _: None)
    try:
        yield load_settings(environ=environ, cwd=ROOT)  # now with the token `up` created
    finally:
        embedded.down(settings, echo=lambda _: None)


@pytest.fixture(scope="session")
def label_studio(stack: Settings) -> LabelStudio:
    return LabelStudio.from_settings(stack)


@pytest.fixture(scope="module")
def cli_env(stack: Settings, stack_env: dict[str, str]) -> dict[str, str]:
    """The environment of a `flywheel` command run as a subprocess against the test stack."""
    return {**os.environ, **stack_env, "PREFECT_API_URL": stack.prefect_api_url, "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri}


@pytest.fixture(scope="module")
def loop_env(stack: Settings, stack_env: dict[str, str], monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Flows read their settings from the environment: point it at the test stack."""
    for key, value in stack_env.items():
        monkeypatch_module.setenv(key, value)
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", stack.mlflow_tracking_uri)
    # Flow logs stay local: the stack stops at the session's end, before a log worker could flush.
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url, PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield stack


# `make test` runs the suite on two workers (pytest-xdist, `--dist loadfile`: a module's tests and its
# fixtures stay on one worker, each worker starts its own stack). Modules go out longest first, so the two
# workers end together: the team profile's (~15 min of the ~37 on one worker), then the other integration
# modules, then the rest. Three workers on the 2 cores measured slower (2026-12-07: 36.5 min vs 28, the COCO
# simulation 1,083 s vs 326) and the pool test's label check ran out of its 10 min.
FIRST = ("tests/integration/test_team.py", "tests/integration/", "tests/browser/", "tests/model/", "tests/data/", "tests/unit/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(ROOT).as_posix()
        return next((i for i, prefix in enumerate(FIRST) if path.startswith(prefix)), len(FIRST))

    items.sort(key=rank)  # stable: a module's tests keep their order
