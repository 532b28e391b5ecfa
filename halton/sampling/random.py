"""The Random scheduler: a uniformly random unmasking order per sample (the paper's baseline)."""

from __future__ import annotations

import torch

from halton.sampling.base import OrderScheduler


class RandomScheduler(OrderScheduler):
    """Positions in the order of one uniform draw each; restricted to an edit's masked positions (the same draw,
    known positions left out) the order is uniformly random among them."""

    name = "random"

    def order(self, batch, height, width, generator, device):
        noise = torch.rand(batch, height * width, generator=generator, device=device)
        return noise.argsort(dim=1)
