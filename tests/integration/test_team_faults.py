"""The team profile survives faults: CI's subset of the fault matrix (`bench/faults.py`; `make faults`
runs every case). Each case kills a real server (PostgreSQL, the object store, Label Studio, MLflow)
or the worker with SIGKILL during a step of the loop, restarts, reruns, and checks every promise."""

from __future__ import annotations

import pytest

from bench.faults import CI_CASES, run_matrix

pytestmark = pytest.mark.integration


def test_team_profile_survives_the_ci_fault_cases():
    results = run_matrix(list(CI_CASES))
    failed = {c.name: c.failures for c in results if not c.passed}
    assert not failed, failed
    assert {c.name for c in results} == {f"{c}:{s}" for c, s in CI_CASES}
