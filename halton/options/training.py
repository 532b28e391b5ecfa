"""The training module's options: how training masks are drawn and the loss weighted (eMIGM's variants), and the
optimiser's schedule; and what the module logs in training."""

# ruff: noqa: UP006, UP035  (OmegaConf reads these annotations to type the config keys)
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from halton.options.rules import Invalid, choice, integer, key, number
from halton.options.sampling import check_schedule

MASKINGS = ("independent", "exact", "halton")
LOSS_WEIGHTS = ("none", "schedule")
T_PER = ("sample", "batch")
LOSS_ON = ("masked", "all")
TRAIN_METRICS = ("train/loss", "train/acc")  # what MaskGITModule logs in training


@dataclass(frozen=True)
class MaskingOptions:
    """How training masks are drawn (:class:`halton.training.masking.TrainingMask`) and which tokens the loss
    scores: the schedule of the mask ratio, ``masking``, eMIGM's ``loss_weight``, ``t_min`` and ``t_per``,
    ``loss_on`` and the condition dropout for classifier-free guidance."""

    mask_schedule: str = "arccos"
    masking: str = "independent"
    loss_weight: str = "none"
    t_min: float = 0.0
    t_per: str = "sample"
    schedule_power: float = 0.5
    schedule_rate: float = 5.0
    loss_on: str = "masked"
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        check_schedule(self.mask_schedule, self.schedule_power, self.schedule_rate,
                       ("mask_schedule", "schedule_power", "schedule_rate"))
        choice("masking", self.masking, MASKINGS)
        if choice("loss_weight", self.loss_weight, LOSS_WEIGHTS) == "schedule" and self.mask_schedule == "root":
            raise Invalid(f"{key('loss_weight')}='schedule' does not work with {key('mask_schedule')}='root' (its "
                          f"weight is infinite at full masking); allowed: another schedule, or {key('loss_weight')}=none")
        number("t_min", self.t_min, low=0, below=1)
        choice("t_per", self.t_per, T_PER)
        choice("loss_on", self.loss_on, LOSS_ON)
        number("label_dropout", self.label_dropout, low=0, high=1)


@dataclass(frozen=True)
class OptimizerOptions:
    """AdamW with a linear warmup then a cosine decay to ``lr * min_lr_ratio`` at ``total_steps``."""

    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.96])
    weight_decay: float = 5e-5
    warmup_steps: int = 2500
    total_steps: int = 2_000_000
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        number("lr", self.lr, above=0)
        number("weight_decay", self.weight_decay, low=0)
        betas: Any = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise Invalid(f"{key('betas')}={betas!r} is not two numbers; allowed: [beta1, beta2], each in [0, 1)")
        for index, beta in enumerate(betas):
            number(f"betas.{index}", beta, low=0, below=1)
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))  # plain values: weights_only checkpoints
        integer("warmup_steps", self.warmup_steps, 0)
        integer("total_steps", self.total_steps, 1)
        number("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
