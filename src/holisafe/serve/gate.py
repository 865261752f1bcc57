"""Checks made on every request before it reaches a route: its Host, its API key and, for a
POST, that it says it is JSON. Refusals leave in OpenAI's error shape, like every other error.

- Host: a web page on another site can reach a loopback server through a domain it points at
  127.0.0.1 (DNS rebinding); such requests carry that domain as their Host and are refused.
- JSON content type: a page on any site may POST `text/plain` to any address without asking
  first; a POST of `application/json` needs the server's consent (CORS), which this server
  never gives.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from holisafe.serve.errors import ApiError, error_body

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_HOST = "*"
JSON = "application/json"


class RequestGate:
    """ASGI middleware refusing requests for other hosts, without the API key (when one is
    set; only /v1/ needs it) or POSTing anything but JSON."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...], api_key: str | None):
        self.app = app
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(Headers(scope=scope), scope["method"], scope["path"])
            if refusal is not None:
                body = error_body(refusal.status, refusal.message, refusal.code)
                response = JSONResponse(body, refusal.status, headers=refusal.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers, method: str, path: str) -> ApiError | None:
        host = host_name(headers.get("host", ""))
        if ANY_HOST not in self.allowed_hosts and host not in self.allowed_hosts:
            return ApiError(
                400,
                f"this server does not answer for the host `{host or '(none)'}`; it answers for "
                f"{', '.join(sorted(self.allowed_hosts))} (`--allowed-host` adds one)",
                "invalid_host",
            )
        if self.api_key is not None and path.startswith("/v1/") and not self.authorized(headers):
            return ApiError(
                401,
                "this server needs an API key: send `Authorization: Bearer <key>`",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if method == "POST" and media_type != JSON:
            return ApiError(
                415,
                f"request bodies must be JSON sent with `Content-Type: {JSON}`, "
                f"not `{media_type or '(none)'}`",
                "unsupported_media_type",
            )
        return None

    def authorized(self, headers: Headers) -> bool:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), self.api_key.encode()
        )


def host_name(header: str) -> str | None:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `::1`; None when there is none."""
    try:
        return urlsplit(f"//{header}").hostname
    except ValueError:  # a bracketed address that is not one
        return None
