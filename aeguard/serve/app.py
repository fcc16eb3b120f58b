"""The daemon's HTTP app: /v1 scoring, Open Inference Protocol v2, health, metrics, admin reload.

Every handler runs inside an `Endpoint`, the one place where errors become JSON responses with their
HTTP status, and where request metrics and the structured request log are written. Starlette routes;
the endpoints speak ASGI directly (aeguard/serve/http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import os
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aeguard import __version__
from aeguard.errors import (
    AeguardError, ModelNotFoundError, ModelOutputError, PayloadTooLargeError, RequestError, UnauthorizedError,
)
from aeguard.serve import payloads
from aeguard.serve.batching import BatchingScorer
from aeguard.serve.http import HttpRequest, Reply, json_reply, reply_messages
from aeguard.serve.metrics import Metrics
from aeguard.serve.model_store import LoadedModel, ModelStore
from aeguard.serve.openapi import openapi_document
from aeguard.serve.settings import ServeSettings

log = logging.getLogger("aeguard.serve")


Handler = Callable[[HttpRequest], Awaitable[Reply]]


class DaemonState:
    """Everything the handlers share; built by create_app, started by the lifespan."""

    def __init__(self, settings: ServeSettings, registry: CollectorRegistry | None):
        self.settings = settings
        self.metrics = Metrics(registry)
        self.store = ModelStore(settings.bundle, settings.model_name, settings.intra_op_threads, self.metrics)
        self.scorer = BatchingScorer(self.store, self.metrics, settings.max_batch_size,
                                     settings.max_wait_ms / 1000.0, settings.batching,
                                     settings.inference_workers or os.cpu_count() or 1, settings.request_timeout_s,
                                     settings.inline_max_ms / 1000.0)
        self.draining = False
        self._watch_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.store.loaded and not self.draining

    def begin_drain(self) -> None:
        """Readiness turns false first, so load balancers stop sending before the listener closes."""
        self.draining = True
        self.metrics.ready.set(0)
        log.info("draining: readiness is now false")

    async def reload(self, reason: str) -> LoadedModel:
        model = await asyncio.get_running_loop().run_in_executor(None, self.store.reload, reason)
        self.metrics.ready.set(1 if self.ready else 0)
        return model

    async def _reload_quietly(self, reason: str) -> None:
        try:
            await self.reload(reason)
        except AeguardError:
            pass  # logged and counted by the store; the old model keeps serving
        except Exception:  # noqa: BLE001 - a fault outside the store: logged, and the watcher lives on
            log.exception("model reload failed", extra={"fields": {"reason": reason}})

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                changed = self.store.changed_on_disk()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one check
                log.exception("checking the bundle on disk failed")
                continue
            if changed:
                await self._reload_quietly("bundle changed on disk")

    async def start(self) -> None:
        await self._reload_quietly("startup")
        await self.scorer.start()
        tune_garbage_collector()
        if self.settings.watch_interval_s > 0:
            self._watch_task = asyncio.create_task(self._watch())
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_quietly("SIGHUP")))

    async def stop(self) -> None:
        self.draining = True
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self.scorer.stop()


def tune_garbage_collector() -> None:
    """Requests allocate many short-lived containers, and CPython's default thresholds then run a collection
    every few requests, each walking every object of the process: onnxruntime's, numpy's and the model's
    included. Freezing what startup created (it lives as long as the process) takes those out of every walk,
    and a larger first threshold makes the young collections rarer. In one interleaved comparison (dense
    model, 64 clients sending single images) the daemon went from 0.44 to 0.51 of the do-nothing endpoint."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


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
        status, message = getattr(exc, "status_code", 400), str(getattr(exc, "detail", None) or exc.message)
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
            log.info("request", extra={"fields": {
                "request_id": request.request_id, "endpoint": self.name, "method": request.method,
                "path": request.path, "status": reply.status,
                "duration_ms": round(seconds * 1000, 3), "images": request.images}})


