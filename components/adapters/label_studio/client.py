"""`LabelStudio`, the adapter whole: its projects and webhooks here, and the connection, tasks,
incremental poll, predictions and views it is made of (a module each).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from components.adapters.label_studio.backends import Backends
from components.adapters.label_studio.connection import Project
from components.adapters.label_studio.predictions import Predictions
from components.adapters.label_studio.tasks import Tasks
from components.adapters.label_studio.views import Views
from components.core.errors import LabelConfigError, LabelStudioError
from components.core.labeling_config import LabelingConfig, parse_labeling_config


class LabelStudio(Tasks, Predictions, Views, Backends):
    """Talks to one Label Studio server.

    Args:
        url: Base URL, e.g. http://127.0.0.1:8080.
        api_key: A legacy token or a personal access token (never logged).
        image_root: The server's LOCAL_FILES_DOCUMENT_ROOT; imported images are copied under it.
        timeout_s: Per-request timeout: a server that stops answering is reported, not waited for.
    """

    @classmethod
    def from_settings(cls, settings: Any) -> LabelStudio:
        """Build from `components.core.settings.Settings`."""
        return cls(settings.label_studio_url, settings.label_studio_api_key, settings.image_root)

    def __repr__(self) -> str:
        return f"LabelStudio(url={self.url!r})"

    def ensure_project(self, title: str, config: LabelingConfig, create: bool = True) -> Project | None:
        """Find the project with this title, or create it from `config` (None when `create` is False).

        Raises:
            LabelConfigError: A project with this title exists but its tags or label set differ.
        """
        with self._calling(f"find project {title!r}"):
            existing = [p for p in self.sdk.projects.list(title=title) if p.title == title]
        if not existing and not create:
            return None
        if not existing:
            with self._calling(f"create project {title!r}"):
                created = self.sdk.projects.create(title=title, label_config=config.xml)
            return Project(id=created.id, title=title, config=config)
        project = min(existing, key=lambda p: p.id)
        with self._calling(f"read project {project.id}"):
            xml = self.sdk.projects.get(id=project.id).label_config or ""
        current = parse_labeling_config(xml, source=f"project {title!r} (id {project.id})")
        if (current.control_type, current.from_name, current.to_name, current.data_key, current.labels) != (
            config.control_type, config.from_name, config.to_name, config.data_key, config.labels,
        ):
            raise LabelConfigError(
                f"Project {title!r} (id {project.id}) labels {list(current.labels)} with <{current.control_type}> "
                f"{current.from_name}->{current.to_name}, but the config labels {list(config.labels)} with "
                f"<{config.control_type}> {config.from_name}->{config.to_name}. Use another project title, or make the config "
                "match the project (Label Studio: Settings > Labeling Interface)."
            )
        return Project(id=project.id, title=title, config=current)

    def project(self, project_id: int) -> Project:
        """Read an existing project and its labeling config.

        Raises:
            LabelStudioError: There is no such project (naming the projects there are).
            LabelConfigError: Its config is not one flywheel serves (saying what it supports).
        """
        try:
            with self._calling(f"read project {project_id}"):
                p = self.sdk.projects.get(id=project_id)
        except LabelStudioError as e:
            if "answered 404" not in str(e):
                raise
            with self._calling("list the projects"):
                there = [f"{q.id} ({q.title!r})" for q in self.sdk.projects.list()][:20]
            raise LabelStudioError(
                f"Label Studio at {self.url} has no project {project_id} (project.id in params.yaml, or --project). "
                f"Projects there: {', '.join(there) or 'none'}."
            ) from e
        return Project(
            id=p.id, title=p.title or "", config=parse_labeling_config(p.label_config or "", f"project {p.id} ({p.title!r})")
        )

    def ensure_webhook(self, project_id: int, url: str, headers: dict[str, str], actions: Iterable[str]) -> int:
        """Make Label Studio post `actions` of the project to `url` with `headers`, once: a webhook
        already there for `url` is updated (and re-activated), never duplicated. Returns its id."""
        body = {"actions": list(actions), "headers": headers, "is_active": True, "send_payload": False, "send_for_all_actions": False}
        with self._calling(f"register the webhook of project {project_id}"):
            same = [w for w in self.sdk.webhooks.list(project=str(project_id)) if w.url == url and w.project == project_id]
            if same:
                self.sdk.webhooks.update(id=same[0].id, url=url, **body)
                return int(same[0].id)
            return int(self.sdk.webhooks.create(url=url, project=project_id, **body).id)

    def deactivate_webhook(self, webhook_id: int, timeout_s: float = 2.0) -> None:
        """Stop Label Studio posting to a webhook (kept, so the next `ensure_webhook` re-activates it;
        Label Studio clears its actions on this update, and `ensure_webhook` sets them again). Quick:
        it runs while serving stops."""
        with self._calling(f"deactivate webhook {webhook_id}"):
            self.sdk.webhooks.update(
                id=webhook_id, is_active=False, request_options={"timeout_in_seconds": timeout_s, "max_retries": 0}
            )

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks as Label Studio lists them."""
        with self._calling(f"list the webhooks of project {project_id}"):
            return [w.model_dump(mode="json") for w in self.sdk.webhooks.list(project=str(project_id))]
