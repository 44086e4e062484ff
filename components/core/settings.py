"""Where flywheel finds its services: read once, from the environment, a `.env` file and the workspace.

With nothing set, every service is the embedded one started by `flywheel stack up` on 127.0.0.1.
A team points at its own servers by setting `LABEL_STUDIO_URL` / `LABEL_STUDIO_API_KEY`,
`MLFLOW_TRACKING_URI` and `PREFECT_API_URL` (in the environment or in `.env`).

The **team profile** (`flywheel stack up --profile team`, or `FLYWHEEL_PROFILE=team`) runs the same
servers on PostgreSQL and an S3 object store: the databases of Label Studio, MLflow and Prefect in
one PostgreSQL server (`FLYWHEEL_POSTGRES_URL` for the team's own), the DVC remote and MLflow's
artifacts in a bucket (`AWS_ENDPOINT_URL_S3` + `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` for a
MinIO or S3 of the team's own; without them, moto's server stands in on 127.0.0.1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from components.core.errors import SettingsError

DEFAULT_WORKSPACE = ".flywheel"
# Clients give up on a dead server in seconds instead of minutes of back-off (set unless already set).
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "PREFECT_CLIENT_MAX_RETRIES": "1",  # each retry doubles its wait (2 s, 4 s, ...): a dead server is said in seconds
    "PREFECT_API_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per model load fills the terminal
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run ... at" on stdout, twice per model
    "MLFLOW_CONFIGURE_LOGGING": "false",  # MLflow's records reach flywheel's handlers (its INFO chatter: the log file)
}
# How flywheel's processes log (flows/logs.py): Prefect's logging config file, the loggers Prefect also
# routes (so their records reach its UI), and the workspace's log file. A server started by `stack up`
# gets none of them (it logs to its own file); a flow-run worker gets all three.
LOG_CONFIG_ENV, EXTRA_LOGGERS_ENV, LOG_FILE_ENV = "PREFECT_LOGGING_SETTINGS_PATH", "PREFECT_LOGGING_EXTRA_LOGGERS", "FLYWHEEL_LOG_FILE"
LOGGING_ENV = (LOG_CONFIG_ENV, EXTRA_LOGGERS_ENV, LOG_FILE_ENV)


def logging_env(log_config: Path, workspace: Path) -> dict[str, str]:
    """The environment that makes a process log as flywheel's CLI does (`LOGGING_ENV`)."""
    return {LOG_CONFIG_ENV: str(log_config), EXTRA_LOGGERS_ENV: "components,flows",
            LOG_FILE_ENV: str(workspace / "logs" / "flywheel.log")}


CREDENTIALS_FILE = "credentials.env"
WEBHOOK_SECRET_FILE = "webhook.secret"
PROFILE_FILE = "profile"  # the profile `stack up --profile` started this workspace with
PROFILES = ("embedded", "team")

# Every phone-home of the stack, off: there may be no network, and they only slow things down.
NO_PHONE_HOME = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
}


