"""The largest image any input path decodes (the app's uploads, ``edit.image``, reference images), checked from the
file's header before a pixel is decoded: a small compressed file can hold a huge picture (a decompression bomb)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

# 16 megapixels (4096x4096, a 12-megapixel photo fits): decoded as RGB, 48 MiB. The models' images are at most 512x512,
# and every input is scaled down to them; PIL's own limit (89 million pixels, an error above twice that) is far larger.
MAX_PIXELS = 4096 * 4096
FORMATS = "PNG, JPEG, WebP, BMP, GIF, TIFF or another format PIL reads"


def check_pixels(image: Image, name: str | Path) -> Image:
    """``image`` (opened, not yet decoded: PIL reads the size from the header) when it holds at most MAX_PIXELS
    pixels; else ValueError in one line naming ``name``, its pixel count and the limit."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(too_many_pixels(name, width * height, f" ({width}x{height})"))
    return image


def too_many_pixels(name: str | Path, pixels: int, size: str = "") -> str:
    return (f"{name} has {pixels} pixels{size}; allowed: at most {MAX_PIXELS} (e.g. 4096x4096); scale it down "
            "first")


def open_image(source: str | Path | IO[bytes], name: str | Path | None = None) -> Image:
    """``Image.open`` (the header only) with the pixel count checked before anything is decoded: a file that is no
    image, or one over MAX_PIXELS (PIL's own bomb check included), is a ValueError in one line naming ``name``
    (default: the path)."""
    from PIL import Image, UnidentifiedImageError

    name = name if name is not None else source
    try:
        with warnings.catch_warnings():  # PIL warns of a possible bomb above its limit; ours refuses it below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as error:  # above twice PIL's limit: refused by PIL before ours is asked
        count = re.search(r"\((\d+) pixels\)", str(error))
        raise ValueError(too_many_pixels(name, int(count.group(1)) if count else Image.MAX_IMAGE_PIXELS * 2)
                         ) from None
    except UnidentifiedImageError:  # PIL's message names the file's path again (for an upload: a temporary one)
        raise ValueError(f"{name} is not an image; allowed: {FORMATS}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{name} cannot be read as an image: {unreadable(error)}") from None
    try:
        return check_pixels(image, name)
    except ValueError:
        image.close()
        raise


def unreadable(error: BaseException) -> str:
    """What PIL said about a file it cannot read, in one line."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
