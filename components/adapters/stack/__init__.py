"""The embedded stack: Label Studio, MLflow and Prefect servers on 127.0.0.1, run from the workspace.

In the team profile (`up(..., profile="team")`), the stack first starts Debian's PostgreSQL (data
under `<workspace>/postgres`) and an S3 object store, and runs the three servers on them: their
databases in PostgreSQL, MLflow's artifacts and the DVC remote in the bucket. The object store here
is **moto's standalone server, a stand-in** for MinIO or S3 (none is installable on this machine): it
keeps objects in memory, so the stack records every request it gets and replays them when it starts
again (`object_store`), which is how it survives a kill like a real store would. A team points at its
own PostgreSQL or S3 by configuration only (see `components.core.settings`).

`up` starts what is not already running (and leaves alone any service the user points elsewhere),
`down` stops only what `up` started (it reads the PID files it wrote), `status` reports each one.
Logs and PID files live under `<workspace>/logs` and `<workspace>/run`.

Where things are: `servers` (the table of servers), `processes` (start, wait, stop any of them),
`control` (up, down, status), `profile` (the workspace's profile and credentials), `postgres` and
`object_store` (what the team profile's infrastructure needs).
"""

from components.adapters.stack.control import ServiceStatus, describe, down, status, up
from components.adapters.stack.postgres import postgres_url
from components.adapters.stack.processes import free_port, is_healthy, running_pid
from components.adapters.stack.profile import choose_profile, ensure_credentials
from components.adapters.stack.servers import embedded_services, infrastructure, model_endpoint
from components.adapters.stack.service import Service

__all__ = [
    "Service", "ServiceStatus", "choose_profile", "describe", "down", "embedded_services", "ensure_credentials",
    "free_port", "infrastructure", "is_healthy", "model_endpoint", "postgres_url", "running_pid", "status", "up",
]
