"""The HTTP protocol of a model server: uvicorn's httptools protocol, with each answer
written in one ``send`` (:class:`CorkedTransport`) and an overloaded ``POST /invocations``
refused from its headers alone (``shed``), before an ASGI request cycle, a task or the app
cost anything: under overload the server refuses several requests for each it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["CorkedTransport", "Shed", "http_protocol"]


class CorkedTransport:
    """A transport that holds the head of a response until its body is written, and writes
    both at once: one ``send`` per answer instead of two (uvicorn writes the status line and
    headers, then the body, each straight to the socket; on loopback a send costs as much as
    the rest of the event loop's work on a small request). The body follows the head in
    the same step of the event loop; a head without one (a HEAD request, ``100 Continue``)
    is written at the loop's next turn, and before a close."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == b"HTTP/":
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def write_answer(self, data: bytes) -> None:
        """Write a whole answer (head and body) now."""
        self._flush()
        self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # the peer went away meanwhile
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


Shed = Callable[[bytes | None], Any]
"""Asked with a ``POST /invocations``'s ``Authorization`` header as soon as its headers are
parsed: the refusal to send at once (a reply with ``status``, ``raw_headers()`` and
``body``), or None to serve the request the usual way (``_Server.shed_early``)."""


class _Answered:
    """The request cycle of a request answered from its headers: complete, so that
    uvicorn's protocol discards its body and starts the next request as usual. One shared
    instance: nothing waits on its event, and a refusal should allocate nothing."""

    __slots__ = ()
    response_complete = True
    disconnected = False
    message_event = asyncio.Event()


_ANSWERED = _Answered()


def http_protocol(shed: Shed | None = None) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol writing each answer in one send and, with ``shed``,
    refusing an overloaded ``POST /invocations`` from its headers, or uvicorn's ``auto``
    choice where httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return "auto"

    class CorkedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # Only the answers' writes go through it; flow control keeps the transport.
            self.transport = CorkedTransport(transport, self.loop)  # type: ignore[assignment]

        def on_headers_complete(self) -> None:
            # A refusal under overload costs next to nothing only if it skips the ASGI
            # cycle, its task and the app: answered here, the body discarded as it comes.
            if (
                shed is None
                or self.url != b"/invocations"
                or self.parser.get_method() != b"POST"
                or (self.cycle is not None and not self.cycle.response_complete)
                or self.expect_100_continue
                or self.parser.should_upgrade()
                or self.root_path
            ):
                super().on_headers_complete()
                return
            authorization = None
            for name, value in self.headers:
                if name == b"authorization":
                    authorization = value
                    break
            reply = shed(authorization)
            if reply is None:
                super().on_headers_complete()
                return
            keep_alive = self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
            head = [STATUS_LINE[reply.status]]
            for name, value in (*self.server_state.default_headers, *reply.raw_headers()):
                head += [name, b": ", value, b"\r\n"]
            if not keep_alive:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", reply.body]
            self.cycle = _ANSWERED  # type: ignore[assignment]
            self.transport.write_answer(b"".join(head))  # type: ignore[attr-defined]
            if keep_alive:
                self.on_response_complete()
            else:
                self.transport.close()

    return CorkedHttpTools
