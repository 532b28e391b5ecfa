"""MaskGIT samplers: the Halton, Confidence and Random schedulers behind one interface."""

from collections.abc import Mapping
from typing import Any

from halton.sampling.base import OrderScheduler, SamplingResult, Scheduler, sample
from halton.sampling.confidence import ConfidenceScheduler
from halton.sampling.halton import HaltonScheduler
from halton.sampling.order import halton_order
from halton.sampling.random import RandomScheduler
from halton.sampling.schedules import SCHEDULES, mask_ratio, tokens_per_step

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (HaltonScheduler, ConfidenceScheduler, RandomScheduler)
}


def build_scheduler(name: str, **options) -> Scheduler:
    """A scheduler by name (``halton``, ``confidence``, ``random``) with its own options."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](**options)


def as_scheduler(scheduler: Scheduler | str | Mapping[str, Any]) -> Scheduler:
    """A scheduler given as itself, as a name, or as ``{"name": ..., **options}`` (what ``Scheduler.spec`` gives)."""
    if isinstance(scheduler, Scheduler):
        return scheduler
    if isinstance(scheduler, str):
        return build_scheduler(scheduler)
    return build_scheduler(**dict(scheduler))


__all__ = [
    "SCHEDULERS", "SCHEDULES", "ConfidenceScheduler", "HaltonScheduler", "OrderScheduler", "RandomScheduler",
    "SamplingResult", "Scheduler", "as_scheduler", "build_scheduler", "halton_order", "mask_ratio", "sample", "tokens_per_step",
]
