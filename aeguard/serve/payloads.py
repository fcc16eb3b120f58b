"""Request bodies -> model input arrays, with limits. Every failure is a RequestError naming the problem."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson

from aeguard.data.contract import Preprocessing
from aeguard.data.images import decode_each, decode_image
from aeguard.errors import ImageError, ImageTooLargeError, PayloadTooLargeError, RequestError

OIP_DATATYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}
OIP_OUTPUTS = ("score", "is_anomaly")  # what a reply holds unless the request names its outputs
OIP_MAP_OUTPUT = "anomaly_map"  # [N, H, W] FP32, only when asked for by name: maps are large


def parse_json(body: bytes) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError("body must be a JSON object")
    return payload


def decode_image_bytes(data: bytes, prep: Preprocessing, max_pixels: int, label: str) -> np.ndarray:
    """Encoded PNG/JPEG/... bytes -> (C, H, W) float32 through the same decoder as `aeguard score`."""
    if not data:
        raise RequestError(f"{label}: empty image")
    return decode_image(io.BytesIO(data), prep, max_pixels, label)


def decode_base64(text: str, label: str) -> bytes:
    if text.startswith("data:"):  # accept data URLs as browsers produce them
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{label}: invalid base64 ({exc})") from None


def _numbers_only(value: list) -> bool:
    """True for nested lists of JSON numbers only: numpy would read "0.5" and true as pixel values."""
    stack = [value]
    while stack:
        for item in stack.pop():
            kind = type(item)
            if kind is list:
                stack.append(item)
            elif kind is not float and kind is not int:
                return False
    return True


def array_image(value: list, prep: Preprocessing, label: str) -> np.ndarray:
    """A nested list of pixel values in [0, 1], shaped (C, H, W) or (H, W, C), or (H, W) for a grayscale model."""
    if not _numbers_only(value):
        raise RequestError(f"{label}: nested array holds something other than numbers (strings, booleans, null)")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise RequestError(f"{label}: nested array is ragged or holds non-numbers") from None
    channels, height, width = prep.shape
    if array.shape == (height, width) and channels == 1:
        array = array[None]
    elif array.shape != prep.shape and array.shape == (height, width, channels):
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
    if array.shape != prep.shape:
        expected = f"[{channels}, {height}, {width}] or [{height}, {width}, {channels}]"
        if channels == 1:
            expected = f"[{height}, {width}] or [1, {height}, {width}]"
        raise RequestError(f"{label}: array shape {list(array.shape)}, expected {expected}")
    return require_unit_range(array, f"{label}: pixel values")


def require_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    """The model's input range: finite values in [0, 1]."""
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise RequestError(f"{what} must be finite and within [0, 1]")
    return array


def decode_item(item, prep: Preprocessing, max_pixels: int, label: str) -> np.ndarray:
    """One image of a request: raw bytes (uploads), a base64 string, or a nested array in [0, 1]."""
    if isinstance(item, bytes):
        return decode_image_bytes(item, prep, max_pixels, label)
    if isinstance(item, str):
        return decode_image_bytes(decode_base64(item, label), prep, max_pixels, label)
    if isinstance(item, list):
        return array_image(item, prep, label)
    raise RequestError(f"{label}: expected a base64 string or a nested array, got {type(item).__name__}")


class ScoreRequest(msgspec.Struct):
    """A /v1/score body: {"images": [...]} or {"image": ...}. Each image is checked on its own (decode_item), so
    one of the wrong type costs only its own result."""

    images: list | None = None
    image: Any = None
    maps: bool = False  # add each image's anomaly map to its result


