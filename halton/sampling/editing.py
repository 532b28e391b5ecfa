"""Editing: which tokens of a grid to regenerate, for inpainting (a pixel box, a mask image) and outpainting (bands
at the sides), and the pixel-side helpers around them. The masks are [h, w] bool token grids, True = regenerate;
``sample(..., init_codes=apply_mask(codes, mask, model.mask_id))`` then generates exactly those tokens.

Pixel coordinates are those of the image as the model sees it (``image_size`` = token grid x the tokenizer's cell),
x to the right, y down. A token is regenerated when its cell overlaps the region; ``dilate`` adds that many tokens
of margin around it (a square neighbourhood), so the model may also redraw the seam.

:func:`prepare_edit` turns an image and one region into an :class:`Edit` (what sample.py's ``edit.*`` options and
the web app both use), and :func:`edit_grid` draws its before / masked / after picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from PIL.Image import Image


def cell_size(image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """Pixels per token along (y, x)."""
    (height, width), (rows, cols) = image_size, grid
    if height % rows or width % cols:
        raise ValueError(f"image size {height}x{width} is not a multiple of the token grid {rows}x{cols}")
    return height // rows, width // cols


def check_dilate(dilate) -> int:
    if isinstance(dilate, bool) or not isinstance(dilate, int) or dilate < 0:
        raise ValueError(f"dilate={dilate!r} is out of range; allowed: a whole number of tokens >= 0")
    return dilate


def dilate_mask(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """Grow a [h, w] token mask by ``tokens`` in every direction (diagonals included), clipped to the grid."""
    if check_dilate(tokens) == 0:
        return mask
    grown = F.max_pool2d(mask[None, None].float(), 2 * tokens + 1, stride=1, padding=tokens)
    return grown[0, 0] > 0


def box_mask(box: Sequence[float], image_size: tuple[int, int], grid: tuple[int, int], dilate: int = 0) -> torch.Tensor:
    """The tokens [h, w] whose cells overlap the box [x0, y0, x1, y1]: the pixels x0 <= x < x1, y0 <= y < y1 (in
    continuous coordinates for fractional values). A box must be non-empty, in order and inside the image."""
    height, width = image_size
    values = list(box) if isinstance(box, Sequence) and not isinstance(box, str) else []
    if len(values) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in values):
        raise ValueError(f"box={box!r} is not four pixel coordinates; allowed: [x0, y0, x1, y1], e.g. [0, 0, "
                         f"{width // 2}, {height // 2}]")
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box={values} is empty or reversed; allowed: x0 < x1 and y0 < y1 (pixels x0 <= x < x1, "
                         "y0 <= y < y1)")
    if not (0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height):
        raise ValueError(f"box={values} is outside the {width}x{height} image; allowed: 0 <= x0 < x1 <= {width}, "
                         f"0 <= y0 < y1 <= {height}")
    cell_y, cell_x = cell_size(image_size, grid)
    # cell j spans [j * c, (j + 1) * c): it overlaps [a, b) when j * c < b and (j + 1) * c > a
    rows = torch.arange(grid[0]) * cell_y
    cols = torch.arange(grid[1]) * cell_x
    inside_rows = (rows < y1) & (rows + cell_y > y0)
    inside_cols = (cols < x1) & (cols + cell_x > x0)
    return dilate_mask(inside_rows[:, None] & inside_cols[None, :], dilate)


def image_mask(mask: torch.Tensor, grid: tuple[int, int], dilate: int = 0) -> torch.Tensor:
    """The tokens [h, w] whose cells hold at least one True pixel of ``mask`` [H, W] (a mask image's white)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask image is [H, W]; got shape {list(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("the mask image has no white pixel; allowed: white (at least 50% grey) where to regenerate, "
                         "black where to keep")
    cell_y, cell_x = cell_size(tuple(mask.shape), grid)
    cells = mask.reshape(grid[0], cell_y, grid[1], cell_x)
    return dilate_mask(cells.any(dim=3).any(dim=1), dilate)


def outpaint_tokens(sides: Sequence[int], image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, ...]:
    """Outpainting sides [top, right, bottom, left] in pixels -> in tokens. Each must be a whole number of token
    cells (a shift by whole cells keeps every token exact; others are refused, not rounded), and some content must
    stay: top + bottom < height, left + right < width."""
    height, width = image_size
    cell_y, cell_x = cell_size(image_size, grid)
    values = list(sides) if isinstance(sides, Sequence) and not isinstance(sides, str) else []
    if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"outpaint={sides!r} is not four pixel widths; allowed: [top, right, bottom, left], whole "
                         "numbers >= 0")
    top, right, bottom, left = values
    if (top % cell_y or bottom % cell_y) or (left % cell_x or right % cell_x):
        raise ValueError(f"outpaint={values} is not a whole number of token cells; allowed: multiples of {cell_y} "
                         f"(top, bottom) and {cell_x} (right, left) pixels")
    if not any(values):
        raise ValueError(f"outpaint={values} extends no side; allowed: at least one side > 0")
    if top + bottom >= height or left + right >= width:
        raise ValueError(f"outpaint={values} leaves nothing of the {width}x{height} image; allowed: top + bottom < "
                         f"{height}, left + right < {width}")
    return top // cell_y, right // cell_x, bottom // cell_y, left // cell_x


