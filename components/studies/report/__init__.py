"""Is the annotation strategy working? The learning curve, the classes that need labels, the confused
pairs, and how often people accept the model's suggestions, measured in Label Studio itself.

`build_report` computes it from plain inputs; `write_report` renders it as HTML with PNG plots and a
JSON summary (what `flywheel report` prints).

Per-class figures are only as honest as the examples behind them: each class carries its support (the
examples of it the figure was computed on) and a 95% Wilson interval, the figures come from the label
check's out-of-fold predictions over every label when they are at hand (`read_out_of_fold`) and from
the champion's validation split otherwise, and "Classes that most need labels" names only a class whose
interval lies below the other classes', saying "too early to tell" while the support cannot tell them apart.

Where things are: `curve` (the learning curve and its fit), `classes` (support, intervals, "too early
to tell"), `feedback` (acceptance of suggestions, production against validation), `contents` (the
`Report` and its text), `figures` (the plots), `page` (report.html and report.json).
"""

from components.studies.report.classes import (
    MIN_SUPPORT, ClassRow, OutOfFold, clearly_worse, out_of_fold_confusion, read_out_of_fold, wilson_interval,
)
from components.studies.report.contents import Report, build_report, needing_labels_line, summary_lines
from components.studies.report.curve import CurveFit, LearningPoint, fit_curve, fit_learning_curve
from components.studies.report.feedback import Acceptance, ProductionView, measure_acceptance, production_view
from components.studies.report.page import write_report

__all__ = [
    "MIN_SUPPORT", "Acceptance", "ClassRow", "CurveFit", "LearningPoint", "OutOfFold", "ProductionView", "Report", "build_report",
    "clearly_worse", "fit_curve", "fit_learning_curve", "measure_acceptance", "needing_labels_line", "out_of_fold_confusion",
    "production_view", "read_out_of_fold", "summary_lines", "wilson_interval", "write_report",
]