def score_request_items(body: bytes, max_images: int) -> tuple[list, bool]:
    """The images of a /v1/score body, checked for type and count, and whether it asks for anomaly maps."""
    try:
        request = msgspec.json.decode(body, type=ScoreRequest)
    except msgspec.ValidationError as exc:
        raise RequestError(f"not a score request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None
    if request.images is not None:
        items = request.images
    elif request.image is not None:
        items = [request.image]
    else:
        raise RequestError('body needs "images" (a list) or "image"')
    if not items:
        raise RequestError('"images" is empty')
    if len(items) > max_images:
        raise PayloadTooLargeError(f"{len(items)} images in one request; the limit is {max_images}")
    return items, request.maps


def map_payload(error_map: np.ndarray) -> dict:
    """An anomaly map (C, H, W) as JSON: its mean over channels, float32 little-endian, base64."""
    plane = np.ascontiguousarray(error_map.mean(axis=0), "<f4")
    return {
        "shape": list(plane.shape),
        "datatype": "FP32",
        "data": base64.b64encode(plane.tobytes()).decode("ascii"),
    }


def decode_items(items: list, labels: list[str], prep: Preprocessing, max_pixels: int) -> list[np.ndarray | str]:
    """Decode each item on its own: one bad image never costs the others their scores. A request of one
    image over a limit is refused as a whole (413), as a body over the limit is."""

    def decode(item, label: str) -> np.ndarray:
        try:
            return decode_item(item, prep, max_pixels, label)
        except (RequestError, ImageError) as exc:
            if len(items) == 1 and isinstance(exc, (PayloadTooLargeError, ImageTooLargeError)):
                raise PayloadTooLargeError(str(exc)) from None
            raise ImageError(str(exc)) from None

    return decode_each(decode, items, labels)


OIP_BINARY_HEADER = b"inference-header-content-length"  # as ASGI delivers header names


_HEADER_LENGTH = re.compile(rb"[0-9]{1,12}")


def split_binary_body(body: bytes, header_length: bytes) -> tuple[bytes, memoryview]:
    """The binary tensor extension's body: the JSON header, and a view of the raw bytes that follow it
    (a view: image tensors can be megabytes)."""
    if not _HEADER_LENGTH.fullmatch(header_length) or int(header_length) > len(body):
        raise RequestError(
            f"Inference-Header-Content-Length {header_length.decode('latin-1')[:40]!r} is not a "
            f"number of bytes that fits a body of {len(body)}"
        )
    cut = int(header_length)
    return body[:cut], memoryview(body)[cut:]


# The Open Inference Protocol's infer request, as typed structures: msgspec refuses a value of the wrong JSON
# type anywhere in it (a string for "parameters", true inside "shape") with the path to the value, before any
# of aeguard's own checks run. Unknown fields are ignored, as the protocol allows.
class TensorParameters(msgspec.Struct):
    binary_data_size: Annotated[int, msgspec.Meta(ge=0)] | None = None


class InferInput(msgspec.Struct):
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    datatype: str
    name: str | None = None
    parameters: TensorParameters | None = None
    data: list | None = None


class OutputParameters(msgspec.Struct):
    binary_data: bool | None = None


class InferOutput(msgspec.Struct):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(msgspec.Struct):
    binary_data_output: bool = False


class InferRequest(msgspec.Struct):
    inputs: list[InferInput]
    id: str | None = None
    parameters: RequestParameters | None = None
    outputs: list[InferOutput] | None = None


def infer_request(body: bytes | dict) -> InferRequest:
    """An infer request's JSON (its bytes, or already parsed) as an InferRequest; RequestError when it is not one."""
    try:
        if isinstance(body, dict):
            return msgspec.convert(body, InferRequest)
        return msgspec.json.decode(body, type=InferRequest)
    except msgspec.ValidationError as exc:
        raise RequestError(f"not an inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None


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
    channels_last: bool = False  # the request's tensor is [N, H, W, C]: transposed to NCHW after reading


def oip_plan(request: InferRequest, input_name: str, shape: tuple[int, int, int], max_images: int) -> OipPlan:
    """Checks an infer request against the model (input name, datatype, shape, limits, outputs)."""
    if len(request.inputs) != 1:
        raise RequestError('"inputs" must be a list holding exactly one tensor')
    tensor = request.inputs[0]
    if tensor.name not in (input_name, None):
        raise RequestError(f"unknown input {tensor.name!r}; this model's input is {input_name!r}")
    datatype = tensor.datatype
    if datatype not in OIP_DATATYPES:
        raise RequestError(f"datatype {datatype!r} is not supported; send FP32 (values in [0, 1]) or UINT8 (0-255)")
    dims = tensor.shape
    channels, height, width = shape
    channels_last = False
    if len(dims) == 3 and channels == 1:
        dims = [dims[0], 1, dims[1], dims[2]]
    elif len(dims) == 4 and tuple(dims[1:]) != shape and tuple(dims[1:]) == (height, width, channels):
        dims, channels_last = [dims[0], channels, height, width], True
    if len(dims) != 4 or tuple(dims[1:]) != shape:
        raise RequestError(
            f"shape {tensor.shape} does not fit this model; expected [N, {channels}, {height}, {width}] "
            f"or [N, {height}, {width}, {channels}]"
        )
    if dims[0] < 1:
        raise RequestError("the batch holds no image")
    if dims[0] > max_images:
        raise PayloadTooLargeError(f"{dims[0]} images in one request; the limit is {max_images}")
    size = tensor.parameters.binary_data_size if tensor.parameters is not None else None
    needed = math.prod(dims) * OIP_DATATYPES[datatype].itemsize
    if size is not None and size != needed:
        raise RequestError(f"binary_data_size {size} does not fit shape {dims} of {datatype}, which needs {needed}")
    requested = {o.name: o for o in request.outputs or ()}
    unknown = set(requested) - {*OIP_OUTPUTS, OIP_MAP_OUTPUT}
    if unknown:
        raise RequestError(f"unknown outputs {sorted(unknown)}; this model has score, is_anomaly and anomaly_map")
    binary_default = request.parameters.binary_data_output if request.parameters is not None else False

    def as_binary(name: str) -> bool:
        parameters = requested[name].parameters if name in requested else None
        chosen = parameters.binary_data if parameters is not None else None
        return binary_default if chosen is None else chosen

    outputs = tuple((name, as_binary(name)) for name in (requested or OIP_OUTPUTS))
    echo = {"id": request.id} if request.id is not None else {}
    n, c, h, w = dims  # four, checked above
    return OipPlan((n, c, h, w), datatype, size, outputs, echo, channels_last)


def oip_pixels(plan: OipPlan, request: InferRequest | None, binary: bytes | memoryview | None) -> np.ndarray:
    """The request's images as NCHW: float32 in [0, 1] (FP32) or uint8 0-255 (UINT8, scaled by the batcher).

    Data comes as JSON (the tensor's "data", flat or nested) or, with the binary tensor extension, as
    raw little-endian bytes after the JSON header ("parameters": {"binary_data_size": n}); the request
    is then not needed.
    """
    datatype, dims = plan.datatype, plan.dims
    if plan.binary_size is not None:
        if binary is None:
            raise RequestError("binary_data_size given but the request has no Inference-Header-Content-Length")
        if len(binary) != plan.binary_size:
            raise RequestError(
                f"binary data holds {len(binary)} bytes; shape {list(dims)} of {datatype} needs {plan.binary_size}"
            )
        array = np.frombuffer(binary, dtype=OIP_DATATYPES[datatype])
    else:
        if binary:
            raise RequestError("the request carries binary data but its input has no binary_data_size parameter")
        array = _json_tensor_data(
            request.inputs[0].data if request is not None else None, datatype, math.prod(dims), dims
        )
    if datatype == "FP32":
        array = require_unit_range(array.astype(np.float32, copy=False), "FP32 data")
    if plan.channels_last:
        n, c, h, w = dims
        return np.ascontiguousarray(array.reshape(n, h, w, c).transpose(0, 3, 1, 2))
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
            plan = oip_plan(infer_request(header), input_name, shape, max_images)
            if len(header) <= self.MAX_HEADER_BYTES:
                if len(self._plans) >= self.MAX_ENTRIES:
                    self._plans.clear()
                self._plans[header] = plan
        return plan
