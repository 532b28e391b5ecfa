"""Picture helpers: labelled sample grids and step-by-step progression images, saved as PNG."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from halton.utils.files import atomic_write

MIN_CELL = 48  # small images (8x8 digits) are enlarged so a grid is readable
MASK_COLOUR = (0.8, 0.1, 0.1)  # still-masked tokens (progression images, the app) and regions to regenerate
CHAR_W, LINE_H = 6, 11  # PIL's default bitmap font


def wrap_labels(labels: list[str], height: int) -> tuple[list[str], int]:
    """Row labels wrapped to fit beside a row of ``height`` pixels, and the width of the label column: short
    labels (class ids) take a narrow column, prompts are wrapped onto as many lines as the row holds."""
    longest = max((len(text) for text in labels), default=0)
    lines = max(1, height // LINE_H)
    chars = min(max(4, math.ceil(longest / lines), 22 if longest > 4 else 4), 60)
    wrapped = ["\n".join(textwrap.wrap(text, chars) or [""]) for text in labels]
    return wrapped, CHAR_W * chars + 8


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] in [-1, 1] -> [B,3,h,w] uint8, enlarged (nearest) to at least MIN_CELL pixels."""
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, -(-MIN_CELL // images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    return ((images + 1) * 127.5).round().to(torch.uint8)


def tile(images: torch.Tensor, rows: int, cols: int, pad: int = 2, row_labels: list[str] | None = None
         ) -> torch.Tensor:
    """Tile uint8 images [rows*cols, 3, h, w] row-major into one [3, H, W] picture with optional row labels
    (wrapped: a prompt may be long)."""
    _, _, h, w = images.shape
    left = 0
    if row_labels:
        row_labels, left = wrap_labels(row_labels, h)
    canvas = torch.full((3, pad + rows * (h + pad), left + pad + cols * (w + pad)), 255, dtype=torch.uint8)
    for index in range(min(len(images), rows * cols)):  # a few dozen cells, once per picture
        r, c = divmod(index, cols)
        y, x = pad + r * (h + pad), left + pad + c * (w + pad)
        canvas[:, y:y + h, x:x + w] = images[index]
    if row_labels:
        picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
        draw = ImageDraw.Draw(picture)
        for r, text in enumerate(row_labels[:rows]):
            top = pad + r * (h + pad) + max(0, h - LINE_H * (text.count("\n") + 1)) // 2
            draw.multiline_text((4, top), text, fill=(0, 0, 0), spacing=0)
        canvas = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
    return canvas


def class_grid(images: torch.Tensor, rows: int, cols: int, row_labels: list[str] | None = None) -> torch.Tensor:
    """Samples ordered class by class -> one labelled picture with a row per class."""
    return tile(to_uint8_rgb(images), rows, cols, row_labels=row_labels)


def progression_grid(images_per_step: list[torch.Tensor], step_labels: list[str] | None = None) -> torch.Tensor:
    """Paper Fig. 3: a row per sample, a column per step.

    ``images_per_step[i]`` [B,C,H,W] in [-1, 1] is the decoded partial image after step i, its still-masked tokens
    already painted (``halton.sampling.editing.paint_tokens``).
    """
    cells = [to_uint8_rgb(images) for images in images_per_step]
    batch, steps = cells[0].shape[0], len(cells)
    ordered = torch.stack(cells, dim=1).flatten(0, 1)  # sample-major: row = sample, column = step
    grid = tile(ordered, batch, steps)
    if step_labels:
        header = Image.new("RGB", (grid.shape[2], 14), "white")
        draw = ImageDraw.Draw(header)
        cell_w = (grid.shape[2] - 2) / steps
        for i, text in enumerate(step_labels):
            draw.text((2 + i * cell_w + 2, 1), text, fill=(0, 0, 0))
        grid = torch.cat([torch.from_numpy(np.asarray(header).copy()).permute(2, 0, 1), grid], dim=1)
    return grid


def save_png(picture: torch.Tensor, path: str | Path) -> Path:
    """Write a [3,H,W] uint8 picture atomically as PNG."""
    image = Image.fromarray(picture.permute(1, 2, 0).contiguous().numpy())
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
