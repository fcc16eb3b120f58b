"""Request bodies -> model input arrays, with limits. Every failure is a RequestError naming the problem."""

from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np
import orjson

from aeguard.data.images import decode_image
from aeguard.errors import ImageError, ImageTooLargeError, PayloadTooLargeError, RequestError

OIP_DATATYPES = {"FP32": np.float32, "UINT8": np.uint8}


def parse_json(body: bytes) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError("body must be a JSON object")
    return payload


def decode_image_bytes(data: bytes, height: int, width: int, max_pixels: int, label: str) -> np.ndarray:
    """Encoded PNG/JPEG/... bytes -> (1, H, W) float32 through the same decoder as `aeguard score`."""
    if not data:
        raise RequestError(f"{label}: empty image")
    return decode_image(io.BytesIO(data), height, width, max_pixels, label)


def decode_base64(text: str, label: str) -> bytes:
    if text.startswith("data:"):  # accept data URLs as browsers produce them
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{label}: invalid base64 ({exc})") from None


def array_image(value: list, height: int, width: int, label: str) -> np.ndarray:
    """A nested list of pixel values in [0, 1], shaped (H, W) or (1, H, W)."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise RequestError(f"{label}: nested array is ragged or holds non-numbers") from None
    if array.shape == (height, width):
        array = array[None]
    if array.shape != (1, height, width):
        raise RequestError(f"{label}: array shape {list(array.shape)}, expected [{height}, {width}] or [1, {height}, {width}]")
    return require_unit_range(array, f"{label}: pixel values")


def require_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    """The model's input range: finite values in [0, 1]."""
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise RequestError(f"{what} must be finite and within [0, 1]")
    return array


def decode_item(item, height: int, width: int, max_pixels: int, label: str) -> np.ndarray:
    """One image of a request: raw bytes (uploads), a base64 string, or a nested array in [0, 1]."""
    if isinstance(item, bytes):
        return decode_image_bytes(item, height, width, max_pixels, label)
    if isinstance(item, str):
        return decode_image_bytes(decode_base64(item, label), height, width, max_pixels, label)
    if isinstance(item, list):
        return array_image(item, height, width, label)
    raise RequestError(f"{label}: expected a base64 string or a nested array, got {type(item).__name__}")


def score_request_items(payload: dict, max_images: int) -> list:
    """The images of a /v1/score body: {"images": [...]} or {"image": ...}."""
    if "images" in payload:
        items = payload["images"]
        if not isinstance(items, list):
            raise RequestError('"images" must be a list')
    elif "image" in payload:
        items = [payload["image"]]
    else:
        raise RequestError('body needs "images" (a list) or "image"')
    if not items:
        raise RequestError('"images" is empty')
    if len(items) > max_images:
        raise PayloadTooLargeError(f"{len(items)} images in one request; the limit is {max_images}")
    return items


