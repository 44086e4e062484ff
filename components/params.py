"""params.yaml, parsed once at the edge into typed models. Components take explicit arguments."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import SettingsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectParams(_Section):
    """Which Label Studio project the loop works on, and its labeling config."""

    title: str = Field(min_length=1)
    config: Path


class DemoParams(_Section):
    """The demo project: a labeled dataset that ships in a package."""

    dataset: str = "mnist"
    limit: int = Field(default=1000, gt=0)


class Params(_Section):
    """All of params.yaml."""

    project: ProjectParams
    demo: DemoParams = DemoParams()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml.

    Raises:
        SettingsError: The file is missing, is not YAML, or a key is unknown or out of range; the
            message names the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise SettingsError(f"No {path} here; run flywheel from the project folder that holds it.") from e
    except yaml.YAMLError as e:
        raise SettingsError(f"{path} is not valid YAML: {e}. Fix the file and run again.") from e
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise SettingsError(f"{path} is invalid: {problems}. Fix these keys and run again.") from e
