"""Snapshot versioning: a data registry (git + DVC) under the workspace, pushed to a DVC remote.

One registry per Label Studio project (`<workspace>/registry/project-<id>`), one git commit and tag
per snapshot. The commit also holds `state.json` (project id, annotation cursor), so the cursor
advances in the same commit that versions the snapshot it fed: if versioning fails, it does not move.
The project's own git history is never written to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo

from components.errors import FlywheelError

SNAPSHOT = "snapshot"
STATE = "state.json"


class VersioningError(FlywheelError):
    """git or DVC failed on the data registry."""


@dataclass(frozen=True)
class SnapshotVersion:
    """One versioned snapshot.

    Attributes:
        rev: Its git tag in the registry (e.g. "snapshot-0003"); `restore` takes it.
        commit: The git commit.
        md5: DVC's hash of the snapshot folder: the data version id.
        project_id: The Label Studio project.
        cursor: The annotation cursor the snapshot reflects.
        registry: The registry's path (a git URL for `dvc get`/`dvc import`).
    """

    rev: str
    commit: str
    md5: str
    project_id: int
    cursor: str | None
    registry: Path


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise VersioningError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


class DataRegistry:
    """The git + DVC repository that versions one project's snapshots.

    Args:
        root: The registry folder (created on first use).
        remote: The DVC remote URL: a local folder by default, any DVC remote (s3://...) by config.
    """

    def __init__(self, root: Path, remote: str):
        self.root = Path(root)
        self.remote = remote

    @property
    def snapshot_dir(self) -> Path:
        """The working copy of the latest snapshot (what `snapshot.write_snapshot` writes into)."""
        return self.root / SNAPSHOT

    def open(self) -> DataRegistry:
        """Create the registry (git init, dvc init, default remote) if it does not exist yet."""
        if not (self.root / ".dvc").is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / ".git").exists():
                _git(self.root, "init", "--quiet", "--initial-branch=main")
            _git(self.root, "config", "user.name", "flywheel")
            _git(self.root, "config", "user.email", "flywheel@localhost")
            repo = Repo.init(str(self.root))
            with repo.config.edit() as conf:
                conf["core"]["analytics"] = False
                conf["core"]["check_update"] = False
                conf["core"]["remote"] = "storage"
                conf["remote"]["storage"] = {"url": self.remote}
            _git(self.root, "add", ".dvc", ".dvcignore")
            _git(self.root, "commit", "--quiet", "-m", "Data registry for flywheel snapshots")
        return self

    def latest(self) -> SnapshotVersion | None:
        """The last versioned snapshot, or None before the first one."""
        state = self.root / STATE
        if not state.exists():
            return None
        return self._version(json.loads(state.read_text()))

    def _version(self, state: dict) -> SnapshotVersion:
        dvc_file = yaml.safe_load((self.root / f"{SNAPSHOT}.dvc").read_text())
        return SnapshotVersion(
            rev=state["rev"],
            commit=_git(self.root, "rev-parse", "HEAD"),
            md5=dvc_file["outs"][0]["md5"],
            project_id=int(state["project_id"]),
            cursor=state.get("cursor"),
            registry=self.root,
        )

    def commit(self, project_id: int, cursor: str | None, title: str = "") -> SnapshotVersion:
        """Version the snapshot folder: `dvc add`, git commit and tag, `dvc push`.

        The cursor is written in the same commit, so it only advances once the snapshot is safe.
        """
        previous = self.latest()
        number = int(previous.rev.rsplit("-", 1)[1]) + 1 if previous else 1
        rev = f"snapshot-{number:04d}"
        try:
            with Repo(str(self.root)) as repo:
                repo.add(str(self.snapshot_dir))
                repo.push()
        except (DvcException, OSError) as e:
            raise VersioningError(
                f"DVC could not version {self.snapshot_dir} or push it to {self.remote}: {e}. "
                "Check the remote (FLYWHEEL_DVC_REMOTE) and disk space; the cursor did not move."
            ) from e
        state = {"rev": rev, "project_id": project_id, "project_title": title, "cursor": cursor}
        (self.root / STATE).write_text(json.dumps(state, indent=2))
        _git(self.root, "add", f"{SNAPSHOT}.dvc", ".gitignore", STATE)
        _git(self.root, "commit", "--quiet", "-m", f"{rev}: project {project_id}, cursor {cursor}")
        _git(self.root, "tag", rev)
        return self.latest()  # type: ignore[return-value]

    def title(self) -> str:
        """The Label Studio project title recorded with the last snapshot ("" before the first)."""
        state = self.root / STATE
        return json.loads(state.read_text()).get("project_title", "") if state.exists() else ""

    def restore(self, rev: str, dest: Path) -> Path:
        """Restore snapshot `rev` from the DVC remote into `dest` (a fresh clone, empty cache).

        Returns:
            The restored snapshot folder.
        """
        if dest.exists():
            shutil.rmtree(dest)
        subprocess.run(["git", "clone", "--quiet", str(self.root), str(dest)], check=True, capture_output=True)
        _git(dest, "checkout", "--quiet", rev)
        with Repo(str(dest)) as repo:
            repo.pull()
        return dest / SNAPSHOT


def find_registry(workspace: Path, title: str) -> DataRegistry:
    """The data registry of the project titled `title` under a workspace (no Label Studio needed).

    Raises:
        VersioningError: No snapshot of that project was versioned yet.
    """
    for state in sorted((workspace / "registry").glob(f"*/{STATE}")):
        if json.loads(state.read_text()).get("project_title") == title:
            return DataRegistry(state.parent, remote="")
    raise VersioningError(
        f"No versioned snapshot of project {title!r} under {workspace / 'registry'}. Label some tasks and "
        "run `flywheel run` (or `flywheel serve`) first."
    )
