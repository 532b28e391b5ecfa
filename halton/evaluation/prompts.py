"""What an evaluation draws: class-balanced labels for a class model, ``num_images`` prompts for a text model
(COCO captions, one per image chosen with a seed; the lines of a prompt file, cycled; or the digits captions)."""

from __future__ import annotations

from pathlib import Path

import torch

from halton.conditions import ConditionKind, TextKind
from halton.conditions.text import read_prompt_file
from halton.options.evaluation import PromptSetOptions, balanced
from halton.options.rules import from_config, under


def balanced_labels(num_images: int, num_classes: int) -> torch.Tensor:
    """Class ids cycling 0, 1, ..., C-1, 0, ...: every class equally often, and every batch balanced too."""
    balanced(num_images, num_classes)
    return torch.arange(num_images) % num_classes


def cycled(values: list, count: int) -> list:
    return [values[i % len(values)] for i in range(count)]


def evaluation_values(kind: ConditionKind, num_classes: int, num_images: int, source) -> tuple[list, str]:
    """The conditions to draw and how the results file names them ("" for class labels): ``source`` is the
    evaluate config's ``prompt_set`` (a :class:`PromptSetOptions` or its config)."""
    if not isinstance(kind, TextKind):
        return balanced_labels(num_images, num_classes).tolist(), ""
    if not isinstance(source, PromptSetOptions):
        with under("prompt_set."):
            source = from_config(PromptSetOptions, source)
    if source.source == "coco":
        from halton.evaluation.coco import sample_captions

        chosen = sample_captions(source.path, num_images, source.seed)
        return list(chosen.captions), f"coco:{Path(source.path).name}:seed{source.seed}"
    if source.source == "file":
        return cycled(read_prompt_file(source.path, "prompt_set.path"), num_images), f"file:{Path(source.path).name}"
    if source.source == "digits":
        from halton.data.digits.captions import evaluation_prompts

        return evaluation_prompts(num_images, seen=source.phrasings == "seen"), f"digits:{source.phrasings}"
    raise AssertionError(f"a prompt source without a branch: {source.source}")
