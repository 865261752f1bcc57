"""The HTTP server: an OpenAI-compatible chat API, an image guard API and a web page.

- `POST /v1/chat/completions`: OpenAI chat completions (text, one base64 image, SSE streaming);
  a Safe-VLM's answer adds a top-level `safety` object, and a gating one (`--gate`) a
  `holisafe` object saying whether the gate refused the request and at what score.
- `POST /v1/guard`: `{"images": [data URL, ...]}` in, one safety prediction per image out.
- `GET /v1/models`: the one model served. `GET /health`: status and batching counters.
- `GET /`: a page to try the model in a browser.

Every request first passes the gate (Host, API key, JSON content type: `gate.py`); API
requests are then admitted within the server's capacity (`limits.py`), so that what the server
holds stays under `ServeLimits.memory_bound`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest

from holisafe.core.errors import HolisafeError
from holisafe.core.records import Model, Request
from holisafe.models import ModelOptions, load_model
from holisafe.serve.audit import AuditedImage, AuditSettings, AuditWriter, Served
from holisafe.serve.audit import client_id as audit_client_id
from holisafe.serve.batching import DynamicBatcher
from holisafe.serve.connections import server_config
from holisafe.serve.errors import ApiError, ServeError, error_body
from holisafe.serve.gate import ANY_HOST, LOOPBACK_HOSTS, RequestGate
from holisafe.serve.limits import (
    Capacity,
    EncodedImage,
    ServeLimits,
    decode_encoded,
    read_image_url,
    read_json,
)
from holisafe.serve.protocol import (
    GuardBody,
    completion,
    parse_chat,
    safety_json,
    stream_events,
    validated,
)

STATIC = Path(__file__).parent / "static"
STARTUP_POLL_S = 0.01
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class ServeSettings:
    """How the server names its model, batches requests, limits them and whom it answers."""

    model_name: str | None = None  # default: the model folder's name, or the Hub id
    max_batch: int | None = None  # default: the model's batch size (8 if it has none)
    batch_wait_ms: float = 10.0
    limits: ServeLimits = field(default_factory=ServeLimits)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host headers answered; "*": any
    api_key: str | None = None  # when set, /v1/ needs `Authorization: Bearer <key>`
    audit: AuditSettings | None = None  # record every answered request in a store

    def __post_init__(self) -> None:
        if self.max_batch is not None and self.max_batch < 1:
            raise ServeError(f"max batch must be at least 1, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ServeError(f"batch wait must be 0 ms or more, got {self.batch_wait_ms:g}")
        if self.api_key is not None and not self.api_key.strip():
            raise ServeError("the API key is empty")


def default_model_name(spec: str) -> str:
    """`hf/./runs/my-model` -> `my-model`; a Hub id or an API model's name stays whole."""
    name = spec.partition("/")[2] or spec
    path = Path(name).expanduser()
    return path.resolve().name if path.is_dir() else name


