"""What a workspace keeps for its stack from the first `up` on: its profile and its credentials."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from components.core.errors import StackError
from components.core.settings import PROFILE_FILE, PROFILES, Settings

LABEL_STUDIO_ADMIN = "admin@flywheel.local"


def ensure_credentials(settings: Settings) -> dict[str, str]:
    """Create the embedded Label Studio's admin login and API token once, in a 0600 file; in the team
    profile also the PostgreSQL password and the object store's keys (added when missing).

    Returns:
        The credentials: LABEL_STUDIO_USERNAME, LABEL_STUDIO_PASSWORD, LABEL_STUDIO_API_KEY (and
        FLYWHEEL_POSTGRES_PASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    """
    path = settings.credentials_path
    creds: dict[str, str] = {}
    if path.exists():
        pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        creds = {k: v for k, v in pairs}
    wanted = {
        "LABEL_STUDIO_USERNAME": lambda: LABEL_STUDIO_ADMIN,
        "LABEL_STUDIO_PASSWORD": lambda: secrets.token_urlsafe(16),
        "LABEL_STUDIO_API_KEY": lambda: secrets.token_hex(20),
    }
    if settings.team:
        wanted.update({
            "FLYWHEEL_POSTGRES_PASSWORD": lambda: secrets.token_hex(16),
            "AWS_ACCESS_KEY_ID": lambda: "flywheel" + secrets.token_hex(6),
            "AWS_SECRET_ACCESS_KEY": lambda: secrets.token_hex(20),
        })
    missing = {k: make() for k, make in wanted.items() if k not in creds}
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write("".join(f"{k}={v}\n" for k, v in missing.items()))
        creds.update(missing)
    return creds


def choose_profile(workspace: Path, profile: str | None) -> None:
    """Record the workspace's profile at its first `up`; refuse to switch an existing workspace.

    Raises:
        StackError: The workspace already runs the other profile (its data lives in the other databases).
    """
    if profile is None:
        return
    if profile not in PROFILES:
        raise StackError(f"--profile {profile!r} is not a profile; use one of {', '.join(PROFILES)}.")
    path = workspace / PROFILE_FILE
    current = path.read_text().strip() if path.is_file() else None
    has_data = (workspace / "mlflow").exists() or (workspace / "ls").exists()
    if current is None and has_data and profile != "embedded":
        current = "embedded"  # a workspace from before profiles: SQLite and folders
    if current is not None and current != profile:
        raise StackError(
            f"The workspace {workspace} runs the {current} profile; its data lives there. Use another workspace "
            f"(FLYWHEEL_WORKSPACE=<folder>) for the {profile} profile."
        )
    workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(profile + "\n")
