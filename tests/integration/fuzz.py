"""An HTTP API fuzzed from its own OpenAPI schema (schemathesis): every operation, no 5xx, and every 4xx says
what to send. Its pytest plugin does not run under pytest 9, so the cases come from its hypothesis strategies."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error


@schemathesis.check
def says_what_to_send(ctx, response, case) -> None:
    """Every 4xx carries a `detail`: a sentence, or FastAPI's list of what is wrong where."""
    if 400 <= response.status_code < 500:
        detail = response.json().get("detail")
        assert detail and (isinstance(detail, str) or all(d.get("msg") for d in detail)), (response.status_code, response.text)


def fuzz(url: str, paths: set[str], examples: int = 30) -> None:
    """Fuzz every operation of the API at `url` (its schema at /openapi.json), which must offer `paths`."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {o.path for o in operations} >= paths
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:
            case.call_and_validate(checks=[not_a_server_error, says_what_to_send])

        call()
