"""The embedded stack: Label Studio, MLflow and Prefect servers on 127.0.0.1, run from the workspace.

In the team profile (`up(..., profile="team")`), the stack first starts Debian's PostgreSQL (data
under `<workspace>/postgres`) and an S3 object store, and runs the three servers on them: their
databases in PostgreSQL, MLflow's artifacts and the DVC remote in the bucket. The object store here
is **moto's standalone server, a stand-in** for MinIO or S3 (none is installable on this machine): it
keeps objects in memory, so the stack records every request it gets (moto's recorder, a file under
`<workspace>/object-store`) and replays them when it starts again, which is how it survives a kill
like a real store would. A team points at its own PostgreSQL or S3 by configuration only (see
`components.core.settings`).

`up` starts what is not already running (and leaves alone any service the user points elsewhere),
`down` stops only what `up` started (it reads the PID files it wrote), `status` reports each one.
Logs and PID files live under `<workspace>/logs` and `<workspace>/run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.core.errors import StackError
from components.core.settings import NO_PHONE_HOME, Settings, database_url

LABEL_STUDIO_ADMIN = "admin@flywheel.local"
TITLES = {"label_studio": "Label Studio", "mlflow": "MLflow", "prefect": "Prefect", "serve_model": "Model endpoint",
          "postgres": "PostgreSQL", "object_store": "Object store (moto, a stand-in for S3)"}
DATABASES = {"label_studio": "labelstudio", "mlflow": "mlflow", "prefect": "prefect"}  # service -> its database
PG_USER = "flywheel"


def _postgres_bin() -> Path:
    """Debian's PostgreSQL server programs (the newest installed), or FLYWHEEL_POSTGRES_BIN."""
    if os.environ.get("FLYWHEEL_POSTGRES_BIN"):
        return Path(os.environ["FLYWHEEL_POSTGRES_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _postgres_bin()


@dataclass(frozen=True)
class Service:
    """One server of the embedded stack.

    Attributes:
        name: "label_studio", "mlflow" or "prefect".
        url: What a person opens in a browser.
        health_url: Answers 200 once the server is ready.
        port: The port it must bind (a busy port is an error, never silently another one).
        command: How to start it.
        env: Extra environment for it.
        startup_s: How long it may take to become healthy (Label Studio migrates its DB on first start).
        user: Run it as this user (PostgreSQL refuses to run as root).
    """

    name: str
    url: str
    health_url: str
    port: int
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    startup_s: float
    user: str | None = None


@dataclass(frozen=True)
class ServiceStatus:
    """What `status` knows of one service."""

    name: str
    url: str
    managed: bool
    pid: int | None
    healthy: bool

    @property
    def title(self) -> str:
        """The server's name as people write it."""
        return TITLES.get(self.name, self.name.replace("_", " "))


def _bin(name: str) -> str:
    """An executable installed beside this interpreter (the project's virtual environment)."""
    return str(Path(sys.executable).parent / name)


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


def postgres_url(settings: Settings, creds: dict[str, str] | None = None) -> str:
    """The team profile's PostgreSQL server (no database): the user's own, or the stack's."""
    if "postgres" in settings.external:
        return settings.postgres_url
    password = (creds or ensure_credentials(settings))["FLYWHEEL_POSTGRES_PASSWORD"]
    return f"postgresql://{PG_USER}:{password}@127.0.0.1:{settings.postgres_port}"


def choose_profile(workspace: Path, profile: str | None) -> None:
    """Record the workspace's profile at its first `up`; refuse to switch an existing workspace.

    Raises:
        StackError: The workspace already runs the other profile (its data lives in the other databases).
    """
    from components.core.settings import PROFILE_FILE, PROFILES

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


def infrastructure(settings: Settings) -> list[Service]:
    """What the team profile's servers stand on, started first: PostgreSQL and the object store
    (each unless the user points at their own)."""
    if not settings.team:
        return []
    ws = settings.workspace
    services = []
    if "postgres" not in settings.external:
        port = settings.postgres_port
        services.append(
            Service(
                name="postgres",
                url=f"postgresql://127.0.0.1:{port}",
                health_url=postgres_url(settings) + "/postgres",
                port=port,
                command=(
                    str(PG_BIN / "postgres"), "-D", str(ws / "postgres"), "-p", str(port), "-k", str(ws / "postgres"),
                    "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                ),
                env=(),
                startup_s=60,
                user="postgres" if os.geteuid() == 0 else None,
            )
        )
    if "object_store" not in settings.external:
        port = settings.object_store_port
        services.append(
            Service(
                name="object_store",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/moto-api/",
                port=port,
                command=(_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)),
                env=(
                    ("MOTO_ENABLE_RECORDING", "true"),
                    ("MOTO_RECORDER_FILEPATH", str(ws / "object-store" / "requests.jsonl")),
                ),
                startup_s=60,
            )
        )
    return services


def _team_env(settings: Settings, name: str) -> tuple[tuple[str, str], ...]:
    """What a server needs to reach the team profile's database and object store."""
    if not settings.team:
        return ()
    creds = ensure_credentials(settings)
    url = urllib.parse.urlsplit(postgres_url(settings, creds))
    s3 = tuple((k, v) for k, v in {
        "AWS_ACCESS_KEY_ID": settings.aws_access_key_id or creds["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key or creds["AWS_SECRET_ACCESS_KEY"],
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ENDPOINT_URL_S3": settings.s3_endpoint_url,
    }.items() if v)
    if name == "label_studio":
        return (
            ("DJANGO_DB", "default"), ("POSTGRE_NAME", DATABASES[name]), ("POSTGRE_USER", url.username or ""),
            ("POSTGRE_PASSWORD", urllib.parse.unquote(url.password or "")), ("POSTGRE_HOST", url.hostname or ""),
            ("POSTGRE_PORT", str(url.port or 5432)),
        )
    if name == "prefect":
        return (("PREFECT_API_DATABASE_CONNECTION_URL", database_url(postgres_url(settings, creds), DATABASES[name], "asyncpg")),)
    # MLflow: its database in the environment, not on its command line (where `ps` would show the password)
    return (*s3, ("MLFLOW_BACKEND_STORE_URI", database_url(postgres_url(settings, creds), DATABASES[name], "psycopg")))


def embedded_services(settings: Settings) -> list[Service]:
    """The servers `up` manages: every service the user has not pointed elsewhere."""
    ws = settings.workspace
    services = list(infrastructure(settings))
    if "label_studio" not in settings.external:
        creds = ensure_credentials(settings)
        port = settings.label_studio_port
        services.append(
            Service(
                name="label_studio",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/health",
                port=port,
                command=(
                    str(settings.label_studio_bin), "start", "--no-browser",
                    "--internal-host", "127.0.0.1", "-p", str(port), "--data-dir", str(ws / "ls"),
                ),
                env=(
                    ("LABEL_STUDIO_BASE_DATA_DIR", str(ws / "ls")),
                    ("LOCAL_FILES_SERVING_ENABLED", "true"),
                    ("LOCAL_FILES_DOCUMENT_ROOT", str(settings.image_root)),
                    ("LABEL_STUDIO_USERNAME", creds["LABEL_STUDIO_USERNAME"]),
                    ("LABEL_STUDIO_PASSWORD", creds["LABEL_STUDIO_PASSWORD"]),
                    ("LABEL_STUDIO_USER_TOKEN", creds["LABEL_STUDIO_API_KEY"]),
                    ("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", "true"),
                    ("LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK", "true"),
                    # Webhooks to flywheel's receiver on 127.0.0.1: Label Studio refuses loopback
                    # targets (a reserved network) unless SSRF protection is off.
                    ("SSRF_PROTECTION_ENABLED", "false"),
                    *_team_env(settings, "label_studio"),
                ),
                startup_s=180,
            )
        )
    if "mlflow" not in settings.external:
        port = settings.mlflow_port
        services.append(
            Service(
                name="mlflow",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/health",
                port=port,
                command=(
                    _bin("mlflow"), "server",
                    *(() if settings.team else ("--backend-store-uri", f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}")),
                    "--artifacts-destination", settings.mlflow_artifacts or str(ws / "mlflow" / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                ),
                env=(("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"), *_team_env(settings, "mlflow")),
                startup_s=90,
            )
        )
    if "prefect" not in settings.external:
        port = settings.prefect_port
        services.append(
            Service(
                name="prefect",
                url=f"http://127.0.0.1:{port}",
                health_url=f"http://127.0.0.1:{port}/api/health",
                port=port,
                command=(_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)),
                env=(
                    ("PREFECT_HOME", str(ws / "prefect")),
                    ("PREFECT_API_URL", ""),
                    # Leases on disk, not in memory: a run holding the loop's lock when the server
                    # restarts would otherwise hold it forever (its lease gone, its slot still taken).
                    ("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"),
                    *_team_env(settings, "prefect"),
                ),
                startup_s=90,
            )
        )
    services += pool_workers(settings)
    return services


def pool_workers(settings: Settings) -> list[Service]:
    """The team profile's Prefect process workers (`settings.workers` of them) on the pool `flywheel`:
    each runs the loop's flow runs in fresh processes with the workspace's settings."""
    if not settings.team or not settings.workers:
        return []
    from components.core.settings import CLIENT_ENV

    ws = settings.workspace
    env = {
        **CLIENT_ENV,
        **settings.client_env(),
        "PREFECT_API_URL": settings.prefect_api_url,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "FLYWHEEL_WORKSPACE": str(ws),
        "FLYWHEEL_PROFILE": "team",
        "FLYWHEEL_LABEL_STUDIO_PORT": str(settings.label_studio_port),
        "FLYWHEEL_MLFLOW_PORT": str(settings.mlflow_port),
        "FLYWHEEL_PREFECT_PORT": str(settings.prefect_port),
        "FLYWHEEL_POSTGRES_PORT": str(settings.postgres_port),
        "FLYWHEEL_OBJECT_STORE_PORT": str(settings.object_store_port),
        # a flow run's summary (flows persist theirs; tasks nothing) is read back by `flywheel serve`
        "PREFECT_LOCAL_STORAGE_PATH": str(ws / "prefect" / "results"),
        "PREFECT_LOGGING_SETTINGS_PATH": str(Path(__file__).resolve().parents[1] / "flows" / "logging.yml"),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "components,flows",
        "FLYWHEEL_LOG_FILE": str(ws / "logs" / "flywheel.log"),
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # a queued run starts within ~2 s (one cheap request per poll)
    }
    workers = []
    for i in range(settings.workers):
        port = settings.worker_port + i
        workers.append(
            Service(
                name=f"worker_{i + 1}",
                url=f"prefect work pool flywheel: worker {i + 1}",
                health_url=f"http://127.0.0.1:{port}/health",
                port=port,
                command=(_bin("prefect"), "worker", "start", "--pool", "flywheel", "--type", "process",
                         "--name", f"flywheel-worker-{i + 1}", "--limit", "1", "--with-healthcheck", "--install-policy", "never"),
                env=tuple({**env, "PREFECT_WORKER_WEBSERVER_PORT": str(port)}.items()),
                startup_s=90,
            )
        )
    return workers


def _pid_path(settings: Settings, name: str) -> Path:
    return settings.workspace / "run" / f"{name}.pid"


def _read_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(_pid_path(settings, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    _reap(pid)  # a server this process started and that died is a zombie until reaped: not alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def is_healthy(url: str, timeout: float = 2.0, any_answer: bool = False) -> bool:
    """True when `url` answers 200 (`any_answer`: answers at all, as S3 does with a 403), or, for a
    postgresql:// URL, accepts a query."""
    if url.startswith("postgresql://"):
        return _postgres_answers(url, timeout)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return any_answer
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _postgres_answers(url: str, timeout: float) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def free_port() -> int:
    """A port nothing listens on right now (for throwaway stacks in tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(settings: Settings, service: Service) -> int:
    if _port_busy(service.port):
        raise StackError(
            f"Port {service.port} for {service.name} is taken by another program. Stop it, or pick "
            f"another port with FLYWHEEL_{service.name.upper()}_PORT=<free port>."
        )
    logs = settings.workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _pid_path(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
    if service.name == "label_studio" and not Path(service.command[0]).exists():
        raise StackError(
            f"Label Studio is not installed at {service.command[0]}. Run `make install` (it builds "
            "its own virtual environment .venv-ls), or set FLYWHEEL_LABEL_STUDIO_BIN."
        )
    if service.name == "postgres":
        _init_postgres(settings, service)
    if service.name == "object_store":
        _mend_recording(settings.workspace / "object-store" / "requests.jsonl")
    env = {**os.environ, **NO_PHONE_HOME, **dict(service.env)}
    env.pop("PORT", None)  # Label Studio would take it over the -p flag
    with open(logs / f"{service.name}.log", "ab") as log:
        process = subprocess.Popen(
            service.command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=settings.workspace if service.user is None else "/",
            start_new_session=True,  # its own process group: `down` stops it and its workers together
            user=service.user,
        )
    _pid_path(settings, service.name).write_text(str(process.pid))
    return process.pid


def _without_password(url: str) -> str:
    """A URL fit for a message: user:password@ becomes user@."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1@", url)


def _init_postgres(settings: Settings, service: Service) -> None:
    """Create the PostgreSQL cluster under the workspace once (initdb), owned by the user it runs as."""
    data = settings.workspace / "postgres"
    if (data / "PG_VERSION").exists():
        return
    if not (PG_BIN / "initdb").exists():
        raise StackError(
            f"PostgreSQL is not installed ({PG_BIN / 'initdb'} is missing): `apt-get install postgresql` (Debian's "
            "server), or point FLYWHEEL_POSTGRES_URL at your own PostgreSQL."
        )
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    if service.user is not None:  # root: PostgreSQL runs as its own user, who must reach its folder
        import shutil

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
        import shutil

        shutil.chown(pwfile, service.user)
    try:
        done = subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "scram-sha-256", f"--pwfile={pwfile}",
             "-E", "UTF8", "--no-sync", "--locale=C"],
            capture_output=True, text=True, user=service.user, cwd="/",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"initdb failed for {data}: {done.stderr.strip()[-800:]}")


def _mend_recording(path: Path) -> None:
    """Make the object store's recording replayable: one request per line, and the last one dropped if
    the store was killed while writing it (a write it never acknowledged is not data). moto writes a
    record and its newline in two writes, so two requests at once (DVC's parallel pushes) can share a
    line, which its replay would refuse; the records are read one after another, whatever the lines."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() or path.stat().st_size == 0:
        return
    text, decoder, records, at = path.read_text(), json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break  # the last record, cut short by the kill
        records.append(record)
    mended = "".join(json.dumps(record) + "\n" for record in records)
    if mended != text:
        path.write_text(mended)


def _prepare(settings: Settings, service: Service) -> None:
    """What a just-started server of the team profile needs before the others use it: the databases,
    the object store's data back (replayed) and its bucket."""
    if service.name == "postgres":
        create_databases(settings)
    elif service.name == "object_store":
        with urllib.request.urlopen(urllib.request.Request(f"{service.url}/moto-api/recorder/replay-recording", method="POST"), timeout=600):
            pass
        ensure_bucket(settings)


def create_databases(settings: Settings) -> None:
    """The databases of Label Studio, MLflow and Prefect, where missing."""
    import psycopg

    url = postgres_url(settings)
    with psycopg.connect(database_url(url, "postgres"), autocommit=True, connect_timeout=10) as conn:
        present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in sorted(set(DATABASES.values()) - present):
            conn.execute(f'CREATE DATABASE "{name}"')


def ensure_bucket(settings: Settings) -> None:
    """The team profile's bucket, created where missing."""
    import boto3
    from botocore.exceptions import ClientError

    creds = ensure_credentials(settings)
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, region_name="us-east-1",
        aws_access_key_id=settings.aws_access_key_id or creds.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=settings.aws_secret_access_key or creds.get("AWS_SECRET_ACCESS_KEY"),
    )
    try:
        client.head_bucket(Bucket=settings.bucket)
    except ClientError:
        client.create_bucket(Bucket=settings.bucket)


def _wait_healthy(settings: Settings, service: Service, pid: int) -> None:
    deadline = time.monotonic() + service.startup_s
    log = settings.workspace / "logs" / f"{service.name}.log"
    while time.monotonic() < deadline:
        if is_healthy(service.health_url):
            return
        if _read_pid(settings, service.name) is None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    _stop(settings, service.name)
    raise StackError(
        f"{service.name} did not become healthy at {_without_password(service.health_url)} within {service.startup_s:.0f} s "
        f"(pid {pid}). Its log is {log}; last lines:\n  " + "\n  ".join(tail)
    )


def model_endpoint(settings: Settings, params_path: Path, port: int) -> Service:
    """`flywheel serve-model` as an optional service of the stack (`flywheel stack up --serve-model`),
    started once the servers it needs are healthy."""
    return Service(
        name="serve_model",
        url=f"http://127.0.0.1:{port}/predict",
        health_url=f"http://127.0.0.1:{port}/health",
        port=port,
        command=(_bin("flywheel"), "serve-model", "--params", str(Path(params_path).resolve()), "--port", str(port)),
        env=(),
        startup_s=120,
    )


def up(settings: Settings, echo: Callable[[str], None] = print, then: Sequence[Service] = ()) -> list[ServiceStatus]:
    """Start every embedded service that is not already running, and wait until each is healthy;
    then the services of `then` (the model endpoint), which need the others.

    Running `up` twice is harmless: a healthy service started earlier is left as it is.

    Raises:
        StackError: A port is taken by another program, or a server did not become healthy in time
            (the message holds the end of its log).
    """
    settings.ensure_workspace()
    services = embedded_services(settings)
    first = [s for s in services if s.name in ("postgres", "object_store")]
    last = [s for s in services if s.name.startswith("worker_")]  # they need Prefect
    _bring_up(settings, first, echo)
    _bring_up(settings, [s for s in services if s not in first and s not in last], echo)
    _bring_up(settings, last, echo)
    if then:
        _bring_up(settings, list(then), echo)
        _extra_path(settings).write_text("".join(f"{s.name} {s.url} {s.health_url}\n" for s in then))
    return status(settings)


def _extra_path(settings: Settings) -> Path:
    """Where `up` notes the optional services it started (`status` shows them)."""
    return settings.workspace / "run" / "optional.txt"


def _bring_up(settings: Settings, services: list[Service], echo: Callable[[str], None]) -> None:
    started = []
    for service in services:
        pid = _read_pid(settings, service.name)
        if pid is not None and is_healthy(service.health_url):
            echo(f"{service.name}: already running (pid {pid})")
            continue
        if pid is not None:  # ours, alive, not answering yet: still starting, give it its deadline
            started.append((service, pid))
            continue
        echo(f"{service.name}: starting on {service.url}")
        started.append((service, _start(settings, service)))
    for service, pid in started:
        _wait_healthy(settings, service, pid)
        _prepare(settings, service)
        echo(f"{service.name}: healthy")


def _stop(settings: Settings, name: str, timeout_s: float = 20.0) -> bool:
    pid = _read_pid(settings, name)
    if pid is None:
        _pid_path(settings, name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _read_pid(settings, name) is not None:
        _reap(pid)
        time.sleep(0.2)
    if _read_pid(settings, name) is not None:
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    _pid_path(settings, name).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect a child we started in this process, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitpid(pid, os.WNOHANG)


def down(settings: Settings, echo: Callable[[str], None] = print, only: Sequence[str] | None = None) -> list[str]:
    """Stop the servers `up` started (and nothing else; `only` these of them). Returns the names stopped."""
    stopped = []
    order = ("serve_model", *(f"worker_{i + 1}" for i in range(settings.workers)), "prefect", "mlflow", "label_studio",
             "object_store", "postgres")
    for name in [n for n in order if only is None or n in only]:
        if _stop(settings, name):
            echo(f"{name}: stopped")
            stopped.append(name)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """The state of each service, embedded or external."""
    managed = {s.name: s for s in embedded_services(settings)}
    external = {
        "label_studio": (settings.label_studio_url, f"{settings.label_studio_url}/health"),
        "mlflow": (settings.mlflow_tracking_uri, f"{settings.mlflow_tracking_uri}/health"),
        "prefect": (settings.prefect_api_url.removesuffix("/api"), f"{settings.prefect_api_url}/health"),
    }
    if settings.team:
        external["postgres"] = ("postgresql://" + settings.postgres_url.rsplit("@", 1)[-1], settings.postgres_url + "/postgres")
        external["object_store"] = (settings.s3_endpoint_url or "s3 (AWS)", f"{settings.s3_endpoint_url}/" if settings.s3_endpoint_url else "")
    rows = []
    for name, (url, health) in external.items():
        service = managed.get(name)
        rows.append(
            ServiceStatus(
                name=name,
                url=service.url if service else url,
                managed=service is not None,
                pid=_read_pid(settings, name) if service else None,
                healthy=is_healthy(service.health_url if service else health, any_answer=name == "object_store"),
            )
        )
    for service in (s for s in managed.values() if s.name.startswith("worker_")):
        rows.append(ServiceStatus(name=service.name, url=service.url, managed=True, pid=_read_pid(settings, service.name),
                                  healthy=is_healthy(service.health_url)))
    try:
        optional = [line.split() for line in _extra_path(settings).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        optional = []
    for name, url, health in optional:
        pid = _read_pid(settings, name)
        if pid is not None:
            rows.append(ServiceStatus(name=name, url=url, managed=True, pid=pid, healthy=is_healthy(health)))
    return rows


def describe(rows: list[ServiceStatus]) -> str:
    """One line per service, for the terminal."""
    return "\n".join(
        f"{r.name:<13} {'up  ' if r.healthy else 'DOWN'} {r.url:<28} "
        f"{'pid ' + str(r.pid) if r.pid else ('external' if not r.managed else 'not started')}"
        for r in rows
    )
