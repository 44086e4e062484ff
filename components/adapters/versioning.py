"""Snapshot versioning: a data registry (git + DVC) under the workspace, pushed to a DVC remote.

One registry per Label Studio project (`<workspace>/registry/project-<id>`), one git commit and tag
per snapshot. The commit also holds `state.json` (project id, annotation cursor, the tasks left out
and why), so the cursor advances in the same commit that versions the snapshot it fed: if
versioning fails, it does not move. The project's own git history is never written to.

Snapshots are atomic. A new one is built aside (`stage`), validated there, and only `commit` swaps
it into the registry; "latest" is read from the committed HEAD, never from a working copy, so a
snapshot that failed validation or versioning is invisible and leaves nothing behind. Every step
after reads a snapshot by its revision (`checkout`): an immutable folder named by its DVC hash,
restored from the DVC cache or remote when it is not on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dvc.api import DVCFileSystem
from dvc.exceptions import DvcException
from dvc.repo import Repo

from components.core.errors import FlywheelError
from components.core.faults import dead_pid_in, owned_name, pause_point

SNAPSHOT = "snapshot"
STATE = "state.json"
POOL = "pool"  # every image of the project (labeled or not) that self-supervised pretraining saw
KEEP_CHECKOUTS = 3  # materialized snapshots kept on disk; older ones come back from DVC on demand
CHECKOUT_IN_USE_S = 3600  # an older checkout handed out within this long may still be read: kept


class VersioningError(FlywheelError):
    """git or DVC failed on the data registry."""


@dataclass(frozen=True)
class SnapshotVersion:
    """One versioned snapshot.

    Attributes:
        rev: Its git tag in the registry (e.g. "snapshot-0003"); `checkout` and `restore` take it.
        commit: The git commit.
        md5: DVC's hash of the snapshot folder: the data version id.
        project_id: The Label Studio project.
        cursor: The annotation cursor the snapshot reflects.
        registry: The registry's path (a git URL for `dvc get`/`dvc import`).
        quarantine: Task id -> why its annotation or image was left out (carried until the task
            changes), as {"reason": ..., "key": ..., "retry_after": ...} (see `snapshot.SnapshotUpdate`).
        duplicates: Task id -> which task shows the same image (recomputed per snapshot).
        too_few: Classes below `validate.min_per_class`: training waits while there are any.
    """

    rev: str
    commit: str
    md5: str
    project_id: int
    cursor: str | None
    registry: Path
    quarantine: dict[int, dict[str, Any]] = field(default_factory=dict)
    duplicates: dict[int, str] = field(default_factory=dict)
    too_few: tuple[str, ...] = ()

    @property
    def needs_attention(self) -> dict[int, str]:
        """Task id -> what a person should look at, for every task this snapshot leaves out or doubts."""
        return {**{t: str(q["reason"]) for t, q in self.quarantine.items()}, **self.duplicates}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise VersioningError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def _dvc_quiet() -> Iterator[None]:
    """DVC's own console handlers print its CLI hints ("Initialized DVC repository..."); not ours to show."""
    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dvc_log.setLevel(level)