def create_app(settings: ServeSettings, registry: CollectorRegistry | None = None) -> Starlette:
    state = DaemonState(settings, registry)
    metrics = state.metrics
    new_request_id = request_id_maker()

    async def score_items(items: list, labels: list[str], request: HttpRequest,
                          names: list[str] | None = None) -> Reply:
        model = state.store.current
        height, width = model.scorer.height, model.scorer.width
        # Decoding is CPU work of unbounded cost (a 4000x4000 PNG takes most of a second): never on the loop.
        decoded = await asyncio.to_thread(payloads.decode_items, items, labels, height, width, settings.max_pixels)
        good = [item for item in decoded if not isinstance(item, str)]
        errors = [item if isinstance(item, str) else None for item in decoded]
        if not good:
            raise RequestError(errors[0] if len(errors) == 1 else
                               f"none of the {len(errors)} images could be read; first: {errors[0]}")
        scores, model = await state.scorer.score(np.stack(good))
        request.images = len(good)
        results = []
        for index, result in enumerate(model.scorer.results(errors, scores)):
            row = {"error": result.error} if result.error is not None else \
                {"score": result.score, "is_anomaly": result.is_anomaly}
            if names is not None:
                row = {"filename": names[index], **row}
            results.append(row)
        scored = sum(1 for result in results if "error" not in result)
        return json_reply({
            "model": {"name": model.name, "version": model.version}, "threshold": model.threshold,
            "results": results, "n_scored": scored, "n_errors": len(items) - scored,
        })

    async def v1_score(request: HttpRequest) -> Reply:
        _check_token(request, settings.api_token)
        body = await request.body(settings.max_body_bytes, settings.request_timeout_s)
        items = payloads.score_request_items(body, settings.max_images_per_request)
        return await score_items(items, [f"images[{i}]" for i in range(len(items))], request)

    async def v1_score_image(request: HttpRequest) -> Reply:
        _check_token(request, settings.api_token)
        body = await request.body(settings.max_body_bytes, settings.request_timeout_s)
        if (request.header(b"content-type") or "").startswith("multipart/form-data"):
            async with request.starlette_request().form(max_files=settings.max_images_per_request,
                                                        max_part_size=settings.max_body_bytes) as form:
                uploads = [value for _, value in form.multi_items() if hasattr(value, "read")]
                if not uploads:
                    raise RequestError("multipart body holds no file parts")
                names = [upload.filename or f"file[{i}]" for i, upload in enumerate(uploads)]
                items = [await upload.read() for upload in uploads]
            return await score_items(items, names, request, names=names)
        return await score_items([body], ["body"], request)

    def model_for(name: str) -> LoadedModel:
        model = state.store.current
        if name != model.name:
            raise ModelNotFoundError(f"unknown model {name!r}; this daemon serves {model.name!r}")
        return model

    plans = payloads.PlanCache()

    async def oip_infer(request: HttpRequest) -> Reply:
        if settings.api_token is not None:
            _check_token(request, settings.api_token)
        params = request.path_params
        model = model_for(params["name"])
        version = params.get("version")
        if version is not None and version != model.version:
            raise ModelNotFoundError(f"model {model.name!r} has no version {version!r}; it serves {model.version!r}")
        body = await request.body(settings.max_body_bytes, settings.request_timeout_s)
        scorer, header_length = model.scorer, request.raw_header(payloads.OIP_BINARY_HEADER)
        if header_length is None:
            infer, binary = payloads.infer_request(body), None
            plan = payloads.oip_plan(infer, scorer.input_name, scorer.input_shape, settings.max_images_per_request)
        else:
            header, binary = payloads.split_binary_body(body, header_length)
            plan = plans.plan(header, model, scorer.input_name, scorer.input_shape, settings.max_images_per_request)
            # the extension also allows JSON data in the header, with binary outputs only
            infer = payloads.infer_request(header) if plan.binary_size is None else None
        images = payloads.oip_pixels(plan, infer, binary)
        scores, model = await state.scorer.score(images)
        request.images = len(images)
        verdicts = model.scorer.results([None] * len(scores), scores)
        failed = next((i for i, v in enumerate(verdicts) if v.error is not None), None)
        if failed is not None:  # an OIP reply has no per-image error: refuse rather than send a wrong verdict
            raise ModelOutputError(f"image {failed}: {verdicts[failed].error}")
        threshold, shape = model.threshold, [len(scores)]
        columns = {"score": ("FP32", scores, "<f4"), "is_anomaly": ("BOOL", [v.is_anomaly for v in verdicts], "?")}
        outputs, blobs = [], []
        for name, as_binary in plan.outputs:
            datatype, values, binary_type = columns[name]
            if as_binary:
                blob = np.asarray(values, binary_type).tobytes()
                outputs.append({"name": name, "datatype": datatype, "shape": shape,
                                "parameters": {"binary_data_size": len(blob)}})
                blobs.append(blob)
            else:
                outputs.append({"name": name, "datatype": datatype, "shape": shape, "data": values})
        body = {"model_name": model.name, "model_version": model.version,
                "parameters": {"threshold": threshold}, "outputs": outputs, **plan.echo}
        if not blobs:
            return json_reply(body)
        header = orjson.dumps(body)
        return Reply(header + b"".join(blobs), content_type=b"application/octet-stream",
                     headers=[(payloads.OIP_BINARY_HEADER, b"%d" % len(header))])

    async def oip_model_metadata(request: HttpRequest) -> Reply:
        model = model_for(request.path_params["name"])
        c, h, w = model.scorer.input_shape
        return json_reply({
            "name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": model.scorer.input_name, "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]},
                        {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]}],
            "parameters": {"threshold": model.threshold, "accepted_input_datatypes": ["FP32", "UINT8"]},
        })

    async def oip_model_ready(request: HttpRequest) -> Reply:
        model_for(request.path_params["name"])
        return json_reply({"name": request.path_params["name"], "ready": state.ready}, 200 if state.ready else 503)

    async def server_metadata(request: HttpRequest) -> Reply:
        return json_reply({"name": "aeguard", "version": __version__, "extensions": []})

    async def live(request: HttpRequest) -> Reply:
        return json_reply({"live": True})

    async def ready(request: HttpRequest) -> Reply:
        body = {"ready": state.ready}
        if state.store.last_error_type:
            # unauthenticated: the kind only; the message (paths, hashes) goes to the log and /admin/reload
            body["last_reload_failed"] = state.store.last_error_type
        return json_reply(body, 200 if state.ready else 503)

    async def metrics_endpoint(request: HttpRequest) -> Reply:
        data, content_type = metrics.exposition()
        return Reply(data, content_type=content_type.encode())

    async def admin_reload(request: HttpRequest) -> Reply:
        if settings.admin_token is None:
            raise ModelNotFoundError("admin endpoint is disabled; set AEGUARD_ADMIN_TOKEN to enable it")
        _check_token(request, settings.admin_token)
        try:
            model = await state.reload("admin request")
        except AeguardError as exc:
            return json_reply({"reloaded": False, "error": str(exc), "serving": state.store.serving_version}, 422)
        return json_reply({"reloaded": True, "model": model.name, "version": model.version})

    async def openapi(request: HttpRequest) -> Reply:
        return json_reply(openapi_document())

    # Starlette tries routes in order: the scoring endpoints come first, they take nearly all the traffic.
    routes = [
        ("/v2/models/{name}/infer", "infer", oip_infer, ["POST"]),
        ("/v1/score", "score", v1_score, ["POST"]),
        ("/v1/score/image", "score_image", v1_score_image, ["POST"]),
        ("/v2/models/{name}/versions/{version}/infer", "infer", oip_infer, ["POST"]),
        ("/v2", "server_metadata", server_metadata, ["GET"]),
        ("/v2/health/live", "live", live, ["GET"]),
        ("/v2/health/ready", "ready", ready, ["GET"]),
        ("/v2/models/{name}", "model_metadata", oip_model_metadata, ["GET"]),
        ("/v2/models/{name}/ready", "model_ready", oip_model_ready, ["GET"]),
        ("/metrics", "metrics", metrics_endpoint, ["GET"]),
        ("/openapi.json", "openapi", openapi, ["GET"]),
        ("/admin/reload", "admin_reload", admin_reload, ["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await state.start()
        metrics.ready.set(1 if state.ready else 0)
        yield
        await state.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        metrics.requests.labels(endpoint="unknown", code=str(status)).inc()
        message = "no such endpoint; see /openapi.json" if status == 404 else f"method {request.method} not allowed"
        return Response(orjson.dumps({"error": {"type": "NotFound" if status == 404 else "MethodNotAllowed",
                                                "message": message}}),
                        status_code=status, media_type="application/json",
                        headers=getattr(exc, "headers", None))  # 405 carries Allow

    # An Endpoint is an ASGI app, not a function: Starlette routes to it without its Request/Response wrapper.
    app = Starlette(
        routes=[Route(path, Endpoint(name, handler, metrics, new_request_id), methods=methods)
                for path, name, handler, methods in routes],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.aeguard = state
    return app


def create_app_from_env() -> Starlette:
    """Factory for uvicorn worker processes, which get their settings through the environment."""
    from aeguard.serve.logs import configure_logging

    settings = ServeSettings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
