"""The model summary at the start of training, in one line through logging (so in the run's log file too):
``model: MaskTransformer, 571 K parameters (571 K trainable, 2.3 MB)``. Lightning's table adds a FLOPs column and
total that are 0 unless the module defines an example input, and the count of modules in train and eval mode."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count

log = logging.getLogger("halton.train")


class ParameterSummary(ModelSummary):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelSummary` (``max_depth``: the layers listed), written as
    one line: each layer's name, type and parameters, then the trainable count and the size."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes, total_flops: int = 0, **summarize_kwargs) -> None:
        columns = dict(summary_data)
        layers = "; ".join(f"{name}: {kind}, {params} parameters"
                           for name, kind, params in zip(columns["Name"], columns["Type"], columns["Params"]))
        log.info(f"{layers} ({get_human_readable_count(trainable_parameters)} trainable, {model_size:.1f} MB)")
