"""`flywheel bench`: the benchmarks. Those without options are registered from one table; each runs
`bench/<catalog name>.py`'s `main` (bench/results.py's CATALOG names them)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from bench.results import CATALOG
from components.core.errors import FlywheelError, SettingsError
from flows.cli.base import TASKS, _settings, clear_errors

app = typer.Typer(help="Benchmarks; each writes bench/results.json and bench/RESULTS.md.", no_args_is_help=True)

# `flywheel bench <command>` -> its help line, for the benchmarks that take no options; the command is
# the CATALOG entry's `args`, and the entry's name gives the module (label-errors: bench/label_errors.py).
# In this order in `flywheel bench --help`, after simulate and every-image.
WITHOUT_OPTIONS = {
    "strategy": "Boxes or masks on the demo set, in annotation hours (`flywheel strategy --dataset digit-masks`).",
    "assist": "The mask assistant: mask IoU from a box with no mask labeled (GrabCut) and after 50, and ms per answer.",
    "micro": "Incremental poll vs full export, bulk vs one-call write-back, training throughput.",
    "latency": "Seconds from an annotation saved to refreshed pre-annotations, with a stage breakdown.",
    "errors": "Flip 5/10/20% of the default dataset's labels on purpose; does the error finder rank them first?",
    "robustness": "The bad-input corpus, the wait for a clear error with each server dead, predictions kept after 10 models.",
    "serving": "`flywheel serve-model` on loopback: p50 latency, throughput at 16 in flight, errors, seconds to Label Studio.",
    "ddp": "The full retrain on one process vs two (Lightning DDP on CPU): validation accuracy and seconds.",
}


def _bench(module: str) -> ModuleType:
    """`bench/<module>.py`, imported, then the environment prepared for the clients it starts (`_settings`)."""
    loaded = importlib.import_module(f"bench.{module}")
    _settings()
    return loaded


def _register(command: str, line: str) -> None:
    """`flywheel bench <command>`: its CATALOG entry's `main`, with its defaults (printing through typer
    where it takes `echo`)."""
    (entry,) = (b for b in CATALOG if b.args == command)  # exactly one benchmark runs as `flywheel bench <command>`
    module = entry.name.replace("-", "_")

    def run() -> None:
        main = _bench(module).main
        if "echo" in inspect.signature(main).parameters:
            main(echo=typer.echo)
        else:
            main()

    app.command(command, help=line)(clear_errors(run))


@app.command("simulate")
@clear_errors
def bench_simulate(
    dataset: Annotated[str, typer.Option(help="mnist | digits | a folder laid out class_name/image.png; for "
                                               "detection/segmentation: params.yaml demo.<task>.dataset unless given")] = "",
    task: Annotated[str, typer.Option(help="classification | detection | segmentation")] = "classification",
    order: Annotated[list[str], typer.Option(help="random and/or suggested (repeat the option for both)")] = ["random", "suggested"],  # noqa: B006
    budget: Annotated[int, typer.Option(help="Labels the simulated person makes.")] = 300,
    every: Annotated[int, typer.Option(help="Labels between flywheel iterations (K).")] = 20,
    pool: Annotated[int, typer.Option(help="Images imported as tasks.")] = 1000,
    held_out: Annotated[int, typer.Option(help="Images kept aside, never labeled, to score each champion.")] = 500,
    seed: int = 0,
    seeds: Annotated[int, typer.Option(help="detection, segmentation: seeds --seed, --seed + 1, ... (each its own draw of "
                                            "pool and held-out set); figures are the mean of the per-seed values")] = 1,
    images: Annotated[Path | None, typer.Option(help="A COCO file's image folder: its file_names are relative to it "
                                                      "(default: beside the file, then its images/).")] = None,
) -> None:
    """Play a person labeling a real dataset with flywheel's pre-annotations, on a throwaway stack."""
    from components.core.params import load_params

    simulate = _bench("simulate")
    if task not in TASKS:
        raise SettingsError(f"--task must be one of {', '.join(TASKS)}, not {task!r}.")
    if not dataset:
        dataset = load_params().demo.of(task).dataset if task != "classification" else "mnist"
    if seeds < 1:
        raise SettingsError(f"--seeds must be at least 1, not {seeds}.")
    simulate.main(simulate.SimulationConfig(dataset, tuple(order), pool, held_out, budget, every, seed, task, seeds,
                                                str(images) if images else None), echo=typer.echo)


