"""Scheduler diagnostics (paper Fig. 4): per step, the entropy of the predictions at the tokens being unmasked,
the mean distance between tokens unmasked in the same step, and their mean distance to tokens already unmasked."""

from __future__ import annotations

import math

import torch

from halton.sampling import SamplingResult

NAMES = ("entropy", "distance_within_step", "distance_to_unmasked")


def _coordinates(mask: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool with the same count per sample -> (row, col) coordinates [B, n, 2]."""
    index = mask.nonzero()
    return index[:, 1:].view(mask.shape[0], -1, 2).float()


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    distances = torch.cdist(a, b)  # [B, n, m]
    if exclude_self:
        n = a.shape[1]
        return distances.sum((1, 2)) / (n * (n - 1))
    return distances.mean((1, 2))


def step_diagnostics(result: SamplingResult) -> dict[str, torch.Tensor]:
    """Per-sample values [steps, B] (NaN where undefined: one token in a step, or nothing unmasked yet)."""
    steps, batch = len(result.unmasked_per_step), result.codes.shape[0]
    out = {name: torch.full((steps, batch), math.nan) for name in NAMES}
    seen = torch.zeros_like(result.unmasked_per_step[0])
    for step, new in enumerate(result.unmasked_per_step):
        out["entropy"][step] = result.entropy_per_step[step].float().cpu()
        points = _coordinates(new)
        if points.shape[1] > 1:
            out["distance_within_step"][step] = _mean_pairwise(points, points, exclude_self=True).cpu()
        if seen.any():
            out["distance_to_unmasked"][step] = _mean_pairwise(points, _coordinates(seen), exclude_self=False).cpu()
        seen = seen | new
    return out


def summarise(per_sample: list[dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Mean over every sample of several batches: {name: [value per step]}."""
    return {name: torch.cat([d[name] for d in per_sample], dim=1).mean(1).tolist() for name in NAMES}


def plot_diagnostics(curves: dict[str, dict[str, list[float]]], path) -> None:
    """One panel per diagnostic, one line per label (scheduler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from halton.utils.files import atomic_write

    titles = {"entropy": "entropy of unmasked tokens (nats)", "distance_within_step": "distance within step",
              "distance_to_unmasked": "distance to unmasked tokens"}
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, values in curves.items():
        for axis, name in zip(axes, NAMES):
            axis.plot(range(1, len(values[name]) + 1), values[name], marker=".", label=label)
    for axis, name in zip(axes, NAMES):
        axis.set_title(titles[name])
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
