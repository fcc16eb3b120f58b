"""The daemon's ASGI request and reply (aeguard/serve/http.py), without a server."""

import asyncio

import pytest

from aeguard.errors import PayloadTooLargeError, RequestError
from aeguard.serve.http import HttpRequest, Reply, reply_messages


def request(messages: list[dict], headers: list[tuple[bytes, bytes]] = ()) -> HttpRequest:
    queue = list(messages)

    async def receive():
        return queue.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": list(headers), "path_params": {"name": "m"}}
    return HttpRequest(scope, receive)


def chunk(body: bytes, more: bool = False) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


def test_headers_by_lower_case_name():
    req = request([], [(b"x-request-id", b"abc"), (b"authorization", b"Bearer t"), (b"x-request-id", b"second")])
    assert req.header(b"x-request-id") == "abc"  # the first value
    assert req.raw_header(b"authorization") == b"Bearer t"
    assert req.header(b"content-type") is None
    assert req.path_params == {"name": "m"} and req.method == "POST" and req.path == "/x"


def test_body_joins_chunks_and_is_read_once():
    req = request([chunk(b"ab", more=True), chunk(b"cd", more=True), chunk(b"")])
    assert asyncio.run(req.body(10, 5.0)) == b"abcd"
    assert asyncio.run(req.body(10, 5.0)) == b"abcd"  # cached: receive is not called again
    assert req.starlette_request()._body == b"abcd"


def test_body_limits_and_disconnect():
    declared = request([chunk(b"x")], [(b"content-length", b"100")])
    with pytest.raises(PayloadTooLargeError, match="100 bytes is over the limit of 10"):
        asyncio.run(declared.body(10, 5.0))
    streamed = request([chunk(b"x" * 8, more=True), chunk(b"x" * 8)])  # no content-length: counted as it comes
    with pytest.raises(PayloadTooLargeError, match="over the limit of 10 bytes"):
        asyncio.run(streamed.body(10, 5.0))
    gone = request([chunk(b"x", more=True), {"type": "http.disconnect"}])
    with pytest.raises(RequestError, match="disconnected"):
        asyncio.run(gone.body(10, 5.0))


def test_reply_messages_carry_length_type_id_and_extra_headers():
    reply = Reply(b"hello", 201, b"application/octet-stream", headers=[(b"x-extra", b"1")])
    start, body = reply_messages(reply, b"rid")
    assert start["status"] == 201
    assert dict(start["headers"]) == {
        b"content-type": b"application/octet-stream",
        b"content-length": b"5",
        b"x-request-id": b"rid",
        b"x-extra": b"1",
    }
    assert body == {"type": "http.response.body", "body": b"hello"}


def test_endpoint_records_each_request_once_and_a_cancelled_one_leaves_the_in_flight_count():
    from aeguard.serve.app import Endpoint
    from aeguard.serve.http import json_reply
    from aeguard.serve.metrics import Metrics

    metrics, sent = Metrics(), []

    async def fine(req):
        return json_reply({"ok": True})

    async def cancelled(req):
        raise asyncio.CancelledError

    async def send(message):
        sent.append(message)

    async def main():
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"x-request-id", b"mine")]}
        await Endpoint("live", fine, metrics, lambda: "generated")(scope, None, send)
        with pytest.raises(asyncio.CancelledError):
            await Endpoint("live", cancelled, metrics, lambda: "generated")(scope, None, send)
        await asyncio.sleep(0)  # the loop turn that writes the recorded requests to the metrics

    asyncio.run(main())
    value = lambda name, **labels: metrics.registry.get_sample_value(name, labels)  # noqa: E731
    assert value("aeguard_http_requests_total", endpoint="live", code="200") == 1
    assert value("aeguard_http_request_duration_seconds_count", endpoint="live") == 1
    assert value("aeguard_http_requests_in_flight") == 0
    assert (b"x-request-id", b"mine") in sent[0]["headers"] and len(sent) == 2  # the cancelled one sent nothing