@app.command("every-image")
@clear_errors
def bench_every_image(
    dataset: Annotated[list[str], typer.Option(help="mnist and/or fashion-mnist (repeat the option)")] = ["mnist", "fashion-mnist"],  # noqa: B006
    seeds: Annotated[int, typer.Option(help="Seeds per dataset (pool draw and annotator order).")] = 3,
    budget: Annotated[int, typer.Option(help="Labels the simulated person makes.")] = 300,
    pool: Annotated[int, typer.Option(help="Images imported as tasks.")] = 1000,
    order: Annotated[list[str], typer.Option(help="random and/or suggested (repeat the option)")] = ["random", "suggested"],  # noqa: B006
) -> None:
    """Pretraining on every image: few-shot accuracy, acceptance, final accuracy, label savings over seeds."""
    every_image = _bench("every_image")
    every_image.main(every_image.Config(datasets=tuple(dataset), seeds=tuple(range(seeds)), orders=tuple(order), budget=budget,
                                        pool=pool), echo=typer.echo)


for command, line in WITHOUT_OPTIONS.items():
    _register(command, line)


@app.command("load")
@clear_errors
def bench_load(
    annotations: Annotated[int, typer.Option(help="How many annotations the 20 simulated annotators save.")] = 5000,
) -> None:
    """20 annotators save 5,000 labels while two loop workers run (team profile): each in a snapshot once?
    Then how long a poll waits for the lock while the label check trains."""
    _bench("load").main(annotations, echo=typer.echo)


@app.command("faults")
@clear_errors
def bench_faults(
    case: Annotated[list[str] | None, typer.Option("--case", help="Only this case, as component:step (repeatable).")] = None,
) -> None:
    """The fault matrix on a throwaway team-profile stack: kill -9 each server and the worker during each step."""
    results = _bench("faults").main(case or None, echo=typer.echo)
    if not all(c.passed for c in results):
        raise FlywheelError(f"{sum(not c.passed for c in results)} of {len(results)} fault cases failed (bench/RESULTS.md).")


@app.command("all")
@clear_errors
def bench_all(
    force: Annotated[bool, typer.Option(help="Rerun every benchmark, also those measured on the code as it is now.")] = False,
    only: Annotated[list[str] | None, typer.Option(help="Only these benchmarks (names as in `flywheel bench status`).")] = None,
) -> None:
    """Every benchmark that writes a figure, each in its own process, on the code as it is now (about 13
    hours on a 2-core CPU, the photo simulations' 3 seeds 6.5 of them). Those already measured on this code
    are skipped, so a stopped run resumes."""
    from bench.results import benchmark, stale

    try:
        chosen = [benchmark(name) for name in only] if only else list(CATALOG)
    except KeyError as e:
        raise SettingsError(f"{e.args[0]}; `flywheel bench status` lists them.") from None
    todo = chosen if force else stale(b.name for b in chosen)
    for entry in chosen:
        if entry not in todo:
            typer.echo(f"{entry.name}: measured on this code already (--force reruns it)")
    failed = []
    for number, entry in enumerate(todo, 1):
        typer.echo(f"[{number}/{len(todo)}] {entry.command}  (about {entry.minutes} min)")
        done = subprocess.run([str(Path(sys.executable).parent / "flywheel"), "bench", *entry.args.split()], check=False)
        if done.returncode != 0:
            failed.append(entry.name)
    if failed:
        raise FlywheelError(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}; their figures stay as they were "
                            f"(`flywheel bench status`). Rerun one with `flywheel bench all --only NAME`.")


@app.command("status")
@clear_errors
def bench_status() -> None:
    """Which figures were measured on the code as it is now, which on older code, which never."""
    from bench.results import orphans, standings

    for s in standings():
        stamp = s.stamp
        where = (f"{stamp['commit']}{'+dirty' if stamp.get('dirty') else ''} {stamp['date'][:10]}"
                 + (f", {s.commits_behind} commit(s) before HEAD" if s.commits_behind else "")) if stamp else ""
        typer.echo(f"{s.benchmark.name:22s} {s.state:18s} {s.figures:3d} figures  {where}")
    for key in orphans():
        typer.echo(f"{key}: in bench/results.json but not one benchmark's figure (bench/results.py CATALOG)")
