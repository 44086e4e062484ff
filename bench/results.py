"""Write benchmark figures: `bench/results.json` (one flat object of named numbers, merged across
benchmarks) and a section of `bench/RESULTS.md` per benchmark (replaced on each run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_JSON = BENCH / "results.json"
RESULTS_MD = BENCH / "RESULTS.md"
HEADER = "# Benchmark results\n\nWritten by the scripts in `bench/`; each section is replaced when its benchmark reruns.\n"


def record(figures: dict[str, float | int | dict], section: str, markdown: str) -> None:
    """Merge `figures` into results.json and replace `section` of RESULTS.md with `markdown`."""
    current = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    current.update(figures)
    RESULTS_JSON.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else HEADER
    block = f"<!-- {section}:start -->\n{markdown.strip()}\n<!-- {section}:end -->"
    pattern = re.compile(rf"<!-- {section}:start -->.*?<!-- {section}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    RESULTS_MD.write_text(text)
