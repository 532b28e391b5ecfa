"""MaskGIT transformers: class-to-image (AdaLN), text-to-image (cross-attention), and the loader of checkpoints in
the Halton-MaskGIT formats."""

from halton.models.official import from_official_checkpoint
from halton.models.text_transformer import PAPER_T2I, TextMaskTransformer, build_text_transformer
from halton.models.transformer import SIZES, ClassConditioning, MaskTransformer, build_transformer


def compile_blocks(model, mode: str | None = None) -> None:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``): the blocks are the model's FLOPs,
    every block has the same code, so one graph serves them all; the embeddings, the head and the sampler's
    variable-shape gathers stay eager, and the state dict keeps its keys. ``mode``: torch.compile's."""
    for block in model.transformer.layers:
        block.compile(mode=mode)


__all__ = ["PAPER_T2I", "SIZES", "ClassConditioning", "MaskTransformer", "TextMaskTransformer", "build_text_transformer",
           "build_transformer", "compile_blocks", "from_official_checkpoint"]
