"""The Confidence scheduler of the original MaskGIT, as the reference code runs it (Gumbel-noised confidence,
linearly ramped guidance by default), without the reference's overwriting of tokens it had already decoded."""

from __future__ import annotations

import torch

from halton.sampling.base import Scheduler


GUIDANCE = ("ramp", "constant")


class ConfidenceScheduler(Scheduler):
    """Samples every still-masked token, then keeps the most confident ones.

    Confidence = log-probability of the sampled token + Gumbel noise * ``r_temp`` * (1 - i / (steps - 1)).
    ``guidance``: ``ramp`` (the reference's) raises the CFG weight linearly, w * i / (steps - 1), so the first
    step is unguided and only the last gets w; ``constant`` applies w at every step, as Halton and Random do.
    """

    name = "confidence"

    def __init__(self, r_temp: float = 4.5, guidance: str = "ramp"):
        if not r_temp >= 0:
            raise ValueError(f"r_temp={r_temp} is out of range; allowed: >= 0")
        if guidance not in GUIDANCE:
            raise ValueError(f"unknown guidance {guidance!r}; allowed: {', '.join(GUIDANCE)}")
        self.r_temp = r_temp
        self.guidance = guidance

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

    def guidance_weight(self, weight, step, steps):
        return weight * self._progress(step, steps) if self.guidance == "ramp" else weight
