"""The connection to Label Studio that every part of the adapter shares: the SDK client (created on
first use), the one place transport and HTTP failures become a `LabelStudioError` that says what to
do, endpoints the SDK has no method for, and the Data Manager queries the reads are built from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk import LabelStudio as SDKClient
from label_studio_sdk.core.api_error import ApiError

from components.core.errors import LabelStudioError
from components.core.labeling_config import LabelingConfig

BATCH = 1000  # tasks or predictions per import request; tasks per page of a read of ids and data only
# Reading tasks with their annotations or predictions costs Label Studio per task: whole tasks (every
# prediction, draft and Data Manager column) about 40 ms each while 20 annotators saved on 2 cores,
# so a page of 1,000 changed tasks took 17-45 s, past the client's 20 s timeout, and the loop's
# poll failed. Asked only for the fields it needs (`include`), a changed task costs 3-13 ms: a page
# of 1,000 took 3-8 s, one of 100 0.7-1.6 s (measured under bench/load.py's load). So each read asks
# only for what it uses, and pages stay far inside the timeout: a slow moment costs a page, not the read.
PAGE = 100  # tasks per page of a read that carries predictions or whole tasks
# `include` names fields of the task and of its annotations alike (Label Studio filters both by it):
# what `task_from_json` reads of an annotation, and of a task its id, data and `updated_at`.
ANNOTATION_FIELDS = "annotations,id,result,was_cancelled,created_at,updated_at,created_username,completed_by,lead_time,parent_prediction"
PREDICTION_FIELDS = "id,predictions"  # a task's predictions come whole (their serializer takes no `include`)
# Tasks nobody has touched: no annotation, not even a skip. Pre-annotations are written (and
# replaced) on these only, so no prediction an annotation started from is ever deleted.
UNTOUCHED = [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
    {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", "type": "Number", "value": 0},
]
LABELED = [{"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]


def query(items: list[dict[str, Any]], ordering: list[str] | None = None) -> str:
    """A Data Manager query (filters joined by "and", optional ordering) as the API takes it."""
    body: dict[str, Any] = {"filters": {"conjunction": "and", "items": items}}
    if ordering:
        body["ordering"] = ordering
    return json.dumps(body)


@dataclass(frozen=True)
class Project:
    """A Label Studio project and the labeling config it was created from."""

    id: int
    title: str
    config: LabelingConfig


class Connection:
    """One Label Studio server: the SDK client and its errors, shared by every part of the adapter
    (built as `LabelStudio` is, which says what each argument is)."""

    def __init__(self, url: str, api_key: str, image_root: Path, timeout_s: float = 20.0):
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.image_root = Path(image_root)
        self._timeout_s = timeout_s
        self._sdk: SDKClient | None = None

    @property
    def sdk(self) -> SDKClient:
        """The SDK client, created on first use (never at import)."""
        if self._sdk is None:
            if not self._api_key:
                raise LabelStudioError(
                    f"No API key for Label Studio at {self.url}. Run `flywheel stack up` (it creates one), "
                    "or set LABEL_STUDIO_API_KEY (Label Studio: Account & Settings > Access Token)."
                )
            with self._calling("connect"):
                self._sdk = SDKClient(base_url=self.url, api_key=self._api_key, timeout=self._timeout_s)
        return self._sdk

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn transport and HTTP failures into one message that says what to do."""
        try:
            yield
        except httpx.TransportError as e:
            raise LabelStudioError(
                f"Label Studio at {self.url} is unreachable while trying to {what} ({e.__class__.__name__}). "
                "Start it with `flywheel stack up`, or set LABEL_STUDIO_URL to your server.",
                retryable=True,
            ) from e
        except ApiError as e:
            if e.status_code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API key ({e.status_code}) while trying to {what}. "
                    "Set LABEL_STUDIO_API_KEY to a valid token (Label Studio: Account & Settings > "
                    "Access Token); with the embedded stack, the workspace's credentials.env holds it."
                ) from e
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {e.status_code} while trying to {what}: {_short(e.body)}",
                retryable=e.status_code is not None and e.status_code >= 500,
            ) from e

    def check(self) -> str:
        """Verify the server answers and accepts the token. Returns the user's email."""
        with self._calling("check the connection"):
            return self.sdk.users.whoami().email or ""

    def _raw(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """An endpoint the SDK has no method for, through the SDK's own authenticated HTTP client."""
        with self._calling(what):
            response = self.sdk._client_wrapper.httpx_client.request(path, method=method, **kwargs)
            if response.status_code >= 400:
                raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
            return response.json() if response.content else {}


def _short(body: Any, limit: int = 300) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text[:limit]
