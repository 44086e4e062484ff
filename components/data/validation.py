"""The data contract a snapshot must meet before it may be trained on (Great Expectations).

Two suites, run on every snapshot (and by the data tests):

- `manifest`: exact schema, no nulls, unique task ids, every class a target names within the
  config's set, known splits, every image readable;
- `class_counts`: every class of the config has at least `min_per_class` labeled images (boxes,
  for detection).

A failure names the Label Studio tasks at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig
import pandas as pd
from PIL import Image, UnidentifiedImageError

from components.data.snapshot import COLUMNS

if TYPE_CHECKING:
    from components.core.task_type import TaskType


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of the data contract on one snapshot."""

    success: bool
    failures: tuple[str, ...] = ()
    task_ids: tuple[int, ...] = ()
    statistics: dict[str, float] = field(default_factory=dict)
    too_few: tuple[str, ...] = ()

    @property
    def only_too_few(self) -> bool:
        """True when the data is sound and only some classes lack labels yet: wait, don't fail."""
        return not self.success and not self.task_ids and bool(self.too_few)

    def describe(self) -> str:
        """One readable paragraph: what failed and which tasks to look at."""
        if self.success:
            return "the snapshot meets the data contract"
        return "the snapshot breaks the data contract:\n  " + "\n  ".join(self.failures)


def is_readable(path: Path) -> bool:
    """True when the file exists and decodes as an image."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, UnidentifiedImageError):
        return False


def manifest_suite() -> list[gxe.Expectation]:
    """Expectations on the manifest, with derived `image_readable` and `label_unknown_classes` columns."""
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=[*COLUMNS, "image_readable", "label_unknown_classes"], exact_match=True),
        *(gxe.ExpectColumnValuesToNotBeNull(column=column) for column in COLUMNS),
        gxe.ExpectColumnValuesToBeUnique(column="task_id"),
        gxe.ExpectColumnValuesToBeInSet(column="label_unknown_classes", value_set=[""]),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val"]),
        gxe.ExpectColumnValuesToBeInSet(column="image_readable", value_set=[True]),
    ]


def class_counts_suite(min_per_class: int) -> list[gxe.Expectation]:
    """Expectations on the per-class counts."""
    return [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=min_per_class)]


def _run(
    name: str, expectations: list[gxe.Expectation], frame: pd.DataFrame, index_column: str
) -> list[tuple[str, list]]:
    """Run a suite on a dataframe; return (expectation description, offending keys) per failure."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("snapshot").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]},
    )
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k in ("column", "value_set", "min_value", "column_set")}
        rows = outcome.result.get("unexpected_index_list") or []
        keys = list(dict.fromkeys(row[index_column] for row in rows if index_column in row))
        failures.append((f"{config.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})", keys))
    return failures


def validate_snapshot(
    manifest: pd.DataFrame, folder: Path, labels: tuple[str, ...], min_per_class: int, task_type: TaskType
) -> ValidationReport:
    """Check a snapshot against the data contract.

    Args:
        manifest: The snapshot's manifest.
        folder: The snapshot folder (images are resolved against it).
        labels: The config's label set.
        min_per_class: Minimum labeled images (boxes) per class.
        task_type: Reads the classes out of each row's target.
    """
    frame = manifest.copy()
    frame["image_readable"] = [is_readable(folder / image) for image in frame["image"]]
    classes = [task_type.classes_in(target) for target in frame["label"]]
    frame["label_unknown_classes"] = [", ".join(sorted(set(c) - set(labels))) for c in classes]
    counts = pd.Series([c for row in classes for c in row], dtype="object").value_counts().reindex(list(labels), fill_value=0)
    count_frame = pd.DataFrame({"label": counts.index, "count": counts.to_numpy()})

    failures, task_ids, too_few = [], [], []
    for name, keys in _run("manifest", manifest_suite(), frame, "task_id"):
        task_ids.extend(int(k) for k in keys)
        shown = ", ".join(map(str, keys[:20])) + (" ..." if len(keys) > 20 else "")
        failures.append(f"{name}: tasks {shown}" if keys else name)
    for _, keys in _run("class_counts", class_counts_suite(min_per_class), count_frame, "label"):
        too_few.extend(keys)
        few = ", ".join(f"{label!r}: {counts[label]}" for label in keys)
        failures.append(
            f"classes below {min_per_class} labeled {task_type.count_noun} ({few}); label more of them "
            "(or lower validate.min_per_class in params.yaml)"
        )
    return ValidationReport(
        success=not failures,
        failures=tuple(failures),
        task_ids=tuple(sorted(set(task_ids))),
        too_few=tuple(too_few),
        statistics={"rows": len(frame), "classes_present": int((counts > 0).sum())},
    )
