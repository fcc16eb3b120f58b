"""Request bodies -> model input arrays, with limits. Every failure is a RequestError naming the problem."""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass

import numpy as np
import orjson

from aeguard.data.images import decode_image
from aeguard.errors import ImageError, ImageTooLargeError, PayloadTooLargeError, RequestError

OIP_DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}
OIP_OUTPUTS = ("score", "is_anomaly")


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


def split_binary_body(body: bytes, header_length: str) -> tuple[bytes, memoryview]:
    """The binary tensor extension's body: the JSON header, and a view of the raw bytes that follow it
    (a view: image tensors can be megabytes)."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise RequestError(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
    cut = int(header_length)
    return body[:cut], memoryview(body)[cut:]


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


@dataclass(frozen=True)
class OipPlan:
    """Everything an Open Inference Protocol infer request asks for except its pixels, checked against the model.

    With the binary tensor extension the plan depends only on the request's JSON header, which a client sends
    byte for byte the same for every request of one shape: PlanCache keeps plans by those bytes.
    """

    dims: tuple[int, int, int, int]  # N, C, H, W
    datatype: str  # FP32 or UINT8
    binary_size: int | None  # bytes of tensor data after the JSON header (binary extension), else None
    outputs: tuple[tuple[str, bool], ...]  # (name, sent as binary) in reply order
    echo: dict  # what the reply repeats of the request: its "id", if it had one


def oip_plan(payload: dict, input_name: str, shape: tuple[int, int, int], max_images: int) -> OipPlan:
    """Checks an infer request's JSON against the model (input name, datatype, shape, limits, outputs)."""
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
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    needed = math.prod(dims) * OIP_DATATYPES[datatype].itemsize
    if size is not None and size != needed:
        raise RequestError(f"binary_data_size {size} does not fit shape {dims} of {datatype}, which needs {needed}")
    requested = {o.get("name"): o for o in payload.get("outputs") or [] if isinstance(o, dict)}
    unknown = set(requested) - set(OIP_OUTPUTS)
    if unknown:
        raise RequestError(f"unknown outputs {sorted(unknown)}; this model has score and is_anomaly")
    binary_default = bool((payload.get("parameters") or {}).get("binary_data_output", False))

    def as_binary(name: str) -> bool:
        return bool(((requested.get(name) or {}).get("parameters") or {}).get("binary_data", binary_default))

    outputs = tuple((name, as_binary(name)) for name in (requested or OIP_OUTPUTS))
    return OipPlan(tuple(dims), datatype, size, outputs, {"id": payload["id"]} if "id" in payload else {})


def oip_pixels(plan: OipPlan, payload: dict | None, binary: bytes | memoryview | None) -> np.ndarray:
    """The request's images as NCHW: float32 in [0, 1] (FP32) or uint8 0-255 (UINT8, scaled by the batcher).

    Data comes as JSON (the payload's "data", flat or nested) or, with the binary tensor extension, as
    raw little-endian bytes after the JSON header ("parameters": {"binary_data_size": n}); the payload
    is then not needed.
    """
    datatype, dims = plan.datatype, plan.dims
    if plan.binary_size is not None:
        if binary is None:
            raise RequestError("binary_data_size given but the request has no Inference-Header-Content-Length")
        if len(binary) != plan.binary_size:
            raise RequestError(f"binary data holds {len(binary)} bytes; shape {list(dims)} of {datatype} needs "
                               f"{plan.binary_size}")
        array = np.frombuffer(binary, dtype=OIP_DATATYPES[datatype])
    else:
        array = _json_tensor_data(payload["inputs"][0].get("data"), datatype, math.prod(dims), dims)
    if datatype == "FP32":
        array = require_unit_range(array.astype(np.float32, copy=False), "FP32 data")
    return array.reshape(dims)


def _json_tensor_data(data, datatype: str, count: int, dims) -> np.ndarray:
    if not isinstance(data, list):
        raise RequestError('"data" must be a flat or nested list of numbers')
    fast = _flat_uint8(data, count) if datatype == "UINT8" else None
    if fast is not None:
        return fast
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
        raise RequestError(f'"data" holds {array.size} values; shape {list(dims)} needs {count}')
    return array


class PlanCache:
    """Plans of binary infer requests by the bytes of their JSON header, for one model at a time.

    A hit skips the JSON parse and every check of oip_plan: most of a single-image request's own cost.
    Headers over 4 KiB are not kept, and the cache starts afresh when full (a client that puts a new
    "id" in every header just misses).
    """

    MAX_ENTRIES, MAX_HEADER_BYTES = 256, 4096

    def __init__(self):
        self._model: object = None
        self._plans: dict[bytes, OipPlan] = {}

    def plan(self, header: bytes, model, input_name: str, shape: tuple[int, int, int], max_images: int) -> OipPlan:
        if model is not self._model:
            self._model, self._plans = model, {}
        plan = self._plans.get(header)
        if plan is None:
            plan = oip_plan(parse_json(header), input_name, shape, max_images)
            if len(header) <= self.MAX_HEADER_BYTES:
                if len(self._plans) >= self.MAX_ENTRIES:
                    self._plans.clear()
                self._plans[header] = plan
        return plan
