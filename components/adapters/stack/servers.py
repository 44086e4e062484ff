"""The servers of the stack, as one table (`SERVERS`): how each is run here, and where the user's own
one answers instead.

A server's row says what differs from the others (its command line, environment, health path, what to
do before it starts and once it is healthy); `Server.service` turns a row into the `Service` that
`processes` starts, waits for and stops, the same way for every server.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.adapters.stack import object_store, postgres
from components.adapters.stack.postgres import DATABASES, postgres_url
from components.adapters.stack.profile import ensure_credentials
from components.core.errors import StackError
from components.adapters.stack.service import Env, Hook, Service
from components.core.settings import CLIENT_ENV, Settings, database_url, logging_env

@dataclass(frozen=True)
class Server:
    """One row of `SERVERS`: how the stack runs a server, and where the user's own one answers.

    Attributes:
        name: Its key: its port is `settings.<name>_port`; its log and PID file are named after it.
        command: Its command line, given the settings and its port.
        external: (URL, health URL) of the user's own server, where they point at one.
        env: Its extra environment, given the settings.
        health_path: Where on its URL it answers 200 once it is ready.
        health_url: Its health URL instead, given the settings (PostgreSQL's: a query needs the password).
        startup_s: How long it may take to become healthy.
        team_only: Only the team profile runs it: the other servers stand on it.
        any_answer: Any answer of its health URL means it is up (S3 answers a stranger with a 403).
        scheme: Of its URL.
        user: Who it runs as (None: this process's user).
        before_start, when_healthy: As `Service`'s.
    """

    name: str
    command: Callable[[Settings, int], tuple[str, ...]]
    external: Callable[[Settings], tuple[str, str]]
    env: Callable[[Settings], Env] = lambda settings: ()
    health_path: str = "/health"
    health_url: Callable[[Settings], str] | None = None
    startup_s: float = 90
    team_only: bool = False
    any_answer: bool = False
    scheme: str = "http"
    user: Callable[[], str | None] = lambda: None
    before_start: Hook | None = None
    when_healthy: Hook | None = None

    def runs_here(self, settings: Settings) -> bool:
        """Whether `up` runs it: the user has not pointed elsewhere, and the profile has it."""
        return self.name not in settings.external and (settings.team or not self.team_only)

    def service(self, settings: Settings) -> Service:
        """The server as run on this machine, on its port of `settings`."""
        port = getattr(settings, f"{self.name}_port")
        url = f"{self.scheme}://127.0.0.1:{port}"
        health_url = self.health_url(settings) if self.health_url else url + self.health_path
        return Service(
            self.name, url, health_url, port, self.command(settings, port), self.env(settings),
            self.startup_s, self.user(), self.before_start, self.when_healthy,
        )


def _bin(name: str) -> str:
    """An executable installed beside this interpreter (the project's virtual environment)."""
    return str(Path(sys.executable).parent / name)


def _team_env(settings: Settings, name: str) -> Env:
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


def _label_studio_command(settings: Settings, port: int) -> tuple[str, ...]:
    return (
        str(settings.label_studio_bin), "start", "--no-browser",
        "--internal-host", "127.0.0.1", "-p", str(port), "--data-dir", str(settings.workspace / "ls"),
    )


def _label_studio_env(settings: Settings) -> Env:
    creds = ensure_credentials(settings)
    return (
        ("LABEL_STUDIO_BASE_DATA_DIR", str(settings.workspace / "ls")),
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
        # flywheel as the project's ML backend (`flywheel serve`) on 127.0.0.1: refused as a local address otherwise
        ("ML_BLOCK_LOCAL_IP", "false"),
        *_team_env(settings, "label_studio"),
    )


def _label_studio_installed(settings: Settings, service: Service) -> None:
    """Label Studio has a virtual environment of its own: say how to build it when it is missing."""
    if not Path(service.command[0]).exists():
        raise StackError(
            f"Label Studio is not installed at {service.command[0]}. Run `make install` (it builds "
            "its own virtual environment .venv-ls), or set FLYWHEEL_LABEL_STUDIO_BIN."
        )


def _mlflow_command(settings: Settings, port: int) -> tuple[str, ...]:
    ws = settings.workspace
    return (
        _bin("mlflow"), "server",
        *(() if settings.team else ("--backend-store-uri", f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}")),
        "--artifacts-destination", settings.mlflow_artifacts or str(ws / "mlflow" / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    )


def _prefect_env(settings: Settings) -> Env:
    return (
        ("PREFECT_HOME", str(settings.workspace / "prefect")),
        ("PREFECT_API_URL", ""),
        # Leases on disk, not in memory: a run holding the loop's lock when the server
        # restarts would otherwise hold it forever (its lease gone, its slot still taken).
        ("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"),
        *_team_env(settings, "prefect"),
    )


# In the order `up` starts them (`down` stops them the other way round).
SERVERS: tuple[Server, ...] = (
    Server(
        "postgres", command=postgres.command, startup_s=60, team_only=True, scheme="postgresql",
        health_url=lambda settings: postgres_url(settings) + "/postgres", user=postgres.server_user,
        external=lambda settings: ("postgresql://" + settings.postgres_url.rsplit("@", 1)[-1], settings.postgres_url + "/postgres"),
        before_start=postgres.init_cluster, when_healthy=lambda settings, service: postgres.create_databases(settings),
    ),
    Server(
        "object_store", command=lambda settings, port: (_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)),
        env=object_store.env, health_path="/moto-api/", startup_s=60, team_only=True, any_answer=True,
        external=lambda settings: (settings.s3_endpoint_url or "s3 (AWS)", f"{settings.s3_endpoint_url}/" if settings.s3_endpoint_url else ""),
        before_start=object_store.prepare_recording, when_healthy=object_store.restore,
    ),
    Server(
        "label_studio", command=_label_studio_command, env=_label_studio_env, startup_s=180,
        external=lambda settings: (settings.label_studio_url, f"{settings.label_studio_url}/health"),
        before_start=_label_studio_installed,
    ),
    Server(
        "mlflow", command=_mlflow_command,
        env=lambda settings: (("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"), *_team_env(settings, "mlflow")),
        external=lambda settings: (settings.mlflow_tracking_uri, f"{settings.mlflow_tracking_uri}/health"),
    ),
    Server(
        "prefect", command=lambda settings, port: (_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)),
        env=_prefect_env, health_path="/api/health",
        external=lambda settings: (settings.prefect_api_url.removesuffix("/api"), f"{settings.prefect_api_url}/health"),
    ),
)


def infrastructure(settings: Settings) -> list[Service]:
    """What the team profile's servers stand on, started first: PostgreSQL and the object store
    (each unless the user points at their own)."""
    return [server.service(settings) for server in SERVERS if server.team_only and server.runs_here(settings)]


def embedded_services(settings: Settings) -> list[Service]:
    """The servers `up` manages: every service the user has not pointed elsewhere."""
    servers = [server.service(settings) for server in SERVERS if not server.team_only and server.runs_here(settings)]
    return [*infrastructure(settings), *servers, *pool_workers(settings)]


def pool_workers(settings: Settings) -> list[Service]:
    """The team profile's Prefect process workers (`settings.workers` of them) on the pool `flywheel`:
    each runs the loop's flow runs in fresh processes with the workspace's settings."""
    if not settings.team or not settings.workers:
        return []
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
        **logging_env(Path(__file__).resolve().parents[3] / "flows" / "logging.yml", ws),
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
