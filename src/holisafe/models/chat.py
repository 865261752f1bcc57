"""The chat messages a sample or request becomes, in the form transformers' chat templates take."""

from __future__ import annotations

from PIL import Image


def user_message(query: str, image: Image.Image | None = None) -> dict:
    """A user turn: the image (in RGB) first, then the query, as HoliSafe's models read them."""
    content: list[dict] = [{"type": "text", "text": query}]
    if image is not None:
        content.insert(0, {"type": "image", "image": image.convert("RGB")})
    return {"role": "user", "content": content}


def text_message(role: str, text: str) -> dict:
    """A turn of text alone (a system prompt, an answer, a follow-up question)."""
    return {"role": role, "content": [{"type": "text", "text": text}]}
