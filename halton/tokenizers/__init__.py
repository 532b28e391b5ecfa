"""Image tokenizers (images <-> VQ codes)."""

from halton.tokenizers.base import Tokenizer
from halton.tokenizers.llamagen import LlamaGenVQ
from halton.tokenizers.pixel import PixelTokenizer

__all__ = ["LlamaGenVQ", "PixelTokenizer", "Tokenizer"]
