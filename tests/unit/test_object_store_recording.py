"""The object store's recording (moto's) is mended before a replay: one request per line, none cut short."""

from __future__ import annotations

import json

import pytest

from components.adapters.stack.object_store import mend_recording

pytestmark = pytest.mark.unit


def test_two_requests_on_one_line_are_split_and_a_cut_short_last_one_dropped(tmp_path):
    path = tmp_path / "object-store" / "requests.jsonl"
    path.parent.mkdir()
    a, b, c = ({"method": "PUT", "path": f"/flywheel/dvc/{i}", "body": "x" * i} for i in range(3))
    # moto writes a record and its newline apart: two concurrent PUTs interleave on one line
    path.write_text(json.dumps(a) + json.dumps(b) + "\n\n" + json.dumps(c) + "\n" + '{"method": "PU')
    mend_recording(path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [a, b, c]


def test_a_sound_recording_is_left_as_it_is(tmp_path):
    path = tmp_path / "requests.jsonl"
    text = json.dumps({"method": "GET"}) + "\n"
    path.write_text(text)
    mend_recording(path)
    assert path.read_text() == text
