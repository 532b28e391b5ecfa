"""MaskGIT transformers: class-to-image (AdaLN), text-to-image (cross-attention), and the loaders of every kind of
checkpoint (:mod:`halton.models.loading`). The names below are imported on first use, so that the torch-free part
of :mod:`halton.models.loading` (telling checkpoint kinds apart) imports without torch."""

import importlib

_HOMES = {"PAPER_T2I": "text_transformer", "TextMaskTransformer": "text_transformer",
          "build_text_transformer": "text_transformer", "SIZES": "transformer", "ClassConditioning": "transformer",
          "MaskTransformer": "transformer", "build_transformer": "transformer",
          "from_official_checkpoint": "official", "load_model": "loading", "load_pretrained": "loading"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def compile_blocks(model, mode: str | None = None) -> None:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``): the blocks are the model's FLOPs,
    every block has the same code, so one graph serves them all; the embeddings, the head and the sampler's
    variable-shape gathers stay eager, and the state dict keeps its keys. ``mode``: torch.compile's."""
    for block in model.transformer.layers:
        block.compile(mode=mode)


__all__ = [*_HOMES, "compile_blocks"]
