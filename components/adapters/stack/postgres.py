"""The team profile's PostgreSQL: Debian's server with its cluster under `<workspace>/postgres`, and
the databases of Label Studio, MLflow and Prefect in it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from components.adapters.stack.profile import ensure_credentials
from components.core.errors import StackError
from components.core.settings import Settings, database_url

if TYPE_CHECKING:
    from components.adapters.stack.service import Service

DATABASES = {"label_studio": "labelstudio", "mlflow": "mlflow", "prefect": "prefect"}  # service -> its database
PG_USER = "flywheel"


def server_programs() -> Path:
    """Debian's PostgreSQL server programs (the newest installed), or FLYWHEEL_POSTGRES_BIN."""
    if os.environ.get("FLYWHEEL_POSTGRES_BIN"):
        return Path(os.environ["FLYWHEEL_POSTGRES_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


def server_user() -> str | None:
    """Who the server runs as: PostgreSQL refuses to run as root, so as its own user then."""
    return "postgres" if os.geteuid() == 0 else None


def postgres_url(settings: Settings, creds: dict[str, str] | None = None) -> str:
    """The team profile's PostgreSQL server (no database): the user's own, or the stack's."""
    if "postgres" in settings.external:
        return settings.postgres_url
    password = (creds or ensure_credentials(settings))["FLYWHEEL_POSTGRES_PASSWORD"]
    return f"postgresql://{PG_USER}:{password}@127.0.0.1:{settings.postgres_port}"


def command(settings: Settings, port: int) -> tuple[str, ...]:
    """The server on `port`, its cluster and socket in the workspace, answering on 127.0.0.1 only."""
    data = str(settings.workspace / "postgres")
    return (
        str(server_programs() / "postgres"), "-D", data, "-p", str(port), "-k", data,
        "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
    )


def answers(url: str, timeout: float) -> bool:
    """True when the server at `url` (a postgresql:// URL with its database) accepts a query."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def init_cluster(settings: Settings, service: Service) -> None:
    """Create the PostgreSQL cluster under the workspace once (initdb), owned by the user it runs as."""
    data = settings.workspace / "postgres"
    if (data / "PG_VERSION").exists():
        return
    initdb = server_programs() / "initdb"
    if not initdb.exists():
        raise StackError(
            f"PostgreSQL is not installed ({initdb} is missing): `apt-get install postgresql` (Debian's "
            "server), or point FLYWHEEL_POSTGRES_URL at your own PostgreSQL."
        )
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    if service.user is not None:  # root: PostgreSQL runs as its own user, who must reach its folder
        shutil.chown(data, service.user, service.user)
        for parent in data.parents:
            if parent.stat().st_mode & 0o001 == 0 and parent.stat().st_uid == 0:
                if parent == settings.workspace:
                    os.chmod(parent, 0o711)  # may pass through, not list: the files inside stay 0600/0700
                else:
                    raise StackError(
                        f"PostgreSQL runs as user {service.user!r} and cannot reach {data}: {parent} is closed to "
                        f"other users. Put the workspace (FLYWHEEL_WORKSPACE) under a folder others may pass "
                        "through (chmod o+x), or run flywheel as a user other than root."
                    )
    password = ensure_credentials(settings)["FLYWHEEL_POSTGRES_PASSWORD"]
    pwfile = data.parent / f".pgpass-{secrets.token_hex(4)}"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    if service.user is not None:
        shutil.chown(pwfile, service.user)
    try:
        done = subprocess.run(
            [str(initdb), "-D", str(data), "-U", PG_USER, "-A", "scram-sha-256", f"--pwfile={pwfile}",
             "-E", "UTF8", "--no-sync", "--locale=C"],
            capture_output=True, text=True, user=service.user, cwd="/",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"initdb failed for {data}: {done.stderr.strip()[-800:]}")


def create_databases(settings: Settings) -> None:
    """The databases of Label Studio, MLflow and Prefect, where missing."""
    import psycopg

    url = postgres_url(settings)
    with psycopg.connect(database_url(url, "postgres"), autocommit=True, connect_timeout=10) as conn:
        present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in sorted(set(DATABASES.values()) - present):
            conn.execute(f'CREATE DATABASE "{name}"')
