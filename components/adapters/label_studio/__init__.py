"""The Label Studio adapter: the only package that imports `label_studio_sdk`.

A narrow API over Label Studio's HTTP interface, on one class, `LabelStudio`:

- `ensure_project(title, config)`: idempotent; a project whose label set differs is an error.
- `import_images(project, paths)`: tasks deduplicated by content hash.
- `fetch_changed(project, cursor)`: annotations created, updated or deleted since the cursor, at a
  cost proportional to what changed (a Data Manager filter on the task's `updated_at`).
- `write_predictions(project, predictions, model_version)`: the pre-annotations of every unlabeled
  task, in bulk, once per version; `tidy_predictions(project, keep)` deletes superseded ones later.
- `sync_marked_predictions(project, predictions, model_version, mark)`: marked predictions on
  labeled tasks (suspected label errors), rewritten only where they changed.
- `ensure_view(project, title, filters, ordering)`: a Data Manager tab people open.
- `download(url, task_id)`: a file Label Studio serves (uploads, local files, cloud storages).
- `ensure_webhook(project, url, headers, actions)`: idempotent; `newest_change(project)`: the
  safety-net poll's one cheap question.

It writes tasks, predictions and views only: no method here changes or deletes an annotation, and
no prediction that an annotation was started from is ever deleted (Label Studio would clear the
annotation's `parent_prediction`).

Where things are: `client` (`LabelStudio`: projects and webhooks, and the parts it is made of),
`connection` (the SDK client, its errors, Data Manager queries), `tasks` (importing images, reading
tasks), `changes` (the incremental poll), `predictions` (writing, syncing and tidying them), `views`
(the Data Manager tabs and their names).
"""

from components.adapters.label_studio.changes import CHANGED_FIELDS, CHANGED_PAGE, OVERLAP_S, ChangeSet
from components.adapters.label_studio.client import LabelStudio
from components.adapters.label_studio.connection import ANNOTATION_FIELDS, BATCH, LABELED, PAGE, PREDICTION_FIELDS, UNTOUCHED, Project
from components.adapters.label_studio.tasks import OBJECTS_DIR, ImportResult, printable_name
from components.adapters.label_studio.views import (
    ATTENTION_VIEW, BY_ID, LABEL_NEXT_VIEW, LEAST_CONFIDENT_FIRST, MOST_CONFIDENT_FIRST, SUSPECT_MARK, SUSPECTS_VIEW, task_ids_filter,
)

__all__ = [
    "ANNOTATION_FIELDS", "ATTENTION_VIEW", "BATCH", "BY_ID", "CHANGED_FIELDS", "CHANGED_PAGE", "LABELED", "LABEL_NEXT_VIEW",
    "LEAST_CONFIDENT_FIRST", "MOST_CONFIDENT_FIRST", "OBJECTS_DIR", "OVERLAP_S", "PAGE", "PREDICTION_FIELDS", "SUSPECTS_VIEW",
    "SUSPECT_MARK", "UNTOUCHED", "ChangeSet", "ImportResult", "LabelStudio", "Project", "printable_name", "task_ids_filter",
]
