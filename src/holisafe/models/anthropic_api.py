"""The `anthropic` backend: Claude models through the Messages API."""

from __future__ import annotations

from contextlib import AbstractContextManager

import anthropic

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.api import ANTHROPIC_IMAGES, ApiModel, Reply, malformed


class AnthropicModel(ApiModel):
    """A Claude model; images go as base64 image blocks (see `ApiModel.image`). Temperature is
    not sent.

    `api_key` defaults to ANTHROPIC_API_KEY; `base_url` (else ANTHROPIC_BASE_URL, else
    Anthropic's API) serves for a gateway or a test server.
    """

    provider = "anthropic"
    key_variables = ("ANTHROPIC_API_KEY",)
    image_limits = ANTHROPIC_IMAGES

    def _connect(self, key: str | None, base_url: str | None) -> None:
        if key is None:
            raise self.missing_key()
        self._client = anthropic.Anthropic(
            api_key=key, base_url=base_url, timeout=self.timeout_s, max_retries=self.max_retries
        )
        self.endpoint = str(self._client.base_url).rstrip("/")

    @property
    def details(self) -> dict[str, object]:
        # Since API version 2026-10-21 (the SDK's, from 2.0) the Messages API answers any
        # sampling parameter with a 400, so settings.temperature cannot be honoured.
        return super().details | {"temperature": "not sent: the Messages API refuses it"}

    def provider_errors(self) -> AbstractContextManager[None]:
        return self.stainless_errors(anthropic)

    @property
    def client(self) -> anthropic.Anthropic:
        return self._client

    def message_params(self, request: Request, settings: GenerationSettings) -> dict:
        """The Messages API parameters for one Request (also a Message Batch request's)."""
        system = {"system": request.system} if request.system else {}
        return {
            "model": self.name,
            "messages": [{"role": "user", "content": self._content(request)}],
            "max_tokens": settings.max_new_tokens,
            **system,
        }

    def _content(self, request: Request) -> str | list[dict]:
        if request.image is None:
            return request.query
        image = self.image(request)
        source = {"type": "base64", "media_type": image.media_type, "data": image.base64}
        return [{"type": "image", "source": source}, {"type": "text", "text": request.query}]

    def _send(self, request: Request, settings: GenerationSettings) -> Reply:
        with self.provider_errors():
            message = self._client.messages.create(**self.message_params(request, settings))
        # the SDK builds replies without validating them: each field is looked up, not assumed
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise malformed(message, "content")
        texts = [getattr(b, "text", None) for b in content if getattr(b, "type", None) == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise malformed(message, "text in its text blocks")
        usage = getattr(message, "usage", None)
        tokens = usage and usage.input_tokens + usage.output_tokens
        return Reply("".join(texts), tokens, getattr(message, "stop_reason", None))
