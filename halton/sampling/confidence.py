"""The Confidence scheduler of the original MaskGIT, as the reference code runs it (Gumbel-noised confidence,
linearly ramped guidance by default). ``mode="keep"`` (default) never changes a decoded token and unmasks by the
shared per-step counts; ``mode="reference"`` runs exactly what the reference's ``confidence_sampler.py`` runs."""

from __future__ import annotations

import torch

from halton.sampling.base import Scheduler, masked_positions
from halton.sampling.schedules import unmasked_fraction

GUIDANCE = ("ramp", "constant")
MODES = ("keep", "reference")


def reference_tokens_per_step(num_tokens: int, steps: int, schedule: str = "arccos", power: float = 0.5,
                              rate: float = 5.0) -> list[int]:
    """The reference Confidence sampler's counts: after step i it targets t_i = max(i + 1, int(N g(r_i))) decoded
    tokens with r = linspace(0, 1, steps) (float32, as it computes them), so its first step decodes one token and
    a step whose target is already reached decodes none; the last step decodes the rest."""
    ratios = torch.linspace(0, 1, steps)  # float32
    targets = (unmasked_fraction(ratios, schedule, power, rate) * num_tokens).long().tolist()
    counts, done = [], 0
    for i, target in enumerate(targets):
        target = num_tokens if i == steps - 1 else min(max(i + 1, target), num_tokens)
        counts.append(max(target - done, 0))
        done += counts[-1]
    return counts


class ConfidenceScheduler(Scheduler):
    """Samples every still-masked token, then keeps the most confident ones.

    Confidence = log-probability of the sampled token + Gumbel noise * ``r_temp`` * (1 - i / (steps - 1)).
    ``guidance``: ``ramp`` (the reference's) raises the CFG weight linearly, w * i / (steps - 1), so the first
    step is unguided and only the last gets w; ``constant`` applies w at every step, as Halton and Random do.
    ``mode``: ``keep`` decodes each token once, by the shared counts (each step >= 1 token); ``reference`` uses the
    reference's counts (:func:`reference_tokens_per_step`) and draws every position again at every step, the
    decoded ones taking the new draw, so the image is the last step's draw everywhere (as the reference does).
    In an edit (``init_codes``) "every position" is every position this run generates: the tokens kept from the
    input are known, not decoded, and are never drawn again, in either mode.
    """

    name = "confidence"

    def __init__(self, r_temp: float = 4.5, guidance: str = "ramp", mode: str = "keep"):
        if not r_temp >= 0:
            raise ValueError(f"r_temp={r_temp} is out of range; allowed: >= 0")
        if guidance not in GUIDANCE:
            raise ValueError(f"unknown guidance {guidance!r}; allowed: {', '.join(GUIDANCE)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        self.r_temp = r_temp
        self.guidance = guidance
        self.mode = mode

    @property
    def redraws_decoded(self) -> bool:
        return self.mode == "reference"

    def counts(self, num_tokens, steps, schedule, power=0.5, rate=5.0):
        if self.mode == "reference":
            return reference_tokens_per_step(num_tokens, steps, schedule, power, rate)
        return super().counts(num_tokens, steps, schedule, power, rate)

    def start(self, batch, height, width, generator, device, masked, num_masked=None):
        return masked.shape[1] if num_masked is None else num_masked  # the state: tokens this run generates

    def candidates(self, state, masked, done, count, left=None):
        # The still-masked positions first, as a [B, M - done] block (mixed counts: as wide as the most left, padded
        # with known ones). Only masked positions are chosen: a known token (decoded, or kept by an edit) is never
        # re-masked.
        return masked_positions(masked, state - done if left is None else left)

    @staticmethod
    def _progress(step: int, steps: int) -> float:
        return step / (steps - 1) if steps > 1 else 0.0

    def choose(self, step, steps, tokens, probs, count, generator, choosable=None):
        confidence = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        noise_scale = self.r_temp * (1 - self._progress(step, steps))
        if noise_scale > 0:
            uniform = torch.rand(probs.shape, generator=generator, device=probs.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1 - 1e-7)))
            confidence = confidence + noise_scale * gumbel
        if choosable is not None:  # the padding never ranks above a still-masked candidate
            confidence = confidence.masked_fill(~choosable, float("-inf"))
        return confidence.topk(count, dim=1).indices

    def guidance_weight(self, weight, step, steps):
        return weight * self._progress(step, steps) if self.guidance == "ramp" else weight
