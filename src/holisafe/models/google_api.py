"""The `google` backend: Gemini models through the Gemini API (google-genai SDK)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2  # google-genai's transport; its errors pass through the SDK unwrapped
from google import genai
from google.genai import errors, types

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.api import GEMINI_IMAGES, ApiModel, Reply, RequestFailed

GEMINI_API_URL = "https://generativelanguage.googleapis.com"


class GoogleModel(ApiModel):
    """A Gemini model; images go as inline data (see `ApiModel.image`).

    `api_key` defaults to GOOGLE_API_KEY, else GEMINI_API_KEY (the SDK's order). The SDK
    retries rate limits, 5xx, timeouts and refused connections with exponential backoff that
    starts at `retry_delay_s` (it does not read retry-after).
    """

    provider = "google"
    image_limits = GEMINI_IMAGES
    key_variables = ("GOOGLE_API_KEY", "GEMINI_API_KEY")

    def __init__(self, name: str, *, retry_delay_s: float = 1.0, **options):
        self.retry_delay_s = retry_delay_s
        super().__init__(name, **options)

    def _connect(self, key: str | None, base_url: str | None) -> None:
        if key is None:
            raise self.missing_key()
        # Jitter as large as the first delay, in the proportion of the SDK's defaults (1 s, 1 s).
        retries = types.HttpRetryOptions(
            attempts=self.max_retries + 1,
            initial_delay=self.retry_delay_s,
            jitter=self.retry_delay_s,
        )
        options = types.HttpOptions(
            base_url=base_url, timeout=round(self.timeout_s * 1000), retry_options=retries
        )
        self._client = genai.Client(api_key=key, http_options=options)
        self.endpoint = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GEMINI_API_URL

    @property
    def client(self) -> genai.Client:
        return self._client

    def batch_request(self, request: Request, settings: GenerationSettings) -> dict:
        """The REST API's GenerateContentRequest for one Request, as JSON (a batch file's line
        carries one); the same content and settings as `_send` gives the SDK."""
        parts: list[dict] = []
        if request.image is not None:
            image = self.image(request)
            parts.append({"inlineData": {"mimeType": image.media_type, "data": image.base64}})
        parts.append({"text": request.query})
        body: dict = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "maxOutputTokens": settings.max_new_tokens,
                "temperature": settings.temperature,
            },
        }
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        return body

    def _send(self, request: Request, settings: GenerationSettings) -> Reply:
        config = types.GenerateContentConfig(
            system_instruction=request.system,
            max_output_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
        )
        with self.provider_errors():
            response = self._client.models.generate_content(
                model=self.name, contents=self._contents(request), config=config
            )
        usage = response.usage_metadata
        return Reply(response.text, usage and usage.total_token_count, _finish_reason(response))

    def _contents(self, request: Request) -> str | list:
        if request.image is None:
            return request.query
        image = self.image(request)
        return [types.Part.from_bytes(data=image.data, mime_type=image.media_type), request.query]

    @contextmanager
    def provider_errors(self) -> Iterator[None]:
        """The google-genai SDK's exceptions sorted into ModelError and RequestFailed."""
        try:
            yield
        except errors.APIError as error:
            detail = error.message or str(error.details)
            # The Gemini API answers a bad key with 400 API_KEY_INVALID rather than 401.
            if "API_KEY_INVALID" in str(error.details):
                raise self.key_rejected(error.code, detail) from error
            raise self.status_failure(error.code, detail) from error
        except httpx2.TimeoutException as error:
            raise self.timed_out() from error
        except httpx2.TransportError as error:
            raise self.unreachable(error) from error
        except ValueError as error:  # a body that does not parse as JSON
            raise RequestFailed(f"malformed reply, bad JSON: {error}") from error


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    candidates = response.candidates
    reason = candidates[0].finish_reason if candidates else None
    return None if reason is None else reason.value
