"""One interface for every kind of condition (class labels, text), used by the sampler, the Lightning module and
the entry points without knowing which kind they hold.

* A :class:`Condition` is a batch of conditions of one kind, as tensors: it can be indexed, repeated (the batched
  CFG pass), moved, checked against a model, and turned into what the model's trunk takes (``prepare``).
* A :class:`ConditionKind` is the configured kind (``model.condition`` in the configs): it makes conditions from a
  training batch, from requested values (class ids, prompts) and says how a value is labelled in a grid.

Adding a kind = one module here with both classes, and one config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch


class Condition(ABC):
    """A batch of conditions (one per sample)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def index(self, rows: torch.Tensor | slice) -> "Condition":
        """The conditions of ``rows`` (a slice or a LongTensor of row ids, repeats allowed)."""

    @abstractmethod
    def concat(self, other: "Condition") -> "Condition":
        """This batch followed by ``other`` (the conditional and unconditional halves of a CFG pass)."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "Condition": ...

    @abstractmethod
    def check(self, model) -> None:
        """ValueError in one line when this condition does not fit ``model``."""

    @abstractmethod
    def prepare(self, model, drop: torch.Tensor) -> Any:
        """What ``model.trunk_conditioned`` takes (``model.condition(...)``); ``drop`` [B] bool: True where the
        sample gets the null condition (classifier-free guidance)."""

    def trunk(self, model, codes: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """The model's hidden states for ``codes`` under this condition."""
        return model.trunk_conditioned(codes, self.prepare(model, drop))


class ConditionKind(ABC):
    """A kind of condition, as configured (``model.condition``)."""

    name: str = ""
    # What a user passes to ask for conditions of this kind (sample.py's options), for error messages.
    requested_with: str = ""

    def spec(self) -> dict[str, Any]:
        """This kind as Hydra builds it (``_target_`` and the constructor's arguments, plain values): what a
        training checkpoint records so that ``MaskGITModule.load_from_checkpoint`` builds it again."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}"}

    @abstractmethod
    def check_model(self, model) -> None:
        """ValueError in one line when ``model`` does not take this kind of condition."""

    @abstractmethod
    def from_batch(self, batch: dict[str, Any]) -> Condition:
        """The conditions of a training batch (the data module's dict)."""

    @abstractmethod
    def make(self, values: Sequence, device: torch.device | str) -> Condition:
        """Conditions for requested values (class ids, prompts), one per value."""

    @abstractmethod
    def requested(self, model, classes: list[int] | None, prompts: list[str]) -> list:
        """The values a user asked for (sample.py's ``classes`` or prompts), refusing those of another kind in one
        line; nothing asked: the grid's default rows."""

    @abstractmethod
    def grid_values(self, model) -> list:
        """The values of a sample grid's rows when none are requested (every class, the configured prompts)."""

    def check_data(self, datamodule) -> None:
        """ValueError in one line when the training data does not fit this kind (default: nothing to check)."""

    def label(self, value) -> str:
        """A value as a grid row's label."""
        return str(value)

    def prompts(self, values: Sequence) -> list[str] | None:
        """The values as text prompts (for the CLIP score), or None for a kind without text."""
        return None
