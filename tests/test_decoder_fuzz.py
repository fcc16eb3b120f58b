"""Fuzzing the one image decoder: any bytes give either a finite array in [0, 1] or an ImageError.

Seeds are small images in every format Pillow can write here; hypothesis flips, cuts, inserts and
splices bytes. Formats Pillow only reads get random bodies behind their magic bytes.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aeguard.data.contract import Preprocessing
from aeguard.data.images import DECODER_FORMATS, decode_image
from aeguard.errors import ImageError

SIZE = (12, 10)  # model input (height, width)


def _seeds() -> dict[str, bytes]:
    Image.init()
    rgb = Image.fromarray((np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3))
    seeds = {}
    for fmt in sorted(set(Image.SAVE) & set(DECODER_FORMATS)):
        for image in (rgb, rgb.convert("L"), rgb.convert("F")):
            buffer = io.BytesIO()
            try:
                image.save(buffer, format=fmt)
            except Exception:  # noqa: BLE001 - a mode this writer does not take; try the next
                continue
            seeds[fmt] = buffer.getvalue()
            break
    return seeds


SEEDS = _seeds()
# Formats Pillow reads but cannot write: their magic bytes, so the fuzzer reaches their parsers.
READ_ONLY_MAGIC = [
    b"8BPS\x00\x01",
    b"SIMPLE  =                    T",
    b"\x59\xa6\x6a\x95",
    b"#define ",
    b"/* XPM */",
    b"\x00\x00\x02\x00",
    b"\xb1\x68\xde\x3a",
    b"GIMP",
    b"FTEX",
    b"P7 332",
    b"\x0a\x05\x01\x08",
]


def check(data: bytes) -> None:
    try:
        array = decode_image(io.BytesIO(data), Preprocessing(1, *SIZE), max_pixels=4_000_000, label="fuzz")
    except ImageError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    assert array.shape == (1, *SIZE) and array.dtype == np.float32
    assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0


def test_seeds_cover_the_common_formats():
    assert {"PNG", "JPEG", "BMP", "GIF", "TIFF", "PPM", "TGA", "ICO", "IM", "SPIDER", "DDS"} <= set(SEEDS)
    for data in SEEDS.values():
        check(data)  # an undamaged seed decodes


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:  # a header field set to an extreme: sizes, offsets and counts
            data[position : position + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00"])
            )
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_decode_or_raise_image_error(data):
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(READ_ONLY_MAGIC), st.binary(max_size=512))
def test_read_only_formats_decode_or_raise_image_error(magic, body):
    check(magic + body)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_float_tiff_is_refused(value):
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[3, 4] = value
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="F").save(buffer, format="TIFF")
    with pytest.raises(ImageError, match="non-finite"):
        decode_image(io.BytesIO(buffer.getvalue()), Preprocessing(1, 8, 8), label="nan.tif")


def test_eps_is_not_decoded():
    """EPS decoding runs Ghostscript on the file: never for untrusted inputs."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="EPS")
    with pytest.raises(ImageError, match="not a recognised image format"):
        decode_image(io.BytesIO(buffer.getvalue()), Preprocessing(1, 8, 8), label="x.eps")
