"""Image tokenizers (images <-> VQ codes)."""

from halton.tokenizers.base import Tokenizer
from halton.tokenizers.pixel import PixelTokenizer

__all__ = ["PixelTokenizer", "Tokenizer"]