def decode_items(items: list, labels: list[str], height: int, width: int, max_pixels: int
                 ) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Decode each item on its own: one bad image never costs the others their scores."""
    arrays: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for item, label in zip(items, labels):
        try:
            arrays.append(decode_item(item, height, width, max_pixels, label))
            errors.append(None)
        except (RequestError, ImageError) as exc:
            if isinstance(exc, (PayloadTooLargeError, ImageTooLargeError)) and len(items) == 1:
                raise
            arrays.append(None)
            errors.append(str(exc))
    return arrays, errors


OIP_BINARY_HEADER = b"inference-header-content-length"  # as ASGI delivers header names


def split_oip_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview | None]:
    """The JSON part and, with the binary tensor extension, the raw bytes that follow it."""
    if header_length is None:
        return parse_json(body), None
    if not header_length.isdigit() or int(header_length) > len(body):
        raise RequestError(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
    cut = int(header_length)
    return parse_json(body[:cut]), memoryview(body)[cut:]  # a view: image tensors can be megabytes


def _check_range(array: np.ndarray, datatype: str) -> np.ndarray:
    """float32 in [0, 1]: UINT8 is scaled by 1/255, FP32 must already lie in [0, 1]."""
    if datatype == "UINT8":
        # one pass, one allocation; the same float32 division as to_model_input and the image decoder
        return np.divide(array, np.float32(255.0), dtype=np.float32)
    return require_unit_range(array.astype(np.float32, copy=False), "FP32 data")


def _flat_uint8(data: list, count: int) -> np.ndarray | None:
    """The common UINT8 body, a flat list of `count` ints, read by bytes(): it refuses anything outside 0-255
    or not an integer, and is 4x faster than numpy's list conversion (which dominated single-image requests).
    None sends the data down the general path, which reads nested lists and integral floats and names errors.
    (Like numpy's conversion of mixed lists, bytes() reads JSON true/false as 1/0.)"""
    if len(data) != count:
        return None
    try:
        return np.frombuffer(bytes(data), np.uint8)
    except (TypeError, ValueError):
        return None


def oip_input_tensor(payload: dict, input_name: str, shape: tuple[int, int, int], max_images: int,
                     binary: bytes | memoryview | None = None) -> np.ndarray:
    """The one input tensor of an Open Inference Protocol v2 infer request, as float32 NCHW in [0, 1].

    Data comes as JSON ("data", flat or nested) or, with the binary tensor extension, as raw
    little-endian bytes after the JSON header ("parameters": {"binary_data_size": n}).
    """
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError('"inputs" must be a list holding exactly one tensor')
    tensor = inputs[0]
    if tensor.get("name") not in (input_name, None):
        raise RequestError(f"unknown input {tensor.get('name')!r}; this model's input is {input_name!r}")
    datatype = tensor.get("datatype")
    if datatype not in OIP_DATATYPES:
        raise RequestError(f"datatype {datatype!r} is not supported; send FP32 (values in [0, 1]) or UINT8 (0-255)")
    dims = tensor.get("shape")
    channels, height, width = shape
    if not (isinstance(dims, list) and all(isinstance(d, int) and d >= 0 for d in dims)):
        raise RequestError('"shape" must be a list of non-negative integers')
    if len(dims) == 3 and channels == 1:
        dims = [dims[0], 1, dims[1], dims[2]]
    if len(dims) != 4 or tuple(dims[1:]) != shape:
        raise RequestError(f"shape {tensor.get('shape')} does not fit this model; expected [N, {channels}, {height}, {width}]")
    if dims[0] < 1:
        raise RequestError("the batch holds no image")
    if dims[0] > max_images:
        raise PayloadTooLargeError(f"{dims[0]} images in one request; the limit is {max_images}")
    count = math.prod(dims)
    dtype = np.dtype(OIP_DATATYPES[datatype]).newbyteorder("<")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if binary is None:
            raise RequestError("binary_data_size given but the request has no Inference-Header-Content-Length")
        if size != count * dtype.itemsize or len(binary) != size:
            raise RequestError(f"binary data holds {len(binary)} bytes; shape {dims} of {datatype} needs "
                               f"{count * dtype.itemsize}")
        array = np.frombuffer(binary, dtype=dtype)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError('"data" must be a flat or nested list of numbers')
        fast = _flat_uint8(data, count) if datatype == "UINT8" else None
        if fast is not None:
            return _check_range(fast, datatype).reshape(dims)
        try:
            array = np.array(data).reshape(-1)
            if array.size and array.dtype.kind not in "iuf":  # strings, booleans, objects
                raise TypeError
        except (ValueError, TypeError):
            raise RequestError('"data" must be a flat or nested list of numbers') from None
        if datatype == "UINT8":
            # a cast would wrap 300 to 44 and cut 1.5 to 1: refuse anything that is not an integer 0-255
            fractional = array.dtype.kind == "f" and not np.array_equal(array, np.round(array))
            if array.size and (fractional or array.min() < 0 or array.max() > 255):
                raise RequestError("UINT8 data must be integers in 0-255")
            array = array.astype(np.uint8)
        if array.size != count:
            raise RequestError(f'"data" holds {array.size} values; shape {dims} needs {count}')
    return _check_range(array, datatype).reshape(dims)
