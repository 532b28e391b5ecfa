"""Typed option objects, one per concern, each owning the rules of its values (ranges, choices, cross-field rules):
a bad value raises :class:`Invalid`, one line naming ``key=value`` and what is allowed. Torch-free: the entry
points' pre-flight stage builds them from the composed config before anything heavy loads, and the code that
consumes the values (``sample()``, ``MaskGITModule``, ``TrainingMask``) builds the same objects.

:func:`register_schemas` registers the sampling options (``sampling/schema``, merged by ``conf/sampling/default.yaml``)
and the training module's (``model/schema``, merged by every ``conf/model`` config) with Hydra's ConfigStore, so that
their types are checked when a config is composed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from halton.options.editing import EditOptions
from halton.options.evaluation import EvaluationOptions, PromptSetOptions, ReferenceOptions
from halton.options.extraction import ExtractionOptions
from halton.options.rules import Invalid, under
from halton.options.sampling import SCHEDULES, SamplingOptions
from halton.options.trainer import TrainerOptions
from halton.options.training import (
    LOSS_ON,
    LOSS_WEIGHTS,
    MASKINGS,
    T_PER,
    TRAIN_METRICS,
    MaskingOptions,
    OptimizerOptions,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "LOSS_ON",
    "LOSS_WEIGHTS",
    "MASKINGS",
    "SCHEDULES",
    "TRAIN_METRICS",
    "T_PER",
    "EditOptions",
    "EvaluationOptions",
    "ExtractionOptions",
    "Invalid",
    "MaskingOptions",
    "OptimizerOptions",
    "PromptSetOptions",
    "ReferenceOptions",
    "SamplingOptions",
    "TrainerOptions",
    "register_schemas",
    "typed_keys",
    "under",
]


def typed_keys(options: type) -> DictConfig:
    """The fields of an option dataclass as an untyped config of typed values: merged at the top level of a config
    (``# @package _global_``) it types those keys without making the whole config a structured one."""
    from omegaconf import OmegaConf

    typed = OmegaConf.structured(options)
    return OmegaConf.create({name: typed._get_node(name) for name in typed})


def register_schemas() -> None:
    """Register the option schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="sampling", name="schema", node=typed_keys(SamplingOptions), package="_global_")
    training = typed_keys(MaskingOptions)
    training.merge_with(typed_keys(OptimizerOptions))
    store.store(group="model", name="schema", node=training, package="model")  # MaskGITModule's options