def shift(grid: torch.Tensor, sides: Sequence[int], fill) -> torch.Tensor:
    """Move the content of ``grid`` [..., H, W] away from each side by its amount [top, right, bottom, left],
    within the same canvas: row i gets row i - top + bottom (column likewise), so each side's push crops the
    opposite side, and the uncovered bands take ``fill``. Works on token grids and on pixels alike."""
    top, right, bottom, left = sides
    height, width = grid.shape[-2:]
    out = torch.full_like(grid, fill)
    out[..., top:height - bottom, left:width - right] = grid[..., bottom:height - top, right:width - left]
    return out


def outpaint_mask(sides_tokens: Sequence[int], grid: tuple[int, int]) -> torch.Tensor:
    """The uncovered bands [h, w] of :func:`shift` by ``sides_tokens``: True there."""
    return shift(torch.zeros(grid, dtype=torch.bool), sides_tokens, True)


def apply_mask(codes: torch.Tensor, mask: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``codes`` [B, h, w] with the tokens under ``mask`` [h, w] (or [B, h, w]) set to ``mask_id``: the
    ``init_codes`` of an edit."""
    return torch.where(mask.to(codes.device), torch.full_like(codes, mask_id), codes)


def pixel_mask(mask: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """A token mask [..., h, w] spread over each token's cell: [..., H, W]."""
    cell_y, cell_x = cell_size(image_size, tuple(mask.shape[-2:]))
    return mask.repeat_interleave(cell_y, dim=-2).repeat_interleave(cell_x, dim=-1)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] with C = 1 (grey) or 3 -> [B, 3, H, W] (a view)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def paint_tokens(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images`` [B, C, H, W] in [-1, 1] as RGB with the cells of the tokens of ``mask`` ([h, w], or [B, h, w]
    per image) in MASK_COLOUR: regions to regenerate, tokens still masked."""
    from halton.utils.images import MASK_COLOUR

    inside = pixel_mask(mask, tuple(images.shape[-2:])).to(images.device)
    inside = inside[:, None] if inside.dim() == 3 else inside
    colour = (torch.tensor(MASK_COLOUR, device=images.device) * 2 - 1).view(1, 3, 1, 1)
    return torch.where(inside, colour, as_rgb(images))


def composite(generated: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The generated images [B, C, H, W] inside the regenerated cells of ``mask`` ([h, w], or [B, h, w] per image),
    the original pixels elsewhere: a VQ decoder's receptive field lets tokens change pixels beyond their cell, and
    this undoes that."""
    inside = pixel_mask(mask, tuple(generated.shape[-2:])).to(generated.device)
    inside = inside[:, None] if inside.dim() == 3 else inside
    return torch.where(inside, generated, original.to(generated.device))


def read_image(path: str | Path | Image, image_size: tuple[int, int], channels: int, mask: bool = False
               ) -> torch.Tensor:
    """An image file (or a PIL image) as the model sees it: scaled (bicubic; nearest for a mask) so that it covers
    ``image_size``, keeping its aspect ratio, then center-cropped; an image of exactly that size is taken as it is.
    Returns [C, H, W] in [-1, 1] (grey when ``channels`` is 1), or for a mask [H, W] bool, True where at least 50%
    white."""
    from PIL import Image

    from halton.utils.pixels import open_image, unreadable

    if isinstance(path, Image.Image):
        image = path
    else:
        image = open_image(path)  # the pixel count checked from the header
        try:
            image.load()
        except (OSError, SyntaxError) as error:  # a header that looked right over damaged pixels
            raise ValueError(f"{path} cannot be read as an image: {unreadable(error)}") from None
    image = image.convert("L" if mask or channels == 1 else "RGB")
    height, width = image_size
    if (image.height, image.width) != (height, width):
        scale = max(height / image.height, width / image.width)
        size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(size, Image.NEAREST if mask else Image.BICUBIC)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(height, width, -1).permute(2, 0, 1)
    if mask:
        return pixels[0] >= 128
    return pixels.float() / 127.5 - 1


EDIT_REGIONS = ("box", "mask", "outpaint")


@dataclass
class Edit:
    """An image to edit, as :func:`prepare_edit` readies it for ``sample(..., init_codes=edit.init_codes)``; or n
    images with a region each (:func:`prepare_edits`), one per row of every tensor, the mask then [n, h, w]."""

    original: torch.Tensor    # [1, C, H, W] the input image as the model sees it, in [-1, 1]
    start: torch.Tensor       # [1, C, H, W] the image the edit starts from (outpainting: shifted away from the bands)
    init_codes: torch.Tensor  # [1, h, w] its codes with the region set to the model's mask id
    mask: torch.Tensor        # [h, w] bool, True = regenerated
    region: str               # box, mask or outpaint

    def per_row(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``start``, ``init_codes`` and the mask for ``rows`` results made image by image (rows / n each)."""
        each = rows // len(self.init_codes)
        mask = self.mask if self.mask.dim() == 2 else self.mask.repeat_interleave(each, 0)
        return self.start.repeat_interleave(each, 0), self.init_codes.repeat_interleave(each, 0), mask

    def finish(self, generated: torch.Tensor, paste_back: bool = False) -> torch.Tensor:
        """The decoded results [B, C, H, W] (image by image), with the original pixels pasted back outside the
        regenerated tokens when ``paste_back`` (see :func:`composite`)."""
        if not paste_back:
            return generated
        start, _, mask = self.per_row(len(generated))
        return composite(generated, start, mask)


def prepare_edit(model, tokenizer, image: str | Path | Image, box: Sequence[float] | None = None,
                 mask: str | Path | Image | torch.Tensor | None = None, outpaint: Sequence[int] | None = None,
                 dilate: int = 0, device: torch.device | str = "cpu") -> Edit:
    """Ready ``image`` (a path or a PIL image; resized to cover the model's image size, center-cropped) for an edit
    of exactly one region: ``box`` [x0, y0, x1, y1] pixels, ``mask`` (an image path, a PIL image or a [H, W] bool
    tensor at the model's image size; white / True = regenerate) or ``outpaint`` [top, right, bottom, left] pixels.
    ``model`` gives the token grid and mask id, ``tokenizer`` (on ``device``) encodes the image."""
    given = [name for name, value in zip(EDIT_REGIONS, (box, mask, outpaint)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"an edit needs exactly one region, got {len(given)} ({', '.join(given) or 'none'}); "
                         "allowed: box=[x0,y0,x1,y1], mask=an image (white = regenerate) or "
                         "outpaint=[top,right,bottom,left]")
    region, dilate = given[0], check_dilate(dilate)
    grid = tuple(model.grid)
    image_size = (grid[0] * tokenizer.downsample, grid[1] * tokenizer.downsample)
    original = read_image(image, image_size, tokenizer.channels)[None].to(device)
    start = original
    codes = tokenizer.encode(original)
    if region == "box":
        token_mask = box_mask(box, image_size, grid, dilate)
    elif region == "mask":
        pixels = mask if isinstance(mask, torch.Tensor) else read_image(mask, image_size, 1, mask=True)
        token_mask = image_mask(pixels.cpu(), grid, dilate)
    else:  # shift the codes (exact tokens), and the pixels alike for the pictures and compositing
        sides = outpaint_tokens(outpaint, image_size, grid)
        codes = shift(codes, sides, model.mask_id)
        start = shift(original, list(outpaint), -1.0)
        token_mask = dilate_mask(outpaint_mask(sides, grid), dilate)
    return Edit(original, start, apply_mask(codes, token_mask, model.mask_id), token_mask.to(device), region)


def prepare_edits(model, tokenizer, images: Sequence[str | Path | Image], boxes: Sequence[Sequence[float]] | None = None,
                  masks: Sequence[str | Path | Image | torch.Tensor] | None = None, dilate: int = 0,
                  device: torch.device | str = "cpu") -> Edit:
    """Several images, each with its own region (``boxes[i]`` or ``masks[i]``, as :func:`prepare_edit` takes one),
    as one :class:`Edit` with a row per image. The regions may cover different numbers of tokens: ``sample()``
    splits each sample's own count over the steps."""
    given = [name for name, value in (("boxes", boxes), ("masks", masks)) if value is not None]
    if len(given) != 1 or not images or len(boxes if boxes is not None else masks) != len(images):
        got = ", ".join(f"{len(boxes if name == 'boxes' else masks)} {name}" for name in given) or "no regions"
        raise ValueError(f"{len(images)} images and {got}; allowed: at least one image and one region per image, "
                         "as boxes or as masks")
    regions = boxes if boxes is not None else masks
    edits = [prepare_edit(model, tokenizer, image, box=region if boxes is not None else None,
                          mask=region if masks is not None else None, dilate=dilate, device=device)
             for image, region in zip(images, regions)]
    return Edit(*(torch.cat([getattr(edit, name) for edit in edits]) for name in ("original", "start", "init_codes")),
                torch.stack([edit.mask for edit in edits]), edits[0].region)


def edit_grid(edit: Edit, after: torch.Tensor, labels: list[str], per_row: int) -> torch.Tensor:
    """A row per condition (and per image, image by image, for several): the input, the image the edit starts from
    with its region painted, then the ``per_row`` results of that row (``after`` [rows * per_row, C, H, W], row by
    row). [3, H, W] uint8."""
    from halton.utils.images import class_grid

    rows = len(labels)
    each = rows // len(edit.original)
    masked = paint_tokens(edit.start, edit.mask).repeat_interleave(each, 0)
    shown = [as_rgb(edit.original).repeat_interleave(each, 0)[:, None], masked[:, None],
             as_rgb(after).reshape(rows, per_row, 3, *after.shape[-2:])]
    return class_grid(torch.cat(shown, dim=1).flatten(0, 1), rows, per_row + 2, labels)
