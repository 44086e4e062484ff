"""bench/results.py: one writer per figure, provenance beside each, means that are means."""

from __future__ import annotations

import ast
import json
import statistics
from pathlib import Path

import pytest

from bench import every_image, results
from components.studies.simulator import Outcome, Step

pytestmark = pytest.mark.unit
BENCH = Path(results.__file__).parent


def test_no_two_benchmarks_can_write_the_same_figure():
    for entry in results.CATALOG:
        for pattern in entry.figures:
            for sample in (pattern.replace("*", ""), pattern.replace("*", "_x"), pattern.replace("*", "_fashion_sd")):
                assert results.writers(sample) in ([entry.name], []), f"{sample!r} ({entry.name}) is also {results.writers(sample)}"


def test_every_figure_in_results_json_has_exactly_one_writer():
    figures = json.loads((BENCH / "results.json").read_text())
    assert results.orphans(figures) == []


def test_each_benchmark_is_recorded_from_one_module_by_its_catalog_name():
    names = {entry.name for entry in results.CATALOG}
    recorded_in: dict[str, set[str]] = {}
    for module in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "record" and len(node.args) >= 2:
                if isinstance(node.args[1], ast.Constant):  # simulate's name is computed and checked at run time
                    recorded_in.setdefault(node.args[1].value, set()).add(module.name)
    assert recorded_in, "no record(...) call found"
    for name, modules in recorded_in.items():
        assert name in names, f"{name!r} is not a benchmark of the catalog"
        assert len(modules) == 1, f"{name!r} is recorded from {sorted(modules)}"


@pytest.fixture
def scratch_results(tmp_path, monkeypatch):
    for name in ("RESULTS_JSON", "PROVENANCE_JSON", "RESULTS_MD", "README"):
        monkeypatch.setattr(results, name, tmp_path / getattr(results, name).name)
    return tmp_path


def test_record_refuses_another_benchmarks_figure_and_writes_nothing(scratch_results):
    with pytest.raises(ValueError, match="final_accuracy.*every-image"):
        results.record({"final_accuracy": 0.9}, "simulate-digit-boxes", "## boxes")
    with pytest.raises(ValueError, match="no benchmark"):
        results.record({"made_up_figure": 1}, "ddp", "## ddp")
    assert not results.RESULTS_JSON.exists()


def test_record_replaces_a_benchmarks_figures_whole_with_their_provenance(scratch_results):
    results.record({"ddp_seconds_1": 60.0, "ddp_seconds_2": 30.0}, "ddp", "## DDP\n\nfirst", seeds=[0], command="flywheel bench ddp")
    results.record({"serve_p50_ms": 5.0}, "serving", "## Serving")
    results.record({"ddp_seconds_1": 50.0}, "ddp", "## DDP\n\nsecond", seeds=[0], command="flywheel bench ddp")

    figures = json.loads(results.RESULTS_JSON.read_text())
    assert figures == {"ddp_seconds_1": 50.0, "serve_p50_ms": 5.0}  # ddp_seconds_2 went with the rerun
    provenance = results.read_provenance()
    assert set(provenance["figures"]) == set(figures)
    stamp = provenance["figures"]["ddp_seconds_1"]
    assert stamp["benchmark"] == "ddp" and stamp["seeds"] == [0] and stamp["command"] == "flywheel bench ddp"
    assert stamp["code"] == results.code_version() and stamp["commit"]
    text = results.RESULTS_MD.read_text()
    assert "second" in text and "first" not in text
    assert text.index("<!-- serving:start -->") < text.index("<!-- ddp:start -->")  # catalog order
    assert [s.state for s in results.standings() if s.benchmark.name in ("ddp", "serving")] == ["current", "current"]


def test_results_md_names_the_command_that_ran_not_the_default(scratch_results):
    results.record({"ddp_seconds_1": 60.0}, "ddp", "## DDP", command="flywheel bench ddp")
    results.record({"photo_det_map50_200": 0.4}, "simulate-photo-boxes", "## photos", seeds=[0],
                   command="flywheel bench simulate --task detection --dataset photo-boxes --seeds 1")
    rows = {line.split(" | ")[0].strip("| "): line for line in results.RESULTS_MD.read_text().splitlines() if line.startswith("| ")}
    assert "`flywheel bench ddp` |" in rows["ddp"] and "bench all" not in rows["ddp"]
    photos = rows["simulate-photo-boxes"]
    assert "`flywheel bench simulate --task detection --dataset photo-boxes --seeds 1`" in photos
    assert f"(`bench all` runs `{results.benchmark('simulate-photo-boxes').command}`)" in photos
    assert "| 0 |" in photos  # the one seed it ran


def test_results_md_keeps_only_benchmark_sections():
    text = "<!-- ddp:start -->\n_Measured by `x` on commit `y`._\n\n## DDP\n<!-- ddp:end -->\n<!-- hand-notes:start -->\nmine\n<!-- hand-notes:end -->"
    assert results.read_sections(text) == {"ddp": "## DDP"}
    before = "<!-- ddp:start -->\n_Measured before provenance was recorded: rerun to replace._\n\n## DDP\n<!-- ddp:end -->"
    assert results.read_sections(before) == {"ddp": "## DDP"}  # re-rendering never stacks the provenance line


def _outcome(order: str, scores: list[float], first_right: float = 0.5) -> Outcome:
    steps = tuple(
        Step(labels=20 * (i + 1), fraction_labeled=0.02 * (i + 1), score=s, secondary_score=None, shown=10, accepted=5,
             acceptance=0.5, iteration_s=1.0, champion="v", preannotation_accuracy=first_right if i == 0 else None)
        for i, s in enumerate(scores)
    )
    return Outcome(steps=steps, pool=1000, order=order)


