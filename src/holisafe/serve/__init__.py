"""`holisafe serve`: a model behind an OpenAI-compatible HTTP API, with batching and limits."""

from holisafe.serve.app import (
    ServeSettings,
    create_app,
    default_model_name,
    running_server,
    serve,
)
from holisafe.serve.audit import AuditSettings
from holisafe.serve.batching import BatchStats, DynamicBatcher
from holisafe.serve.errors import ApiError, ServeError
from holisafe.serve.gate import LOOPBACK_HOSTS
from holisafe.serve.limits import Capacity, ServeLimits

__all__ = [
    "LOOPBACK_HOSTS",
    "ApiError",
    "AuditSettings",
    "BatchStats",
    "Capacity",
    "DynamicBatcher",
    "ServeError",
    "ServeLimits",
    "ServeSettings",
    "create_app",
    "default_model_name",
    "running_server",
    "serve",
]