def create_app(model: Model, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI app serving a loaded model."""
    batcher = DynamicBatcher(
        model,
        max_batch=settings.max_batch or getattr(model, "batch_size", 8),
        wait_s=settings.batch_wait_ms / 1000,
    )
    served = _Served(
        name=settings.model_name or default_model_name(model.spec),
        batcher=batcher,
        limits=settings.limits,
        capacity=Capacity(settings.limits),
        safe_vlm=bool(getattr(model, "is_safe_vlm", False)),
        gate=getattr(getattr(model, "gate", None), "threshold", None),
        audit=None if settings.audit is None else AuditWriter(settings.audit, model.spec),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        if served.audit is not None:
            served.audit.start()
        yield
        await batcher.stop()
        if served.audit is not None:
            served.audit.stop()

    app = FastAPI(title="holisafe", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.limits = settings.limits
    app.add_middleware(RequestGate, allowed_hosts=settings.allowed_hosts, api_key=settings.api_key)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    app.add_api_route("/", _page, include_in_schema=False)
    app.add_api_route("/health", served.health)
    app.add_api_route("/v1/models", served.models)
    app.add_api_route("/v1/models/{model_id:path}", served.model)
    app.add_api_route("/v1/chat/completions", served.chat, methods=["POST"])
    app.add_api_route("/v1/guard", served.guard, methods=["POST"])
    return app


async def _page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@dataclass
class _Served:
    """The routes over one model: its name, its batcher and the limits on requests."""

    name: str
    batcher: DynamicBatcher
    limits: ServeLimits
    capacity: Capacity
    safe_vlm: bool
    gate: float | None  # the model's gate threshold, None: it does not gate
    audit: AuditWriter | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, asked: str | None) -> None:
        if asked is not None and asked != self.name:
            raise ApiError(
                404,
                f"The model `{asked}` does not exist; this server serves `{self.name}`",
                "model_not_found",
            )

    async def health(self) -> dict:
        return {
            "status": "ok",
            "model": self.name,
            "safe_vlm": self.safe_vlm,
            "gate": self.gate,
            "max_batch": self.batcher.max_batch,
            "batch_wait_ms": self.batcher.wait_s * 1000,
            **asdict(self.batcher.stats),
            "pending": self.capacity.pending,
            "slow_bodies": sum(self.capacity.slow_bodies.values()),
            "decoded_pixels": self.capacity.decoded_pixels,
            "busy_refusals": self.capacity.busy_refusals,
            **({} if self.audit is None else {"audit": self.audit.counters()}),
        }

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "holisafe"}

    async def models(self) -> dict:
        return {"object": "list", "data": [self.card()]}

    async def model(self, model_id: str) -> dict:
        self.check_model(model_id)
        return self.card()

    async def chat(self, http: HttpRequest):
        received_at, start = time.time(), time.perf_counter()
        body = await read_json(http, self.capacity)
        audited: list[AuditedImage] = []
        with self.capacity.admit():
            call = parse_chat(body, self.limits)
            self.check_model(call.model)
            urls = {} if call.image_url is None else {"in the request": call.image_url}
            async with self.decoded(urls, audited) as images:
                image = images[0] if images else None
                request = Request(query=call.query, image=image, system=call.system)
                response = await self.batcher.generate(request, call.settings)
        if self.audit is not None:
            served = Served(
                "chat",
                audit_client_id(http.headers),
                received_at,
                time.perf_counter() - start,
                call.query,
                call.system,
                call.stream,
                audited[0] if audited else None,
            )
            self.audit.record(served, response)
        if response.text is None:
            raise ApiError(500, f"the model gave no answer: {response.error}", "model_error")
        if call.stream:
            events = stream_events(self.name, response, self.gate)
            return StreamingResponse(events, media_type="text/event-stream")
        return completion(self.name, response, self.gate)

    async def guard(self, http: HttpRequest) -> dict:
        received_at, start = time.time(), time.perf_counter()
        json_body = await read_json(http, self.capacity)
        audited: list[AuditedImage] = []
        with self.capacity.admit():
            body = validated(GuardBody, json_body)
            self.check_model(body.model)
            if not self.safe_vlm:
                raise ApiError(
                    400, f"`{self.name}` has no safety head; serve a Safe-VLM", "no_safety_head"
                )
            if len(body.images) > self.limits.max_guard_images:
                raise ApiError(
                    400,
                    f"{len(body.images)} images is over the limit of "
                    f"{self.limits.max_guard_images} per guard request",
                    "too_many_images",
                )
            urls = {f"#{i + 1}": url for i, url in enumerate(body.images)}
            async with self.decoded(urls, audited) as images:
                predictions = await self.batcher.classify(images)
        if self.audit is not None:
            client, latency_s = audit_client_id(http.headers), time.perf_counter() - start
            for image, prediction in zip(audited, predictions, strict=True):
                served = Served("guard", client, received_at, latency_s, image=image)
                self.audit.record(served, prediction=prediction)
        return {"model": self.name, "results": [safety_json(p) for p in predictions]}

    @asynccontextmanager
    async def decoded(
        self, urls: dict[str, str], audited: list[AuditedImage]
    ) -> AsyncIterator[list[Image.Image]]:
        """The images (by where they are in the request), decoded once their pixels fit in the
        server's budget and held until the block ends. Decoding is CPU work: done on threads,
        so that the event loop keeps serving. With the audit on, each image's hash (and file,
        with --audit-images) goes to `audited`."""
        encoded = [
            await run_in_threadpool(read_image_url, url, where, self.limits)
            for where, url in urls.items()
        ]
        async with self.capacity.hold_pixels(sum(image.pixels for image in encoded)):
            images = [await run_in_threadpool(self.decode, e, audited) for e in encoded]
            encoded.clear()  # the files' bytes are not needed while the model works
            yield images

    def decode(self, encoded: EncodedImage, audited: list[AuditedImage]) -> Image.Image:
        image = decode_encoded(encoded, self.limits)
        if self.audit is not None:
            audited.append(self.audit.image(encoded.data))
        return image


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: {"error": {"message", "type", "code"}}."""

    def answer(status: int, message: str, code: str | None) -> JSONResponse:
        return JSONResponse(error_body(status, message, code), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_http, exc: ApiError) -> JSONResponse:
        response = answer(exc.status, exc.message, exc.code)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def server_error(_http, exc: Exception) -> JSONResponse:
        # uvicorn logs the traceback; the client learns what failed, in the usual shape
        if isinstance(exc, HolisafeError):
            return answer(500, str(exc), "model_error")
        return answer(500, f"internal server error ({type(exc).__name__})", "internal_error")

    @app.exception_handler(HTTPException)
    async def http_error(_http, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return answer(exc.status_code, str(exc.detail), code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_http, exc: RequestValidationError) -> JSONResponse:
        return answer(422, str(exc.errors()[0].get("msg", exc)), "validation_error")


def serve(
    spec: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings = ServeSettings(),
    options: ModelOptions = ModelOptions(),
    log_level: str = "info",
) -> None:
    """Load the model `spec` names and serve it until interrupted. The address it listens on
    joins the hosts it answers for."""
    if host not in WILDCARD_ADDRESSES and host not in settings.allowed_hosts:
        settings = replace(settings, allowed_hosts=(*settings.allowed_hosts, host))
    sock = _listen(host, port)
    app = create_app(load_model(spec, options), settings)
    config = server_config(app, settings.limits, log_level)  # sets up uvicorn's loggers
    url = f"http://{host}:{sock.getsockname()[1]}"
    log = logging.getLogger("uvicorn.error")
    log.info("serving %s on %s (web page at /, OpenAI-compatible API under /v1)", spec, url)
    log.info("limits: %s", settings.limits.summary())
    hosts = "any" if ANY_HOST in settings.allowed_hosts else ", ".join(settings.allowed_hosts)
    auth = "an API key" if settings.api_key else "no API key"
    log.info("answering for hosts: %s; /v1/ needs %s", hosts, auth)
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` on a background thread; yields its root URL (port 0: a free port)."""
    sock = _listen(host, port)
    server = uvicorn.Server(server_config(app, app.state.limits, "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ServeError(f"the server on {host}:{port} failed to start")
        time.sleep(STARTUP_POLL_S)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Naming the protocol matters: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets that name it, and with it on every kept-alive reply waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