def _run(order: str, seed: int, scores: list[float]) -> every_image.Run:
    return every_image.Run("mnist", seed, order, _outcome(order, scores), pretrain_s=100.0, pool_images=1000)


def test_multi_seed_figures_are_the_mean_of_the_per_seed_values():
    runs = [
        _run("random", 0, [0.5, 0.7, 0.9]), _run("suggested", 0, [0.6, 0.9, 0.95]),  # reaches 0.9 at 40 of 60: 1/3 saved
        _run("random", 1, [0.5, 0.6, 0.8]), _run("suggested", 1, [0.5, 0.6, 0.7]),  # never reaches 0.8: 0 saved
    ]
    values, _ = every_image.per_seed_values(runs)
    assert values["active_label_savings"] == pytest.approx([1 / 3, 0.0])
    figures = every_image.figures_of("active_label_savings", values["active_label_savings"])
    assert figures["active_label_savings"] == pytest.approx(round(1 / 6, 4))
    assert figures["active_label_savings_sd"] == pytest.approx(round(statistics.stdev([1 / 3, 0.0]), 4))
    assert figures["active_label_savings_seeds"] == pytest.approx([0.3333, 0.0])
    final = every_image.figures_of("final_accuracy", values["final_accuracy"])
    assert final["final_accuracy"] == pytest.approx(0.85)


def test_orders_on_different_seeds_are_refused():
    runs = [_run("random", 0, [0.5]), _run("random", 1, [0.5]), _run("suggested", 0, [0.5])]
    with pytest.raises(ValueError, match="same seeds"):
        every_image.per_seed_values(runs)


def test_the_readme_quotes_the_headline_figures_as_results_json_holds_them():
    text = results.README.read_text()
    found = results.README_BLOCK.search(text)
    assert found, "README.md has no <!-- figures:start --> ... <!-- figures:end --> block"
    assert found.group(2) == results.readme_block(results._read(results.RESULTS_JSON), results.read_provenance())
    assert all(results.writers(key) for key, _, _ in results.HEADLINE)  # each headline figure has its benchmark


def test_a_benchmarks_run_rewrites_the_readme_figures_it_measured(scratch_results):
    results.README.write_text("# x\n\n<!-- figures:start -->\nSTALE\n<!-- figures:end -->\n\nrest\n")
    results.record({"final_accuracy": 0.9, "final_accuracy_sd": 0.01}, "every-image", "## every image", seeds=[0, 1, 2])
    text = results.README.read_text()
    assert "| `final_accuracy` |" in text and "**0.9** ± 0.01 | 0, 1, 2 |" in text and "STALE" not in text
    assert text.startswith("# x\n") and text.endswith("\n\nrest\n")
    results.record({"photo_det_map50_200": 0.4, "photo_det_map50_200_sd": None}, "simulate-photo-boxes", "## photos", seeds=[0])
    assert "**0.4** | 0 |" in results.README.read_text()  # one seed: no spread, and the seed it ran


def test_a_tree_with_changed_results_only_is_not_dirty(monkeypatch):
    def git(*args: str) -> str:
        if args[0] == "rev-parse":
            return "abc\n"
        return porcelain

    monkeypatch.setattr(results, "_git", git)
    porcelain = " M bench/RESULTS.md\n M bench/results.json\n?? bench/provenance.json\n"
    assert results.commit() == ("abc", False)
    porcelain += " M flows/cli.py\n"
    assert results.commit() == ("abc", True)


def _object_outcome(kept: list[int], seconds: list[float], score: float) -> Outcome:
    """Blocks of 20 labels over a pool of 100 (so blocks 2-3 start at 20% and 40%... ) with 10 objects each."""
    steps = tuple(
        Step(labels=10 * (i + 1), fraction_labeled=0.1 * (i + 1), score=score, secondary_score=score / 2, shown=10, accepted=k // 2,
             acceptance=k / 20, iteration_s=30.0 + i, champion="v", objects=10, kept=k, drawn=10 - k, seconds=s, seconds_without=70.0)
        for i, (k, s) in enumerate(zip(kept, seconds, strict=True))
    )
    return Outcome(steps=steps, pool=100, order="random")


def test_object_figures_are_the_mean_of_the_per_seed_values_in_the_window(tmp_path):
    from bench import simulate

    config = simulate.SimulationConfig(dataset="digit-boxes", orders=("random",), pool=100, held_out=10, budget=30, every=10,
                                       task="detection", seeds=2)
    # the block labeled while 10-20% was labeled is the second (it starts at 10%)
    runs = {0: [_object_outcome([0, 8, 9], [70.0, 20.0, 10.0], 0.5)], 1: [_object_outcome([0, 6, 9], [70.0, 35.0, 10.0], 0.7)]}
    figures, markdown = simulate.summarize_objects(config, runs, out_dir=tmp_path)
    assert figures["det_objects_kept_at_10pct_seeds"] == [0.8, 0.6]
    assert figures["det_objects_kept_at_10pct"] == pytest.approx(0.7)
    assert figures["det_effort_saved_at_10pct_seeds"] == pytest.approx([1 - 20 / 70, 1 - 35 / 70], abs=1e-4)
    assert figures["det_effort_saved_at_10pct_sd"] == pytest.approx(round(statistics.stdev([1 - 20 / 70, 0.5]), 4))
    assert figures["det_map50_200"] == pytest.approx(0.6)  # the last step when the budget ends before 200
    assert all(results.writers(key) == ["simulate-digit-boxes"] for key in figures)
    assert (tmp_path / "simulate_digit-boxes_objects.png").stat().st_size > 0
    assert "| random, seed 1 |" in markdown and "effort saved" in markdown
    assert "`centernet` at 128 px, the first model 400 steps" in markdown  # the recipe the figures came from, read from params
