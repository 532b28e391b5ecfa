"""Opening an image a user gives (an image to edit, a mask, a reference image, an extraction source): its size is
read from the header and checked before any pixel is decoded, so a decompression bomb (a small file that decodes
to gigabytes) is refused in one line instead of exhausting memory or raising PIL's error."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# PIL's own guard (Image.MAX_IMAGE_PIXELS, 89,478,485 pixels: a 128 MP RGBA image): it warns above it and refuses
# twice it; we refuse above it, before decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def open_image(source: str | Path | bytes, what: str, decode: bool = True) -> Image.Image:
    """The image in ``source`` (a path, or the bytes of a file), decoded (or only its header read), or ValueError
    in one line naming ``what`` (e.g. "edit.image=photo.png") when it is not an image or has more than
    :data:`MAX_PIXELS` pixels."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with the sizes
            image = Image.open(stream)  # reads the header only (refuses twice MAX_PIXELS itself)
        check_pixels(f"{image.width}x{image.height} = {image.width * image.height:,}", image.width * image.height,
                     what)
        if decode:
            image.load()
    except Image.DecompressionBombError as error:  # PIL's message holds the pixel count only
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        check_pixels(f"{int(pixels[1]):,}" if pixels else "over twice that many", MAX_PIXELS + 1, what)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{what} cannot be read as an image: {str(error).splitlines()[0]}; allowed: an image file "
                         "(PNG, JPEG, WebP, ...)") from None
    return image


def check_pixels(size: str, pixels: int, what: str) -> None:
    """Refuse an image of ``pixels`` pixels (``size``, as the message shows it) above :data:`MAX_PIXELS`."""
    if pixels > MAX_PIXELS:
        raise ValueError(f"{what} is {size} pixels; allowed: images up to {MAX_PIXELS:,} pixels (a "
                         "decompression-bomb guard; nothing was decoded)")
