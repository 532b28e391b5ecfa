"""Unmasking orders: the 2-D Halton sequence discretised on the token grid."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def radical_inverse(indices: np.ndarray, base: int) -> tuple[np.ndarray, int]:
    """Radical inverse of each non-negative integer, as exact fractions ``numerators / denominator``."""
    indices = np.asarray(indices, dtype=np.int64)
    digits = 1
    while base ** digits <= max(int(indices.max(initial=0)), 1):
        digits += 1
    numerators = np.zeros_like(indices)
    rest = indices.copy()
    for position in range(digits):
        rest, digit = np.divmod(rest, base)
        numerators += digit * base ** (digits - 1 - position)
    return numerators, base ** digits


@lru_cache(maxsize=64)
def _halton_order(height: int, width: int) -> torch.Tensor:
    num_cells = height * width
    first_seen: dict[int, None] = {}
    start, chunk = 1, 4 * num_cells
    while len(first_seen) < num_cells:
        points = np.arange(start, start + chunk, dtype=np.int64)
        num2, den2 = radical_inverse(points, 2)
        num3, den3 = radical_inverse(points, 3)
        # Exact integer floors: row = floor(x * height), col = floor(y * width).
        flat = (num2 * height // den2) * width + num3 * width // den3
        for cell in flat.tolist():  # one-off per grid size, cached
            first_seen.setdefault(cell, None)
        start += chunk
    order = torch.tensor(list(first_seen)[:num_cells], dtype=torch.long)
    return order


def halton_order(height: int, width: int) -> torch.LongTensor:
    """Flat row-major token indices [height*width] in Halton unmasking order.

    Point i = 1, 2, ... of the 2-D Halton sequence is (radical inverse of i in base 2, in base 3); it lands on
    row floor(x * height), column floor(y * width); cells already visited are skipped until all are visited.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"grid size must be positive, got {height}x{width}")
    return _halton_order(int(height), int(width)).clone()
