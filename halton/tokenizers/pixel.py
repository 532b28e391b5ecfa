"""A lossless tokenizer for images with few grey levels: one token per pixel, one code per level."""

from __future__ import annotations

import torch

from halton.tokenizers.base import Tokenizer


class PixelTokenizer(Tokenizer):
    """Quantises a 1-channel image in [-1, 1] to ``levels`` evenly spaced grey levels (code = level index).

    Lossless for data that has exactly those levels, such as scikit-learn's digits (17 levels, 0..16).
    """

    channels = 1
    downsample = 1

    def __init__(self, levels: int = 17):
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels={levels} is too small; allowed: >= 2")
        self.codebook_size = levels

    def recipe(self) -> dict:
        return {"_target_": "halton.tokenizers.PixelTokenizer", "levels": self.codebook_size}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"a PixelTokenizer encodes grey-level images [B, 1, H, W]; got {list(images.shape)} "
                             "(colour images need a VQ tokenizer, e.g. data=imagenet_codes)")
        scaled = (images.clamp(-1, 1) + 1) / 2 * (self.codebook_size - 1)
        return scaled.round().long().squeeze(1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.clamp(0, self.codebook_size - 1)
        return (codes.float() / (self.codebook_size - 1) * 2 - 1).unsqueeze(1)
