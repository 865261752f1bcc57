"""The Sample record and the image it points to."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from holisafe.core import taxonomy
from holisafe.core.errors import DataError
from holisafe.core.files import NotARegularFile, read_regular_bytes
from holisafe.core.records import ImageFile

# Larger images are refused before decoding: 64 megapixels is far beyond any benchmark image and
# stops decompression bombs (a tiny file that expands to gigabytes).
MAX_IMAGE_PIXELS = 64_000_000
# Image processors resize by the short side (LLaVA's CLIP to 336 pixels), so a long, narrow image
# within the pixel limit would grow enormously: 6 x 2,666,666 pixels becomes 336 x 149 M. Capping
# the ratio of the long side to the short one keeps the resized image within 20 x side x side.
MAX_ASPECT_RATIO = 20
# What counts as an image file where a folder is searched for images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class ImageError(DataError):
    """An image that is missing, unreadable, truncated or too large."""


@dataclass(frozen=True)
class ImageRef:
    """A sample's image: a file on disk or bytes embedded in the data set. Loaded lazily."""

    name: str  # the name the data set gives it (relative path, or a generated file name)
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("an ImageRef holds exactly one of a path or embedded bytes")

    @property
    def key(self) -> str:
        """Identity for counting distinct images: the file, or the hash of embedded bytes."""
        if self.path is not None:
            return str(self.path)
        return "sha1:" + hashlib.sha1(self.data).hexdigest()

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return read_regular_bytes(self.path)
        except NotARegularFile:
            raise ImageError(f"image {self.path} is not a regular file") from None
        except FileNotFoundError:
            raise ImageError(f"image file not found: {self.path}") from None
        except OSError as exc:
            raise ImageError(f"cannot read image file {self.path}: {exc.strerror or exc}") from None

    def load(self) -> Image.Image:
        """Decode the image fully and return it in RGB; raise ImageError on any fault."""
        return decode_image(self.read_bytes(), self.name)

    def load_with_file(self) -> tuple[Image.Image, ImageFile]:
        """The decoded image (as `load`) and its own file, read once."""
        data = self.read_bytes()
        return decode_image(data, self.name), ImageFile(self.name, data)


def decode_image(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes to RGB, refusing non-images, truncated files and oversized images."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours
        raise ImageError(f"image {name} is too large ({exc})") from None
    except (Image.UnidentifiedImageError, OSError):
        raise ImageError(f"image {name}: not a readable image file") from None
    check_image_size(name, *image.size, max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"image {name} is truncated or corrupt ({exc})") from None
    return image.convert("RGB")


def check_image_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse, before decoding, an image with more than `max_pixels` pixels or sides further
    apart than `MAX_ASPECT_RATIO`."""
    if width * height > max_pixels:
        raise ImageError(
            f"image {name} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (possible decompression bomb)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"image {name} is {width}x{height}: its long side is over {MAX_ASPECT_RATIO} times its "
            "short side, the limit (resized by its short side, it would not fit in memory)"
        )


@dataclass(frozen=True)
class Sample:
    """One image-query pair.

    `type`, `category` and `subcategory` are required for benchmark use; training data from
    other sources may leave them out. `image_safety_label` indexes
    `taxonomy.IMAGE_SAFETY_LABELS` (None: unknown, ignored by the safety loss). `follow_up` holds
    further (user, assistant) turns of a multi-turn training conversation.
    """

    id: int | str
    query: str
    image: ImageRef
    type: str | None = None
    category: str | None = None
    subcategory: str | None = None
    image_safety_label: int | None = None
    response: str | None = None
    follow_up: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in taxonomy.TYPES:
            raise taxonomy.TaxonomyError(f"unknown type {self.type!r}")
        if self.category is not None and self.category not in taxonomy.CATEGORIES:
            raise taxonomy.TaxonomyError(
                f"unknown category {self.category!r}; expected one of: "
                f"{', '.join(taxonomy.CATEGORIES)}"
            )
        if self.subcategory is not None:
            parent = taxonomy.category_of(self.subcategory)
            if self.category is not None and parent != self.category:
                raise taxonomy.TaxonomyError(
                    f"subcategory {self.subcategory!r} belongs to category {parent!r}, "
                    f"not {self.category!r}"
                )
        if self.image_safety_label is not None:
            taxonomy.label_name(self.image_safety_label)
            if self.type is not None:
                image_safe = taxonomy.TYPES[self.type].image_safe
                if image_safe != (self.image_safety_label == taxonomy.SAFE_LABEL):
                    raise taxonomy.TaxonomyError(
                        f"image_safety_label {self.image_safety_label} "
                        f"({taxonomy.IMAGE_SAFETY_LABELS[self.image_safety_label]}) contradicts "
                        f"type {self.type}, whose image is {'safe' if image_safe else 'unsafe'}"
                    )

    @property
    def safeness(self) -> taxonomy.SafenessType | None:
        return taxonomy.TYPES[self.type] if self.type is not None else None

    @property
    def image_safe(self) -> bool | None:
        if self.type is not None:
            return taxonomy.TYPES[self.type].image_safe
        if self.image_safety_label is not None:
            return self.image_safety_label == taxonomy.SAFE_LABEL
        return None


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, with folders expanded (sorted, recursively)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not found:
        raise DataError("no image files found in " + ", ".join(map(str, paths)))
    return found
