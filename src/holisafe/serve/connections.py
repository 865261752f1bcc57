"""Connections: uvicorn's HTTP/1.1 with a deadline on request heads, and the server's config.

uvicorn closes a kept-alive connection left idle after an answer, but waits forever for the
first request on a new connection and for a head that arrives a byte at a time, so a thousand
silent connections can hold a thousand file descriptors. Here a connection that has not sent
a whole request head within `header_timeout_s` of connecting, or of its last answer, is closed.
"""

from __future__ import annotations

import asyncio
from functools import partial

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from holisafe.serve.limits import ServeLimits

MAX_HEAD_BYTES = 16 * 1024  # a request line and headers past this get 400


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose next request head is late."""

    def __init__(self, *args, header_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _start_deadline(self) -> None:
        self._cancel_deadline()
        self.head_deadline = self.loop.call_later(self.header_timeout_s, self._close_if_idle)

    def _cancel_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _close_if_idle(self) -> None:
        """Close unless a request is being answered (its body has a deadline of its own)."""
        answering = self.cycle is not None and not self.cycle.response_complete
        if not answering and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, limits: ServeLimits, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for `app` under `limits`."""
    return uvicorn.Config(
        app,
        http=partial(HeadDeadlineProtocol, header_timeout_s=limits.header_timeout_s),
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.header_timeout_s,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_level=log_level,
    )
