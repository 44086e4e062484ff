"""The webhook receiver and its inbox, on a real loopback HTTP server (no Label Studio needed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from components.core.settings import load_settings
from components.adapters.webhooks import MAX_BODY, SECRET_HEADER, Inbox, Receiver, ensure_secret


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver(Inbox(capacity=5), secret="s3cret", project_id=7).start()
    yield server
    server.stop()


def post(receiver: Receiver, body: object = None, secret: str | None = "s3cret", path: str | None = None) -> httpx.Response:
    url = receiver.url if path is None else receiver.url.rsplit("/label-studio", 1)[0] + path
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    return httpx.post(url, json=body if body is not None else {"action": "ANNOTATION_CREATED"}, headers=headers)


def test_an_annotation_change_is_queued_and_a_burst_is_one_wakeup(receiver):
    for action in ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]:
        assert post(receiver, {"action": action}).status_code == 202
    wakeup = receiver.inbox.take(timeout_s=1)
    assert wakeup is not None and wakeup.events == 3
    assert wakeup.describe() == "3 label change(s) (webhook)"
    assert receiver.inbox.take(timeout_s=0.05) is None  # taken: nothing waits any more


@pytest.mark.parametrize(
    ("secret", "path", "body", "status"),
    [
        ("wrong", None, None, 403),
        (None, None, None, 403),
        ("s3cret", "/label-studio/8", None, 404),  # another project's path
        ("s3cret", None, {"action": "PROJECT_UPDATED"}, 200),  # does not change labels: ignored
        ("s3cret", None, ["not", "an", "object"], 400),
    ],
)
def test_anything_else_queues_nothing(receiver, secret, path, body, status):
    answer = post(receiver, body, secret, path)
    assert answer.status_code == status, answer.text
    assert answer.json()["message"]
    assert receiver.inbox.take(timeout_s=0.05) is None


def test_a_wrong_secret_is_counted_as_refused(receiver):
    post(receiver, secret="wrong")
    assert httpx.get(receiver.url.rsplit("/label-studio", 1)[0] + "/health").json()["counts"] == {"refused": 1}


def test_an_oversized_body_is_refused_unread(receiver):
    answer = httpx.post(receiver.url, content=b"x" * (MAX_BODY + 1), headers={SECRET_HEADER: "s3cret"})
    assert answer.status_code == 413
    assert receiver.inbox.take(timeout_s=0.05) is None


def test_a_full_inbox_drops_the_oldest_events_but_never_the_wakeup():
    inbox = Inbox(capacity=3)
    for _ in range(10):
        inbox.put("ANNOTATION_CREATED")
    wakeup = inbox.take(timeout_s=0)
    assert wakeup is not None and wakeup.events == 3 and wakeup.dropped == 7


def test_take_waits_for_the_first_event_and_interrupt_ends_the_wait():
    inbox = Inbox()
    threading.Timer(0.1, inbox.put, args=("ANNOTATION_CREATED",)).start()
    assert inbox.take(timeout_s=5) is not None
    taken: list[object] = []
    waiter = threading.Thread(target=lambda: taken.append(inbox.take(timeout_s=3600)), daemon=True)
    waiter.start()
    inbox.interrupt()  # before or during the wait: either way the wait ends
    waiter.join(timeout=30)
    assert not waiter.is_alive()  # an hour's timeout: only the interrupt can have ended it
    assert taken == [None]


def test_the_secret_is_created_once_private_and_never_in_repr(tmp_path):
    settings = load_settings(environ={"FLYWHEEL_WORKSPACE": str(tmp_path / "ws")}, cwd=tmp_path)
    secret = ensure_secret(settings)
    assert len(secret) >= 32
    assert (settings.webhook_secret_path.stat().st_mode & 0o777) == 0o600
    assert ensure_secret(load_settings(environ={"FLYWHEEL_WORKSPACE": str(tmp_path / "ws")}, cwd=tmp_path)) == secret
    assert secret not in repr(load_settings(environ={"FLYWHEEL_WORKSPACE": str(tmp_path / "ws")}, cwd=tmp_path))
    given = load_settings(environ={"FLYWHEEL_WORKSPACE": str(tmp_path / "ws"), "FLYWHEEL_WEBHOOK_SECRET": "mine"}, cwd=tmp_path)
    assert ensure_secret(given) == "mine"


def test_a_body_with_a_bad_length_is_refused(receiver):
    import socket

    host, port = receiver.url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n{SECRET_HEADER}: s3cret\r\n\r\n".encode())
        assert b" 400 " in sock.recv(1024).split(b"\r\n")[0]
    assert receiver.inbox.take(timeout_s=0.05) is None


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError):
        Receiver(Inbox(), secret="", project_id=1)
