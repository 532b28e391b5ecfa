"""Mask schedules: how many tokens each sampling step unmasks, the training mask ratio and its loss weight.

A schedule is g: [0, 1] -> [0, 1], the fraction of tokens already unmasked after a fraction r of the steps; the
training mask ratio at u in [0, 1] is 1 - g(u). eMIGM (Xie et al., 2025) writes the mask ratio as gamma(p) with
p = 1 - u the masking "time" (p = 1: everything masked): ``cosine`` gamma(p) = cos(pi/2 (1 - p)) and ``linear``
gamma(p) = p are the schedules of the same names here; ``poly`` p^power, ``exp`` 1 - exp(-rate p) and
``log`` log(1 + (e^rate - 1) p) / rate are eMIGM's poly, exp and log (power 0.5 and rate 5 by default, as
eMIGM). ``arccos`` (the default, the reference's), ``square`` and ``root`` are MaskGIT's.
"""

from __future__ import annotations

import math

import torch

from halton.options.rules import integer
from halton.options.sampling import SCHEDULES, check_steps
from halton.options.sampling import check_schedule as check_options_schedule

__all__ = ["SCHEDULES", "check_schedule", "cumulative_unmasked", "loss_weight", "mask_ratio", "schedule_label",
           "tokens_per_step", "unmasked_fraction"]


def check_schedule(schedule: str, power: float = 0.5, rate: float = 5.0) -> str:
    """The schedule's rule (:func:`halton.options.sampling.check_schedule`), naming this module's arguments."""
    return check_options_schedule(schedule, power, rate, ("schedule", "power", "rate"))


def schedule_label(schedule: str, power: float = 0.5, rate: float = 5.0) -> str:
    """The schedule's name, with its parameter when that differs from eMIGM's default: ``poly-power=0.7``,
    ``exp-rate=3``; ``exp`` at rate 5 and every schedule without a parameter are their plain name."""
    if schedule == "poly" and power != 0.5:
        return f"poly-power={power:g}"
    if schedule in ("exp", "log") and rate != 5.0:
        return f"{schedule}-rate={rate:g}"
    return schedule


def _emigm_ratio(p: torch.Tensor, schedule: str, power: float, rate: float) -> torch.Tensor:
    """eMIGM's gamma(p) for the schedules MaskGIT does not have."""
    if schedule == "poly":
        return p ** power
    if schedule == "exp":
        return -torch.expm1(-rate * p)
    # log(1 + (e^r - 1) p) / r = 1 + log(p + e^-r (1 - p)) / r: e^r would overflow float32 from r = 89 on; the
    # clamp turns log(0) (p = 0 with e^-r underflowing) into gamma(0) = 0.
    return (1 + torch.log(p + math.exp(-rate) * (1 - p)) / rate).clamp(min=0)


def unmasked_fraction(ratio: torch.Tensor, schedule: str, power: float = 0.5, rate: float = 5.0) -> torch.Tensor:
    """g(ratio): the fraction of tokens unmasked after a fraction ``ratio`` of the steps."""
    check_schedule(schedule, power, rate)
    if schedule == "arccos":
        return 1 - torch.arccos(ratio) / (math.pi * 0.5)
    if schedule == "cosine":
        return 1 - torch.cos(ratio * math.pi * 0.5)
    if schedule == "linear":
        return ratio
    if schedule == "square":
        return ratio ** 2
    if schedule == "root":
        return ratio.sqrt()
    return 1 - _emigm_ratio(1 - ratio, schedule, power, rate)


def cumulative_unmasked(num_tokens: torch.Tensor, steps: int, schedule: str = "arccos", power: float = 0.5,
                        rate: float = 5.0) -> torch.Tensor:
    """Tokens unmasked after each step, for several grid sizes at once: [len(num_tokens), steps].

    Every step unmasks at least one token and the last step reaches ``num_tokens``. Requires 1 <= steps <= N.
    """
    num_tokens = torch.as_tensor(num_tokens, dtype=torch.long).reshape(-1, 1)
    ratio = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    # arccos in float32, as the reference code evaluates it, so its counts are reproduced exactly.
    g = unmasked_fraction(ratio.float() if schedule == "arccos" else ratio, schedule, power, rate)
    targets = (g * num_tokens).long()  # floor, the values being non-negative
    targets[:, -1] = num_tokens[:, 0]  # g(1) = 1 by definition; floating point may leave it one short (cosine)
    # c_i = min(max(target_i, c_{i-1} + 1), N - (steps - 1 - i)): at least one token per step and at least one
    # left for each later step. With d_i = c_i - i this is a running maximum clipped to [1, N - steps + 1];
    # for arccos it equals the reference's max(i + 1, target_i).
    offsets = torch.arange(steps)
    shifted = torch.cummax(targets - offsets, dim=1).values
    shifted = torch.minimum(shifted.clamp(min=1), num_tokens - steps + 1)
    return shifted + offsets


