"""The daemon's request and reply, read and written straight over ASGI.

Starlette still routes (paths, methods, 404 and 405), but every endpoint is a plain ASGI app: the
scoring path builds no Request, Headers or Response objects, which cost a single-image request more
event-loop time than its whole payload handling (see benchmarks/serve_load.py).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request

from aeguard.errors import BodyTimeoutError, PayloadTooLargeError, RequestError


class HttpRequest:
    """What a handler reads of one request (method, path, path parameters, headers, body), and what it tells
    the request log: the request id and the number of images it scored."""

    __slots__ = ("scope", "receive", "_body", "_headers", "request_id", "images")

    def __init__(self, scope: dict, receive):
        self.scope, self.receive = scope, receive
        self._body: bytes | None = None
        self._headers: dict[bytes, bytes] | None = None
        self.request_id, self.images = "", 0

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def path_params(self) -> dict:
        return self.scope.get("path_params", {})

    def query_flag(self, name: str) -> bool:
        """True when the query string sets `name` to 1, true or yes (?maps=true)."""
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get(name, [])
        return bool(values) and values[-1].lower() in ("1", "true", "yes")

    def raw_header(self, name: bytes) -> bytes | None:
        """The first value of a header; `name` in lower case, as ASGI servers deliver header names."""
        headers = self._headers
        if headers is None:  # one dict for every lookup, built in C; reversed, so a repeated header reads first
            headers = self._headers = dict(reversed(self.scope["headers"]))
        return headers.get(name)

    def header(self, name: bytes) -> str | None:
        value = self.raw_header(name)
        return None if value is None else value.decode("latin-1")

    async def body(self, limit: int, timeout_s: float) -> bytes:
        """The whole body, refused with 413 as soon as it passes `limit` bytes (declared or actually sent),
        and with 408 when it has not all arrived within `timeout_s` (a client that stalls mid-body)."""
        if self._body is not None:
            return self._body
        declared = self.raw_header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"body of {declared.decode()} bytes is over the limit of {limit}")
        chunk, more = await self._receive_chunk()  # nearly every body is one message: no timer for it
        chunks, size = [chunk], len(chunk)
        if more:
            try:
                async with asyncio.timeout(timeout_s):
                    while more:
                        if size > limit:
                            break
                        chunk, more = await self._receive_chunk()
                        chunks.append(chunk)
                        size += len(chunk)
            except TimeoutError:
                raise BodyTimeoutError(f"the body did not arrive within {timeout_s:g} s") from None
        if size > limit:
            raise PayloadTooLargeError(f"body is over the limit of {limit} bytes")
        self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body

    async def _receive_chunk(self) -> tuple[bytes, bool]:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise RequestError("the client disconnected before sending the whole body")
        return message.get("body", b""), message.get("more_body", False)

    def starlette_request(self) -> Request:
        """Starlette's Request over the body already read, for what it parses well (multipart forms)."""
        request = Request(self.scope, self.receive)
        if self._body is not None:
            request._body = self._body  # Starlette's own cache: form() parses these bytes instead of receiving
        return request


class Reply:
    """A whole response: status, body bytes, content type and any further headers."""

    __slots__ = ("body", "status", "content_type", "headers")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: bytes = b"application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        self.body, self.status, self.content_type, self.headers = body, status, content_type, headers


def json_reply(content, status: int = 200) -> Reply:
    """orjson renders score lists several times faster than the json module, numpy values included."""
    return Reply(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status)


def reply_messages(reply: Reply, request_id: bytes) -> tuple[dict, dict]:
    """The two ASGI messages that send a whole reply (the caller awaits send() on each: no coroutine of its own)."""
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", b"%d" % len(reply.body)),
        (b"x-request-id", request_id),
    ]
    if reply.headers:
        headers += reply.headers
    return (
        {"type": "http.response.start", "status": reply.status, "headers": headers},
        {"type": "http.response.body", "body": reply.body},
    )
