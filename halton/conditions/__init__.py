"""Kinds of condition behind one interface: class labels and text (see :mod:`halton.conditions.base`)."""

import torch

from halton.conditions.base import Condition, ConditionKind
from halton.conditions.classes import ClassKind, Labels
from halton.conditions.text import TextEmbeddings, TextKind


def as_condition(condition: Condition | torch.Tensor) -> Condition:
    """A condition given as itself, or as a tensor of class labels (what ``sample()`` always took)."""
    return condition if isinstance(condition, Condition) else Labels(condition)


__all__ = ["ClassKind", "Condition", "ConditionKind", "Labels", "TextEmbeddings", "TextKind", "as_condition"]
