"""MaskGIT transformers: class-to-image (AdaLN) and the loaders of released checkpoints."""

from halton.models.official import from_official_checkpoint
from halton.models.transformer import SIZES, ClassConditioning, MaskTransformer, build_transformer

__all__ = ["SIZES", "ClassConditioning", "MaskTransformer", "build_transformer", "from_official_checkpoint"]