def tokens_per_step(num_tokens: int, steps: int, schedule: str = "arccos", power: float = 0.5,
                    rate: float = 5.0) -> torch.LongTensor:
    """How many tokens each of ``steps`` steps unmasks: each >= 1, summing to ``num_tokens``.

    For ``arccos`` the cumulative count after step i is the reference code's max(i+1, floor(N * g((i+1)/steps))).
    ``power`` and ``rate`` are the ``poly`` schedule's exponent and the ``exp``/``log`` rate.
    """
    check_schedule(schedule, power, rate)
    num_tokens = integer("num_tokens", int(num_tokens), 1)
    steps = check_steps(int(steps), num_tokens)
    cumulative = cumulative_unmasked(torch.tensor([num_tokens]), steps, schedule, power, rate)[0]
    return torch.diff(cumulative, prepend=cumulative.new_zeros(1))


def mask_ratio(u: torch.Tensor, schedule: str = "arccos", power: float = 0.5, rate: float = 5.0) -> torch.Tensor:
    """Training mask ratio 1 - g(u) for u ~ U(0, 1): the fraction still masked at a random point of the schedule
    (arccos gives the reference's arccos(u) / (pi / 2)); eMIGM's gamma(p) at p = 1 - u."""
    check_schedule(schedule, power, rate)
    if schedule == "arccos":
        return torch.arccos(u) / (math.pi * 0.5)
    if schedule == "cosine":
        return torch.cos(u * math.pi * 0.5)
    if schedule == "linear":
        return 1 - u
    if schedule == "square":
        return 1 - u ** 2
    if schedule == "root":
        return 1 - u.sqrt()
    return _emigm_ratio(1 - u, schedule, power, rate)


def loss_weight(u: torch.Tensor, schedule: str = "arccos", power: float = 0.5, rate: float = 5.0) -> torch.Tensor:
    """eMIGM's per-sample loss weight w = gamma'(p) / gamma(p) at p = 1 - u, for the mask ratio
    ``mask_ratio(u, schedule)``: cosine (pi/2) tan(pi/2 (1 - p)), linear 1/p, poly power/p, exp
    rate / (e^(rate p) - 1), log (e^rate - 1) / ((1 + (e^rate - 1) p) log(1 + (e^rate - 1) p)).

    Infinite where gamma = 0 (p = 0; training keeps p >= 1e-3) and for ``root`` at p = 1 (its slope is infinite).
    """
    check_schedule(schedule, power, rate)
    p = 1 - u
    if schedule == "arccos":  # gamma = arccos(1 - p) / (pi/2), gamma' = 1 / ((pi/2) sqrt(1 - u^2))
        return 1 / (torch.sqrt(1 - u ** 2) * torch.arccos(u))
    if schedule == "cosine":
        return math.pi / 2 * torch.tan(u * math.pi * 0.5)
    if schedule == "linear":
        return 1 / p
    if schedule == "square":  # gamma = 1 - u^2, gamma' = 2u
        return 2 * u / (1 - u ** 2)
    if schedule == "root":  # gamma = 1 - sqrt(u), gamma' = 1 / (2 sqrt(u))
        return 1 / (2 * u.sqrt() * (1 - u.sqrt()))
    if schedule == "poly":
        return power / p
    if schedule == "exp":
        return rate / torch.expm1(rate * p)
    # The logarithmic weight divided through by e^rate (see _emigm_ratio): log(1 + (e^r - 1) p) = r gamma(p).
    scale = math.exp(-rate)
    return (1 - scale) / ((p + scale * (1 - p)) * rate * _emigm_ratio(p, schedule, power, rate))
