"""The server's errors: those it answers a client with, and those that stop it starting."""

from __future__ import annotations

from holisafe.core.errors import HolisafeError


class ServeError(HolisafeError):
    """A server that cannot start as asked (a bad option, a port in use, ...)."""


class ApiError(HolisafeError):
    """A request the server refuses or fails: answered with `status` in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, code: str | None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    # A message may quote the request, lone surrogates included: escape what UTF-8 cannot carry.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": kind, "code": code}}
