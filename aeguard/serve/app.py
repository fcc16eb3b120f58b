"""The daemon's HTTP layer: /v1 scoring, Open Inference Protocol v2, health, metrics, admin reload.

It only translates: each handler reads a request (token, body, payload), calls the ScoringService
(service.py, the data plane) and builds the reply. Every handler runs inside an `Endpoint`, the one place
where errors become JSON responses with their HTTP status, and where request metrics and the structured
request log are written. Starlette routes; the endpoints speak ASGI directly (aeguard/serve/http.py).
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aeguard import __version__
from aeguard.errors import AeguardError, ModelNotFoundError, PayloadTooLargeError, RequestError, UnauthorizedError
from aeguard.serve import payloads
from aeguard.serve.http import HttpRequest, Reply, json_reply, reply_messages
from aeguard.serve.metrics import Metrics
from aeguard.serve.openapi import openapi_document
from aeguard.serve.service import ScoringService
from aeguard.serve.settings import ServeSettings

log = logging.getLogger("aeguard.serve")


Handler = Callable[[HttpRequest], Awaitable[Reply]]


def request_id_maker() -> Callable[[], str]:
    """Unique request ids without uuid4's cost: a random prefix per process (so workers and restarts never
    collide) and a counter."""
    prefix, counter = os.urandom(4).hex(), itertools.count()
    return lambda: f"{prefix}{next(counter):012x}"


def client_error(exc: Exception) -> AeguardError | None:
    """The one place where other libraries' errors about a request become aeguard's (and so a 4xx)."""
    if isinstance(exc, AeguardError):
        return exc
    if isinstance(exc, (MultiPartException, HTTPException)):  # Starlette's form parser raises either
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
        else:
            status, message = 400, exc.message
        if not 400 <= status < 500:
            return None
        if status == 413 or message.startswith("Too many"):  # more files or fields than the limits allow
            return PayloadTooLargeError(f"multipart body over the limits: {message}")
        return RequestError(f"multipart body cannot be read: {message}")
    return None


def error_body(exc: Exception, request_id: str) -> dict:
    kind = type(exc).__name__ if isinstance(exc, AeguardError) else "InternalError"
    message = str(exc) if isinstance(exc, AeguardError) else "internal error; see the daemon log for this request id"
    return {"error": {"type": kind, "message": message}, "request_id": request_id}


def _check_token(request: HttpRequest, expected: str | None) -> None:
    if expected is None:
        return
    header = request.header(b"authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <token>)")


class Endpoint:
    """One route's ASGI app: runs the handler, turns errors into JSON replies, writes metrics and the log."""

    def __init__(self, name: str, handler: Handler, metrics: Metrics, new_request_id: Callable[[], str]):
        self.name, self.handler, self.metrics, self.new_request_id = name, handler, metrics, new_request_id
        self.log_requests = name != "metrics"  # scrapes every few seconds would drown the log

    async def __call__(self, scope: dict, receive, send) -> None:
        started = time.perf_counter()
        request = HttpRequest(scope, receive)
        raw_id = request.raw_header(b"x-request-id")
        request.request_id = raw_id.decode("latin-1") if raw_id else self.new_request_id()
        self.metrics.request_started()
        reply = None
        try:
            try:
                reply = await self.handler(request)
            except Exception as exc:
                known = client_error(exc)
                if known is not None:
                    reply = json_reply(error_body(known, request.request_id), known.http_status)
                else:  # a fault of ours: 500, logged with its traceback, daemon lives on
                    log.exception("request failed", extra={"fields": {"request_id": request.request_id}})
                    reply = json_reply(error_body(exc, request.request_id), 500)
            start, body = reply_messages(reply, raw_id or request.request_id.encode())
            await send(start)
            await send(body)
        finally:  # also when the task is cancelled (a shutdown past its grace period): it is no longer in flight
            seconds = time.perf_counter() - started
            self.metrics.request_done(self.name, None if reply is None else reply.status, seconds)
        if self.log_requests and log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request.request_id,
                        "endpoint": self.name,
                        "method": request.method,
                        "path": request.path,
                        "status": reply.status,
                        "duration_ms": round(seconds * 1000, 3),
                        "images": request.images,
                    }
                },
            )


