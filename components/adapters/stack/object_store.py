"""The team profile's object store: moto's standalone server, a stand-in for MinIO or S3.

moto keeps objects in memory, so the stack has it record every request it gets (moto's recorder, a
file under `<workspace>/object-store`) and replays them when it starts again: that is how it survives
a kill like a real store would. A team points at its own S3 by configuration only.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from components.adapters.stack.profile import ensure_credentials
from components.core.settings import Settings

if TYPE_CHECKING:
    from components.adapters.stack.service import Service


def recording(settings: Settings) -> Path:
    """Where the store records the requests it gets (one JSON record a line)."""
    return settings.workspace / "object-store" / "requests.jsonl"


def env(settings: Settings) -> tuple[tuple[str, str], ...]:
    """moto's recorder on, into `recording`."""
    return ("MOTO_ENABLE_RECORDING", "true"), ("MOTO_RECORDER_FILEPATH", str(recording(settings)))


def mend_recording(path: Path) -> None:
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


def prepare_recording(settings: Settings, service: Service) -> None:
    """Before the store starts: mend the recording it will replay (`mend_recording`)."""
    mend_recording(recording(settings))


def restore(settings: Settings, service: Service) -> None:
    """Once the store answers: its data back (the recording replayed) and the bucket there."""
    replay = urllib.request.Request(f"{service.url}/moto-api/recorder/replay-recording", method="POST")
    with urllib.request.urlopen(replay, timeout=600):
        pass
    ensure_bucket(settings)


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