@dataclass(frozen=True)
class Settings:
    """The resolved locations and credentials of the services.

    Attributes:
        workspace: Folder for everything the embedded stack writes (git-ignored).
        label_studio_url: Base URL of Label Studio.
        label_studio_api_key: Its API token (legacy token or personal access token); never logged.
        mlflow_tracking_uri: MLflow tracking server.
        prefect_api_url: Prefect API.
        external: Which of "label_studio", "mlflow", "prefect" (and in the team profile "postgres",
            "object_store") the user points at their own server; `stack up` leaves those alone.
        label_studio_port, mlflow_port, prefect_port: Ports of the embedded servers.
        label_studio_bin: The `label-studio` executable (it lives in its own virtual environment).
        dvc_remote: The DVC remote snapshots are pushed to (a local folder, or any DVC URL).
        receiver_host, receiver_port: Where `flywheel serve` receives Label Studio's webhooks
            (127.0.0.1 by default: Label Studio on the same machine).
        receiver_url: The receiver's address as Label Studio reaches it (default: host and port).
        ml_backend_host, ml_backend_port: Where `flywheel serve` answers as the project's ML backend (Label
            Studio's Settings > Model: "Retrieve predictions", the mask assistant's smart tools).
        ml_backend_url: Its address as Label Studio reaches it (default: host and port).
        webhook_secret: The shared secret Label Studio's webhooks carry (FLYWHEEL_WEBHOOK_SECRET, or
            the workspace's webhook.secret, created once by `flywheel serve`); never logged.
        profile: "embedded" (SQLite, local folders) or "team" (PostgreSQL, an S3 object store).
        postgres_port, object_store_port: Ports of the team profile's own PostgreSQL and object store.
        postgres_url: The team profile's PostgreSQL, without a database name (never logged).
        s3_endpoint_url: The S3 endpoint (empty: AWS itself, or no object store).
        bucket: The team profile's bucket (DVC remote and MLflow artifacts under it).
        mlflow_artifacts: Where the embedded MLflow server stores artifacts (a folder, or s3://...).
        aws_access_key_id, aws_secret_access_key: The object store's credentials (never logged).
        workers: How many Prefect process workers the team profile runs (FLYWHEEL_WORKERS).
        worker_port: The first worker's health port (FLYWHEEL_WORKER_PORT; the next ones follow).
    """

    workspace: Path
    label_studio_url: str
    label_studio_api_key: str = field(repr=False)
    mlflow_tracking_uri: str
    prefect_api_url: str
    external: frozenset[str]
    label_studio_port: int
    mlflow_port: int
    prefect_port: int
    label_studio_bin: Path
    dvc_remote: str
    receiver_host: str = "127.0.0.1"
    receiver_port: int = 8790
    receiver_url: str = "http://127.0.0.1:8790"
    ml_backend_host: str = "127.0.0.1"
    ml_backend_port: int = 8791
    ml_backend_url: str = "http://127.0.0.1:8791"
    webhook_secret: str = field(default="", repr=False)
    profile: str = "embedded"
    postgres_port: int = 5433
    object_store_port: int = 9000
    postgres_url: str = field(default="", repr=False)
    s3_endpoint_url: str = ""
    bucket: str = "flywheel"
    mlflow_artifacts: str = ""
    aws_access_key_id: str = field(default="", repr=False)
    aws_secret_access_key: str = field(default="", repr=False)
    workers: int = 2
    worker_port: int = 8795

    @property
    def team(self) -> bool:
        """True in the team profile (PostgreSQL and an object store)."""
        return self.profile == "team"

    def database_url(self, name: str, driver: str = "") -> str:
        """The URL of database `name` on the team profile's PostgreSQL (`driver`: "psycopg", "asyncpg")."""
        return database_url(self.postgres_url, name, driver)

    def client_env(self) -> dict[str, str]:
        """What DVC's and MLflow's S3 clients read from the environment (team profile; {} otherwise)."""
        if not self.team:
            return {}
        env = {"AWS_ACCESS_KEY_ID": self.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key}
        if self.s3_endpoint_url:
            env.update(AWS_ENDPOINT_URL_S3=self.s3_endpoint_url, MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint_url)
        return {k: v for k, v in env.items() if v}

    def apply_client_env(self) -> None:
        """Export `client_env` into this process (what is set already wins)."""
        for key, value in self.client_env().items():
            os.environ.setdefault(key, value)

    @property
    def image_root(self) -> Path:
        """Folder Label Studio serves local images from; imported images are copied here."""
        return self.workspace / "images"

    def ensure_workspace(self) -> Path:
        """Create the workspace, private to its user (0700): it holds the token, the models and the data.
        (0711 when root runs the team profile's own PostgreSQL, whose user must pass through to its
        data; nobody else can list it, and what is inside stays private.)"""
        mode = 0o711 if self.team and "postgres" not in self.external and os.geteuid() == 0 else 0o700
        if mode != 0o700:
            os.umask(0o077)  # what this process (and the servers it starts) writes inside stays private
        self.workspace.mkdir(parents=True, exist_ok=True, mode=mode)
        os.chmod(self.workspace, mode)
        return self.workspace

    @property
    def credentials_path(self) -> Path:
        """Where `stack up` keeps the embedded Label Studio's admin login and token (mode 0600)."""
        return self.workspace / CREDENTIALS_FILE

    @property
    def webhook_secret_path(self) -> Path:
        """Where the webhook secret is kept when FLYWHEEL_WEBHOOK_SECRET is not set (mode 0600)."""
        return self.workspace / WEBHOOK_SECRET_FILE


def database_url(server: str, name: str, driver: str = "") -> str:
    """Database `name` on the PostgreSQL server `server` (postgresql://user:password@host:port), with a
    SQLAlchemy `driver` ("psycopg", "asyncpg") when given."""
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{server.split('://', 1)[1].rstrip('/')}/{name}"


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key) or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingsError(f"{key}={raw!r} is not a port number; set it to an integer in 1-65535.")
    return int(raw)


def _count(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key) or str(default)
    if not raw.isdigit():
        raise SettingsError(f"{key}={raw!r} is not a count; set it to a whole number (0 runs none).")
    return int(raw)


