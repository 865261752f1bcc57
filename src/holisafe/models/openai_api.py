"""The `openai` backend: OpenAI, or any OpenAI-compatible server (vLLM, SGLang, holisafe's own)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import openai
from openai.types.chat import ChatCompletionMessage

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.api import OPENAI_IMAGES, ApiModel, Reply, malformed

OFFICIAL_HOST = "api.openai.com"
# vLLM and SGLang accept any key unless started with one; the SDK insists on some key.
NO_KEY = "EMPTY"


class OpenAIModel(ApiModel):
    """A chat completions model; images go as base64 data URLs (see `ApiModel.image`).

    `base_url` (else OPENAI_BASE_URL, else OpenAI) is e.g. `http://localhost:8000/v1` for
    vLLM. `api_key` defaults to OPENAI_API_KEY; a server other than OpenAI's may need none.
    """

    provider = "openai"
    key_variables = ("OPENAI_API_KEY",)
    image_limits = OPENAI_IMAGES

    def _connect(self, key: str | None, base_url: str | None) -> None:
        self._client = openai.OpenAI(
            api_key=key or NO_KEY,
            base_url=base_url,
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )
        self.endpoint = str(self._client.base_url).rstrip("/")
        self._official = self._client.base_url.host == OFFICIAL_HOST
        if self._official and key is None:
            raise self.missing_key()

    def provider_errors(self) -> AbstractContextManager[None]:
        return self.stainless_errors(openai)

    @property
    def client(self) -> openai.OpenAI:
        return self._client

    def _messages(self, request: Request) -> list[dict]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        if request.image is None:
            content: str | list[dict] = request.query
        else:
            content = [
                {"type": "image_url", "image_url": {"url": self.image(request).data_url}},
                {"type": "text", "text": request.query},
            ]
        messages.append({"role": "user", "content": content})
        return messages

    def chat_body(self, request: Request, settings: GenerationSettings) -> dict:
        """The chat completions request body for one Request (also a Batch API line's body)."""
        # OpenAI's own API wants max_completion_tokens (its reasoning models refuse max_tokens);
        # compatible servers have long known max_tokens, and not all know the newer name.
        limit = "max_completion_tokens" if self._official else "max_tokens"
        return {
            "model": self.name,
            "messages": self._messages(request),
            "temperature": settings.temperature,
            limit: settings.max_new_tokens,
        }

    def _send(self, request: Request, settings: GenerationSettings) -> Reply:
        with self.provider_errors():
            completion = self._client.chat.completions.create(**self.chat_body(request, settings))
        return _reply_of(completion)


def _reply_of(completion: object) -> Reply:
    """The first choice's text. The SDK builds replies without validating them, so any JSON
    may arrive here: each field is looked up, never assumed."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise malformed(completion, "choices")
    message = getattr(choices[0], "message", None)
    if not isinstance(message, ChatCompletionMessage):  # the SDK keeps a non-object as it came
        raise malformed(completion, "message object in its first choice")
    text = getattr(message, "content", None)
    refusal = getattr(message, "refusal", None)
    if text in (None, "") and isinstance(refusal, str):
        text = refusal  # OpenAI gives a refusal in a field of its own, with no content
    usage = getattr(completion, "usage", None)
    return Reply(
        text,
        getattr(usage, "total_tokens", None),
        getattr(choices[0], "finish_reason", None),
    )
