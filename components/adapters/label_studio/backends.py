"""flywheel as a project's ML backend in Label Studio (Settings > Model): connected once, idempotently.

Label Studio 1.23 calls a connected backend's `/health` (1 s) and `/setup` (3 s) when it is added and
whenever its list is read, `/predict` for the Data Manager's "Retrieve predictions" and, with
`is_interactive`, for the smart tools (see `components.production.ml_backend` for the protocol).
"""

from __future__ import annotations

from components.adapters.label_studio.connection import Connection

BACKEND_TITLE = "flywheel"  # also the model version Label Studio shows the backend's predictions under


class Backends(Connection):
    """The ML backends connected to a project."""

    def ensure_ml_backend(self, project_id: int, url: str, title: str = BACKEND_TITLE, interactive: bool = True) -> int:
        """Connect the backend at `url` to the project, once: one already there at `url` is updated (made
        interactive, retitled), never duplicated. Label Studio checks `/health` and `/setup` before it
        answers. Returns the backend's id.

        Raises:
            LabelStudioError: Label Studio refused it, with its reason (e.g. a backend on 127.0.0.1 needs the
                server started with ML_BLOCK_LOCAL_IP=false, as `flywheel stack up` does).
        """
        with self._calling(f"connect the ML backend {url} to project {project_id}"):
            same = [b for b in self.sdk.ml.list(project=project_id) if (b.url or "").rstrip("/") == url.rstrip("/")]
            if same:
                # `project` too: Label Studio 1.23 answers a PATCH without it with a 500 (MLBackend.setup_() missing 'project')
                self.sdk.ml.update(id=same[0].id, project=project_id, url=url, title=title, is_interactive=interactive,
                                   auth_method="NONE")
                return int(same[0].id)
            created = self.sdk.ml.create(project=project_id, url=url, title=title, is_interactive=interactive, auth_method="NONE")
            return int(created.id)

    def ml_backends(self, project_id: int) -> list[dict[str, object]]:
        """The project's backends as Label Studio shows them in Settings > Model: id, url, title, state."""
        with self._calling(f"list the ML backends of project {project_id}"):
            return [{"id": b.id, "url": b.url, "title": b.title, "state": b.state, "is_interactive": b.is_interactive}
                    for b in self.sdk.ml.list(project=project_id)]