def load_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Resolve the settings: the environment wins over `.env`, which wins over the workspace defaults.

    Args:
        environ: The environment to read (default: `os.environ`).
        cwd: The project folder holding `.env` and the workspace (default: the current directory).

    Returns:
        The settings; the embedded Label Studio's token comes from the workspace's credentials file.
    """
    cwd = cwd or Path.cwd()
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in dotenv_values(cwd / ".env").items() if v is not None}
    env.update(environ)
    workspace = Path(env.get("FLYWHEEL_WORKSPACE") or cwd / DEFAULT_WORKSPACE).resolve()
    credentials = {
        k: v for k, v in dotenv_values(workspace / CREDENTIALS_FILE).items() if v is not None
    }

    profile = env.get("FLYWHEEL_PROFILE") or (
        (workspace / PROFILE_FILE).read_text().strip() if (workspace / PROFILE_FILE).is_file() else "embedded"
    )
    if profile not in PROFILES:
        raise SettingsError(f"FLYWHEEL_PROFILE={profile!r} is not a profile; set it to one of {', '.join(PROFILES)}.")
    team = profile == "team"
    pg_port = _port(env, "FLYWHEEL_POSTGRES_PORT", 5433)
    store_port = _port(env, "FLYWHEEL_OBJECT_STORE_PORT", 9000)
    bucket = env.get("FLYWHEEL_BUCKET") or "flywheel"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    own_store = team and not endpoint and not env.get("FLYWHEEL_DVC_REMOTE")
    ls_port = _port(env, "FLYWHEEL_LABEL_STUDIO_PORT", 8080)
    mlflow_port = _port(env, "FLYWHEEL_MLFLOW_PORT", 5000)
    prefect_port = _port(env, "FLYWHEEL_PREFECT_PORT", 4200)
    external = frozenset(
        name
        for name, key in (
            ("label_studio", "LABEL_STUDIO_URL"),
            ("mlflow", "MLFLOW_TRACKING_URI"),
            ("prefect", "PREFECT_API_URL"),
            ("postgres", "FLYWHEEL_POSTGRES_URL"),
        )
        if env.get(key)
    ) | ({"object_store"} if team and not own_store else set())
    receiver_host = env.get("FLYWHEEL_RECEIVER_HOST") or "127.0.0.1"
    receiver_port = _port(env, "FLYWHEEL_RECEIVER_PORT", 8790)
    ml_backend_host = env.get("FLYWHEEL_ML_BACKEND_HOST") or "127.0.0.1"
    ml_backend_port = _port(env, "FLYWHEEL_ML_BACKEND_PORT", 8791)
    secret_file = workspace / WEBHOOK_SECRET_FILE
    ls_bin = env.get("FLYWHEEL_LABEL_STUDIO_BIN") or str(cwd / ".venv-ls" / "bin" / "label-studio")
    return Settings(
        workspace=workspace,
        label_studio_url=(env.get("LABEL_STUDIO_URL") or f"http://127.0.0.1:{ls_port}").rstrip("/"),
        label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or credentials.get("LABEL_STUDIO_API_KEY", ""),
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"http://127.0.0.1:{mlflow_port}",
        prefect_api_url=env.get("PREFECT_API_URL") or f"http://127.0.0.1:{prefect_port}/api",
        external=external,
        label_studio_port=ls_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        label_studio_bin=Path(ls_bin),
        dvc_remote=env.get("FLYWHEEL_DVC_REMOTE") or (f"s3://{bucket}/dvc" if team else str(workspace / "dvc-remote")),
        receiver_host=receiver_host,
        receiver_port=receiver_port,
        receiver_url=(env.get("FLYWHEEL_RECEIVER_URL") or f"http://{receiver_host}:{receiver_port}").rstrip("/"),
        ml_backend_host=ml_backend_host,
        ml_backend_port=ml_backend_port,
        ml_backend_url=(env.get("FLYWHEEL_ML_BACKEND_URL") or f"http://{ml_backend_host}:{ml_backend_port}").rstrip("/"),
        webhook_secret=env.get("FLYWHEEL_WEBHOOK_SECRET") or (secret_file.read_text().strip() if secret_file.is_file() else ""),
        profile=profile,
        postgres_port=pg_port,
        object_store_port=store_port,
        postgres_url=env.get("FLYWHEEL_POSTGRES_URL") or (
            f"postgresql://flywheel:{credentials.get('FLYWHEEL_POSTGRES_PASSWORD', '')}@127.0.0.1:{pg_port}" if team else ""
        ),
        s3_endpoint_url=endpoint or (f"http://127.0.0.1:{store_port}" if own_store else ""),
        bucket=bucket,
        mlflow_artifacts=env.get("FLYWHEEL_MLFLOW_ARTIFACTS") or (
            f"s3://{bucket}/mlflow" if team else str(workspace / "mlflow" / "artifacts")
        ),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or credentials.get("AWS_ACCESS_KEY_ID", ""),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or credentials.get("AWS_SECRET_ACCESS_KEY", ""),
        workers=_count(env, "FLYWHEEL_WORKERS", 2),
        worker_port=_port(env, "FLYWHEEL_WORKER_PORT", 8795),
    )
