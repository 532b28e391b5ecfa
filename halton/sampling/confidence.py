"""The Confidence scheduler of the original MaskGIT, as the reference code runs it (Gumbel-noised confidence,
linearly ramped guidance), without the reference's overwriting of tokens it had already decoded."""

from __future__ import annotations

import torch

from halton.sampling.base import Scheduler


class ConfidenceScheduler(Scheduler):
    """Samples every still-masked token, then keeps the most confident ones.

    Confidence = log-probability of the sampled token + Gumbel noise * ``r_temp`` * (1 - i / (steps - 1)).
    The CFG weight ramps linearly: w * i / (steps - 1).
    """

    name = "confidence"

    def __init__(self, r_temp: float = 4.5):
        if r_temp < 0:
            raise ValueError(f"r_temp={r_temp} is negative; allowed: >= 0")
        self.r_temp = r_temp

    def start(self, batch, height, width, generator, device):
        return None

    def candidates(self, state, masked, done, count):
        # Every sample has the same number of masked tokens, so the positions form a [B, N - done] block.
        return masked.nonzero()[:, 1].view(masked.shape[0], -1)

    @staticmethod
    def _progress(step: int, steps: int) -> float:
        return step / (steps - 1) if steps > 1 else 0.0

    def choose(self, step, steps, tokens, probs, count, generator):
        confidence = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        noise_scale = self.r_temp * (1 - self._progress(step, steps))
        if noise_scale > 0:
            uniform = torch.rand(probs.shape, generator=generator, device=probs.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1 - 1e-7)))
            confidence = confidence + noise_scale * gumbel
        return confidence.topk(count, dim=1).indices

    def guidance(self, weight, step, steps):
        return weight * self._progress(step, steps)