class Handlers:
    """One method per route: request -> service call -> reply."""

    def __init__(self, service: ScoringService):
        self.service, self.settings = service, service.settings
        self.plans = payloads.PlanCache()

    async def _body(self, request: HttpRequest) -> bytes:
        return await request.body(self.settings.max_body_bytes, self.settings.request_timeout_s)

    async def _score_reply(
        self, items: list, labels: list[str], request: HttpRequest, names: list[str] | None = None, maps: bool = False
    ) -> Reply:
        model, results, error_maps = await self.service.judge_items(items, labels, maps)
        rows = []
        for index, (result, error_map) in enumerate(zip(results, error_maps)):
            row: dict[str, Any] = (
                {"error": result.error}
                if result.error is not None
                else {"score": result.score, "is_anomaly": result.is_anomaly}
            )
            if error_map is not None:
                row["anomaly_map"] = payloads.map_payload(error_map)
            rows.append({"filename": names[index], **row} if names is not None else row)
        scored = sum(1 for result in results if result.error is None)
        request.images = scored
        return json_reply(
            {
                "model": {"name": model.name, "version": model.version},
                "threshold": model.threshold,
                "results": rows,
                "n_scored": scored,
                "n_errors": len(items) - scored,
            }
        )

    async def v1_score(self, request: HttpRequest) -> Reply:
        _check_token(request, self.settings.api_token)
        items, maps = payloads.score_request_items(await self._body(request), self.settings.max_images_per_request)
        return await self._score_reply(items, [f"images[{i}]" for i in range(len(items))], request, maps=maps)

    async def v1_score_image(self, request: HttpRequest) -> Reply:
        _check_token(request, self.settings.api_token)
        body = await self._body(request)
        if (request.header(b"content-type") or "").startswith("multipart/form-data"):
            async with request.starlette_request().form(
                max_files=self.settings.max_images_per_request, max_part_size=self.settings.max_body_bytes
            ) as form:
                uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
                if not uploads:
                    raise RequestError("multipart body holds no file parts")
                names = [upload.filename or f"file[{i}]" for i, upload in enumerate(uploads)]
                items = [await upload.read() for upload in uploads]
            return await self._score_reply(items, names, request, names=names, maps=request.query_flag("maps"))
        return await self._score_reply([body], ["body"], request, maps=request.query_flag("maps"))

    async def oip_infer(self, request: HttpRequest) -> Reply:
        settings = self.settings
        if settings.api_token is not None:
            _check_token(request, settings.api_token)
        params = request.path_params
        model = self.service.model(params["name"], params.get("version"))
        body = await self._body(request)
        scorer, header_length = model.scorer, request.raw_header(payloads.OIP_BINARY_HEADER)
        infer: payloads.InferRequest | None
        if header_length is None:
            infer, binary = payloads.infer_request(body), None
            plan = payloads.oip_plan(infer, scorer.input_name, scorer.input_shape, settings.max_images_per_request)
        else:
            header, binary = payloads.split_binary_body(body, header_length)
            plan = self.plans.plan(
                header, model, scorer.input_name, scorer.input_shape, settings.max_images_per_request
            )
            # the extension also allows JSON data in the header, with binary outputs only
            infer = payloads.infer_request(header) if plan.binary_size is None else None
        images = payloads.oip_pixels(plan, infer, binary)
        maps_for = model if any(name == payloads.OIP_MAP_OUTPUT for name, _ in plan.outputs) else None
        model, scores, verdicts, maps = await self.service.judge_tensor(images, maps_for)
        request.images = len(images)
        return oip_reply(model, plan, scores, verdicts, maps)

    async def oip_model_metadata(self, request: HttpRequest) -> Reply:
        model = self.service.model(request.path_params["name"])
        c, h, w = model.scorer.input_shape
        return json_reply(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": model.scorer.input_name, "datatype": "FP32", "shape": [-1, c, h, w]}],
                "outputs": [
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
                    {"name": payloads.OIP_MAP_OUTPUT, "datatype": "FP32", "shape": [-1, h, w]},  # when named
                ],
                "parameters": {
                    "threshold": model.threshold,
                    "accepted_input_datatypes": ["FP32", "UINT8"],
                    "execution_provider": model.scorer.provider,
                },
            }
        )

    async def oip_model_ready(self, request: HttpRequest) -> Reply:
        self.service.model(request.path_params["name"])
        ready = self.service.ready
        return json_reply({"name": request.path_params["name"], "ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: HttpRequest) -> Reply:
        return json_reply({"name": "aeguard", "version": __version__, "extensions": []})

    async def live(self, request: HttpRequest) -> Reply:
        return json_reply({"live": True})

    async def ready(self, request: HttpRequest) -> Reply:
        body: dict[str, bool | str] = {"ready": self.service.ready}
        if self.service.store.last_error_type:
            # unauthenticated: the kind only; the message (paths, hashes) goes to the log and /admin/reload
            body["last_reload_failed"] = self.service.store.last_error_type
        return json_reply(body, 200 if self.service.ready else 503)

    async def metrics(self, request: HttpRequest) -> Reply:
        data, content_type = self.service.metrics.exposition()
        return Reply(data, content_type=content_type.encode())

    async def admin_reload(self, request: HttpRequest) -> Reply:
        if self.settings.admin_token is None:
            raise ModelNotFoundError("admin endpoint is disabled; set AEGUARD_ADMIN_TOKEN to enable it")
        _check_token(request, self.settings.admin_token)
        try:
            model = await self.service.reload("admin request")
        except AeguardError as exc:
            return json_reply(
                {"reloaded": False, "error": str(exc), "serving": self.service.store.serving_version}, 422
            )
        return json_reply({"reloaded": True, "model": model.name, "version": model.version})

    async def openapi(self, request: HttpRequest) -> Reply:
        return json_reply(openapi_document())


def oip_reply(
    model, plan: payloads.OipPlan, scores: list[float], verdicts: list[bool], maps: np.ndarray | None = None
) -> Reply:
    """An infer reply with the outputs the request asked for, each as JSON data or binary tensor data."""
    columns: dict[str, tuple[str, Any, str]] = {"score": ("FP32", scores, "<f4"), "is_anomaly": ("BOOL", verdicts, "?")}
    if maps is not None:
        columns[payloads.OIP_MAP_OUTPUT] = ("FP32", maps, "<f4")
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in plan.outputs:
        datatype, values, binary_type = columns[name]
        shape = list(np.shape(values)) if name == payloads.OIP_MAP_OUTPUT else [len(scores)]
        if as_binary:
            blob = np.asarray(values, binary_type).tobytes()
            outputs.append(
                {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(blob)}}
            )
            blobs.append(blob)
        else:
            data = np.asarray(values).ravel().tolist() if name == payloads.OIP_MAP_OUTPUT else values
            outputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "parameters": {"threshold": model.threshold},
        "outputs": outputs,
        **plan.echo,
    }
    if not blobs:
        return json_reply(body)
    header = orjson.dumps(body)
    return Reply(
        header + b"".join(blobs),
        content_type=b"application/octet-stream",
        headers=[(payloads.OIP_BINARY_HEADER, b"%d" % len(header))],
    )


