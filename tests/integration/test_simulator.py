"""The simulated annotator on a tiny budget, against the real stack and the real flow."""

import csv

import pytest

from bench.simulate import SimulationConfig, run_simulation, summarize

pytestmark = pytest.mark.integration


def test_simulator_labels_accepts_and_records_every_step(loop_env, tmp_path):
    config = SimulationConfig(dataset="digits", orders=("random",), pool=80, held_out=40, budget=60, every=20)
    outcomes = run_simulation(loop_env, tmp_path / "scratch", config, out_dir=tmp_path, echo=lambda _: None)
    (outcome,) = outcomes
    assert [s.labels for s in outcome.steps] == [20, 40, 60]
    assert outcome.steps[0].shown == 0  # nothing to suggest before the first model
    for before, step in zip(outcome.steps, outcome.steps[1:]):
        if before.champion:  # once a champion exists, every task shows its suggestion
            assert step.shown == step.labels - before.labels
    assert all(0 <= s.accepted <= s.shown for s in outcome.steps)
    assert outcome.final_score is not None and 0 < outcome.final_score <= 1
    rows = list(csv.DictReader(open(tmp_path / "simulate_digits_random.csv")))
    assert [int(r["labels"]) for r in rows] == [20, 40, 60]

    figures, markdown = summarize(config, outcomes, out_dir=tmp_path)
    assert figures["final_accuracy"] == round(outcome.final_score, 4)
    assert (tmp_path / "simulate_digits_learning.png").stat().st_size > 0
    assert (tmp_path / "simulate_digits_acceptance.png").stat().st_size > 0
    assert "| random | 60 |" in markdown
