"""uvicorn's HTTP protocol with the two guards it lacks: a header deadline and a header size.

uvicorn (0.54) waits for a request's headers without limit: a client that sends a byte a
second, or connects and sends nothing, holds its connection (and a place under any
connection limit) forever, and httptools accepts headers of any size. `GuardedHttp`
answers 408 and closes once a connection has spent ``header_timeout_s`` without complete
headers (idle keep-alive connections included), and 431 once the headers pass
``max_header_bytes``. The request target counts toward that bound too: uvicorn appends
the URL piece by piece (quadratic in its length) on the doors' one event loop, so a
client streaming an endless ``GET /aaa...`` is answered 414 as soon as the URL and the
headers so far pass the bound, before any authentication. It subclasses uvicorn's
internal `HttpToolsProtocol`, so uvicorn is pinned to a minor release and
tests/doors/test_security.py probes the guards.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["guarded_http"]


class _GuardedHttp(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.header_timeout_s, self._refuse, 408, b"Request Timeout"
            )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, status: int, reason: bytes) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                % (status, reason)
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            if not self.transport.is_closing():
                self._disarm()
                self._refuse(414, b"URI Too Long")
            return  # never appended: the rest of an endless URL costs nothing
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        if self.transport.is_closing():  # refused (414) while its URL was still arriving
            return
        if self._header_bytes > self.max_header_bytes:  # all of them came in one chunk
            self._refuse(431, b"Request Header Fields Too Large")
            return
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_headers = True  # a keep-alive connection now waits for the next headers
        self._header_bytes = 0
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Headers still incomplete after this chunk (counted by on_header as they parse):
        # a client trickling endless headers is cut off without waiting for the deadline.
        closing = self.transport.is_closing()
        if self._in_headers and not closing and self._header_bytes > self.max_header_bytes:
            self._disarm()
            self._refuse(431, b"Request Header Fields Too Large")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_http(*, header_timeout_s: float, max_header_bytes: int) -> type[Any]:
    """The protocol class to give uvicorn as ``http=``, with these bounds."""
    return type(
        "GuardedHttp",
        (_GuardedHttp,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )
