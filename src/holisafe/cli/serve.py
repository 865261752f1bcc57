"""`holisafe serve`: a model behind an OpenAI-compatible API, a guard API and a web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from holisafe.cli.options import (
    DeviceOpt,
    DtypeOpt,
    GateOpt,
    GateRefusalOpt,
    HeadInputOpt,
    ModelSpecOpt,
    TrustRemoteCodeOpt,
    model_options,
)

app = typer.Typer(rich_markup_mode=None)


@app.command("serve")
def serve_command(
    model: ModelSpecOpt,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name clients use (default: folder name or Hub id).")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Most requests in one model call (default: --batch-size).")
    ] = None,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long to gather requests into a batch.")
    ] = 10.0,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 16 * 2**20,
    max_image_bytes: Annotated[int, typer.Option(help="Largest image, decoded.")] = 8 * 2**20,
    max_image_pixels: Annotated[int, typer.Option(help="Most pixels in an image.")] = 16_000_000,
    max_tokens: Annotated[int, typer.Option(help="Most max_tokens a request may ask.")] = 1024,
    max_text_bytes: Annotated[
        int, typer.Option(help="Longest system prompt plus question, in UTF-8 bytes.")
    ] = 8_000,
    max_guard_images: Annotated[int, typer.Option(help="Most images per /v1/guard call.")] = 16,
    max_pending: Annotated[
        int, typer.Option(help="API requests in progress at once; more get 503.")
    ] = 64,
    max_decoded_pixels: Annotated[
        int, typer.Option(help="Decoded image pixels held at once, all requests together.")
    ] = 32_000_000,
    max_connections: Annotated[
        int, typer.Option(help="Open connections; a request on one more gets 503.")
    ] = 512,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request head.")
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(help="Seconds a client has to send a request body, plus its bytes' time."),
    ] = 10.0,
    min_body_rate: Annotated[
        int, typer.Option(help="Bytes a second: a body has a second more per this many bytes.")
    ] = 64 * 1024,
    max_slow_bodies: Annotated[
        int, typer.Option(help="Bodies still arriving after 0.1 s, all clients; more get 503.")
    ] = 32,
    max_slow_bodies_per_client: Annotated[
        int, typer.Option(help="Slow bodies from one client address at once; more get 429.")
    ] = 4,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Host header to answer besides loopback and --host; repeat; * for any."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="HOLISAFE_API_KEY", help="Key clients must send as a bearer token for /v1/."
        ),
    ] = None,
    audit: Annotated[
        Path | None, typer.Option(help="Record every answered request in this store.")
    ] = None,
    audit_images: Annotated[
        bool, typer.Option("--audit-images", help="Keep the images too (default: their SHA-256).")
    ] = False,
    audit_days: Annotated[
        float | None, typer.Option(help="Delete audited requests older than this many days.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (hf).")] = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    base_url: Annotated[
        str | None, typer.Option(help="Server of the served API model (openai/...).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
    gate: GateOpt = None,
    gate_refusal: GateRefusalOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible API, with a guard API and a web page at /."""
    options = model_options(locals(), api_key=None)  # --api-key is the server's own key
    from holisafe.serve import (
        LOOPBACK_HOSTS,
        AuditSettings,
        ServeError,
        ServeLimits,
        ServeSettings,
        serve,
    )

    if audit is None and (audit_images or audit_days is not None):
        raise ServeError("--audit-images and --audit-days need --audit STORE")

    settings = ServeSettings(
        model_name=served_model_name,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        limits=ServeLimits(
            max_request_bytes=max_request_bytes,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            max_tokens=max_tokens,
            max_text_bytes=max_text_bytes,
            max_guard_images=max_guard_images,
            max_pending=max_pending,
            max_decoded_pixels=max_decoded_pixels,
            max_connections=max_connections,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            min_body_rate=min_body_rate,
            max_slow_bodies=max_slow_bodies,
            max_slow_bodies_per_client=max_slow_bodies_per_client,
        ),
        allowed_hosts=(*LOOPBACK_HOSTS, *(allowed_host or ())),
        api_key=api_key,
        audit=None if audit is None else AuditSettings(audit, audit_images, audit_days),
    )
    serve(model, host=host, port=port, settings=settings, options=options, log_level=log_level)
