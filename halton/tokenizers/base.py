"""The tokenizer interface: images <-> grids of discrete codes."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Tokenizer(nn.Module, ABC):
    """``encode(images [B,C,H,W] in [-1, 1]) -> codes [B,h,w]`` and ``decode(codes) -> images in [-1, 1]``."""

    codebook_size: int
    channels: int
    downsample: int  # image pixels per token along each side

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...
