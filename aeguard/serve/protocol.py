"""uvicorn's httptools protocol with the limits httptools lacks.

httptools (the fastest HTTP/1.1 parser uvicorn offers, which the daemon's single-image throughput was
measured on) buffers a request head of any size and waits for it for ever: one request with a 512 MiB
header line grew the daemon by a gigabyte and held the event loop for minutes, and a connection that
sends nothing, or a header a byte at a time, was never dropped. This protocol refuses a head over
`max_head_bytes` or `max_headers` with 431 and closes a connection whose request head has not arrived
within `head_timeout_s` of connecting or of its previous response with 408. (uvicorn's h11 protocol has a
size limit, but no deadline, and is slower.) Only head bytes count: the body of a request answered before it
arrived (a 413 from its declared length) is still read as that request's body, within the next deadline.
"""

from __future__ import annotations

import asyncio

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; browsers and SDKs send well under 8 KiB
MAX_HEADERS = 100

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is over a limit (uvicorn then calls
    send_400_response, which sends the refusal the callback recorded)."""


def configure(config: Config, head_timeout_s: float) -> Config:
    """Attach the limits to uvicorn's Config (which travels to worker processes) and select this protocol."""
    config.http = GuardedHttpToolsProtocol
    config.aeguard_head_timeout_s = head_timeout_s  # type: ignore[attr-defined]
    return config


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._head_timeout_s = float(getattr(config, "aeguard_head_timeout_s", 10.0))
        self._in_head, self._head_bytes, self._head_count = True, 0, 0
        # Between a head and the end of its body. A reply can go out before the body has arrived (a 413 from
        # the declared length): the parser then goes on reading that body, and its bytes are not the next head.
        self._in_body = False
        self._refusal: tuple[int, str] | None = None  # set by a parser callback that stopped at a limit
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._in_head, self._head_bytes, self._head_count, self._refusal = True, 0, 0, None
        self._cancel_head_timer()
        if self._head_timeout_s > 0:
            self._head_timer = self.loop.call_later(
                self._head_timeout_s, self._refuse, 408, "the request head did not arrive in time"
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self._in_head and not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"the request head is over {MAX_HEAD_BYTES} bytes")

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error with 400; one raised by a limit below gets its own status
        if self._refusal is not None:
            self._refuse(*self._refusal)
            return
        super().send_400_response(msg)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > MAX_HEADERS:
            self._refusal = (431, f"more than {MAX_HEADERS} header fields")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def _refuse(self, status: int, message: str) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a response is under way (or the connection is gone): not ours to write
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()
