"""The Halton scheduler (Besnier et al., ICLR 2025): unmask tokens along the 2-D Halton sequence."""

from __future__ import annotations

import torch

from halton.sampling.base import OrderScheduler
from halton.sampling.order import halton_order


class HaltonScheduler(OrderScheduler):
    """The low-discrepancy Halton order; ``randomize`` (default, as the reference quick-start samples) rolls each
    sample's order by its own offset in [0, N), ``randomize=False`` gives every sample the same order (as the
    reference's published evaluation). An edit walks the same (rolled or fixed) order restricted to the masked
    positions, keeping their relative order (:meth:`OrderScheduler.start`)."""

    name = "halton"

    def __init__(self, randomize: bool = True):
        self.randomize = randomize

    def order(self, batch, height, width, generator, device):
        base = halton_order(height, width).to(device)
        num_tokens = base.numel()
        if not self.randomize:
            return base.expand(batch, num_tokens)
        offsets = torch.randint(0, num_tokens, (batch, 1), generator=generator, device=device)
        # torch.roll(order, k)[j] = order[(j - k) mod N], for every sample at once
        index = (torch.arange(num_tokens, device=device) - offsets) % num_tokens
        return base[index]
