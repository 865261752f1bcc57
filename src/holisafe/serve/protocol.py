"""The OpenAI chat completions wire format, as this server reads and writes it.

A request becomes one model Request: HoliSafe's models (and the Model protocol) take one query
with at most one image, so a multi-turn conversation is reduced to its system messages, the
text of its last user message and its one image, wherever in the conversation that image is.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError

from holisafe.core.records import GenerationSettings, Response, SafetyPrediction
from holisafe.serve.errors import ApiError
from holisafe.serve.limits import ServeLimits

DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
SYSTEM_ROLES = ("system", "developer")
# A streamed answer goes out word by word: each piece is a word and the space after it.
STREAM_PIECE = re.compile(r"\S+\s*|\s+")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None

    @property
    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def image_urls(self) -> list[str]:
        if self.content is None or isinstance(self.content, str):
            return []
        return [part.image_url.url for part in self.content if isinstance(part, ImagePart)]


class ChatBody(BaseModel):
    """The fields this server reads; others (top_p, seed, ...) are accepted and ignored."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    stream: bool = False
    n: int = Field(1, ge=1)


class GuardBody(BaseModel):
    """A /v1/guard request: images as base64 data URLs (or bare base64)."""

    model: str | None = None
    images: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class ChatCall:
    """What a chat request asks of the model, its image still encoded."""

    model: str
    query: str
    system: str | None
    image_url: str | None
    settings: GenerationSettings
    stream: bool


def validated(schema: type[BaseModel], body: object) -> BaseModel:
    """The body as `schema`; 422 naming the deepest field at fault."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        worst = max(errors, key=lambda error: len(error["loc"]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        message = f"{_field_path(worst['loc'])}: {worst['msg']}{more}"
        raise ApiError(422, message, "validation_error") from None


def _field_path(loc: tuple) -> str:
    """`messages.0.content.0.text`: the labels pydantic gives union members (`str`,
    `list[...]`, a tag repeated before its field) are left out."""
    path: list = []
    for part in loc:
        label = isinstance(part, str) and ("[" in part or part == "str" or path[-1:] == [part])
        if not label:
            path.append(part)
    return ".".join(map(str, path)) or "body"


def parse_chat(body: object, limits: ServeLimits) -> ChatCall:
    chat = validated(ChatBody, body)
    if chat.n != 1:
        raise ApiError(400, f"n={chat.n}: this server returns one choice per request", "invalid_n")
    users = [m for m in chat.messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages: no user message to answer", "no_user_message")
    images = [url for message in chat.messages for url in message.image_urls]
    if len(images) > 1:
        raise ApiError(
            400,
            f"messages carry {len(images)} images; this server takes one image per request "
            "(HoliSafe's models read one image with each query)",
            "too_many_images",
        )
    system = "\n\n".join(m.text for m in chat.messages if m.role in SYSTEM_ROLES) or None
    query = users[-1].text
    _check_text_size(query + (system or ""), limits.max_text_bytes)
    return ChatCall(
        model=chat.model,
        query=query,
        system=system,
        image_url=images[0] if images else None,
        settings=_settings(chat, limits),
        stream=chat.stream,
    )


def _check_text_size(text: str, max_bytes: int) -> None:
    """Bytes, not characters, bound the prompt's tokens: a byte-level tokenizer makes at most
    about one token of each UTF-8 byte, where one character may take four."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ApiError(
            400,
            f"the system prompt or question is not valid Unicode: {exc.reason} at character "
            f"{exc.start}",
            "invalid_text",
        ) from None
    if size > max_bytes:
        raise ApiError(
            400,
            f"the system prompt and question are {size:,} bytes in UTF-8, over the limit of "
            f"{max_bytes:,}",
            "context_length_exceeded",
        )


def _settings(chat: ChatBody, limits: ServeLimits) -> GenerationSettings:
    asked = chat.max_completion_tokens or chat.max_tokens
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens={asked} is over this server's limit of {limits.max_tokens}",
            "max_tokens_too_large",
        )
    temperature = DEFAULT_TEMPERATURE if chat.temperature is None else chat.temperature
    return GenerationSettings(
        max_new_tokens=asked or min(DEFAULT_MAX_TOKENS, limits.max_tokens),
        temperature=temperature,
    )


def safety_json(prediction: SafetyPrediction | None) -> dict | None:
    if prediction is None:
        return None
    return {
        "label": prediction.label,
        "prob": prediction.prob,
        "unsafe": prediction.unsafe,
        "probs": prediction.probs,
    }


def gate_json(response: Response, gate: float) -> dict:
    """What a gating server decided: its threshold, the head's unsafe score (1 − p(safe); null
    for a request without an image) and whether the reply is the gate's refusal."""
    score = None if response.safety is None else response.safety.unsafe
    return {"gate": gate, "gated": response.gated, "unsafe_score": score}


def completion(model: str, response: Response, gate: float | None = None) -> dict:
    """A chat.completion object; `safety` is the Safe-VLM's image verdict (null otherwise) and,
    when the server gates at `gate`, `holisafe` says what the gate decided (`gate_json`).

    Usage is not reported: the Model protocol returns text, not token counts.
    """
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.text},
                "finish_reason": finish_reason(response),
                "logprobs": None,
            }
        ],
        "safety": safety_json(response.safety),
        **_gated(response, gate),
    }


def _gated(response: Response, gate: float | None) -> dict:
    return {} if gate is None else {"holisafe": gate_json(response, gate)}


def stream_events(model: str, response: Response, gate: float | None = None) -> Iterator[str]:
    """A finished answer as server-sent chat.completion.chunk events, word by word.

    The model has already answered in full (batched generation returns whole answers), so this
    streams the wire format, not tokens as they are generated. The last chunk carries `safety`
    (and `holisafe` when the server gates, as `completion` does).
    """
    header = {"id": _completion_id(), "object": "chat.completion.chunk"}
    header |= {"created": int(time.time()), "model": model}

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return f"data: {json.dumps(header | {'choices': [choice]} | extra)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in STREAM_PIECE.findall(response.text or ""):
        yield chunk({"content": piece})
    last = {"safety": safety_json(response.safety), **_gated(response, gate)}
    yield chunk({}, finish_reason(response), **last)
    yield "data: [DONE]\n\n"


def finish_reason(response: Response) -> str:
    """`content_filter` for the gate's refusal (OpenAI's reason for a reply its filter held
    back), `length` when max_tokens cut the answer; else `stop`."""
    if response.gated:
        return "content_filter"
    return "length" if response.truncated else "stop"


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
