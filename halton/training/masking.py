"""Training masks: which tokens of each sample the model must predict, and how much each sample's loss counts.

Per sample (or once per batch) a point u ~ U(0, 1) of the schedule gives the mask ratio gamma =
``mask_ratio(u, schedule)``; in eMIGM's (Xie et al., 2025) notation u = 1 - t, with t the masking time.

- ``masking``: ``independent`` (MaskGIT's, the default) masks each token with probability gamma, one random token
  when that masks none; ``exact`` masks exactly k = ceil(N gamma) tokens drawn without replacement; ``halton``
  masks the last k tokens of the sample's Halton order rolled by a random offset, i.e. the state the Halton
  sampler (``randomize=True``) is in once N - k tokens are decoded. k >= 1 (eMIGM asks for >= 2): with k = 1 a
  sample still has a token to learn from, and a mask ratio of 1/N stays reachable, as at the sampler's last step.
- ``t_min``: eMIGM's time truncation t = max(t, t_min), so no sample is masked less than gamma at t_min.
- ``t_per``: ``sample`` draws u per sample, ``batch`` once for the batch (eMIGM).
- ``loss_weight``: ``schedule`` returns eMIGM's per-sample weight gamma'(p) / gamma(p) with p = 1e-3 + (1 - 1e-3) t,
  the offset keeping it finite; the ratio is then taken at that p too. ``none`` (the default) returns no weights
  and no offset, so the default draws are the original module's, number for number.
"""

from __future__ import annotations

import torch

from halton.options.training import LOSS_WEIGHTS, MASKINGS, T_PER, MaskingOptions
from halton.sampling.order import halton_order
from halton.sampling.schedules import loss_weight, mask_ratio

__all__ = ["LOSS_WEIGHTS", "MASKINGS", "T_PER", "WEIGHT_OFFSET", "TrainingMask"]
WEIGHT_OFFSET = 1e-3  # eMIGM's p = offset + (1 - offset) t: the weight ~ 1/p stays finite


class TrainingMask:
    """Draws training masks; ``TrainingMask(...)(codes)`` gives (mask [B, N] bool, True = hidden; loss weights [B]
    or None). ``schedule_power``, ``schedule_rate``: the ``poly`` exponent, the ``exp``/``log``
    rate. Every draw comes from ``generator`` (torch's global generator by default). ``options``: the same values
    as a :class:`halton.options.MaskingOptions` (which checks them)."""

    def __init__(self, schedule: str = "arccos", masking: str = "independent", loss_weight: str = "none",
                 t_min: float = 0.0, t_per: str = "sample", schedule_power: float = 0.5, schedule_rate: float = 5.0,
                 options: MaskingOptions | None = None):
        if options is None:
            options = MaskingOptions(mask_schedule=schedule, masking=masking, loss_weight=loss_weight, t_min=t_min,
                                     t_per=t_per, schedule_power=schedule_power, schedule_rate=schedule_rate)
        self.schedule, self.masking, self.loss_weight = options.mask_schedule, options.masking, options.loss_weight
        self.t_min, self.t_per = float(options.t_min), options.t_per
        self.options = {"power": float(options.schedule_power), "rate": float(options.schedule_rate)}
        self._orders: dict[tuple, torch.Tensor] = {}

    def _order(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The Halton order of the grid, kept on the device (no copy from the host at every step)."""
        key = (height, width, str(device))
        if key not in self._orders:
            self._orders[key] = halton_order(height, width).to(device)
        return self._orders[key]

    def positions(self, batch: int, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The schedule points u [batch] (mask ratio ``mask_ratio(u)``), truncated and offset as configured."""
        count = 1 if self.t_per == "batch" else batch
        u = torch.rand(count, device=device, generator=generator).expand(batch)
        if self.t_min > 0:  # t = max(t, t_min) with t = 1 - u
            u = u.clamp(max=1 - self.t_min)
        if self.loss_weight == "schedule":  # p = offset + (1 - offset) t
            u = u * (1 - WEIGHT_OFFSET)
        return u

    def __call__(self, codes: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, num_tokens, device = codes.shape[0], codes[0].numel(), codes.device
        if self.masking == "halton" and codes.dim() != 3:
            raise ValueError(f"masking='halton' needs codes [B, H, W], got shape {tuple(codes.shape)}")
        u = self.positions(batch, device, generator)
        ratio = mask_ratio(u, self.schedule, **self.options)
        weights = loss_weight(u, self.schedule, **self.options) if self.loss_weight == "schedule" else None
        if self.masking == "independent":
            mask = torch.rand(batch, num_tokens, device=device, generator=generator) < ratio[:, None]
            # A sample with nothing masked would have nothing to learn from: mask one random token instead.
            empty = ~mask.any(dim=1)
            pick = torch.randint(num_tokens, (batch, 1), device=device, generator=generator)
            one = torch.zeros_like(mask).scatter_(1, pick, True)  # not F.one_hot: on a GPU it checks its input
            return mask | (empty[:, None] & one), weights
        # The float32 ratio can exceed 1 by an ulp (arccos(0) / (pi/2)): clamp the count to [1, N].
        count = torch.ceil(num_tokens * ratio).long().clamp(1, num_tokens)
        if self.masking == "exact":  # a uniformly random order per sample; its first k tokens are masked
            order = torch.rand(batch, num_tokens, device=device, generator=generator).argsort(dim=1)
            hidden = torch.arange(num_tokens, device=device) < count[:, None]
        else:  # the sampler decodes its order front to back: the last k tokens are the ones still masked
            offsets = torch.randint(0, num_tokens, (batch, 1), device=device, generator=generator)
            # The Halton scheduler's roll: torch.roll(order, k)[j] = order[(j - k) mod N], every sample at once.
            order = self._order(codes.shape[1], codes.shape[2], device)[
                (torch.arange(num_tokens, device=device) - offsets) % num_tokens]
            hidden = torch.arange(num_tokens, device=device) >= num_tokens - count[:, None]
        return torch.zeros_like(hidden).scatter_(1, order, hidden), weights