def link_tree(source: Path, dest: Path) -> None:
    """Copy a folder as hard links (files are never modified in place here, only replaced)."""
    shutil.copytree(source, dest, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class DataRegistry:
    """The git + DVC repository that versions one project's snapshots.

    Args:
        root: The registry folder (created on first use).
        remote: The DVC remote URL: a local folder by default, any DVC remote (s3://...) by config.
        checkouts: Where snapshots are materialized by revision (default: beside the registries).
        endpoint_url: The S3 endpoint of an s3:// remote other than AWS (MinIO, moto); credentials
            come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never the config.
    """

    def __init__(self, root: Path, remote: str, checkouts: Path | None = None, endpoint_url: str = ""):
        self.root = Path(root)
        self.remote = remote
        self.endpoint_url = endpoint_url
        self.checkouts = Path(checkouts) if checkouts else self.root.parent.parent / "snapshots" / self.root.name

    @property
    def snapshot_dir(self) -> Path:
        """The registry's working copy of the latest snapshot: only `commit` writes it, DVC reads it."""
        return self.root / SNAPSHOT

    def open(self) -> DataRegistry:
        """Create the registry (git init, dvc init, default remote) if it does not exist yet."""
        if not (self.root / ".dvc").is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / ".git").exists():
                _git(self.root, "init", "--quiet", "--initial-branch=main")
            _git(self.root, "config", "user.name", "flywheel")
            _git(self.root, "config", "user.email", "flywheel@localhost")
            with _dvc_quiet():
                repo = Repo.init(str(self.root))
            with repo.config.edit() as conf:
                conf["core"]["analytics"] = False
                conf["core"]["check_update"] = False
                conf["core"]["remote"] = "storage"
                conf["remote"]["storage"] = {"url": self.remote}
                if self.endpoint_url and self.remote.startswith("s3://"):
                    conf["remote"]["storage"]["endpointurl"] = self.endpoint_url
            _git(self.root, "add", ".dvc", ".dvcignore")
            _git(self.root, "commit", "--quiet", "-m", "Data registry for flywheel snapshots")
        return self

    def latest(self) -> SnapshotVersion | None:
        """The last versioned snapshot (from the committed HEAD), or None before the first one."""
        return self.at("HEAD")

    def at(self, rev: str) -> SnapshotVersion | None:
        """The snapshot versioned as `rev` (its tag, e.g. snapshot-0003, or a commit), or None when there is none."""
        if not (self.root / ".git").exists():
            return None
        try:  # one commit for both files: another worker may commit the next snapshot meanwhile
            commit = _git(self.root, "rev-parse", f"{rev}^{{commit}}")
            state = json.loads(_git(self.root, "show", f"{commit}:{STATE}"))
            dvc_file = yaml.safe_load(_git(self.root, "show", f"{commit}:{SNAPSHOT}.dvc"))
        except VersioningError:
            return None  # nothing versioned yet
        return SnapshotVersion(
            rev=state["rev"],
            commit=commit,
            md5=dvc_file["outs"][0]["md5"],
            project_id=int(state["project_id"]),
            cursor=state.get("cursor"),
            registry=self.root,
            quarantine={int(k): v for k, v in state.get("quarantine", {}).items()},
            duplicates={int(k): v for k, v in state.get("duplicates", {}).items()},
            too_few=tuple(state.get("too_few", [])),
        )

    @contextmanager
    def stage(self) -> Iterator[Path]:
        """A fresh folder to build the next snapshot in, outside the registry; removed afterwards
        unless `commit` took it."""
        staging = self.root.parent.parent / "staging" / owned_name(self.root.name)
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(
        self,
        staged: Path,
        project_id: int,
        cursor: str | None,
        title: str = "",
        quarantine: dict[int, dict[str, Any]] | None = None,
        duplicates: dict[int, str] | None = None,
        too_few: list[str] | None = None,
    ) -> SnapshotVersion:
        """Version a staged snapshot: swap it in, `dvc add`, `dvc push`, git commit and tag.

        The cursor and the tasks left out are written in the same commit, so they only advance once
        the snapshot is safe. If any step fails, the registry is put back as it was.

        Raises:
            VersioningError: DVC or git failed; nothing was versioned and the cursor did not move.
        """
        previous = self.latest()
        number = int(previous.rev.rsplit("-", 1)[1]) + 1 if previous else 1
        rev = f"snapshot-{number:04d}"
        state: dict[str, Any] = {
            "rev": rev, "project_id": project_id, "project_title": title, "cursor": cursor,
            "quarantine": {str(k): v for k, v in sorted((quarantine or {}).items())},
            "duplicates": {str(k): v for k, v in sorted((duplicates or {}).items())},
            "too_few": list(too_few or []),
        }
        head = _git(self.root, "rev-parse", "HEAD")
        old = self.root.parent / owned_name(f".{self.root.name}-replaced")
        if self.snapshot_dir.exists():
            self.snapshot_dir.rename(old)
        staged.rename(self.snapshot_dir)
        try:
            with Repo(str(self.root)) as repo:
                repo.scm_context.quiet = True  # no "To track the changes with git, run: ..." hint: we commit
                repo.add(str(self.snapshot_dir))
                repo.push()
            pause_point("version")  # pushed, not committed: the cursor has not moved
            (self.root / STATE).write_text(json.dumps(state, indent=2))
            _git(self.root, "add", f"{SNAPSHOT}.dvc", ".gitignore", STATE)
            # only these paths: a pool commit killed halfway may have left pool.dvc staged
            _git(self.root, "commit", "--quiet", "-m", f"{rev}: project {project_id}, cursor {cursor}", "--", f"{SNAPSHOT}.dvc", ".gitignore", STATE)
            _git(self.root, "tag", rev)
        except (DvcException, OSError, VersioningError) as e:
            self._roll_back(head, rev, old)
            raise VersioningError(
                f"DVC could not version the snapshot or push it to {self.remote}: {' '.join(str(e).split())}. "
                "Check the remote (FLYWHEEL_DVC_REMOTE) and disk space; nothing was versioned and the cursor did not move."
            ) from e
        shutil.rmtree(old, ignore_errors=True)
        version = self.latest()
        assert version is not None and version.rev == rev
        self._materialize(version, self.snapshot_dir)
        return version

    def commit_pool(self, images: dict[str, Path], project_id: int) -> str:
        """Version the image pool a backbone is pretrained on: `pool/<sha256><suffix>` (content
        addressed, so DVC stores each image once, shared with the snapshots), `dvc add`, `dvc push`,
        git commit and tag `pool-NNNN`. Call while holding the loop's lock (it commits to the same
        repository as the snapshots).

        Args:
            images: Content hash -> the image file.
            project_id: The Label Studio project, for the commit message.

        Returns:
            The pool's revision (its tag); that of the last pool when nothing changed.

        Raises:
            VersioningError: DVC or git failed; the registry is as it was.
        """
        tags = _git(self.root, "tag", "--list", "pool-*").split()
        head = _git(self.root, "rev-parse", "HEAD")
        folder = self.root / POOL
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for sha, path in sorted(images.items()):
            _link_or_copy(str(path), str(folder / f"{sha}{Path(path).suffix.lower()}"))
        rev = f"pool-{len(tags) + 1:04d}"
        try:
            with Repo(str(self.root)) as repo:
                repo.scm_context.quiet = True
                repo.add(str(folder))
                repo.push()
            _git(self.root, "add", f"{POOL}.dvc", ".gitignore")
            if not _git(self.root, "status", "--porcelain", "--untracked-files=no", f"{POOL}.dvc", ".gitignore"):
                return sorted(tags)[-1] if tags else rev  # the same images as the last pool
            _git(self.root, "commit", "--quiet", "-m", f"{rev}: {len(images)} images of project {project_id}", "--", f"{POOL}.dvc", ".gitignore")
            _git(self.root, "tag", rev)
        except (DvcException, OSError, VersioningError) as e:
            subprocess.run(["git", "-C", str(self.root), "reset", "--quiet", "--hard", head], capture_output=True)
            raise VersioningError(
                f"DVC could not version the image pool or push it to {self.remote}: {' '.join(str(e).split())}. "
                "Check the remote (FLYWHEEL_DVC_REMOTE) and disk space."
            ) from e
        return rev

    def _roll_back(self, head: str, rev: str, old: Path) -> None:
        """Put the registry back to commit `head` and its working copy back after a failed commit."""
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        if old.exists():
            old.rename(self.snapshot_dir)
        subprocess.run(["git", "-C", str(self.root), "tag", "--delete", rev], capture_output=True)
        subprocess.run(["git", "-C", str(self.root), "reset", "--quiet", "--hard", head], capture_output=True)

    def checkout(self, version: SnapshotVersion) -> Path:
        """The snapshot of `version` as a read-only folder, named by its DVC hash (built once).

        Read from the registry's DVC cache, or its remote when the cache does not hold it, so any
        worker can read any revision while the loop versions the next one.
        """
        folder = self._checkout_dir(version)
        if folder.is_dir():
            os.utime(folder)  # in use: the last to be pruned
            return folder
        self.checkouts.mkdir(parents=True, exist_ok=True)
        tmp = self.checkouts / owned_name(".tmp")
        try:
            fs = DVCFileSystem(str(self.root), rev=version.commit)
            try:
                fs.get(SNAPSHOT, str(tmp), recursive=True)
            finally:
                fs.close()
        except (DvcException, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VersioningError(
                f"Snapshot {version.rev} ({version.md5}) could not be restored from DVC: {' '.join(str(e).split())}. "
                f"Check the DVC remote {self.remote}."
            ) from e
        return self._publish(tmp, folder)

    def _checkout_dir(self, version: SnapshotVersion) -> Path:
        return self.checkouts / version.md5.removesuffix(".dir")

    def _materialize(self, version: SnapshotVersion, source: Path) -> None:
        """Publish the just-versioned working copy as the checkout of `version`, prune old checkouts."""
        folder = self._checkout_dir(version)
        if not folder.is_dir():
            self.checkouts.mkdir(parents=True, exist_ok=True)
            tmp = self.checkouts / owned_name(".tmp")
            link_tree(source, tmp)
            self._publish(tmp, folder)
        done = sorted((p for p in self.checkouts.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for stale in done[:-KEEP_CHECKOUTS]:
            # another worker may be reading an older one right now (training, the label check): a checkout
            # is touched each time it is handed out, and only one untouched for an hour is removed
            if stale != folder and time.time() - stale.stat().st_mtime > CHECKOUT_IN_USE_S:
                shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def _publish(tmp: Path, folder: Path) -> Path:
        try:
            tmp.rename(folder)
        except OSError:  # another worker published it first: same content
            shutil.rmtree(tmp, ignore_errors=True)
        os.utime(folder)
        return folder

    def sweep(self) -> None:
        """Remove what a killed process left half-done: staging folders, a replaced working copy,
        partial checkouts, each named with its process's pid; a live process's are left alone (another
        worker may be checking out a snapshot right now)."""
        leftovers = [
            *(self.root.parent.parent / "staging").glob(f"{self.root.name}[~-]*"),
            *self.root.parent.glob(f".{self.root.name}-replaced*"),
            *(self.checkouts.glob(".tmp*") if self.checkouts.is_dir() else []),
        ]
        for path in leftovers:
            if dead_pid_in(path.name):
                shutil.rmtree(path, ignore_errors=True)

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


def find_registry(workspace: Path, title: str, project_id: int | None = None) -> DataRegistry:
    """The data registry of the project `project_id`, or else titled `title`, under a workspace (no
    Label Studio needed).

    Raises:
        VersioningError: No snapshot of that project was versioned yet.
    """
    if project_id is not None and (workspace / "registry" / f"project-{project_id}" / STATE).exists():
        return DataRegistry(workspace / "registry" / f"project-{project_id}", remote="")
    for state in sorted((workspace / "registry").glob(f"*/{STATE}")):
        if project_id is None and json.loads(state.read_text()).get("project_title") == title:
            return DataRegistry(state.parent, remote="")
    raise VersioningError(
        f"No versioned snapshot of project {project_id or repr(title)} under {workspace / 'registry'}. Label some tasks and "
        "run `flywheel run` (or `flywheel serve`) first."
    )
