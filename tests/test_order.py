import itertools

import pytest
import torch

from halton.sampling import halton_order


def _as_cells(order, width):
    return [(int(i) // width, int(i) % width) for i in order]


def test_halton_order_4x4_exact():
    assert _as_cells(halton_order(4, 4), 4) == [
        (2, 1), (1, 2), (3, 0), (0, 1), (2, 3), (1, 0), (3, 2), (0, 3),
        (2, 0), (1, 1), (0, 0), (1, 3), (3, 1), (0, 2), (3, 3), (2, 2)]


def test_halton_order_8x8_prefix():
    assert _as_cells(halton_order(8, 8), 8)[:8] == [(4, 2), (2, 5), (6, 0), (1, 3), (5, 6), (3, 1), (7, 4), (0, 7)]


def _float_reference(height, width, points=20000):
    """Independent oracle: radical inverses in floating point, as the paper's Algorithm 1 computes them."""
    def radical_inverse(i, base):
        value, scale = 0.0, 1.0 / base
        while i:
            i, digit = divmod(i, base)
            value += digit * scale
            scale /= base
        return value

    seen = {}
    for i in range(1, points):
        cell = int(radical_inverse(i, 2) * height) * width + int(radical_inverse(i, 3) * width)
        seen.setdefault(cell, None)
    return list(seen)


@pytest.mark.parametrize("height,width", [(4, 4), (8, 8), (16, 16), (24, 24), (32, 32), (5, 7), (1, 3)])
def test_halton_order_is_a_permutation_matching_the_float_oracle(height, width):
    order = halton_order(height, width)
    assert order.dtype == torch.long and order.shape == (height * width,)
    assert sorted(order.tolist()) == list(range(height * width))
    assert order.tolist() == _float_reference(height, width)


def test_halton_order_is_cached_and_callers_cannot_corrupt_it():
    first = halton_order(16, 16)
    first[:] = 0
    assert sorted(halton_order(16, 16).tolist()) == list(range(256))


def test_halton_order_spreads_consecutive_tokens():
    """The first 32 tokens of a 16x16 grid are further apart than those of 99% of random orders."""
    def mean_nearest_distance(order):
        points = torch.stack([order[:32] // 16, order[:32] % 16], 1).float()
        distances = torch.cdist(points, points).fill_diagonal_(float("inf"))
        return distances.min(1).values.mean().item()

    generator = torch.Generator().manual_seed(0)
    random = sorted(mean_nearest_distance(torch.randperm(256, generator=generator)) for _ in range(200))
    assert mean_nearest_distance(halton_order(16, 16)) > random[int(0.99 * len(random))]


def test_halton_order_rejects_empty_grid():
    with pytest.raises(ValueError, match="grid size"):
        halton_order(0, 4)
