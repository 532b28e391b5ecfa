"""MaskGIT transformers: class-to-image (AdaLN), text-to-image (cross-attention), and the loader of checkpoints in
the Halton-MaskGIT formats."""

from halton.models.official import from_official_checkpoint
from halton.models.text_transformer import PAPER_T2I, TextMaskTransformer, build_text_transformer
from halton.models.transformer import SIZES, ClassConditioning, MaskTransformer, build_transformer

__all__ = ["PAPER_T2I", "SIZES", "ClassConditioning", "MaskTransformer", "TextMaskTransformer", "build_text_transformer",
           "build_transformer", "from_official_checkpoint"]
