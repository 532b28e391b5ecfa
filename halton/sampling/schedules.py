"""Mask schedules: how many tokens each sampling step unmasks, and the training mask ratio.

A schedule is g: [0, 1] -> [0, 1], the fraction of tokens already unmasked after a fraction r of the steps.
"""

from __future__ import annotations

import math
import torch

SCHEDULES = ("arccos", "cosine", "linear", "square", "root")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return schedule


def unmasked_fraction(ratio: torch.Tensor, schedule: str) -> torch.Tensor:
    """g(ratio): the fraction of tokens unmasked after a fraction ``ratio`` of the steps."""
    check_schedule(schedule)
    if schedule == "arccos":
        return 1 - torch.arccos(ratio) / (math.pi * 0.5)
    if schedule == "cosine":
        return 1 - torch.cos(ratio * math.pi * 0.5)
    if schedule == "linear":
        return ratio
    if schedule == "square":
        return ratio ** 2
    return ratio.sqrt()


def cumulative_unmasked(num_tokens: torch.Tensor, steps: int, schedule: str = "arccos") -> torch.Tensor:
    """Tokens unmasked after each step, for several grid sizes at once: [len(num_tokens), steps].

    Every step unmasks at least one token and the last step reaches ``num_tokens``. Requires 1 <= steps <= N.
    """
    num_tokens = torch.as_tensor(num_tokens, dtype=torch.long).reshape(-1, 1)
    ratio = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    # arccos in float32, as the reference code evaluates it, so its counts are reproduced exactly.
    g = unmasked_fraction(ratio.float() if schedule == "arccos" else ratio, schedule)
    targets = (g * num_tokens).long()  # floor, the values being non-negative
    targets[:, -1] = num_tokens[:, 0]  # g(1) = 1 by definition; floating point may leave it one short (cosine)
    # c_i = min(max(target_i, c_{i-1} + 1), N - (steps - 1 - i)): at least one token per step and at least one
    # left for each later step. With d_i = c_i - i this is a running maximum clipped to [1, N - steps + 1];
    # for arccos it equals the reference's max(i + 1, target_i).
    offsets = torch.arange(steps)
    shifted = torch.cummax(targets - offsets, dim=1).values
    shifted = torch.minimum(shifted.clamp(min=1), num_tokens - steps + 1)
    return shifted + offsets


def tokens_per_step(num_tokens: int, steps: int, schedule: str = "arccos") -> torch.LongTensor:
    """How many tokens each of ``steps`` steps unmasks: each >= 1, summing to ``num_tokens``.

    For ``arccos`` the cumulative count after step i is the reference code's max(i+1, floor(N * g((i+1)/steps))).
    """
    check_schedule(schedule)
    num_tokens, steps = int(num_tokens), int(steps)
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps={steps} is out of range; allowed: 1 to {num_tokens} (the number of tokens)")
    cumulative = cumulative_unmasked(torch.tensor([num_tokens]), steps, schedule)[0]
    return torch.diff(cumulative, prepend=cumulative.new_zeros(1))


def mask_ratio(u: torch.Tensor, schedule: str = "arccos") -> torch.Tensor:
    """Training mask ratio 1 - g(u) for u ~ U(0, 1): the fraction still masked at a random point of the schedule
    (arccos gives the reference's arccos(u) / (pi / 2))."""
    check_schedule(schedule)
    if schedule == "arccos":
        return torch.arccos(u) / (math.pi * 0.5)
    if schedule == "cosine":
        return torch.cos(u * math.pi * 0.5)
    if schedule == "linear":
        return 1 - u
    if schedule == "square":
        return 1 - u ** 2
    return 1 - u.sqrt()