def create_app(settings: ServeSettings, registry: CollectorRegistry | None = None) -> Starlette:
    service = ScoringService(settings, registry)
    metrics = service.metrics
    handlers = Handlers(service)
    new_request_id = request_id_maker()

    # Starlette tries routes in order: the scoring endpoints come first, they take nearly all the traffic.
    routes = [
        ("/v2/models/{name}/infer", "infer", handlers.oip_infer, ["POST"]),
        ("/v1/score", "score", handlers.v1_score, ["POST"]),
        ("/v1/score/image", "score_image", handlers.v1_score_image, ["POST"]),
        ("/v2/models/{name}/versions/{version}/infer", "infer", handlers.oip_infer, ["POST"]),
        ("/v2", "server_metadata", handlers.server_metadata, ["GET"]),
        ("/v2/health/live", "live", handlers.live, ["GET"]),
        ("/v2/health/ready", "ready", handlers.ready, ["GET"]),
        ("/v2/models/{name}", "model_metadata", handlers.oip_model_metadata, ["GET"]),
        ("/v2/models/{name}/ready", "model_ready", handlers.oip_model_ready, ["GET"]),
        ("/metrics", "metrics", handlers.metrics, ["GET"]),
        ("/openapi.json", "openapi", handlers.openapi, ["GET"]),
        ("/admin/reload", "admin_reload", handlers.admin_reload, ["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await service.start()
        metrics.ready.set(1 if service.ready else 0)
        yield
        await service.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        metrics.requests.labels(endpoint="unknown", code=str(status)).inc()
        message = "no such endpoint; see /openapi.json" if status == 404 else f"method {request.method} not allowed"
        return Response(
            orjson.dumps({"error": {"type": "NotFound" if status == 404 else "MethodNotAllowed", "message": message}}),
            status_code=status,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )  # 405 carries Allow

    # An Endpoint is an ASGI app, not a function: Starlette routes to it without its Request/Response wrapper.
    app = Starlette(
        routes=[
            Route(path, Endpoint(name, handler, metrics, new_request_id), methods=methods)
            for path, name, handler, methods in routes
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.aeguard = service
    return app


def create_app_from_env() -> Starlette:
    """Factory for uvicorn worker processes, which get their settings through the environment."""
    from aeguard.serve.logs import configure_logging

    settings = ServeSettings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
