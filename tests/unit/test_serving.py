"""The endpoint's pieces that need no server: request decoding, the routing ledger, the drift view."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.studies.report import production_view, summary_lines
from components.production.serving import Decoded, Refusal, RouteLedger, decode_request

pytestmark = pytest.mark.unit


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_image_is_decoded_as_the_loop_decodes_its_files(tmp_path):
    from components.data.images import read_image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    body = encoded(image, "JPEG")
    (tmp_path / "a.jpg").write_bytes(body)
    decoded = decode_request(body, 16, 10_000, 1_000_000)
    assert isinstance(decoded, Decoded) and decoded.suffix == ".jpg" and decoded.size == (30, 40)
    assert np.array_equal(decoded.pixels, read_image(tmp_path / "a.jpg", 16, 10_000))


def test_a_grey_or_rgb_array_is_an_image():
    for array in (np.zeros((20, 10), np.uint8), np.zeros((20, 10, 1), np.uint8), np.zeros((20, 10, 3), np.uint8)):
        decoded = decode_request(npy(array), 8, 10_000, 1_000_000)
        assert isinstance(decoded, Decoded) and decoded.pixels.shape == (8, 8, 3) and decoded.size == (10, 20)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"x" * 2_000_001, 413),
        (b"GIF89a not really", 415),
        (npy(np.zeros((4, 4, 2), np.uint8)), 422),
        (npy(np.zeros((4, 4), np.int64)), 422),
        (npy(np.zeros((0, 4, 3), np.uint8)), 422),
        (b"\x93NUMPY garbage", 400),
    ],
)
def test_what_cannot_be_answered_is_refused_with_a_4xx_that_says_what_to_send(body, status):
    refusal = decode_request(body, 8, 10_000, 2_000_000)
    assert isinstance(refusal, Refusal) and refusal.status == status and len(refusal.detail) > 20


def crafted_npy(shape: tuple[int, ...], payload: bytes = b"") -> bytes:
    """An .npy whose header claims `shape`, followed by `payload` only."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload  # write_array_header_1_0 writes the magic too


def test_an_array_header_is_checked_before_numpy_allocates_what_it_claims():
    huge = decode_request(crafted_npy((100_000, 100_000, 3)), 8, 10_000, 2_000_000)
    assert isinstance(huge, Refusal) and huge.status == 413
    short = decode_request(crafted_npy((50, 50, 3), b"\x00" * 10), 8, 10_000, 2_000_000)
    assert isinstance(short, Refusal) and short.status == 400 and "shorter" in short.detail


def test_an_image_over_max_pixels_is_refused_before_it_is_decoded():
    refusal = decode_request(encoded(Image.new("RGB", (200, 100))), 8, 10_000, 2_000_000)
    assert isinstance(refusal, Refusal) and refusal.status == 413 and "max_pixels" in refusal.detail


def test_the_ledger_routes_an_image_once_and_caps_an_hour():
    ledger = RouteLedger(max_per_hour=2)
    assert [ledger.claim("a", 0.0), ledger.claim("a", 1.0)] == ["new", "duplicate"]
    assert ledger.claim("b", 2.0) == "new"
    assert ledger.claim("c", 3.0) == "capped"
    assert ledger.claim("c", 3601.0) == "new"  # an hour after the first
    ledger.release("c")  # its import failed: it may come again
    assert ledger.claim("c", 3602.0) == "new"


def test_production_answers_less_sure_than_validation_ones_are_called_drift():
    rng = np.random.default_rng(0)
    validation = rng.beta(20, 1, 300)  # mostly sure
    same = production_view({"model_version": "m-v3", "requests": 400, "routed": 4, "confidences": list(rng.beta(20, 1, 400))},
                           validation, 0.6)
    shifted = production_view({"model_version": "m-v3", "requests": 400, "routed": 80, "confidences": list(rng.beta(3, 2, 400))},
                              validation, 0.6)
    assert not same.drifted and shifted.drifted
    assert shifted.share_routed == 0.2 and shifted.below_route_production > shifted.below_route_validation
    assert abs(sum(shifted.production_hist) - 1) < 1e-3
    assert production_view({"confidences": []}, validation, 0.6) is None


def test_the_report_says_what_production_shows():
    from components.studies.report import Acceptance, build_report

    rng = np.random.default_rng(1)
    view = production_view({"model_version": "m-v3", "requests": 400, "routed": 80, "confidences": list(rng.beta(3, 2, 400))},
                           rng.beta(20, 1, 300), 0.6)
    report = build_report([], ["a", "b"], {"a": 3, "b": 3}, np.eye(2) * 3, Acceptance(0, 0), 0.9)
    import dataclasses

    line = summary_lines(dataclasses.replace(report, production=view))[-1]
    assert "Production (m-v3): 400 answers, 20.0% sent back" in line and "From production" in line
