"""The report as files: report.html with its PNG plots, and report.json (what `flywheel report` prints)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from components.studies.report.classes import ClassRow
from components.studies.report.contents import Report, needing_labels_line, summary_lines
from components.studies.report.figures import draw_plots


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(row: ClassRow) -> str:
    return "-" if row.low is None or row.high is None else f"{row.low:.3f} to {row.high:.3f}"


def _strategy_section(strategy: Path | None, folder: Path) -> str:
    """The last `flywheel strategy` comparison (boxes or masks, in annotation hours), if one was run."""
    import shutil

    if strategy is None or not (strategy / "strategy.json").is_file():
        return ""
    saved = json.loads((strategy / "strategy.json").read_text())
    shutil.copy(strategy / "strategy.png", folder / "strategy.png")
    sentences = "".join(f"<li>{html.escape(v['sentence'])}</li>" for v in saved["verdicts"].values())
    return f'<h2>Annotation strategy: boxes or masks (in annotation hours)</h2><ul>{sentences}</ul><img src="strategy.png" alt="strategy">'


def write_report(report: Report, labels: Sequence[str], folder: Path, title: str, strategy: Path | None = None) -> Path:
    """Write report.html, its PNG plots and report.json into `folder`. Returns the HTML's path.
    `strategy`: the folder of the last `flywheel strategy` comparison, shown as a section when there."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(report, labels, folder)
    summary = {**asdict(report), "labels_to_target": report.labels_to_target, "acceptance_rate": report.acceptance.rate,
               "classes_needing_labels": report.classes_needing_labels,
               "classes_clearly_needing_labels": report.classes_clearly_needing_labels, "summary": summary_lines(report)}
    (folder / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = "".join(
        f"<tr><td>{html.escape(c.label)}</td><td>{c.labeled}</td><td>{'-' if c.support is None else c.support}</td>"
        f"<td>{_cell(c.precision)}</td><td>{_cell(c.recall)}</td><td>{c.f1:.3f}</td><td>{_interval(c)}</td></tr>"
        for c in sorted(report.classes, key=lambda c: (c.ranked, c.labeled))
    )
    per_class_note = (f"<p>Figures from {html.escape(report.source)}; support: the {html.escape(report.count_noun)} of each "
                      f"class they were computed on; 95% Wilson interval of {html.escape(report.ranked_title)}"
                      + (" (an approximation for an AP)" if report.confusion is None else "")
                      + f". {html.escape(needing_labels_line(report))}</p>")
    pairs = "".join(f"<li>{html.escape(a)} &harr; {html.escape(b)}: {n}</li>" for a, b, n in report.confused_pairs)
    confused = (f"<h2>Most confused pairs</h2><ul>{pairs or '<li>none</li>'}</ul><img src=\"{plots['confusion']}\" alt=\"confusion\">"
                if "confusion" in plots else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in summary_lines(report))}</ul>
<h2>Learning curve</h2><img src="{plots['learning_curve']}" alt="learning curve">
<h2>Per class (lowest {html.escape(report.ranked_title)} first)</h2>
{per_class_note}
<table><tr><th>class</th><th>labeled</th><th>support</th><th>precision</th><th>recall</th><th>{html.escape(report.per_class_title)}</th>
<th>95% interval of {html.escape(report.ranked_title)}</th></tr>{rows}</table>
<img src="{plots['per_class']}" alt="per class">
{confused}
<h2>Suggestions accepted</h2><img src="{plots['acceptance']}" alt="acceptance">
{'<h2>Production</h2><img src="production.png" alt="production">' if "production" in plots else ""}
{_strategy_section(strategy, folder)}
</body></html>"""
    path = folder / "report.html"
    path.write_text(page)
    return path
