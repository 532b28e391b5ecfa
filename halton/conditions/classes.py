"""Class labels as a condition: the null condition is the extra class ``num_classes``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from halton.conditions.base import Condition, ConditionKind


@dataclass
class Labels(Condition):
    labels: torch.Tensor  # [B] long

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def index(self, rows) -> "Labels":
        return Labels(self.labels[rows])

    def concat(self, other: "Labels") -> "Labels":
        return Labels(torch.cat([self.labels, other.labels]))

    def to(self, device) -> "Labels":
        return Labels(self.labels.to(device))

    def check(self, model) -> None:
        ClassKind().check_model(model)
        labels, num_classes = self.labels, model.num_classes
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
            raise ValueError(f"class id {bad} is out of range; allowed: 0 to {num_classes - 1}")

    def prepare(self, model, drop: torch.Tensor) -> torch.Tensor:
        return model.condition(self.labels, drop)


class ClassKind(ConditionKind):
    """Class-conditional models (``num_classes`` classes, ids from the ``labels`` of the batches)."""

    name = "class"
    requested_with = "classes=[...]"

    def check_model(self, model) -> None:
        if not hasattr(model, "num_classes"):
            raise ValueError(f"{type(model).__name__} is not class-conditional; a class condition needs a model with "
                             "num_classes (a text model takes prompts)")

    def from_batch(self, batch) -> Labels:
        return Labels(batch["labels"])

    def make(self, values: Sequence[int], device) -> Labels:
        return Labels(torch.as_tensor([int(v) for v in values], dtype=torch.long, device=device))

    def requested(self, model, classes, prompts) -> list[int]:
        if prompts:
            raise ValueError(f"prompts are for text-to-image models; {type(model).__name__} is class-conditional: "
                             "give classes=[...] (or nothing for every class)")
        return self.grid_values(model) if classes is None else [int(c) for c in classes]

    def grid_values(self, model) -> list[int]:
        return list(range(model.num_classes))
